"""The one exception type for user errors.

A `TLCultureError` carries a one-line message that names the problem and the fix. The CLI prints
it without a traceback; `--debug` shows the traceback.
"""


class TLCultureError(ValueError):
    """Bad input, a foreign or corrupted file, or a model tl-culture cannot use."""
