"""``tl-culture collect``: statistics files, its defaults, out of memory and atomic outputs."""

from __future__ import annotations

import torch

from tests.cli.conftest import help_text, option_help
from tl_culture import ActivationStats, NeuronSet
from tl_culture.cli import main


def test_collect_identify_neurons(tiny_hf_dir, corpus_files, tmp_path, capsys):
    stats_path = tmp_path / "stats.safetensors"
    args = ["collect", "--model", str(tiny_hf_dir), "--out", str(stats_path), "--seq-len", "16", "--no-progress"]
    for lang, p in corpus_files.items():
        args += ["--corpus", f"{lang}={p}"]
    assert main(args) == 0
    stats = ActivationStats.load(stats_path)
    assert stats.groups == ["en", "de", "ru"] and stats.n_layers == 2 and stats.d_mlp == 48
    assert stats.meta["corpora"]["de"]["documents"] == 18
    neurons_path = tmp_path / "n.safetensors"
    assert main(["identify", str(stats_path), "--out", str(neurons_path), "--top-rate", "0.1"]) == 0
    ns = NeuronSet.load(neurons_path)
    assert ns.groups == ["en", "de", "ru"] and int(ns.union_mask().sum()) <= round(0.1 * 2 * 48)
    capsys.readouterr()
    assert main(["neurons", str(neurons_path), "--overlaps"]) == 0
    out = capsys.readouterr().out
    assert "Jaccard overlap" in out and f"union {ns.count()} neurons" in out


def test_out_of_memory_suggests_a_smaller_batch_and_keeps_the_old_output(files, tiny_hf_dir, capsys, monkeypatch,
                                                                           tmp_path):
    out = tmp_path / "stats.safetensors"
    out.write_bytes(b"an earlier result")

    def oom(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("tl_culture.counting.counter.Counter.run_batch", oom)
    rc = main(["collect", "--model", str(tiny_hf_dir), "--device", "cpu", "--corpus", f"en={files['good']}",
               "--out", str(out), "--seq-len", "16", "--batch-size", "8", "--no-progress"])
    assert rc == 2
    assert capsys.readouterr().err == (
        "tl-culture: error: out of memory on cpu running 2 rows x 16 tokens; use a smaller batch size "
        "(--batch-size 4)\n"
    )
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.safetensors"]  # no temp file left


def test_failure_while_writing_leaves_the_existing_output(files, tiny_hf_dir, capsys, monkeypatch, tmp_path):
    """A crash inside the write itself (disk full, kill) never leaves a half-written file in place."""
    out = tmp_path / "stats.safetensors"
    out.write_bytes(b"an earlier result")

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    rc = main(["collect", "--model", str(tiny_hf_dir), "--device", "cpu", "--corpus", f"en={files['good']}",
               "--out", str(out), "--seq-len", "16", "--no-progress"])
    assert rc == 2 and "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]


def test_successful_collect_replaces_the_output(files, tiny_hf_dir, capsys, tmp_path):
    out = tmp_path / "stats.safetensors"
    out.write_bytes(b"an earlier result")
    assert main(["collect", "--model", str(tiny_hf_dir), "--device", "cpu", "--corpus", f"en={files['good']}",
                 "--corpus", f"de={files['good']}", "--out", str(out), "--seq-len", "16", "--no-progress"]) == 0
    stats = ActivationStats.load(out)
    assert stats.groups == ["en", "de"] and torch.equal(stats.counts[0], stats.counts[1])
    assert capsys.readouterr().out.startswith(f"wrote {out}: 2 layers x 48 neurons; tokens en=")


def test_help_shows_the_defaults_of_collect(capsys):
    """collect's options show (and use) the defaults of `tl_culture.counting.collect.collect`."""
    from tl_culture.cli import build_parser
    from tl_culture.cli._options import signature_defaults
    from tl_culture.counting.collect import collect

    d = signature_defaults(collect)
    text = help_text(capsys, "collect")
    flags = ["--seq-len", "--batch-size", "--max-tokens", "--backend", "--attention", "--no-progress", "--no-pack",
             "--checkpoint", "--checkpoint-every", "--checkpoint-seconds", "--debug"]
    assert d["seq_len"] is None  # fitted to the model's context
    assert "(default: 512, or the model's context if shorter)" in option_help(text, "--seq-len", flags)
    assert f"(default: {d['batch_size']})" in option_help(text, "--batch-size", flags)
    assert f"(default: {d['backend']})" in option_help(text, "--backend", flags)
    assert f"(default: {d['checkpoint_seconds']:g})" in option_help(text, "--checkpoint-seconds", flags)
    args = build_parser().parse_args(["collect", "--corpus", "en=x", "--out", "o.safetensors"])
    assert (args.seq_len, args.batch_size, args.max_tokens, args.backend, args.attention, args.progress, args.pack) == (
        d["seq_len"], d["batch_size"], d["max_tokens"], d["backend"], d["attention"], d["progress"], d["pack"])
    assert (args.checkpoint, args.checkpoint_every, args.checkpoint_seconds, args.model) == (
        d["checkpoint_dir"], d["checkpoint_every"], d["checkpoint_seconds"], "default")
