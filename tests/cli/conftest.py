"""Input files of the command-line tests: text corpora, good and bad tl-culture files, a neuron set
and statistics for the tiny HF checkpoint (``tiny_hf_dir``: 2 layers x 48 neurons)."""

from __future__ import annotations

import pytest
import torch

from tl_culture.counting.stats import ActivationStats
from tl_culture.selection.neurons import NeuronSet

TEXTS = {
    "en": ["the cat sat on the mat", "a dog ran in the park", "the sun is warm today"] * 6,
    "de": ["der Hund schläft im Haus", "die Katze trinkt Milch", "heute ist es kalt"] * 6,
    "ru": ["кошка спит на диване", "собака бежит в парке", "сегодня холодно"] * 6,
}


@pytest.fixture()
def corpus_files(tmp_path):
    """``{language: path}`` of three 18-document text corpora (en, de, ru)."""
    out = {}
    for lang, docs in TEXTS.items():
        p = tmp_path / f"{lang}.txt"
        p.write_text("\n".join(docs) + "\n", encoding="utf-8")
        out[lang] = p
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad inputs by name (paths as strings); ``dir`` is their folder."""
    d = tmp_path_factory.mktemp("bad")
    f = {
        "good": d / "good.txt", "empty": d / "empty.txt", "latin1": d / "latin1.txt", "blank": d / "blank.txt",
        "junk": d / "junk.safetensors", "neurons": d / "neurons.safetensors", "stats": d / "stats.safetensors",
        "one": d / "one.safetensors", "tampered": d / "tampered.safetensors", "empty_dir": d / "empty_model",
        "ref": d / "ref.pth", "foreign": d / "foreign.safetensors", "misfit": d / "misfit.safetensors", "dir": d,
    }
    f["good"].write_text("the cat sat on the mat\nder Hund schläft\n", encoding="utf-8")
    f["empty"].write_text("", encoding="utf-8")
    f["blank"].write_text("\n   \n\n", encoding="utf-8")
    f["latin1"].write_bytes("Straße in Köln\n".encode("latin-1"))
    f["junk"].write_bytes(b"\x93NUMPY this is not a safetensors file")
    NeuronSet(["a", "b"], torch.zeros(2, 2, 4, dtype=torch.bool)).save(f["neurons"])
    NeuronSet(["en", "de"], torch.ones(2, 4, 10, dtype=torch.bool)).save(f["misfit"])  # the tiny model is 2 x 48
    ActivationStats(["a", "b"], torch.ones(2, 2, 4, dtype=torch.long), torch.tensor([3, 3])).save(f["stats"])
    ActivationStats(["en"], torch.ones(1, 2, 4, dtype=torch.long), torch.tensor([3])).save(f["one"])
    from tl_culture._io import save_tensors

    save_tensors(f["tampered"], "ActivationStats", {"counts": torch.full((2, 2, 4), 9), "tokens": torch.tensor([3, 3])},
                 {"groups": ["a", "b"], "meta": {}})
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(f["foreign"]))  # a safetensors file, but not ours
    f["empty_dir"].mkdir()
    torch.save([[torch.tensor([1])]], f["ref"])
    return {k: str(v) for k, v in f.items()}


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A neuron set (en, ru) and statistics sized to the tiny HF checkpoint, and two small corpora."""
    d = tmp_path_factory.mktemp("cli")
    m = torch.zeros(2, 2, 48, dtype=torch.bool)
    m[0, 1, :8] = True
    m[1, 1, 8:20] = True
    NeuronSet(["en", "ru"], m).save(d / "neurons.safetensors")
    ActivationStats(["en", "ru"], torch.zeros(2, 2, 48, dtype=torch.int64), torch.tensor([2, 2]),
                    torch.ones(2, 2, 48, dtype=torch.float64)).save(d / "stats.safetensors")
    (d / "en.txt").write_text("the cat sat on the mat\nthe dog sat\n", encoding="utf-8")
    (d / "ru.txt").write_text("кошка спит\nсобака спит\n", encoding="utf-8")
    return d


def help_text(capsys, *argv: str) -> str:
    """The ``--help`` output of ``tl-culture *argv``, whitespace collapsed to single spaces."""
    from tl_culture.cli.app import main

    assert main([*argv, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


def option_help(text: str, flag: str, flags: list[str]) -> str:
    """The help of option ``flag`` in a collapsed ``--help`` text: up to the next of ``flags`` (or the end)."""
    start = text.index(f" {flag} ") + len(flag) + 2
    ends = [i for f in flags if f != flag and (i := text.find(f" {f} ", start)) >= 0]
    return text[start:min(ends, default=len(text))]
