"""`run_experiment` records which documents each stage read (documents.json), sampled across files."""

from __future__ import annotations

import torch

from tests.conftest import FILES, write_culture_folder
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.run import run_experiment
from tl_culture.experiment.rundir import RunDir


def _corpora(tmp_path):
    langs, cults = {}, {}
    for g in ("en", "de"):
        lang = tmp_path / f"{g}.txt"
        lang.write_text("\n".join(f"{g} general text number {i}" for i in range(40)) + "\n", encoding="utf-8")
        langs[g] = str(lang)
        root = write_culture_folder(tmp_path / f"murel_{g}",
                                    lambda genre, g=g: [f"{g} {genre} line {i} the cat sat" for i in range(25)])
        cults[g] = str(root)
    return langs, cults


def test_documents_json_spans_every_file(tmp_path, tiny_hf_model):
    langs, cults = _corpora(tmp_path)
    kw = dict(languages=langs, cultures=cults, seq_len=32, max_tokens=600, top_rate=0.1, progress=False,
              evaluate=False, report=False, eval_tokens=60)
    run_experiment(ExperimentConfig(out=str(tmp_path / "run"), **kw), model=tiny_hf_model)
    docs = RunDir.open(tmp_path / "run").read_documents()
    assert docs["split"] == "random" and set(docs["selection"]) == {"language", "culture"}
    for g in ("en", "de"):
        sel = docs["selection"]["culture"][g]
        assert sel["max_tokens"] == 600 and sel["used"] < sel["documents"]
        assert sorted(sel["files"]) == sorted(FILES)  # the cap read every file, not the first one
        held = docs["evaluation"][f"cult:{g}"]
        assert len(held["files"]) >= 2 and held["documents"] == 15  # 15 % of 100 documents held out
    # no line is both selected and held out
    for g in ("en", "de"):
        sel, held = docs["selection"]["culture"][g]["files"], docs["evaluation"][f"cult:{g}"]["files"]
        for f in set(sel) & set(held):
            assert not _lines(sel[f]["lines"]) & _lines(held[f]["lines"])
    # the reference protocol: a contiguous head of each corpus is held out
    run_experiment(ExperimentConfig(out=str(tmp_path / "head"), split="head", **kw), model=tiny_hf_model)
    head = RunDir.open(tmp_path / "head").read_documents()
    assert head["split"] == "head"
    first = head["evaluation"]["cult:en"]["files"]
    assert list(first) == ["a_proverbs.txt"] and first["a_proverbs.txt"]["documents"] == 15


def _lines(ranges: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, ranges.split(",")):
        a, _, b = part.partition("-")
        out |= set(range(int(a), int(b or a) + 1))
    return out


def test_summary_has_layer_profiles(tmp_path, tiny_hf_model):
    from tl_culture.experiment.stages import layer_profile

    res = run_experiment(ExperimentConfig(out=str(tmp_path / "run"), seq_len=32, max_tokens=300, top_rate=0.1,
                                          progress=False, evaluate=False, report=False), model=tiny_hf_model)
    summary = RunDir.open(tmp_path / "run").read_summary()
    prof = summary["layers"]["culture"]
    union = res.categories["culture"].masks.any(0)
    assert prof["union_per_layer"] == union.sum(1).tolist() and prof["union"] == int(union.sum())
    L = union.shape[0]
    by_hand = sum(layer * int(union[layer].sum()) for layer in range(L)) / (L - 1) / int(union.sum())
    assert prof["mean_relative_depth"] == round(by_hand, 5)
    from tl_culture.selection.neurons import NeuronSet

    empty = layer_profile(NeuronSet(["a"], torch.zeros(1, L, union.shape[1], dtype=torch.bool)))
    assert empty == {"union_per_layer": [0] * L, "union": 0, "mean_relative_depth": None}


def test_eval_min_documents_raises_the_cap_of_short_corpora(tmp_path, tiny_hf_model):
    langs, cults = _corpora(tmp_path)
    kw = dict(languages=langs, cultures=cults, seq_len=32, max_tokens=300, top_rate=0.1, progress=False,
              report=False, eval_tokens=20, control_seeds=1, bootstrap=50, stability=False, examples=False)
    run_experiment(ExperimentConfig(out=str(tmp_path / "floor"), eval_min_documents=10, **kw), model=tiny_hf_model)
    run = RunDir.open(tmp_path / "floor")
    docs, nll = run.read_documents(), run.read_nll()["culture"]
    for name, held in docs["evaluation"].items():
        want = min(10, held["documents"])  # a language holds out 6 documents: all of them are scored
        assert held["used"] == want and held["max_tokens"] > 20  # ten short documents need more than 20 tokens
        if name in nll.evals:
            col = nll.evals.index(name)
            assert int(nll.tokens[col]) == held["max_tokens"] and int(nll.bootstrap_units[col]) == want == 10
    assert nll.meta["max_tokens"] == {n: d["max_tokens"] for n, d in docs["evaluation"].items()}
    run_experiment(ExperimentConfig(out=str(tmp_path / "plain"), **kw), model=tiny_hf_model)
    plain = RunDir.open(tmp_path / "plain")
    assert all(d["max_tokens"] == 20 and d["used"] < 10 for d in plain.read_documents()["evaluation"].values())
    assert all(int(n) <= 20 for n in plain.read_nll()["culture"].tokens)
