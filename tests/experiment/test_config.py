"""`ExperimentConfig`: the one home of every `run` default, its validation, config files."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields

import pytest

from tl_culture.counting.collect import collect
from tl_culture.errors import TLCultureError
from tl_culture.experiment.config import COLLECT_FIELDS, MODEL_FIELDS, ExperimentConfig
from tl_culture.model.load import DEFAULT_MODEL, load_model
from tl_culture.selection.lape import ACTIVATION_BAR_RATIO, FILTER_RATE, TOP_RATE, identify


def test_defaults_come_from_their_homes():
    c = ExperimentConfig()
    assert (c.top_rate, c.filter_rate, c.activation_bar_ratio) == (TOP_RATE, FILTER_RATE, ACTIVATION_BAR_RATIO)
    lape = inspect.signature(identify).parameters
    assert [lape[k].default for k in ("top_rate", "filter_rate", "activation_bar_ratio")] == [
        TOP_RATE, FILTER_RATE, ACTIVATION_BAR_RATIO]
    assert c.model == DEFAULT_MODEL == inspect.signature(load_model).parameters["spec"].default
    assert (c.out, c.seq_len, c.eval_tokens, c.languages, c.cultures) == ("runs/demo", 256, 128, {}, {})


def test_every_field_is_a_documented_option():
    for f in fields(ExperimentConfig):
        assert f.metadata.get("help"), f"{f.name} has no command-line help"
    assert "extra" not in {f.name for f in fields(ExperimentConfig)}
    assert set(COLLECT_FIELDS) <= set(inspect.signature(collect).parameters)
    assert set(MODEL_FIELDS) <= {f.name for f in fields(ExperimentConfig)}
    c = ExperimentConfig(seq_len=32, backend="hooks", progress=False)
    assert c.collect_kwargs() == {"seq_len": 32, "batch_size": 8, "max_tokens": None, "backend": "hooks",
                                  "attention": None, "allow_long_context": False, "progress": False, "sample_seed": 0}


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(seq_len=1), "--seq-len must be at least 2, got 1"),
        (dict(batch_size=0), "--batch-size must be at least 1, got 0"),
        (dict(max_tokens=0), "--max-tokens must be positive, got 0"),
        (dict(eval_min_documents=0), "--eval-min-documents must be positive, got 0"),
        (dict(top_rate=1.0), "top-rate must be in (0, 1), got 1.0"),
        (dict(eval_fraction=0.0), "eval-fraction must be in (0, 1), got 0.0"),
        (dict(max_documents=0), "max_documents must be positive, got 0"),
        (dict(backend="fast"), "--backend must be one of auto, hooks, native, got 'fast'"),
        (dict(attention="flash"), "--attention must be one of eager, sdpa, got 'flash'"),
        (dict(backend="hooks", attention="sdpa"),
         "--attention sdpa needs the native backend; drop it or use --backend native"),
        (dict(languages={"en": "a"}), "give both --language and --culture corpora, or neither for the demo corpus"),
        (dict(languages={"en": "a"}, cultures={"fr": "b"}, pairs={"xx": "en"}),
         "--pair names unknown cultures ['xx']; cultures are ['fr']"),
    ],
)
def test_validation_is_one_clear_line(kw, message):
    with pytest.raises(TLCultureError) as err:
        ExperimentConfig(out="o", **kw)
    assert str(err.value) == message


def test_run_experiment_eval_config_errors(tmp_path):
    with pytest.raises(TLCultureError, match="--eval-mode must be matched or all, got 'some'"):
        ExperimentConfig(out=str(tmp_path), eval_mode="some")
    with pytest.raises(TLCultureError, match="--eval-tokens must be positive, got 0"):
        ExperimentConfig(out=str(tmp_path), eval_tokens=0)
    with pytest.raises(TLCultureError, match="--controls and --bootstrap must be 0 or more"):
        ExperimentConfig(out=str(tmp_path), control_seeds=-1)
    with pytest.raises(TLCultureError, match="--eval-batch-size must be at least 1, got 0"):
        ExperimentConfig(out=str(tmp_path), eval_batch_size=0)


def test_hf_corpora_need_max_documents():
    cfg = ExperimentConfig(out="o", languages={"en": "hf:some/dataset"}, cultures={"en": "hf:other"})
    with pytest.raises(TLCultureError, match="set max_documents"):
        cfg.load_corpora()


def test_from_file_resolves_paths_and_overrides_win(tmp_path, monkeypatch):
    d = tmp_path / "configs"
    d.mkdir()
    (d / "en.txt").write_text("hello\n", encoding="utf-8")
    (d / "c.toml").write_text('out = "o"\nseq_len = 64\nmodel = "default"\n[languages]\nen = "en.txt"\n'
                              '[cultures]\nen = "en.txt"\nfa = "hf:x/y"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # paths are relative to the file, not the working folder
    c = ExperimentConfig.from_file(d / "c.toml", seq_len=None, top_rate=0.2)
    assert (c.out, c.seq_len, c.top_rate, c.model) == ("o", 64, 0.2, "default")  # None does not override
    assert c.languages == {"en": str(d / "en.txt")} and c.cultures["fa"] == "hf:x/y"
    (d / "c.json").write_text(json.dumps({"seq_len": 32, "eval_tokens": None}), encoding="utf-8")
    j = ExperimentConfig.from_file(d / "c.json", out="p")
    assert (j.out, j.seq_len, j.eval_tokens) == ("p", 32, None)


def test_from_file_errors_name_the_fix(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("extra = 1\n", encoding="utf-8")
    with pytest.raises(TLCultureError, match=r"unknown keys \['extra'\]; known keys are \['activation_bar_ratio'"):
        ExperimentConfig.from_file(p)
    p.write_text("seq_len = 64\n", encoding="utf-8")
    with pytest.raises(TLCultureError, match="has no 'out'; give --out"):
        ExperimentConfig.from_file(p)
    assert ExperimentConfig.from_file(p, out="o").seq_len == 64


def test_each_side_has_its_own_caps():
    c = ExperimentConfig(max_tokens=500, max_documents=9, max_tokens_culture=100, max_documents_language=7)
    assert (c.cap("max_tokens", "language"), c.cap("max_tokens", "culture")) == (500, 100)
    assert (c.cap("max_documents", "language"), c.cap("max_documents", "culture")) == (7, 9)
    assert (c.collect_kwargs("culture")["max_tokens"], c.collect_kwargs()["max_tokens"]) == (100, 500)
    with pytest.raises(TLCultureError, match="^--max-tokens-culture must be positive, got 0$"):
        ExperimentConfig(max_tokens_culture=0)
    with pytest.raises(TLCultureError, match="^--max-documents-language must be positive, got 0$"):
        ExperimentConfig(max_documents_language=0)
    cfg = ExperimentConfig(out="o", languages={"en": "hf:x/y"}, cultures={"en": "hf:x/z"}, max_documents_language=5)
    with pytest.raises(TLCultureError, match=r"streams hf:x/z; set max_documents \(.*--max-documents-culture"):
        cfg.load_corpora()
