"""Data-parallel collection with 2 CPU ranks (gloo): bit-identical counts to one process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import write_corpus
from tests.ranks import clean_env, free_port, one_thread, run_ranks
from tl_culture import ActivationStats, TLCultureError, collect
from tl_culture.counting.distributed import (
    DistInfo,
    check_writable,
    collect_under_torchrun,
    init_distributed,
    resolve_device,
)
from tl_culture.counting.ranks import rank_world


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpora")
    # seq_len 32 and batch_size 3: en gets 7 batches (uneven: rank 0 runs 4, rank 1 runs 3), de a ragged last row
    return {"en": write_corpus(d / "en.txt", 10, 1), "de": write_corpus(d / "de.txt", 9, 2)}


def test_torchrun_two_ranks_equal_one_process(tmp_path, tiny_hf_dir, tiny_hf_model, corpora):
    from tl_culture.data.corpus import load_corpus
    from tl_culture.data.rows import encode

    n_batches = {g: -(-len(encode(load_corpus(p), tiny_hf_model.tokenizer, 32)) // 3) for g, p in corpora.items()}
    assert n_batches["en"] % 2 == 1, "the test wants an uneven split of batches between the ranks"
    out, ckpt = tmp_path / "dp.safetensors", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "tl_culture", "collect", "--model", str(tiny_hf_dir),
           "--device", "cpu", "--seq-len", "32", "--batch-size", "3", "--out", str(out), "--checkpoint", str(ckpt),
           "--no-progress"] + [a for g, p in corpora.items() for a in ("--corpus", f"{g}={p}")]
    res = subprocess.run(cmd, env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1, res.stdout  # rank 0 writes, rank 1 does not
    assert "(2 processes)" in res.stdout

    dp = ActivationStats.load(out)
    with one_thread():
        single = collect(tiny_hf_model, corpora, seq_len=32, batch_size=3, progress=False)
    assert dp.groups == single.groups
    assert torch.equal(dp.counts, single.counts)  # bit-identical
    assert torch.equal(dp.tokens, single.tokens)
    torch.testing.assert_close(dp.sums, single.sums, rtol=1e-12, atol=1e-12)  # float64 addition order only
    assert dp.meta["world_size"] == 2 and dp.meta["batch_size"] == 3
    assert sorted(p.name for p in ckpt.iterdir()) == ["rank0.safetensors", "rank1.safetensors"]

    # each rank checkpointed its own share: the two partial results add up to the totals
    parts = [ActivationStats(single.groups, *_ckpt_tensors(ckpt / f"rank{r}.safetensors")) for r in (0, 1)]
    assert torch.equal(parts[0].counts + parts[1].counts, single.counts)
    assert 0 < int(parts[1].tokens[0]) < int(parts[0].tokens[0])  # rank 0 ran 4 batches of en, rank 1 ran 3

    # the 2-process checkpoint cannot be resumed by one process
    from tl_culture.cli import main

    args = ["collect", "--model", str(tiny_hf_dir), "--device", "cpu", "--seq-len", "32", "--batch-size", "3",
            "--out", str(tmp_path / "one.safetensors"), "--checkpoint", str(ckpt), "--no-progress",
            "--corpus", f"en={corpora['en']}", "--corpus", f"de={corpora['de']}"]
    assert main(args) == 2
    assert not (tmp_path / "one.safetensors").exists()


def _ckpt_tensors(path):
    from tl_culture._io import load_tensors

    t, _ = load_tensors(path, "CollectCheckpoint")
    return t["counts"], t["tokens"], t["sums"]


API_WORKER = """
import sys
from tl_culture import collect, load_model
from tl_culture.counting.distributed import close_distributed, init_distributed
model_dir, out, en, de = sys.argv[1:]
info = init_distributed(device="cpu")
model = load_model(model_dir, device="cpu")
stats = collect(model, {"en": en, "de": de}, seq_len=16, batch_size=2, progress=False)
stats.save(f"{out}.rank{info.rank}")
print("rank", info.rank, "of", info.world_size, "initialised_here", info.initialised_here)
close_distributed(info)
"""


def test_python_api_with_init_distributed_from_env(tmp_path, tiny_hf_dir, tiny_hf_model, corpora):
    out = str(tmp_path / "api")
    outs = run_ranks(API_WORKER, [str(tiny_hf_dir), out, str(corpora["en"]), str(corpora["de"])], tmp_path)
    assert "rank 0 of 2 initialised_here True" in outs[0][0] and "rank 1 of 2" in outs[1][0]
    with one_thread():
        single = collect(tiny_hf_model, corpora, seq_len=16, batch_size=2, progress=False)
    for r in (0, 1):  # every rank returns the reduced totals
        got = ActivationStats.load(f"{out}.rank{r}")
        assert torch.equal(got.counts, single.counts) and torch.equal(got.tokens, single.tokens)
        torch.testing.assert_close(got.sums, single.sums, rtol=1e-12, atol=1e-12)


TORCHRUN_WORKER = """
import os, sys
import torch.distributed as dist
from tl_culture import load_model
from tl_culture.counting.distributed import collect_under_torchrun
model_dir, out, en, de = sys.argv[1:]
seen = []
stats = collect_under_torchrun(lambda device: load_model(model_dir, device=device), {"en": en, "de": de}, out,
                               device="cpu", seq_len=16, batch_size=2, progress=False,
                               on_main=lambda stats, info: seen.append((info.rank, info.world_size)))
stats.save(f"{out}.returned{os.environ['RANK']}")
print("on_main", seen, "still in a group", dist.is_initialized())
"""


def test_collect_under_torchrun_two_ranks(tmp_path, tiny_hf_dir, tiny_hf_model, corpora):
    """Each rank loads the model and counts its share; rank 0 alone writes the file and is called back;
    both return the totals and leave the group."""
    out = tmp_path / "stats.safetensors"
    outs = run_ranks(TORCHRUN_WORKER, [str(tiny_hf_dir), str(out), str(corpora["en"]), str(corpora["de"])],
                     tmp_path)
    assert "on_main [(0, 2)] still in a group False" in outs[0][0]
    assert "on_main [] still in a group False" in outs[1][0]
    with one_thread():
        single = collect(tiny_hf_model, corpora, seq_len=16, batch_size=2, progress=False)
    written = ActivationStats.load(out)
    for got in (written, *(ActivationStats.load(f"{out}.returned{r}") for r in (0, 1))):
        assert torch.equal(got.counts, single.counts) and torch.equal(got.tokens, single.tokens)
        torch.testing.assert_close(got.sums, single.sums, rtol=1e-12, atol=1e-12)
    assert written.meta["world_size"] == 2


def test_collect_under_torchrun_single_process(monkeypatch, tmp_path, gated_model):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    rows = torch.randint(0, 64, (5, 8), generator=torch.Generator().manual_seed(0))
    devices, seen = [], []

    def load(device):
        devices.append(device)
        return gated_model

    out = tmp_path / "sub" / "stats.safetensors"
    stats = collect_under_torchrun(load, {"a": rows}, out, device="cpu", seq_len=8, batch_size=2, progress=False,
                                   on_main=lambda s, info: seen.append(info))
    assert devices == [torch.device("cpu")] and seen == [DistInfo(0, 1, 0, False)]
    assert torch.equal(ActivationStats.load(out).counts, stats.counts)
    assert torch.equal(stats.counts, collect(gated_model, {"a": rows}, seq_len=8, batch_size=2, progress=False).counts)
    assert rank_world() == (0, 1)


def test_collect_under_torchrun_checks_out_before_loading(tmp_path):
    def load(device):
        raise AssertionError("the model must not be loaded when out cannot be written")

    with pytest.raises(TLCultureError) as err:
        collect_under_torchrun(load, {"a": ["text"]}, tmp_path, device="cpu")
    assert str(err.value) == f"out {tmp_path} is a folder; give a file name like stats.safetensors"
    with pytest.raises(TLCultureError) as err:
        check_writable(tmp_path, flags=True)
    assert str(err.value) == f"--out {tmp_path} is a folder; give a file name like stats.safetensors"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TLCultureError, match=r"cannot write .*file/stats.safetensors \(.*\); choose another out$"):
        check_writable(blocker / "stats.safetensors")


# --------------------------------------------------------------------------- single-process helpers
def test_without_torchrun_is_a_single_process(monkeypatch, gated_model):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert init_distributed() == DistInfo(0, 1, 0, False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed().is_main
    rows = torch.randint(0, 64, (5, 8), generator=torch.Generator().manual_seed(0))
    a = collect(gated_model, {"a": rows}, seq_len=8, batch_size=2, progress=False, distributed=True)
    b = collect(gated_model, {"a": rows}, seq_len=8, batch_size=2, progress=False)
    assert torch.equal(a.counts, b.counts) and a.meta["world_size"] == 1


def test_bad_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(TLCultureError) as err:
        init_distributed()
    assert str(err.value) == "environment variable WORLD_SIZE='two' is not a whole number; launch with torchrun"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(TLCultureError) as err:
        init_distributed(device="cpu")
    msg = str(err.value)
    assert msg.startswith("cannot join the data-parallel job (WORLD_SIZE=2): ")
    assert msg.endswith("; launch with torchrun, or unset WORLD_SIZE for a single process") and "\n" not in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_device_without_gpu():
    with pytest.raises(TLCultureError) as err:
        resolve_device("cuda")
    assert str(err.value) == "device 'cuda' asked for, but this machine has no CUDA GPU; use --device cpu"
    with pytest.raises(TLCultureError, match="unknown device 'tpu9'; use cpu, cuda or cuda:N"):
        resolve_device("tpu9")
    assert resolve_device(None) == torch.device("cpu")
