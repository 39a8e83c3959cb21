"""docs/findings.md against its data, and a reduced re-run of its experiment on the default model.

Fast: every table of the page is the one scripts/findings_tables.py prints from the run files in
docs/findings/ (so no number in a table is typed by hand), the command on the page is the one in
summary.json, and the statements of the prose hold in those files.

Slow (a few minutes on 2 CPU cores): the FLORES languages and MUREL cultures of
examples/small_shared_data.toml (the setting of docs/findings.md) for en, de, ru, fa,
1,500 selection tokens per group, 128 scored held-out tokens per corpus. It checks that the
headline findings of docs/findings.md hold at this scale:

- ablating a language's neurons raises the NLL of its own held-out text more than the random-neuron
  control with the same per-layer counts, with a paired (Δ − control) CI above zero, and more than
  it raises other languages' text;
- language and culture neurons sit mostly in the upper half of the network.
"""

import importlib.util
import re

import pytest
import torch

from tests.conftest import REPO
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.run import run_experiment

LANGS = ["en", "de", "ru", "fa"]
SMALL = REPO / "examples" / "small_shared_data.toml"
DOCS = REPO / "docs"
FINDINGS = DOCS / "findings"


def _tables_module():
    spec = importlib.util.spec_from_file_location("findings_tables", REPO / "scripts" / "findings_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def page() -> str:
    return (DOCS / "findings.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def run() -> dict:
    return _tables_module().load(FINDINGS)


@pytest.mark.parametrize("name", list(_tables_module().TABLES))
def test_every_table_is_printed_from_the_json(page, name):
    text = _tables_module().tables(FINDINGS)[name]
    assert text in page, f"the {name} table of docs/findings.md differs from scripts/findings_tables.py's output"


def test_readme_matrix_is_the_json():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert _tables_module().tables(FINDINGS)["language_matrix"] in readme


def test_the_recorded_command_made_the_files(page, run):
    cfg = run["summary"]["config"]
    cmd = re.search(r"```bash\n(tl-culture run .*?)\n```", page, re.S).group(1).replace("\\\n", " ")
    flags = dict(re.findall(r"--([a-z-]+) ([^\s-][^\s]*)", cmd))
    assert "--max-tokens" not in cmd and cfg["max_tokens"] is None  # selection on all the selection text
    assert float(flags["eval-fraction"]) == cfg["eval_fraction"]
    assert int(flags["eval-tokens"]) == cfg["eval_tokens"] >= 2000
    assert int(flags["eval-min-documents"]) == cfg["eval_min_documents"] == 30
    assert int(flags["controls"]) == cfg["control_seeds"]
    assert cfg["stability"] and cfg["prompts"].endswith(flags["prompts"].split("/")[-1])
    assert "--config examples/small_shared_data.toml" in cmd
    nll = run["nll"]["language"]["meta"]
    assert nll["control_seeds"] == cfg["control_seeds"] and nll["control_excludes_selected"] is True
    assert nll["bootstrap_units"] == "documents" and nll["control_cells"] == "own" and nll["backend"] == "native"
    for m in run["nll"].values():  # at least 2,000 scored tokens and 30 resampling units on every held-out corpus
        assert min(m["eval_tokens"]) >= 2000 and min(m["bootstrap_units"]) >= 30, m["meta"]["max_tokens"]


def test_the_statements_of_the_prose_hold(run, page):
    nll, pairs = run["nll"], run["summary"]["pairs"]
    # the run's times quoted in the caveats
    assert f"{round(run['summary']['seconds']):,} s" in page
    assert f"took {round(sum(m['meta']['seconds'] for m in nll.values())):,} s" in page

    def cell(name, field, g, e):
        m = nll[name]
        return m[field][m["groups"].index(g)][m["evals"].index(e)]

    def beats(name, g, e):
        return cell(name, "paired_ci_low", g, e) > 0

    strong = ["de", "da", "zh", "ru", "fa"]
    # section 2: every language set beats its control on its own text, English's too (barely); of the
    # culture sets, all but English's
    assert all(beats("language", g, f"lang:{g}") for g in ["en", *strong])
    assert cell("language", "delta", "en", "lang:en") < 0.05
    assert all(beats("culture", g, f"cult:{g}") for g in strong) and not beats("culture", "en", "cult:en")
    for name, g in (("language", "zh"), ("language", "ru")):
        assert cell(name, "delta", g, "lang:fa") > cell(name, "delta", g, f"lang:{g}")
    for g in ("zh", "ru"):
        assert cell("culture", "delta", g, "cult:fa") > cell("culture", "delta", g, f"cult:{g}")
    more_on_language = [g for g in strong if cell("culture", "delta", g, f"lang:{pairs[g]}") > cell(
        "culture", "delta", g, f"cult:{g}")]
    assert more_on_language == ["da", "zh", "ru", "fa"]
    # section 3: the pure sets of the five beat their controls on own culture text, English's does not;
    # only the Chinese set leans to culture text, and its effect on Chinese FLORES text is not zero
    assert [g for g in ["en", *strong] if beats("pure", g, f"cult:{g}")] == strong
    assert cell("pure", "delta", "zh", "cult:zh") > 3 * cell("pure", "delta", "zh", "lang:zh")
    assert cell("pure", "delta_ci_low", "zh", "lang:zh") > 0
    for g in ("de", "da", "fa"):
        ratio = cell("pure", "delta", g, f"cult:{g}") / cell("pure", "delta", g, f"lang:{g}")
        assert 0.8 < ratio < 1.3, (g, ratio)
    # the Russian pure set (3 neurons) leans a little to culture text, its two CIs overlapping
    assert cell("pure", "delta", "ru", "cult:ru") > cell("pure", "delta", "ru", "lang:ru")
    assert cell("pure", "delta_ci_low", "ru", "cult:ru") < cell("pure", "delta_ci_high", "ru", "lang:ru")
    assert run["summary"]["neurons"]["generic"]["generic"] == 0
    # README: the random controls stay below +0.08 on every own-text cell of the language matrix (none elsewhere)
    controls = [x for row in nll["language"]["control_delta"] for x in row if x is not None]
    assert len(controls) == 12 and max(controls) < 0.08
    # section 5: steering beats the control for every language but English, and no control output is in the target
    for t, ev in run["steering"].items():
        assert (ev["steered_minus_control_ci"][0] > 0) == (t != "en"), t
        assert t == "en" or ev["control_rate"] == 0.0


def test_no_claim_the_old_data_contradicted(page):
    assert "off-own-culture Δ ≤ 0.02" not in page and "0.83 vs" not in page


@pytest.fixture(scope="module")
def reduced_run(default_model, shared_data, tmp_path_factory):
    small = ExperimentConfig.from_file(SMALL, out=str(tmp_path_factory.mktemp("findings") / "run"))
    cfg = ExperimentConfig(
        out=small.out,
        languages={k: small.languages[k] for k in LANGS},
        cultures={k: small.cultures[k] for k in LANGS},
        max_tokens=1500,
        eval_tokens=128,
        control_seeds=1,
        bootstrap=200,
        report=False,
        examples=False,
        progress=False,
    )
    return run_experiment(cfg, model=default_model)


@pytest.mark.slow
def test_language_ablation_is_specific(reduced_run):
    m = reduced_run.nll["language"]
    assert m.groups == LANGS and m.evals == [f"lang:{k}" for k in LANGS]
    own = torch.diagonal(m.delta)
    control = torch.diagonal(m.control_delta)
    # The headline of docs/findings.md: own-text Δ ≈ 1-5 nats/token for de/ru/fa, control ≈ 0.
    strong = [g for g, d, c in zip(m.groups, own.tolist(), control.tolist()) if d > 0.3 and d > c + 0.2]
    assert len(strong) >= 3, (m.table(), strong)
    assert float(own.mean()) > 3 * float(m.delta[~torch.eye(len(LANGS), dtype=torch.bool)].mean().clamp(min=0.01))
    # the paired statement the page makes: Δ − control has a CI above zero on a strong diagonal cell
    for g in strong:
        i = m.groups.index(g)
        assert m.bootstrap_units[i] >= 3, m.bootstrap_units
        assert m.paired_ci_low[i, i] > 0, (g, m.paired_ci_low[i, i])


@pytest.mark.slow
def test_neurons_sit_in_upper_layers(reduced_run):
    for name in ("language", "culture"):
        ns = reduced_run.categories[name]
        hist = ns.masks.any(0).sum(1).float()  # union over groups, per layer
        upper = float(hist[ns.n_layers // 2 :].sum() / hist.sum())
        assert upper > 0.5, (name, hist.tolist())
