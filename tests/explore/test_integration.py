"""The explorer in a run: `tl-culture run` computes the examples, report.html holds the explorer (opened at a
neuron in headless Chromium), `tl-culture explore` writes it alone and fills in a run made with --no-examples."""

from __future__ import annotations

import re

import pytest

from tests.browser import WithFragment, check_offline, run_chromium
from tests.conftest import make_run
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.run import run_experiment
from tl_culture.experiment.rundir import RunDir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_hf_model):
    return make_run(tmp_path_factory.mktemp("explore") / "run", tiny_hf_model)


def test_run_computes_examples_of_every_selected_neuron(run_dir):
    run = RunDir.open(run_dir)
    examples, writes = run.read_examples()
    chosen = run.read_language_neurons().union_mask() | run.read_categories()["culture"].union_mask()
    assert examples.pairs() == [tuple(p) for p in chosen.nonzero().tolist()] == [
        (int(a), int(b)) for a, b in zip(writes.layers, writes.neurons, strict=True)]
    assert examples.groups == [f"lang:{g}" for g in run.read_stats("language").groups] + [
        f"cult:{g}" for g in run.read_stats("culture").groups]
    assert examples.k == 16 and examples.window == 12 and examples.meta["max_tokens"] == 20_000
    assert bool(examples.filled().any())


def test_report_opens_the_explorer_at_a_neuron(chromium, run_dir, tmp_path):
    run = RunDir.open(run_dir)
    examples, _ = run.read_examples()
    layer, j = examples.pairs()[0]
    report = run.report_path.read_text(encoding="utf-8")
    assert '<h2 id="explorer">Neuron explorer</h2>' in report and report.count("var CircuitsVis") <= 1
    proc, requests, proxied = run_chromium(chromium, WithFragment(run.report_path, f"L{layer}.{j}"), tmp_path,
                                           ["--dump-dom"])
    assert check_offline(requests, proxied) == ([], [])
    panel = re.search(r'<div class="tlx-panel" data-neuron="([^"]+)">(.*?)<div class="tlx-controls">', proc.stdout,
                      re.S)
    assert panel is not None and panel[1] == f"L{layer}.{j}"
    ctx = examples.top(layer, j, examples.groups[0])[0]
    assert f"{ctx.activation:.3f}" in panel[2]  # the first context's activation
    assert re.search(r'<div id="tlx-cv-0" class="tlx-cv"><div class="colored-tokens">', panel[2])  # circuitsvis drew it


def test_explore_command_and_no_examples(tmp_path, tiny_hf_dir, tiny_hf_model):
    from tl_culture.cli import main

    cfg = ExperimentConfig(out=str(tmp_path / "run"), model=str(tiny_hf_dir), seq_len=64, max_tokens=300,
                           top_rate=0.1, progress=False, evaluate=False, report=False, examples=False)
    run_experiment(cfg, model=tiny_hf_model)
    run = RunDir.open(cfg.out)
    assert run.read_examples() == (None, None)
    assert main(["explore", cfg.out]) == 0  # the table alone
    page = (run.path / "explorer.html").read_text(encoding="utf-8")
    assert '"examples":null' in page and '"writes":null' in page
    out = tmp_path / "x" / "page.html"
    args = ["explore", cfg.out, "--model", str(tiny_hf_dir), "--device", "cpu", "--examples-tokens", "50",
            "--contexts", "2", "--out", str(out)]
    assert main(args) == 0
    examples, writes = run.read_examples()
    assert examples.meta["max_tokens"] == 50 and int(examples.tokens_scanned.max()) <= 50 and writes is not None
    assert '"shown":2' in out.read_text(encoding="utf-8")
