"""tl-culture: find, edit and show the language and culture neurons of TransformerLens models.

The pipeline, one module per stage:

    corpus -> stats -> lape -> neurons -> interventions -> evaluate -> report
"""

__version__ = "0.1.0"

from tl_culture.corpus import Corpus, demo_corpora, load_corpus, load_murel  # noqa: E402
from tl_culture.errors import TLCultureError  # noqa: E402
from tl_culture.evaluate import NLLMatrix, delta_nll, split_half_stability  # noqa: E402
from tl_culture.interventions import Intervention, ablate, combine, random_like, scale, set_to  # noqa: E402
from tl_culture.lape import identify  # noqa: E402
from tl_culture.models import MLPHooks, load_model  # noqa: E402
from tl_culture.neurons import NeuronSet, culture_categories  # noqa: E402
from tl_culture.stats import ActivationStats, collect  # noqa: E402
from tl_culture.steer import SteerResult, generate  # noqa: E402

__all__ = [
    "ActivationStats",
    "Corpus",
    "Intervention",
    "MLPHooks",
    "NLLMatrix",
    "NeuronSet",
    "SteerResult",
    "TLCultureError",
    "ablate",
    "collect",
    "combine",
    "culture_categories",
    "delta_nll",
    "demo_corpora",
    "generate",
    "identify",
    "load_corpus",
    "load_model",
    "load_murel",
    "random_like",
    "scale",
    "set_to",
    "split_half_stability",
]
