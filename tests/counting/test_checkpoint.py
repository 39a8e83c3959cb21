"""Crash-safe resume: a ``kill -9`` in the middle, then the same command, gives exactly the
uninterrupted statistics; checkpoints made with other settings are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, random_rows, write_corpus
from tl_culture import ActivationStats, TLCultureError, collect
from tl_culture.counting.checkpoint import (
    CHECKPOINT_KIND,
    CollectCheckpoint,
    rows_fingerprint,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from tl_culture.counting.counter import Counter


def read_progress(path: Path) -> dict | None:
    """The metadata of a checkpoint file, or None while it does not exist (or is being replaced)."""
    from tl_culture._io import load_tensors

    try:
        return load_tensors(path, CHECKPOINT_KIND)[1]
    except TLCultureError:
        return None


def rows(seed: int, n: int = 7) -> torch.Tensor:
    """``int64[n, 8]`` random token ids."""
    return random_rows(seed, n, 8)


def assert_same(a: ActivationStats, b: ActivationStats) -> None:
    assert a.groups == b.groups
    assert torch.equal(a.counts, b.counts) and torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.sums, b.sums)  # resuming continues the same float64 additions: bit-identical


# --------------------------------------------------------------------------- kill -9
SLOW_CLI = """
import sys, time
import tl_culture.counting.counter as s
run = s.Counter.run_batch
def slow(self, batch):
    time.sleep(0.25)
    return run(self, batch)
s.Counter.run_batch = slow
from tl_culture.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill9_then_resume_gives_the_uninterrupted_counts(tmp_path, tiny_hf_dir, tiny_hf_model, monkeypatch):
    en = write_corpus(tmp_path / "en.txt", 40, 1)
    de = write_corpus(tmp_path / "de.txt", 40, 2)
    ckpt, out = tmp_path / "ckpt", tmp_path / "stats.safetensors"
    args = ["collect", "--model", str(tiny_hf_dir), "--device", "cpu", "--corpus", f"en={en}", "--corpus", f"de={de}",
            "--out", str(out), "--seq-len", "32", "--batch-size", "3", "--checkpoint", str(ckpt),
            "--checkpoint-every", "1", "--no-progress"]
    ref = collect(tiny_hf_model, {"en": en, "de": de}, seq_len=32, batch_size=3, progress=False)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rank0 = ckpt / "rank0.safetensors"
    deadline = time.monotonic() + 120
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            meta = read_progress(rank0)
            if meta is not None and sum(meta["done"]) >= 4:  # in the middle of group "en"
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = meta
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, "the collector ended before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    at_kill = read_progress(rank0)
    assert at_kill is not None and not at_kill["complete"]  # the file survived the kill intact
    done_before = sum(at_kill["done"])
    assert 4 <= done_before < 20

    calls = []
    run = Counter.run_batch
    monkeypatch.setattr(Counter, "run_batch", lambda self, b: calls.append(len(b)) or run(self, b))
    from tl_culture.cli import main

    assert main(args) == 0
    total_batches = sum(-(-len(ref_rows) // 3) for ref_rows in _encoded(tiny_hf_model, [en, de]))
    assert len(calls) == total_batches - done_before  # no batch twice, none lost
    assert_same(ActivationStats.load(out), ref)
    assert read_progress(rank0)["complete"] is True


def _encoded(model, paths):
    from tl_culture.data.corpus import load_corpus
    from tl_culture.data.rows import encode

    return [encode(load_corpus(p), model.tokenizer, 32) for p in paths]


# --------------------------------------------------------------------------- in-process resume
class Crash(Exception):
    pass


def crash_after(monkeypatch, n: int) -> None:
    """Make the (n+1)-th batch raise, as a crash would."""
    run, seen = Counter.run_batch, []

    def flaky(self, batch):
        if len(seen) == n:
            raise Crash
        seen.append(1)
        return run(self, batch)

    monkeypatch.setattr(Counter, "run_batch", flaky)


@pytest.mark.parametrize("crash_at", [1, 3, 5])  # inside group a, at the group boundary, inside group b
def test_resume_after_a_crash_is_exact(gated_model, tmp_path, monkeypatch, crash_at):
    corpora = {"a": rows(1, 7), "b": rows(2, 5)}  # batches of 2: a has 4, b has 3
    ref = collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False)
    crash_after(monkeypatch, crash_at)
    with pytest.raises(Crash):
        collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False,
                checkpoint_dir=tmp_path, checkpoint_every=1)
    assert sum(read_progress(tmp_path / "rank0.safetensors")["done"]) == crash_at
    monkeypatch.undo()
    assert_same(collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False, checkpoint_dir=tmp_path), ref)


def test_complete_checkpoint_returns_without_running_the_model(gated_model, tmp_path, monkeypatch):
    corpora = {"a": rows(1), "b": rows(2)}
    first = collect(gated_model, corpora, seq_len=8, batch_size=3, progress=False, checkpoint_dir=tmp_path)
    crash_after(monkeypatch, 0)  # any forward would raise
    assert_same(collect(gated_model, corpora, seq_len=8, batch_size=3, progress=False, checkpoint_dir=tmp_path), first)


def test_checkpoint_saved_by_rows_and_by_seconds(tmp_path, monkeypatch):
    ck = CollectCheckpoint(tmp_path, 0, 1, {}, every_rows=5, every_seconds=None)
    assert [ck.due(2), ck.due(2), ck.due(1)] == [False, False, True]
    clock = [100.0]
    monkeypatch.setattr("tl_culture.counting.checkpoint.time.monotonic", lambda: clock[0])
    ck = CollectCheckpoint(tmp_path, 0, 1, {}, every_rows=None, every_seconds=60)
    clock[0] = 159.0
    assert ck.due(1) is False
    clock[0] = 160.0
    assert ck.due(1) is True


def test_out_of_memory_keeps_the_checkpoint(gated_model, tmp_path, monkeypatch):
    corpora = {"a": rows(1), "b": rows(2)}
    ref = collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False)
    run, seen = Counter.run_batch, []

    def oom_later(self, batch):
        if len(seen) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seen.append(1)
        return run(self, batch)

    monkeypatch.setattr(Counter, "run_batch", oom_later)
    with pytest.raises(TLCultureError) as err:
        collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False, checkpoint_dir=tmp_path,
                checkpoint_every=1)
    assert str(err.value) == (
        "out of memory on cpu running 2 rows x 8 tokens; use a smaller batch size (--batch-size 1); "
        "the checkpoint keeps the progress"
    )
    monkeypatch.undo()
    assert_same(collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False, checkpoint_dir=tmp_path), ref)


# --------------------------------------------------------------------------- refusals
def _first(model, tmp_path, **kw):
    base = dict(seq_len=8, batch_size=2, progress=False, checkpoint_dir=tmp_path)
    collect(model, {"a": rows(1), "b": rows(2)}, **{**base, **kw})
    return base


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(seq_len=6), "seq_len=8, this run has seq_len=6"),
        (dict(batch_size=3), "batch_size=2, this run has batch_size=3"),
        (dict(max_tokens=20), "max_tokens=None, this run has max_tokens=20"),
        (dict(with_sums=False), "with_sums=True, this run has with_sums=False"),
        (dict(corpora={"a": rows(9), "b": rows(2)}), "the text of group 'a' changed"),
        (dict(corpora={"b": rows(2), "a": rows(1)}), "groups=['a', 'b'], this run has groups=['b', 'a']"),
    ],
)
def test_checkpoint_from_other_settings_is_refused(gated_model, tmp_path, change, message):
    base = _first(gated_model, tmp_path)
    corpora = change.pop("corpora", {"a": rows(1), "b": rows(2)})
    with pytest.raises(TLCultureError) as err:
        collect(gated_model, corpora, **{**base, **change})
    assert message in str(err.value)
    assert str(err.value).startswith(f"checkpoint {tmp_path} was made with other settings: ")
    assert str(err.value).endswith(
        "; rerun with the same settings, or give another --checkpoint folder (delete it to start over)"
    )


def test_checkpoint_of_another_model_is_refused(gated_model, tmp_path):
    from tests.conftest import tiny_model

    base = _first(gated_model, tmp_path)
    with pytest.raises(TLCultureError, match=r"other settings: the model weights differ \(fingerprint \w+ -> \w+\)"):
        collect(tiny_model(True, seed=5), {"a": rows(1), "b": rows(2)}, **base)


def test_checkpoint_of_another_world_size_is_refused(gated_model, tmp_path):
    base = _first(gated_model, tmp_path)
    (tmp_path / "rank1.safetensors").write_bytes((tmp_path / "rank0.safetensors").read_bytes())
    with pytest.raises(TLCultureError) as err:
        collect(gated_model, {"a": rows(1), "b": rows(2)}, **base)
    assert str(err.value) == (
        f"checkpoint {tmp_path} was written by 2 or more processes, this run has 1; resume with as many "
        "processes, or give another --checkpoint folder"
    )


def test_corrupted_checkpoint_is_refused(gated_model, tmp_path):
    base = _first(gated_model, tmp_path)
    (tmp_path / "rank0.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(TLCultureError) as err:
        collect(gated_model, {"a": rows(1), "b": rows(2)}, **base)
    msg = str(err.value)
    assert "not a readable tl-culture file" in msg
    assert msg.endswith(f"(delete {tmp_path / 'rank0.safetensors'} to count again)")


def test_checkpoint_path_that_is_a_file_is_refused(gated_model, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(TLCultureError, match="is a file, not a folder; give a folder to --checkpoint"):
        collect(gated_model, {"a": rows(1), "b": rows(2)}, seq_len=8, progress=False, checkpoint_dir=f)


def test_checkpoint_of_fewer_processes_is_refused(gated_model, tmp_path):
    """A 1-process checkpoint read by rank 0 of a 2-process job (the torchrun case, without the collective)."""
    _first(gated_model, tmp_path)
    from tl_culture._io import load_tensors

    settings = dict(load_tensors(tmp_path / "rank0.safetensors", CHECKPOINT_KIND)[1]["settings"], world_size=2)
    assert CollectCheckpoint(tmp_path, 0, 2, settings).problem() == (
        f"checkpoint {tmp_path} was made with other settings: it was written by 1 process(es), this run has 2; "
        "rerun with the same settings, or give another --checkpoint folder (delete it to start over)"
    )
    assert CollectCheckpoint(tmp_path, 1, 2, settings).path.name == "rank1.safetensors"


def test_resume_skips_finished_groups(gated_model, tmp_path, monkeypatch):
    """A group read to the end before the crash is not streamed again (only peeked at for its first rows)."""
    from tl_culture.data.rows import RowStream

    corpora = {"a": rows(1, 7), "b": rows(2, 5)}  # batches of 2: a has 4, b has 3
    ref = collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False)
    crash_after(monkeypatch, 5)  # inside group b
    with pytest.raises(Crash):
        collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False, checkpoint_dir=tmp_path,
                checkpoint_every=1)
    assert read_progress(tmp_path / "rank0.safetensors")["finished"] == [True, False]
    monkeypatch.undo()
    streamed, iterate = [], RowStream.__iter__
    monkeypatch.setattr(RowStream, "__iter__", lambda self: streamed.append(self.corpus.name) or iterate(self))
    assert_same(collect(gated_model, corpora, seq_len=8, batch_size=2, progress=False, checkpoint_dir=tmp_path), ref)
    assert streamed == ["a", "b", "b"]  # the first-rows peek of each group, then only b


# --------------------------------------------------------------------------- fingerprints and settings
def test_fingerprints_tell_models_tokenizers_and_rows_apart(gated_model, tiny_hf_model):
    from tests.conftest import tiny_model
    from tl_culture.data.rows import TokenRows

    assert weights_fingerprint(gated_model) == weights_fingerprint(tiny_model(True))  # same seed, same weights
    assert weights_fingerprint(gated_model) != weights_fingerprint(tiny_model(True, seed=5))
    assert tokenizer_fingerprint(None) is None
    fp = tokenizer_fingerprint(tiny_hf_model.tokenizer)
    assert len(fp) == 16 and fp == tokenizer_fingerprint(tiny_hf_model.tokenizer)
    ids = rows(1, 2)
    a = TokenRows(ids, torch.ones_like(ids, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool))
    b = TokenRows(ids, a.attention_mask, a.count_mask.clone())
    b.count_mask[0, 0] = False  # the same ids with BOS not counted: other rows
    assert rows_fingerprint(a) == rows_fingerprint(TokenRows(ids.clone(), a.attention_mask, a.count_mask))
    assert rows_fingerprint(a) != rows_fingerprint(b)


def test_settings_recorded_in_the_checkpoint(gated_model, tmp_path):
    from tl_culture._io import load_tensors

    _first(gated_model, tmp_path)
    settings = load_tensors(tmp_path / "rank0.safetensors", CHECKPOINT_KIND)[1]["settings"]
    assert list(settings) == ["world_size", "model", "weights", "neurons", "act_fn", "dtype", "device", "groups",
                              "corpora", "seq_len", "pack", "max_tokens", "batch_size", "with_sums", "attention",
                              "tokenizer", "rows"]
    assert settings["neurons"] == "3x32" and settings["groups"] == ["a", "b"] and settings["batch_size"] == 2
    assert settings["weights"] == weights_fingerprint(gated_model)
