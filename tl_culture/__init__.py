"""tl-culture: find, edit and show the language and culture neurons of TransformerLens models.

The pipeline, one module per stage:

    corpus -> stats -> lape -> neurons -> interventions -> evaluate -> report
"""

from tl_culture._version import __version__
from tl_culture.counting.collect import collect
from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import Corpus, demo_corpora, load_corpus, load_murel
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.delta import delta_nll
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.explore.examples import NeuronExamples
from tl_culture.explore.scan import top_examples
from tl_culture.intervene.interventions import Intervention, ablate, combine, random_like, scale, set_to
from tl_culture.intervene.steer import SteerResult, generate
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import load_model
from tl_culture.selection.lape import identify
from tl_culture.selection.neurons import NeuronSet, culture_categories
from tl_culture.selection.stability import split_half_stability

__all__ = [
    "__version__",
    "ActivationStats",
    "Corpus",
    "Intervention",
    "MLPHooks",
    "NLLMatrix",
    "NeuronExamples",
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
    "top_examples",
]
