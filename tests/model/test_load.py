"""Loading models: dtypes, errors, the cache folder, and a model's name and device."""

from __future__ import annotations

import pytest
import torch

from tl_culture import TLCultureError, load_model
from tl_culture.model.load import cache_dir, model_device, model_name, parse_dtype


@pytest.mark.parametrize("spec, want", [
    ("float32", torch.float32), ("fp32", torch.float32), ("float", torch.float32),
    ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
    ("float16", torch.float16), ("fp16", torch.float16), ("half", torch.float16),
    (torch.bfloat16, torch.bfloat16), (None, None),
])
def test_parse_dtype(spec, want):
    assert parse_dtype(spec) is want


def test_unknown_dtype_is_refused():
    with pytest.raises(TLCultureError) as err:
        parse_dtype("float8")
    assert str(err.value) == "unknown dtype 'float8'; use one of float32, bfloat16, float16"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TL_CULTURE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("TL_CULTURE_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "tl_culture")


def test_load_a_local_checkpoint(tiny_hf_dir):
    model = load_model(str(tiny_hf_dir), device="cpu", dtype="bfloat16")
    assert not model.training and model.tokenizer is not None
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model_device(model) == torch.device("cpu")
    assert model_name(model) == str(tiny_hf_dir)


def test_missing_folder_and_unloadable_model(tmp_path):
    with pytest.raises(TLCultureError) as err:
        load_model(str(tmp_path / "nope"), device="cpu")
    assert str(err.value) == (
        f"model folder {tmp_path / 'nope'} does not exist; give a HF checkpoint folder, a hub name or 'default'"
    )
    with pytest.raises(TLCultureError, match=r"cannot load model '.*empty': .*; give 'default', a local HF folder"):
        (tmp_path / "empty").mkdir()
        load_model(str(tmp_path / "empty"), device="cpu")


def test_name_and_device_of_tiny_models(gated_model):
    assert model_name(gated_model) == "native"  # the TL-native bridge's cfg.model_name
    assert model_device(gated_model) == torch.device("cpu")

    class Bare:
        cfg = type("Cfg", (), {"device": "meta"})()

    assert model_name(Bare()) == "Bare"  # no cfg.model_name: the class name
    assert model_device(Bare()) == torch.device("meta")  # no parameters: cfg.device
    assert model_device(object()) == torch.device("cpu")


@pytest.mark.slow
def test_default_model_is_the_embedded_gemma(default_model):
    from tl_culture.model.load import DEFAULT_MODEL_NAME

    assert model_name(default_model) == DEFAULT_MODEL_NAME
    assert (default_model.cfg.n_layers, default_model.cfg.d_mlp) == (18, 2048)
