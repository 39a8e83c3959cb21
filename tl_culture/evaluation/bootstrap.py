"""The coverage of every bootstrap interval, and the seeds of the random controls.

The resampling itself (held-out documents, or token chunks, as units) is
`tl_culture.evaluation.units.bootstrap_cis`; the rates of steering use Wilson intervals
(`tl_culture.evaluation.rates`). Both report at `CI_LEVEL`.
"""

from __future__ import annotations

CI_LEVEL = 0.95
"""Coverage of the bootstrap intervals."""


def control_seed(seed: int, control: int, group_index: int) -> int:
    """Independent, reproducible seed of random control ``control`` for the group at ``group_index``."""
    return (int(seed) * 1_000_003 + control * 7_919 + group_index) % (2**63 - 1)


__all__ = ["CI_LEVEL", "control_seed"]
