"""tl-culture: find, edit and show the language and culture neurons of TransformerLens models.

The pipeline, one subpackage per stage; data flows down this list and each stage imports only
from the stages above it (``tests/test_architecture.py`` checks it):

    model/       load a TransformerLens model; its MLP hook points; forwards that stop after a layer
    data/        corpora and their tokenisation into rows
    counting/    the LAPE statistic: act_fn(gate) > 0 counts per group (`collect`)
    selection/   LAPE (`identify`), neuron sets, culture categories, split-half stability
    explore/     top activating contexts of neurons and their direct effect on the logits
    intervene/   zero / scale / set edits as TransformerLens hooks, steered generation
    evaluation/  Δ NLL on held-out text with controls and bootstrap CIs
    experiment/  the config, the stages in order, the run folder (`RunDir`)
    report/      figures, token views and the offline HTML report of a run folder
    cli/         the ``tl-culture`` command line
"""

from tl_culture._version import __version__
from tl_culture.counting.collect import collect
from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import Corpus, demo_corpora, load_corpus, load_murel
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.delta import delta_nll
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.evaluation.steer_result import SteerEval
from tl_culture.evaluation.steering import read_prompts, steer_eval
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
    "SteerEval",
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
    "read_prompts",
    "scale",
    "set_to",
    "split_half_stability",
    "steer_eval",
    "top_examples",
]
