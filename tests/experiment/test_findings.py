"""A reduced re-run of the culture-neuron experiment (docs/findings.md) on the default model.

Slow (a few minutes on 2 CPU cores): the FLORES languages and MUREL cultures of
examples/small_shared_data.toml (the setting of docs/findings.md) for en, de, ru, fa,
1,500 selection tokens per group, 64 scored held-out tokens per corpus. It checks that the
headline findings of docs/findings.md hold at this scale, within wide bands:

- ablating a language's neurons raises the NLL of its own held-out text far more than the
  random-neuron control with the same per-layer counts (and than other languages' text);
- language and culture neurons sit mostly in the upper half of the network;
- pure culture neurons (culture minus language) have a much smaller effect than compound ones.
"""

import pytest
import torch

from tests.conftest import REPO
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.run import run_experiment

pytestmark = pytest.mark.slow

LANGS = ["en", "de", "ru", "fa"]
SMALL = REPO / "examples" / "small_shared_data.toml"


@pytest.fixture(scope="module")
def reduced_run(default_model, shared_data, tmp_path_factory):
    small = ExperimentConfig.from_file(SMALL, out=str(tmp_path_factory.mktemp("findings") / "run"))
    cfg = ExperimentConfig(
        out=small.out,
        languages={k: small.languages[k] for k in LANGS},
        cultures={k: small.cultures[k] for k in LANGS},
        max_tokens=1500,
        eval_tokens=64,
        control_seeds=1,
        bootstrap=200,
        report=False,
        progress=False,
    )
    return run_experiment(cfg, model=default_model)


def test_language_ablation_is_specific(reduced_run):
    m = reduced_run.nll["language"]
    assert m.groups == LANGS and m.evals == [f"lang:{k}" for k in LANGS]
    own = torch.diagonal(m.delta)
    control = torch.diagonal(m.control_delta)
    # The headline of docs/findings.md: own-text Δ ≈ 1-5 nats/token for de/ru/fa, control ≈ 0.
    strong = [g for g, d, c in zip(m.groups, own.tolist(), control.tolist()) if d > 0.3 and d > c + 0.2]
    assert len(strong) >= 3, (m.table(), strong)
    assert float(own.mean()) > 3 * float(m.delta[~torch.eye(len(LANGS), dtype=torch.bool)].mean().clamp(min=0.01))
    # the CI of a strong diagonal cell excludes zero
    for g in strong:
        i = m.groups.index(g)
        assert m.delta_ci_low[i, i] > 0


def test_neurons_sit_in_upper_layers(reduced_run):
    for name in ("language", "culture"):
        ns = reduced_run.categories[name]
        hist = ns.masks.any(0).sum(1).float()  # union over groups, per layer
        upper = float(hist[ns.n_layers // 2 :].sum() / hist.sum())
        assert upper > 0.5, (name, hist.tolist())


def test_pure_culture_effect_is_small(reduced_run):
    nll = reduced_run.nll
    pure = torch.diagonal(nll["pure"].delta).mean()
    compound = torch.diagonal(nll["compound"].delta).mean()
    assert float(pure) < 0.5 * float(compound), (nll["pure"].table(), nll["compound"].table())
