"""`run_experiment`: the files its stages write, the result it returns, and its all-or-nothing folder swap."""

from __future__ import annotations

import json

import pytest
import torch

from tl_culture import NLLMatrix, TLCultureError
from tl_culture.evaluation.heldout import is_own_text
from tl_culture.experiment.config import CATEGORIES, ExperimentConfig
from tl_culture.experiment.run import run_experiment
from tl_culture.experiment.rundir import SAMPLES_PER_CORPUS, RunDir


def small(out, **kw) -> ExperimentConfig:
    """A quick run on the demo corpus (no evaluation, no report unless asked)."""
    return ExperimentConfig(**{"out": str(out), "seq_len": 32, "max_tokens": 300, "top_rate": 0.1, "progress": False,
                               "evaluate": False, **kw})


def test_run_experiment_writes_nll_matrices(tmp_path, tiny_hf_model):
    cfg = ExperimentConfig(out=str(tmp_path / "run"), seq_len=32, max_tokens=300, eval_tokens=24, bootstrap=50,
                           control_seeds=1, eval_batch_size=16, progress=False, top_rate=0.1)
    res = run_experiment(cfg, model=tiny_hf_model)
    cultures = list(res.pairs)
    for name in CATEGORIES:
        m = NLLMatrix.load(tmp_path / "run" / "nll" / f"{name}.json")
        assert m.groups == res.categories[name].groups
        if name == "language":
            assert m.evals == [f"lang:{res.pairs[c]}" for c in cultures]
        else:
            assert m.evals == [f"cult:{c}" for c in cultures]
        assert m.delta_ci_low is not None and m.meta["control_cells"] == "own"
        own = torch.tensor([[is_own_text(g, e, res.pairs) for e in m.evals] for g in m.groups], dtype=torch.bool)
        if name in ("language", "culture"):  # controls ran on each group's own text, nowhere else
            assert m.control_delta is not None and bool(own.any())
            assert torch.equal(torch.isfinite(m.control_delta), own.reshape(m.control_delta.shape))
        assert (m.tokens == 24).all()
        torch.testing.assert_close(m.ablated, res.nll[name].ablated, equal_nan=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["nll"]) == set(CATEGORIES)
    assert summary["config"]["eval_mode"] == "matched"


def test_run_writes_every_stage_through_its_run_dir(tmp_path, tiny_hf_model):
    calls = []

    def reporter(run, model):
        calls.append((run.path, model))
        assert run.path != tmp_path / "run" and run.summary_path.is_file()  # the staging folder, summary written
        run.write_report("<html></html>")

    res = run_experiment(small(tmp_path / "run", stability=True), model=tiny_hf_model, reporter=reporter)
    run = RunDir.open(tmp_path / "run")
    assert res.out == run.path and len(calls) == 1 and calls[0][1] is tiny_hf_model
    assert run.report_path.read_text() == "<html></html>"
    contents = run.load()
    assert contents.languages == res.languages and contents.categories == res.categories
    assert torch.equal(contents.stats_culture.counts, res.stats_culture.counts)
    assert torch.equal(run.read_stats("language").counts, res.stats_language.counts)
    assert contents.nll == {} and res.nll == {} and not run.nll_dir.exists()
    assert contents.neuron_table.startswith("# Language neurons") and "# generic" in contents.neuron_table
    # held-out samples: the first documents of every held-out corpus, as the report shows them
    for kind, prefix in (("languages", "lang"), ("cultures", "cult")):
        for name, docs in contents.samples[kind].items():
            assert docs == res.heldout[f"{prefix}:{name}"].documents[:SAMPLES_PER_CORPUS]
    assert set(contents.samples["cultures"]) == set(res.pairs)
    # stability: the same numbers in stability.json, summary.json and the result
    assert run.read_stability() == contents.summary["stability"] == res.stability
    assert set(res.stability) == {"language", "culture"}
    assert list(res.stability["culture"]) == res.categories["culture"].groups
    assert all(0.0 <= v <= 1.0 for per in res.stability.values() for v in per.values())
    assert contents.summary["neurons"]["languages"] == res.languages.counts()
    # no report asked: the reporter is not called
    run_experiment(small(tmp_path / "quiet", report=False), model=tiny_hf_model, reporter=reporter)
    assert len(calls) == 1 and not RunDir(tmp_path / "quiet").report_path.exists()


def test_a_failing_run_leaves_the_earlier_result(tmp_path, tiny_hf_model):
    out = tmp_path / "run"
    run_experiment(small(out, report=False), model=tiny_hf_model)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(run, model):
        raise TLCultureError("the report failed")

    with pytest.raises(TLCultureError, match="the report failed"):
        run_experiment(small(out, top_rate=0.2), model=tiny_hf_model, reporter=broken)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # only the work folder is left beside it, for the same run to continue from
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.work", "run"]


def test_cultures_need_their_language(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    cfg = ExperimentConfig(out=str(tmp_path / "run"), languages={"en": str(tmp_path / "a.txt")},
                           cultures={"english": str(tmp_path / "a.txt")}, progress=False)
    with pytest.raises(TLCultureError, match=r"cultures pair with languages \['english'\] that have no --language"):
        run_experiment(cfg, model=object())
    assert list(tmp_path.iterdir()) == [tmp_path / "a.txt"]


def test_each_side_has_its_own_token_cap(tmp_path, tiny_hf_model):
    kw = dict(stability=True, report=False)
    both = run_experiment(small(tmp_path / "a", max_tokens_culture=120, **kw), model=tiny_hf_model)
    lang = run_experiment(small(tmp_path / "b", **kw), model=tiny_hf_model)
    cult = run_experiment(small(tmp_path / "c", max_tokens=120, **kw), model=tiny_hf_model)
    assert torch.equal(both.stats_language.counts, lang.stats_language.counts)
    assert torch.equal(both.stats_culture.counts, cult.stats_culture.counts)
    assert int(both.stats_culture.tokens.max()) <= 120 < int(both.stats_language.tokens.max())
    assert (both.stability["language"], both.stability["culture"]) == (lang.stability["language"],
                                                                       cult.stability["culture"])


def test_add_examples_rebuilds_the_runs_own_split(tmp_path, tiny_hf_model, monkeypatch):
    import tl_culture.experiment.run as run_module

    cfg = small(tmp_path / "run", split="head", examples=False, report=False)
    run_experiment(cfg, model=tiny_hf_model)
    seen = {}

    def capture(cfg_, model, lang_sel, cult_sel, *rest):
        seen.update(lang=lang_sel, cult=cult_sel)
        return "examples", "writes"

    monkeypatch.setattr(run_module, "examples_stage", capture)
    assert run_module.add_examples(RunDir.open(cfg.out), tiny_hf_model) == ("examples", "writes")
    languages, cultures = cfg.load_corpora()
    for side, corpora in (("lang", languages), ("cult", cultures)):
        for name, c in corpora.items():
            head_select, _ = c.split(cfg.eval_fraction, cfg.seed, "head")
            assert seen[side][name].documents == head_select.documents, (side, name)
