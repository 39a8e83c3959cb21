"""The HTML report of a run folder: every section, the numbers it shows, offline, CLI and errors."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RUN_CULTURES as CULTURES
from tests.conftest import make_run
from tl_culture import NeuronSet, TLCultureError
from tl_culture.cli import main
from tl_culture.report import external_references
from tl_culture.report.html import circuitsvis_library
from tl_culture.report.write import SECTIONS, load_run, write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_hf_model) -> Path:
    return make_run(tmp_path_factory.mktemp("report") / "run", tiny_hf_model)


@pytest.fixture(scope="module")
def report(run_dir, tiny_hf_model) -> str:
    path = write_report(run_dir, model=tiny_hf_model, max_tokens=24)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def _text(html: str) -> str:
    """Visible text outside scripts and SVGs, tags stripped."""
    html = re.sub(r"<script>.*?</script>|<svg.*?</svg>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_report_has_every_section_and_figure(report, run_dir):
    for key in SECTIONS:
        assert f'id="{key}"' in report, key
        assert f'href="#{key}"' in report
    figures = ["layers", "layers_categories", "overlap_culture_language", "overlap_language", "overlap_culture",
               "categories"] + [f"delta_nll_{c}" for c in ("language", "culture", "compound", "pure", "generic")]
    for name in figures:
        assert f'<figure id="fig-{name}"><svg' in report, name
        assert (run_dir / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (run_dir / "figures" / f"{name}.svg").read_text(encoding="utf-8").startswith("<svg")
    assert report.count("<figure") == len(figures)
    assert "@media print" in report


def test_report_is_offline(report):
    assert external_references(report) == []
    assert report.count(circuitsvis_library()) == 1  # the library once, however many views
    assert "unpkg" not in report.replace(circuitsvis_library(), "")


def nll_table_cells(report: str, category: str) -> list[list[str]]:
    """The cells of the Δ NLL table of ``category`` in the report, row by row, CIs left out."""
    section = report.split(f"<h3>{category} neurons</h3>", 1)[1]
    body = re.search(r'<table class="nll">(.*?)</table>', section, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S) for r in rows]
    return [[re.sub(r'<span class="ci">.*?</span>', "", c).strip() for c in row] for row in cells]


def test_report_shows_the_run_numbers(report, run_dir):
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    text = _text(report)
    cats = load_run(run_dir).categories
    assert "seq_len 64" in text and "top_rate 0.1" in text and "max_tokens 600" in text
    for c in CULTURES:
        assert f"{c} {c} " in text  # neuron table rows: culture, language, counts
    row = re.search(r"<tr><td>de</td><td>de</td>(.*?)</tr>", report).group(1)
    cells = [int(x) for x in re.findall(r"<td>(\d+)</td>", row)]
    lang = NeuronSet.load(run_dir / "neurons" / "languages.safetensors")
    assert cells == [lang.count("de"), cats["culture"].count("de"), cats["compound"].count("de"),
                     cats["pure"].count("de")]
    assert f"{summary['tokens_culture']['de']:,}" in text
    assert "statistics counted with backend native, attention sdpa, dtype float32" in text
    # Δ NLL: every cell of every matrix, formatted, and the diagonal marked
    from tl_culture.evaluation.matrix import NLLMatrix

    m = NLLMatrix.load(run_dir / "nll" / "culture.json")
    table = nll_table_cells(report, "culture")
    assert table[0] == ["", *m.evals] and table[1] == ["baseline NLL", *[f"{float(b):.3f}" for b in m.baseline]]
    for i, g in enumerate(m.groups):  # the Δ rows, cell by cell in order
        assert table[2 + i] == [f"Δ {g}", *[f"{float(d):+.3f}" for d in m.delta[i]]]
    controls = {r[0]: r[1:] for r in table if r[0].startswith("Δ random ~ ")}
    for i, g in enumerate(m.groups):  # control cells: the number where a control ran, a dash elsewhere
        want = [f"{float(c):+.3f}" if math.isfinite(float(c)) else "—" for c in m.control_delta[i]]
        assert controls[f"Δ random ~ {g}"] == want
    assert report.count('class="diag"') == 4 * 12  # 4 categories x 6 groups x 2 own-text evals
    assert f"{float(m.baseline[0]):.3f}" in text
    own = float(np.mean([float(m.delta[i, j]) for i, g in enumerate(m.groups) for j, e in enumerate(m.evals)
                         if e.endswith(":" + g)]))
    assert f"Ablating culture neurons: mean Δ NLL on own text {own:+.3f}" in text


def test_report_token_views(report, run_dir, tiny_hf_model):
    assert report.count("CircuitsVis.ColoredTokensMulti,") == 6  # one held-out text per culture
    calls = re.findall(r"CircuitsVis\.ColoredTokensMulti, (\{.*?\})\);</script>", report)
    assert [json.loads(c.replace("<\\/", "</"))["labels"][:2] for c in calls] == [
        [f"language:{c}", f"culture:{c}"] for c in CULTURES]
    samples = json.loads((run_dir / "samples.json").read_text(encoding="utf-8"))["cultures"]
    # (the last of the 24 tokens may end inside a character, shown as U+FFFD)
    shown = ["".join(json.loads(c.replace("<\\/", "</"))["tokens"]).rstrip("\ufffd") for c in calls]
    assert all(samples[c][0].startswith(text) and text for c, text in zip(CULTURES, shown, strict=True))
    assert "CircuitsVis.TopkTokens" in report
    assert "language:en" in report and "culture:fa" in report
    assert "Token views need a model" not in report


def test_report_without_model_or_nll_says_so(run_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    shutil.rmtree(bare / "nll")
    shutil.rmtree(bare / "figures")
    (bare / "report.html").unlink()
    html = write_report(bare).read_text(encoding="utf-8")
    assert "Token views need a model" in html and "no <code>nll/</code> folder" in html
    assert "CircuitsVis" not in html and external_references(html) == []
    assert not (bare / "figures" / "delta_nll_culture.png").exists()
    assert (bare / "figures" / "layers.svg").is_file()


def test_report_of_a_run_folder_without_samples(run_dir, tmp_path, tiny_hf_model):
    """A run folder written before samples.json existed: everything but the held-out token views."""
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    shutil.rmtree(old / "nll")
    (old / "samples.json").unlink()
    html = write_report(old, model=tiny_hf_model).read_text(encoding="utf-8")
    assert "no held-out samples (<code>samples.json</code>" in html
    assert "CircuitsVis" not in html and external_references(html) == []
    assert all(f'id="{key}"' in html for key in SECTIONS)


def test_report_with_given_texts(run_dir, tmp_path, tiny_hf_model):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "nll")
    html = write_report(copy, model=tiny_hf_model, texts=["der Hund schläft", "кошка спит"]).read_text("utf-8")
    assert html.count("CircuitsVis.ColoredTokensMulti,") == 2
    assert "text 1: mean act_fn(gate)" in html
    calls = re.findall(r"CircuitsVis\.ColoredTokensMulti, (\{.*?\})\);</script>", html)
    props = [json.loads(c.replace("<\\/", "</")) for c in calls]
    assert ["".join(p["tokens"]) for p in props] == ["der Hund schläft", "кошка спит"]
    assert len(props[1]["values"][0]) == 12 and props[1]["labels"][6] == "culture:en"


def test_cli_report_prints_the_path(run_dir, tmp_path, capsys):
    copy = tmp_path / "cli"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "nll")
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(copy / "report.html") and Path(out).is_file()


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    want = f"{tmp_path / 'nope'}: no such run folder; give the --out folder of `tl-culture run`"
    assert err == f"tl-culture: error: {want}"


def test_report_errors(run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TLCultureError, match=r"summary.json: missing summary.json; is this a run folder"):
        write_report(empty)
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TLCultureError, match=r"summary.json: does not match the checksum in stages.json"):
        write_report(broken)  # the run's checksums catch it first
    (broken / "stages.json").unlink()  # a folder of an earlier version: then the parse names it
    with pytest.raises(TLCultureError, match=r"summary.json: corrupted JSON .*; rerun `tl-culture run`"):
        write_report(broken)
    shutil.copy(run_dir / "summary.json", broken / "summary.json")
    (broken / "nll" / "pure.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(TLCultureError, match=r"pure.json: not a JSON NLLMatrix file"):
        write_report(broken)
    (broken / "nll" / "pure.json").unlink()
    (broken / "neurons" / "compound.safetensors").unlink()
    with pytest.raises(TLCultureError, match=r"compound.safetensors: missing compound neurons; is this a run folder"):
        write_report(broken)
    assert (broken / "report.html").read_text(encoding="utf-8")  # the earlier report is left untouched


def test_load_run_reads_the_contract(run_dir):
    run = load_run(run_dir)
    assert list(run.nll) == ["language", "culture", "compound", "pure", "generic"]
    assert run.categories["generic"].groups == ["generic"]
    assert run.stats_culture.groups == CULTURES


@pytest.mark.slow
def test_report_on_the_default_model(tmp_path, default_model):
    from tl_culture.experiment.config import ExperimentConfig
    from tl_culture.experiment.run import run_experiment
    from tl_culture.report import token_activations

    out = tmp_path / "gemma"
    cfg = ExperimentConfig(out=str(out), seq_len=64, batch_size=4, max_tokens=200, progress=False, evaluate=False)
    res = run_experiment(cfg, model=default_model)
    html = write_report(out, model=default_model, max_tokens=16).read_text(encoding="utf-8")
    assert external_references(html) == [] and html.count("CircuitsVis.ColoredTokensMulti,") == 6
    calls = re.findall(r"CircuitsVis\.ColoredTokensMulti, (\{.*?\})\);</script>", html)
    props = json.loads(calls[1].replace("<\\/", "</"))  # the German held-out document
    doc = res.heldout["cult:de"].documents[0]
    assert doc.startswith("".join(props["tokens"]))
    assert props["labels"][:2] == ["language:de", "culture:de"]  # the text's own groups first
    acts = token_activations(default_model, doc, {"language": res.categories["language"],
                                                  "culture": res.categories["culture"]},
                             groups=props["labels"], max_tokens=16)
    np.testing.assert_allclose(props["values"], acts.values.tolist(), rtol=1e-5, atol=1e-6)
    assert props["labels"] == acts.labels
    assert "18 × 2048" in html


def test_report_of_a_run_with_the_real_evaluation_stage(tmp_path, tiny_hf_model):
    """The nll/ files written by run_experiment's own evaluation stage go into the report as they are."""
    from tl_culture.evaluation.matrix import NLLMatrix
    from tl_culture.experiment.config import ExperimentConfig
    from tl_culture.experiment.run import run_experiment

    out = tmp_path / "evaluated"
    cfg = ExperimentConfig(out=str(out), seq_len=64, batch_size=8, max_tokens=300, top_rate=0.1, progress=False,
                           eval_tokens=32, bootstrap=20, control_seeds=1)
    run_experiment(cfg, model=tiny_hf_model)
    html = write_report(out).read_text(encoding="utf-8")
    names = sorted(p.stem for p in (out / "nll").glob("*.json"))
    assert names and all(f'<figure id="fig-delta_nll_{n}">' in html for n in names)
    m = NLLMatrix.load(out / "nll" / f"{names[0]}.json")
    finite = [float(v) for v in m.delta.flatten() if np.isfinite(float(v))]
    assert finite and all(f"{v:+.3f}" in html for v in finite)
    assert external_references(html) == []
