"""The one "stop the forward after a hook" primitive, and out-of-memory detection."""

from __future__ import annotations

import pytest
import torch

from tl_culture.model.forward import StopForward, is_oom, run_to_layer, stop_after, until_stop
from tl_culture.model.hooks import MLPHooks


def recorder(seen: list, name: str):
    def hook(x, hook=None):
        seen.append(name)

    return hook


def test_run_to_layer_stops_after_the_hook_point(gated_model):
    mlp = MLPHooks.from_model(gated_model)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    seen: list[str] = []
    hooks = [(mlp.pre(layer), recorder(seen, mlp.pre(layer))) for layer in range(mlp.n_layers)]
    hooks.append(("unembed.hook_in", recorder(seen, "unembed")))
    with torch.inference_mode():
        assert run_to_layer(gated_model, ids, hooks, stop_at=mlp.pre(1)) is True
    assert seen == [mlp.pre(0), mlp.pre(1)]  # the hooks on stop_at ran, nothing above it did
    assert all(not hp._forward_hooks for hp in gated_model.hook_dict.values()), "hooks left behind"


def test_run_to_layer_passes_the_attention_mask(tiny_hf_model):
    """A right-padded row gives the same hook_pre on its real tokens as the row alone."""
    mlp = MLPHooks.from_model(tiny_hf_model)
    alone_ids = torch.tensor([[1, 5, 9, 12]])
    padded = torch.tensor([[1, 5, 9, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    got: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(pre, hook=None):
            got[key] = pre.clone()

        return hook

    with torch.inference_mode():
        run_to_layer(tiny_hf_model, alone_ids, [(mlp.pre(1), keep("alone"))], stop_at=mlp.pre(1))
        run_to_layer(tiny_hf_model, padded, [(mlp.pre(1), keep("padded"))], stop_at=mlp.pre(1), attention_mask=mask)
    torch.testing.assert_close(got["padded"][:, :4], got["alone"], rtol=1e-5, atol=1e-6)


def test_hooks_are_removed_after_an_error(gated_model):
    mlp = MLPHooks.from_model(gated_model)

    def boom(x, hook=None):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_to_layer(gated_model, torch.zeros(1, 3, dtype=torch.long), [(mlp.pre(0), boom)], stop_at=mlp.pre(2))
    assert all(not hp._forward_hooks for hp in gated_model.hook_dict.values())


def test_stop_after_and_until_stop():
    def hook(x, hook=None):
        return None

    assert stop_after([("a", hook)], "b")[:1] == [("a", hook)]
    name, stop = stop_after([("a", hook)], "b")[1]
    assert name == "b"
    with pytest.raises(StopForward):
        stop(torch.zeros(1))
    calls = []
    assert until_stop(lambda *a, **k: calls.append((a, k))) is False
    assert calls == [((), {})]
    assert until_stop(stop, torch.zeros(1)) is True
    assert until_stop(lambda x, y=0: calls.append((x, y)), 1, y=2) is False and calls[-1] == (1, 2)


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only allocator errors (RuntimeError) are read by text
