"""`tl-culture run --dry-run` (`tl_culture.experiment.dryrun`): the shipped configs check out, every
problem is one line, and nothing is loaded or fetched."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO
from tl_culture.cli import main
from tl_culture.data.corpus import load_corpus
from tl_culture.errors import TLCultureError
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.dryrun import dry_run, estimate_tokens

PAPER = REPO / "examples" / "culture_neurons.toml"
SMALL = REPO / "examples" / "small_shared_data.toml"
LANGS = ["en", "de", "da", "zh", "ru", "fa"]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A home folder (``~``) and working folder in tmp_path; loading a model or streaming a dataset fails."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("a dry run must not load a model or stream a dataset")

    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", forbidden)
    monkeypatch.setattr("tl_culture.model.load.load_model", forbidden)
    monkeypatch.setattr("tl_culture.experiment.run.load_model", forbidden)
    return tmp_path


def fake_clone(home):
    """``~/Culture_Neurons/data/<lang>/`` with two documents per culture, one of them in a subfolder."""
    for lang in LANGS:
        d = home / "Culture_Neurons" / "data" / lang
        (d / "sub").mkdir(parents=True)
        (d / "a.txt").write_text(f"a {lang} proverb\n\n", encoding="utf-8")
        (d / "sub" / "b.txt").write_text(f"another {lang} saying\n", encoding="utf-8")


def test_paper_config_is_the_papers_setting():
    c = ExperimentConfig.from_file(PAPER)
    assert (c.seq_len, c.dtype, c.max_tokens_language, c.max_tokens_culture) == (4096, "bfloat16", 10**8, 10**7)
    assert c.languages == {k: f"hf:wikimedia/wikipedia:20231101.{k}:train" for k in LANGS}
    assert c.cultures == {k: f"~/Culture_Neurons/data/{k}" for k in LANGS}
    assert c.max_documents_language and c.cap("max_documents", "culture") is None  # every MUREL line
    assert c.split == "head"  # the reference evaluates on the head of each corpus
    header = PAPER.read_text(encoding="utf-8").split("\n\n")[0]
    assert "tl-culture run --config examples/culture_neurons.toml --dry-run" in header
    assert "tl-culture run --config examples/culture_neurons.toml --out runs/paper" in header


def test_paper_config_dry_runs_with_a_clone(home, capsys):
    fake_clone(home)
    assert main(["run", "--config", str(PAPER), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hf:wikimedia/wikipedia:20231101.fa:train: streamed, the first 300,000 documents (not fetched now)" in out
    assert "counting up to 100,000,000 tokens per group" in out and "counting up to 10,000,000 tokens per group" in out
    assert "~/Culture_Neurons/data/zh: 2 documents" in out and "rows of 4,096 tokens" in out
    assert "Qwen/Qwen2.5-7B (hub model" in out and "bfloat16" in out
    assert "the first 15% of the documents held out (head split)" in out
    assert out.strip().endswith("dry run: no problems found; no model loaded, nothing streamed or written")
    assert not (home / "runs").exists()
    plan = dry_run(ExperimentConfig.from_file(PAPER))
    streamed = [p for p in plan.corpora if p.streamed]
    assert [p.name for p in streamed] == LANGS and {p.side for p in streamed} == {"language"}
    assert {(p.documents, p.token_cap) for p in streamed} == {(300_000, 10**8)}
    cultures = [p for p in plan.corpora if p.side == "culture"]
    assert {(p.documents, p.total_documents, p.token_cap) for p in cultures} == {(2, 2, 10**7)}
    assert plan.counted_tokens() == 6 * 10**8 + sum(p.counted(0.15) for p in cultures)
    assert plan.pairs == {k: k for k in LANGS}


def test_paper_config_without_the_clone_names_the_missing_folder(home, capsys):
    assert main(["run", "--config", str(PAPER), "--dry-run"]) == 2
    cultures = ", ".join(f"culture {k}" for k in LANGS)
    assert capsys.readouterr().err == (
        f"tl-culture: error: {home / 'Culture_Neurons'} does not exist (6 corpora are below it: {cultures}); "
        "check the corpus paths\n"
    )


def test_streamed_corpora_need_the_datasets_package(home, monkeypatch):
    fake_clone(home)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(TLCultureError) as err:
        dry_run(ExperimentConfig.from_file(PAPER))
    assert str(err.value) == "hf: corpora need the datasets package: pip install 'tl-culture[hf]'"


@pytest.fixture()
def checkpoint(tmp_path):
    """A folder that passes for a HF checkpoint in a dry run (it has a config.json)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}", encoding="utf-8")
    return str(d)


@pytest.mark.parametrize("spec", ["hf:", "hf:two words", "hf:x/y:c:s:more", "hf:/x", "hf:a/b/c"])
def test_malformed_hf_specs_are_one_line(tmp_path, checkpoint, spec):
    (tmp_path / "c.txt").write_text("one\ntwo\n", encoding="utf-8")
    cfg = ExperimentConfig(out=str(tmp_path / "o"), model=checkpoint, languages={"en": spec},
                           cultures={"en": str(tmp_path / "c.txt")}, max_documents=10)
    with pytest.raises(TLCultureError) as err:
        dry_run(cfg)
    assert str(err.value) == (
        f"language en: {spec!r} is not hf:NAME[:CONFIG][:SPLIT]; write it like hf:wikimedia/wikipedia:20231101.en:train"
    )


@pytest.mark.parametrize("spec", ["hf:x", "hf:owner/name.v2:config", "hf:x/y::validation"])
def test_wellformed_hf_specs_pass(tmp_path, checkpoint, spec):
    (tmp_path / "c.txt").write_text("one\ntwo\n", encoding="utf-8")
    cfg = ExperimentConfig(out=str(tmp_path / "o"), model=checkpoint, languages={"en": spec},
                           cultures={"en": str(tmp_path / "c.txt")}, max_documents_language=10)
    assert [p.streamed for p in dry_run(cfg).corpora] == [True, False]


def test_every_problem_is_on_one_line(tmp_path, checkpoint, capsys):
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "c.toml").write_text(
        f'out = "o"\nmodel = "{checkpoint}"\ndtype = "bfloat"\n[languages]\nen = "a.txt"\nde = "missing.txt"\n'
        '[cultures]\nfr = "a.txt"\nzh = "hf:x/y"\n', encoding="utf-8")
    assert main(["run", "--config", str(tmp_path / "c.toml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tl-culture: error: unknown dtype 'bfloat'")
    assert "language de: missing.txt: no such file or folder; check the corpus path" in err  # as the run reads it
    assert "corpus 'zh' streams hf:x/y; set max_documents (--max-documents or --max-documents-culture)" in err
    assert "and 1 more" in err  # the pairs: fr has no language corpus


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(model="a b"), "model 'a b' is neither 'default', a checkpoint folder nor a hub name like owner/name"),
        (dict(model="./no/such/model"), "model folder ./no/such/model does not exist"),
        (dict(model="{tmp}"), "model folder {tmp} has no config.json; give a HF checkpoint folder"),
        (dict(out="{tmp}/a.txt"), "--out {tmp}/a.txt is a file; give a folder"),
        (dict(cultures={"fr": "{tmp}/a.txt"}), "cultures pair with languages ['fr'] that have no --language corpus"),
    ],
)
def test_model_out_and_pairs_problems(tmp_path, checkpoint, kw, message):
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    corpus = {"en": "{tmp}/a.txt"}
    base = dict(out=str(tmp_path / "o"), model=checkpoint, languages=corpus, cultures=corpus)
    fill = {k: v.format(tmp=tmp_path) if isinstance(v, str) else {n: s.format(tmp=tmp_path) for n, s in v.items()}
            for k, v in {**base, **kw}.items()}
    with pytest.raises(TLCultureError) as err:
        dry_run(ExperimentConfig(**fill))
    assert message.format(tmp=tmp_path) in str(err.value)


def test_local_corpora_are_read_as_the_run_reads_them(tmp_path, checkpoint):
    (tmp_path / "l.txt").write_text("".join(f"language document {i}\n" for i in range(40)), encoding="utf-8")
    (tmp_path / "c.txt").write_text("中文文本\n" * 5, encoding="utf-8")
    cfg = ExperimentConfig(out=str(tmp_path / "o"), model=checkpoint, languages={"zh": str(tmp_path / "l.txt")},
                           cultures={"zh": str(tmp_path / "c.txt")}, max_documents_culture=3, max_tokens_language=50,
                           eval_fraction=0.5)
    lang, cult = dry_run(cfg).corpora
    assert (lang.documents, lang.total_documents, cult.documents, cult.total_documents) == (40, 40, 3, 5)
    assert lang.tokens == sum(estimate_tokens(f"language document {i}") for i in range(40))
    assert (cult.characters, cult.tokens) == (12, 12)  # one token per CJK character
    assert (lang.counted(0.5), cult.counted(0.5)) == (50, 6)  # the token cap; half of the culture's tokens
    assert "3 of 5 (max_documents) documents" in cult.line(0.5)


def test_estimate_tokens():
    assert [estimate_tokens(t) for t in ("", "ab", "abcd" * 10, "中文字", "中文 ab")] == [0, 1, 10, 3, 3]


def test_small_shared_data_config_dry_runs(shared_data, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "--config", str(SMALL), "--dry-run", "--out", str(out)]) == 0
    assert "dry run: no problems found" in capsys.readouterr().out and not out.exists()
    assert main(["run", "--config", str(SMALL), "--dry-run", "--out", str(out), "--eval-min-documents", "30"]) == 0
    assert "up to 256 scored tokens each (at least 30 documents), 3 control seed(s)" in capsys.readouterr().out
    cfg = ExperimentConfig.from_file(SMALL, out=str(out))
    settings = (cfg.model, cfg.seq_len, cfg.eval_mode, cfg.eval_tokens, cfg.control_seeds)
    assert settings == ("default", 256, "all", 256, 3)  # the setting of docs/findings.md
    plan = dry_run(cfg)
    assert [(p.side, p.name) for p in plan.corpora] == [(s, k) for s in ("language", "culture") for k in LANGS]
    for p in plan.corpora:
        folder = shared_data / ("flores" if p.side == "language" else "murel")
        source = folder / (f"{p.name}.txt" if p.side == "language" else p.name)
        assert p.documents == p.total_documents == len(load_corpus(source)), p


def test_check_out_says_what_a_run_would_continue_from(tmp_path):
    from tl_culture.experiment.dryrun import check_out
    from tl_culture.experiment.lock import work_path
    from tl_culture.experiment.manifest import Manifest

    out = tmp_path / "run"
    assert check_out(str(out)) == f"{out} (created when every stage has succeeded)"
    work = work_path(out)
    work.mkdir()
    (work / "stats_language.safetensors").write_bytes(b"x")
    m = Manifest(work)
    m.record(work / "stats_language.safetensors")
    m.finish("count", {"settings": {}}, [work / "stats_language.safetensors"])
    m.start("selection", {"settings": {}})
    assert check_out(str(out)) == (
        f"{out} (created when every stage has succeeded); an unfinished run there has finished count: stages whose "
        "settings, model and text are unchanged are reused (--restart starts over)")
    (work / "stages.json").write_text("{", encoding="utf-8")
    assert check_out(str(out)).endswith(f"; {work / 'stages.json'}: corrupted; delete it (every file of the folder "
                                        "is then read unchecked and every stage computed again)")
