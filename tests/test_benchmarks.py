"""Smoke tests of the benchmark scripts (tiny HF checkpoint, small sizes) and checks of their helpers.

No timing asserts: the numbers checked are FLOP counts, shares, set algebra and count exactness.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tl_culture.errors import TLCultureError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def C():
    return _load("_common")


# --------------------------------------------------------------------------- helpers
def test_body_flops_match_hand_count(C):
    cfg = SimpleNamespace(
        d_model=4, n_heads=2, d_head=2, n_key_value_heads=1, d_mlp=8, n_layers=3, gated_mlp=True, d_vocab=10
    )
    # linear = 2 (4*2*2 + 2*4*1*2 + 2*2*4 + 3*4*8) = 288; attention = 2*2*2*2*(3+1)/2 = 32; 3 layers
    assert C.body_flops_per_token(cfg, seq_len=3) == 3 * (288 + 32)
    assert C.unembed_flops_per_token(cfg) == 2 * 4 * 10
    dense = SimpleNamespace(**{**vars(cfg), "gated_mlp": False, "n_key_value_heads": None})
    # dense, K = H = 2: linear = 2 (16 + 2*4*2*2 + 16 + 2*4*8) = 256
    assert C.body_flops_per_token(dense, seq_len=3) == 3 * (256 + 32)


def test_table_and_interleaved_order(C):
    assert C.table(["a", "bb"], [[1, 2.5]]).splitlines() == ["| a | bb  |", "|---|-----|", "| 1 | 2.5 |"]
    calls = []
    times = C.interleaved({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, repeats=2, warmup=False)
    assert calls == ["x", "y", "y", "x"]  # the order rotates every round
    assert [len(v) for v in times.values()] == [2, 2]


def test_bench_rows_shape_and_error(C, tiny_hf_model):
    rows = C.bench_rows(tiny_hf_model, tokens=100, seq_len=16)
    assert rows.shape == (7, 16)  # ceil(100 / 16) rows
    assert (rows[:, 0] == tiny_hf_model.tokenizer.bos_token_id).all()
    with pytest.raises(TLCultureError, match=r"--tokens must be positive and --seq-len at least 2, got 0, 16"):
        C.bench_rows(tiny_hf_model, tokens=0, seq_len=16)


def test_layer_shares_and_diagonal_dominance():
    cm = _load("compare_models")
    mask = torch.zeros(8, 4, dtype=torch.bool)
    mask[0, :2] = True  # 2 in layer 0 (first 2)
    mask[3, :1] = True  # 1 in layer 3 (middle half = layers 2..5)
    mask[7, :] = True  # 4 in layer 7 (last quarter = layers 6, 7)
    assert cm.layer_shares(mask) == {"first2": 2 / 7, "middle_half": 1 / 7, "last_quarter": 4 / 7}
    assert cm.layer_shares(torch.zeros(8, 4, dtype=torch.bool))["first2"] is None
    delta = torch.tensor([[0.5, 0.1, 0.1], [0.2, 0.1, 0.4], [0.0, 0.0, 0.0]])
    d = cm.diagonal_dominance(delta, ["a", "b", "c"], ["a", "b", "c"], sizes=[3, 3, 0])
    # row a: wins, margin 0.5 - 0.1 = 0.4; row b: loses, margin 0.1 - 0.3 = -0.2; row c: no neurons, left out
    assert d["rows"] == 2 and d["dominance"] == 0.5
    assert d["margin"] == pytest.approx(0.1)


# --------------------------------------------------------------------------- smoke: scripts on a tiny model
def test_throughput_smoke(tiny_hf_dir, tmp_path):
    tp = _load("throughput")
    out_path = tmp_path / "tp.json"
    out = tp.main(
        [
            "--model",
            str(tiny_hf_dir),
            "--tokens",
            "64",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--repeats",
            "1",
            "--out",
            str(out_path),
        ]
    )
    assert out["tokens"] == 64
    assert set(out["methods"]) == {
        "hf_body",
        "bridge_logits",
        "collect",
        "collect_nosums",
        "collect_eager",
        "collect_hooks",
        "bridge_stop",
        "hf_stop_count",
        "run_with_cache",
        "hf_hook_batch1",
    }
    # every hand-written counter and both backends reproduce collect's counts on the same rows (the tiny
    # model's activations are far from zero, so sdpa and eager attention give the same signs here)
    for name in ("collect_nosums", "collect_eager", "collect_hooks", "hf_stop_count", "run_with_cache",
                 "hf_hook_batch1"):
        assert out["methods"][name]["counts_vs_collect"]["max_abs_diff"] == 0, name
    assert out["collect_backends"] == {"auto": "native+sdpa", "auto+eager": "native+eager", "hooks": "hooks+eager"}
    m = out["methods"]["collect"]
    assert m["tokens_per_s"] == pytest.approx(64 / m["median_s"])
    assert out["ratios"]["collect_vs_hf_body"] == pytest.approx(
        out["methods"]["collect"]["tokens_per_s"] / out["methods"]["hf_body"]["tokens_per_s"]
    )
    assert json.loads(out_path.read_text())["benchmark"] == "throughput"
    with pytest.raises(SystemExit, match="unknown method"):
        tp.main(
            [
                "--model",
                str(tiny_hf_dir),
                "--tokens",
                "16",
                "--seq-len",
                "16",
                "--methods",
                "nope",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )


def test_memory_worker_counts_match_collect(tiny_hf_model, C):
    mem = _load("memory")
    rows = C.bench_rows(tiny_hf_model, tokens=48, seq_len=16)
    ref = mem.run_method("collect", tiny_hf_model, rows, 2)
    for method in ("run_with_cache_store", "run_with_cache_batch"):
        assert torch.equal(mem.run_method(method, tiny_hf_model, rows, 2), ref), method
    # from text: the same rows (bench_rows packs the same text), but the BOS positions are not counted
    from tl_culture import MLPHooks

    text = mem.run_method("collect_text", tiny_hf_model, rows, 2, C.bench_texts())
    mlp = MLPHooks.from_model(tiny_hf_model)
    with torch.inference_mode():
        _, cache = tiny_hf_model.run_with_cache(rows)
    bos = torch.stack([(cache[mlp.pre(layer)][:, 0] > 0).sum(0) for layer in range(mlp.n_layers)])
    assert torch.equal(text, ref - bos)


def test_memory_smoke(tiny_hf_dir, tmp_path):
    mem = _load("memory")
    out = mem.main(
        [
            "--model",
            str(tiny_hf_dir),
            "--sizes",
            "32,64",
            "--methods",
            "collect,collect_text",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--out",
            str(tmp_path / "mem.json"),
        ]
    )
    runs = out["runs"]["collect"]
    assert [r["tokens"] for r in runs] == [32, 64] == [r["tokens"] for r in out["runs"]["collect_text"]]
    assert all(r["peak_rss_mib"] >= r["base_rss_mib"] > 0 for r in runs)
    g = out["growth"]["collect"]
    assert g["tokens_ratio"] == 2 and g["peak_rss_ratio"] == pytest.approx(
        runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    )
    assert (tmp_path / "mem.png").stat().st_size > 1000


def test_memory_worker_failure_message(tmp_path):
    mem = _load("memory")
    args = mem.parse(["--model", str(tmp_path / "missing"), "--seq-len", "16"])
    with pytest.raises(TLCultureError, match=r"memory worker collect at 64 tokens failed \(rc 1\): .*does not exist"):
        mem.measure(args, "collect", 64)


def test_evaluation_smoke(tiny_hf_dir, tmp_path):
    ev = _load("evaluation")
    args = ["--model", str(tiny_hf_dir), "--tokens", "60", "--seq-len", "16", "--batch-size", "2", "--neurons", "8",
            "--repeats", "1", "--out", str(tmp_path / "ev.json")]
    out = ev.main(args)
    assert out["tokens"] == 4 * 15 and out["native"]["backend"] == "native"  # 4 rows of 16, BOS not scored
    for name, r in out["results"].items():
        assert r["scored_tokens_per_s"] == pytest.approx(out["tokens"] / r["median_s"]), name
        assert r["vs_hf_floor"] == pytest.approx(out["results"]["hf_floor"]["median_s"] / r["median_s"]), name
        assert r["peak_mib_over_start"] >= 0 and 0 < r["matmul_peak_fraction"]
    assert out["results"]["hf_floor"]["vs_hf_floor"] == 1.0
    assert json.loads((tmp_path / "ev.json").read_text())["command"].endswith("--out " + str(tmp_path / "ev.json"))


def test_evaluation_methods_compute_the_same_nll(tiny_hf_dir):
    """The three timed passes score the same tokens: the native and hooks NLLs agree, and without the
    ablation both equal the HF copy's mean loss."""
    import torch

    from tl_culture import load_model
    from tl_culture.evaluation.scorer import hooks_nll

    ev = _load("evaluation")
    model = load_model(str(tiny_hf_dir), device="cpu")
    hf = ev.C.load_plain_hf(str(tiny_hf_dir), torch.float32, torch.device("cpu"))
    rows = ev.C.bench_rows(model, 60, 16)
    count = torch.ones_like(rows, dtype=torch.bool)
    count[:, 0] = False
    with torch.inference_mode():
        plain = torch.cat(hooks_nll(model, rows, count, None, []))
        assert float(plain.mean()) == pytest.approx(float(hf(rows, labels=rows).loss), abs=1e-5)
    args = ev.parse(["--model", str(tiny_hf_dir), "--neurons", "8", "--batch-size", "2"])
    fns = ev.methods(args, model, hf, rows)
    assert fns["info"]["backend"] == "native" and set(fns) == {*ev.METHODS, "info"}


def test_compare_models_smoke(tiny_hf_dir, tmp_path, shared_data):
    cm = _load("compare_models")
    out = cm.main(
        [
            "--model",
            str(tiny_hf_dir),
            "--max-tokens",
            "128",
            "--seq-len",
            "32",
            "--eval-tokens",
            "32",
            "--quiet",
            "--out",
            str(tmp_path / "cmp.json"),
        ]
    )
    (m,) = out["models"]
    n = m["neurons"]
    for g in out["cultures"]:  # culture = compound ⊔ pure, per group
        assert n["compound"][g] + n["pure"][g] == n["culture"][g]
    assert m["union"]["language"] == 1  # round(2 layers x 48 neurons x 1 %)
    assert set(m["delta_nll"]) == {"language", "culture"}
    assert len(m["delta_nll"]["culture"]["delta"]) == 6


def test_compare_models_missing_language(tmp_path):
    cm = _load("compare_models")
    args = cm.parse(["--model", "x", "--language-dir", str(tmp_path), "--languages", "en"])
    with pytest.raises(TLCultureError, match=r"no en.txt in .*; pass --language-dir with one LANG.txt per language"):
        cm.load_corpora(args)


def test_decode_smoke(tiny_hf_dir, tmp_path):
    dec = _load("decode")
    out = dec.main(["--model", str(tiny_hf_dir), "--prompts", "3", "--new-tokens", "4", "--batch-size", "1,2",
                    "--out", str(tmp_path / "dec.json")])
    assert out["cache_problem"] is None and [r["method"] for r in out["results"]] == ["uncached", "cached_b1",
                                                                                     "cached_b2"]
    assert all(r["same_tokens_as_uncached"] and r["new_tokens"] == 12 for r in out["results"])
    assert json.loads((tmp_path / "dec.json").read_text())["benchmark"] == "decode"


def test_resume_benchmark_on_the_tiny_model(tiny_hf_dir, tmp_path):
    run = ["--model", str(tiny_hf_dir), "--device", "cpu", "--seq-len", "32", "--max-tokens", "300", "--top-rate",
           "0.1", "--eval-tokens", "64", "--eval-batch-size", "1", "--no-report", "--no-examples"]
    out = _load("resume").main(["--kill-at", "0.6", "--workdir", str(tmp_path), "--out", str(tmp_path / "r.json"), "--",
                                *run])
    assert out["bit_identical"] is True and out["clean_s"] > out["killed_after_s"] > 0
    assert set(out["stages"]) == {"count", "selection", "evaluation"}
    assert out["command"].endswith("-- --model " + str(tiny_hf_dir) + " --device cpu --seq-len 32 --max-tokens 300 "
                                   "--top-rate 0.1 --eval-tokens 64 --eval-batch-size 1 --no-report --no-examples")
    assert json.loads((tmp_path / "r.json").read_text())["rerun_s"] == out["rerun_s"]
