"""tl-culture: find, edit and show the language and culture neurons of TransformerLens models.

The pipeline, one module per stage:

    corpus -> stats -> lape -> neurons -> interventions -> evaluate -> report
"""

from tl_culture._version import __version__
from tl_culture.counting.collect import ActivationStats, collect
from tl_culture.data.corpus import Corpus, demo_corpora, load_corpus, load_murel
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.delta import NLLMatrix, delta_nll, split_half_stability
from tl_culture.intervene.interventions import Intervention, ablate, combine, random_like, scale, set_to
from tl_culture.intervene.steer import SteerResult, generate
from tl_culture.model.load import MLPHooks, load_model
from tl_culture.selection.lape import identify
from tl_culture.selection.neurons import NeuronSet, culture_categories

__all__ = [
    "__version__",
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
