"""The core CLI end to end on a tiny local HF checkpoint."""

import json

import pytest
import torch

from tl_culture import ActivationStats, NeuronSet
from tl_culture.cli import main

TEXTS = {
    "en": ["the cat sat on the mat", "a dog ran in the park", "the sun is warm today"] * 6,
    "de": ["der Hund schläft im Haus", "die Katze trinkt Milch", "heute ist es kalt"] * 6,
    "ru": ["кошка спит на диване", "собака бежит в парке", "сегодня холодно"] * 6,
}


@pytest.fixture()
def corpus_files(tmp_path):
    out = {}
    for lang, docs in TEXTS.items():
        p = tmp_path / f"{lang}.txt"
        p.write_text("\n".join(docs) + "\n", encoding="utf-8")
        out[lang] = p
    return out


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


def test_run_writes_the_run_folder(tiny_hf_dir, corpus_files, tmp_path):
    out = tmp_path / "run"
    args = [
        "run",
        "--model",
        str(tiny_hf_dir),
        "--out",
        str(out),
        "--seq-len",
        "16",
        "--no-progress",
        "--top-rate",
        "0.1",
        "--pair",
        "english=en",
    ]
    for lang, p in corpus_files.items():
        args += ["--language", f"{lang}={p}"]
        args += ["--culture", f"{'english' if lang == 'en' else lang}={p}"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == {"english": "en", "de": "de", "ru": "ru"}
    assert summary["counted_with"] == {"backend": "native", "attention": "sdpa", "dtype": "float32"}
    for name in ("language", "culture", "compound", "pure", "generic"):
        assert NeuronSet.load(out / "neurons" / f"{name}.safetensors").meta["category"] == name
    cats = {
        n: NeuronSet.load(out / "neurons" / f"{n}.safetensors") for n in ("language", "culture", "compound", "pure")
    }
    assert torch.equal(cats["compound"].masks, cats["language"].masks & cats["culture"].masks)
    assert torch.equal(cats["pure"].masks, cats["culture"].masks & ~cats["language"].masks)
    # held-out documents (15 %) are not in the selection statistics
    stats = ActivationStats.load(out / "stats_language.safetensors")
    assert stats.meta["corpora"]["en"]["documents"] == 18 - round(0.15 * 18)


def test_failing_run_keeps_previous_output(tiny_hf_dir, corpus_files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("old result")
    code = main(
        [
            "run",
            "--model",
            str(tiny_hf_dir),
            "--out",
            str(out),
            "--language",
            f"en={corpus_files['en']}",
            "--culture",
            f"fr={corpus_files['de']}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tl-culture: error:") and "--pair" in err and "\n" not in err
    assert (out / "keep.txt").read_text() == "old result"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "config {path} does not exist; check the path"),
        ("bogus = 1\n", "unknown keys ['bogus']"),
        ("out = [unclosed\n", "is not valid toml"),
        ('seq_len = 64\n', "has no 'out'; give --out"),
        ('out = "o"\nseq_len = 0\n', "--seq-len must be at least 2, got 0"),
        ('out = "o"\nbackend = "fast"\n', "--backend must be one of auto, hooks, native, got 'fast'"),
        ('out = "o"\nbackend = "hooks"\nattention = "sdpa"\n', "--attention sdpa needs the native backend"),
    ],
)
def test_config_file_errors_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code = main(["run", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("tl-culture: error:")
    assert message.format(path=path) in err
