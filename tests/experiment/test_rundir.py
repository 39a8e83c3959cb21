"""`RunDir`: every file of a run folder written and read back, older folders, the staged swap, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import RUN_CULTURES, make_nll
from tl_culture import ActivationStats, Corpus, NeuronSet, TLCultureError
from tl_culture.experiment.config import CATEGORIES
from tl_culture.experiment.rundir import SAMPLE_CHARS, SAMPLES_PER_CORPUS, RunDir

GROUPS = RUN_CULTURES[:3]


def neuron_set(groups: list[str], seed: int) -> NeuronSet:
    g = torch.Generator().manual_seed(seed)
    return NeuronSet(groups, torch.rand(len(groups), 2, 8, generator=g) > 0.7, {"seed": seed})


def stats(seed: int) -> ActivationStats:
    g = torch.Generator().manual_seed(seed)
    return ActivationStats(GROUPS, torch.randint(0, 50, (3, 2, 8), generator=g), torch.tensor([50, 60, 70]),
                           meta={"model": "tiny"})


def write_run(run: RunDir) -> dict:
    """Write every file of a run folder; returns what was written."""
    written = {
        "stats": {"language": stats(0), "culture": stats(1)},
        "languages": neuron_set(GROUPS, 2),
        "categories": {c: neuron_set(["generic"] if c == "generic" else GROUPS, 3 + i)
                       for i, c in enumerate(CATEGORIES)},
        "table": "# Language neurons\n...\n",
        "nll": {"culture": make_nll(RUN_CULTURES, seed=1), "generic": make_nll(["generic"], seed=2),
                "language": make_nll(RUN_CULTURES, seed=3)},
        "summary": {"config": {"out": str(run.path)}, "pairs": {g: g for g in GROUPS}},
        "stability": {"language": {"en": 0.5}, "culture": {"en": 0.25}},
    }
    for kind, s in written["stats"].items():
        run.write_stats(kind, s)
    run.write_neurons(written["languages"], written["categories"], written["table"])
    run.write_nll(written["nll"])
    run.write_summary(written["summary"])
    run.write_stability(written["stability"])
    run.write_samples({"en": Corpus("en", ["an English text", "another one"])},
                      {g: Corpus(g, [f"{g} {i}" for i in range(5)]) for g in GROUPS})
    return written


def test_every_file_round_trips(tmp_path):
    run = RunDir(tmp_path / "run")
    written = write_run(run)
    assert run.write_report("<p>report</p>") == tmp_path / "run" / "report.html"
    names = sorted(p.relative_to(run.path).as_posix() for p in run.path.rglob("*") if p.is_file())
    assert names == sorted(
        ["stats_language.safetensors", "stats_culture.safetensors", "neurons.txt", "summary.json", "stability.json",
         "samples.json", "report.html", "stages.json", "neurons/languages.safetensors"]
        + [f"neurons/{c}.safetensors" for c in CATEGORIES]
        + ["nll/culture.json", "nll/generic.json", "nll/language.json"])
    assert run.figures_dir == run.path / "figures"
    for kind, s in written["stats"].items():
        back = run.read_stats(kind)
        assert back.groups == s.groups and torch.equal(back.counts, s.counts) and torch.equal(back.tokens, s.tokens)
    contents = RunDir.open(run.path).load()
    assert contents.summary == written["summary"]
    assert contents.languages == written["languages"] and contents.categories == written["categories"]
    assert list(contents.categories) == list(CATEGORIES)
    assert list(contents.nll) == ["language", "culture", "generic"]  # CATEGORIES order, not file order
    for name, m in written["nll"].items():
        torch.testing.assert_close(contents.nll[name].ablated, m.ablated)
    assert torch.equal(contents.stats_culture.counts, written["stats"]["culture"].counts)
    assert contents.neuron_table == written["table"]
    assert run.read_stability() == written["stability"]
    assert contents.samples == {"languages": {"en": ["an English text", "another one"]},
                                "cultures": {g: [f"{g} {i}" for i in range(SAMPLES_PER_CORPUS)] for g in GROUPS}}
    assert run.report_path.read_text(encoding="utf-8") == "<p>report</p>"


def test_samples_are_cut_and_pre_tokenized_corpora_have_none(tmp_path):
    run = RunDir(tmp_path)
    long = "x" * (SAMPLE_CHARS + 10)
    run.write_samples({"en": Corpus("en", rows=torch.zeros(2, 4, dtype=torch.long))}, {"de": Corpus("de", [long])})
    assert run.read_samples() == {"languages": {"en": []}, "cultures": {"de": ["x" * SAMPLE_CHARS]}}


def test_a_folder_without_the_optional_files_still_loads(tmp_path):
    """A run folder of an older version (no samples.json) or of a run without evaluation or stability."""
    run = RunDir(tmp_path / "run")
    write_run(run)
    for name in ("samples.json", "stability.json", "neurons.txt", "stats_culture.safetensors"):
        (run.path / name).unlink()
    for p in run.nll_dir.iterdir():
        p.unlink()
    run.nll_dir.rmdir()
    contents = RunDir.open(run.path).load()
    assert contents.samples is None and contents.nll == {} and contents.stats_culture is None
    assert contents.neuron_table == "" and run.read_stability() is None
    assert contents.categories["generic"].groups == ["generic"]


def test_staged_folder_replaces_out_only_on_success(tmp_path):
    out = tmp_path / "run"
    with RunDir.staged(out) as run:
        run.write_summary({"n": 1})
        assert run.path.parent == tmp_path and run.path != out and not out.exists()
    assert RunDir.open(out).read_summary() == {"n": 1}
    with RunDir.staged(out) as run:
        run.write_summary({"n": 2})
    assert RunDir.open(out).read_summary() == {"n": 2} and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with pytest.raises(RuntimeError, match="stage failed"), RunDir.staged(out) as run:
        run.write_summary({"n": 3})
        raise RuntimeError("stage failed")
    # out as it was; the work folder (a copy of out, then the failed run's files) stays for a rerun
    assert RunDir.open(out).read_summary() == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.work", "run"]
    assert RunDir(tmp_path / ".run.work").read_summary() == {"n": 3}
    with RunDir.staged(out, restart=True) as run:  # restart: an empty work folder
        assert list(run.path.iterdir()) == []
        run.write_summary({"n": 4})
    assert RunDir.open(out).read_summary() == {"n": 4} and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_errors_are_one_line(tmp_path):
    with pytest.raises(TLCultureError) as e:
        RunDir.open(tmp_path / "nope")
    assert one_line(e) == f"{tmp_path / 'nope'}: no such run folder; give the --out folder of `tl-culture run`"
    run = RunDir(tmp_path / "run")
    write_run(run)
    (run.path / "stages.json").unlink()  # a folder of an earlier version: files read unchecked, then parsed
    run = RunDir(run.path)
    cases = [
        ("summary.json", "{not json", RunDir.read_summary, r"summary.json: corrupted JSON \(.*\); rerun `tl-culture"),
        ("summary.json", "[1, 2]", RunDir.read_summary, r"summary.json: not a run summary"),
        ("samples.json", json.dumps({"cultures": {}}), RunDir.read_samples, r"samples.json: not a held-out samples"),
        ("samples.json", "\xff", RunDir.read_samples, r"samples.json: corrupted JSON"),
        ("nll/culture.json", "[1, 2", RunDir.read_nll, r"culture.json: not a JSON NLLMatrix file"),
    ]
    for name, text, read, message in cases:
        (run.path / name).write_text(text, encoding="utf-8")
        with pytest.raises(TLCultureError, match=message) as e:
            read(run)
        one_line(e)
    (run.path / "summary.json").unlink()
    with pytest.raises(TLCultureError, match=r"summary.json: missing summary.json; is this a run folder") as e:
        run.load()
    one_line(e)
    (run.path / "neurons" / "pure.safetensors").unlink()
    with pytest.raises(TLCultureError, match=r"pure.safetensors: missing pure neurons; is this a run folder") as e:
        run.read_categories()
    one_line(e)
    with pytest.raises(TLCultureError, match=r"unknown statistics kind 'other'; use one of language, culture") as e:
        run.stats_path("other")
    one_line(e)


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "zero-length": lambda p: p.write_bytes(b""),
    "bit-flipped": flip_a_byte,
}
READERS = {
    "summary.json": RunDir.read_summary,
    "stability.json": RunDir.read_stability,
    "samples.json": RunDir.read_samples,
    "neurons.txt": RunDir.read_neuron_table,
    "nll/language.json": RunDir.read_nll,
    "neurons/pure.safetensors": RunDir.read_categories,
    "stats_culture.safetensors": lambda run: run.read_stats("culture"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", list(READERS))
def test_a_damaged_file_is_named_in_one_line_before_use(tmp_path, name, damage):
    run = RunDir(tmp_path / "run")
    write_run(run)
    DAMAGES[damage](run.path / name)
    with pytest.raises(TLCultureError, match=rf"{name}: does not match the checksum in stages.json \(corrupted or "
                                             r"changed since the run wrote it\); delete it and rerun the same") as e:
        READERS[name](RunDir(run.path))
    one_line(e)


def test_a_foreign_file_in_place_of_a_result_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    write_run(run)
    other = run.path / "nll" / "culture.json"
    (run.path / "nll" / "language.json").write_bytes(other.read_bytes())  # a valid file, not the one written
    with pytest.raises(TLCultureError, match=r"language.json: does not match the checksum"):
        RunDir(run.path).read_nll()
    (run.path / "stages.json").write_text("{", encoding="utf-8")
    with pytest.raises(TLCultureError, match=r"stages.json: corrupted; delete it \(every file of the folder is then "
                                             r"read unchecked and every stage computed again\)") as e:
        RunDir(run.path).read_summary()
    one_line(e)
