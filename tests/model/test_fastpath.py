"""The bridge fast path (the native backend of `collect`): a bridge's HF modules without the wrappers.

With the bridge's eager attention it counts what the hooks count, bit for bit; with sdpa within rounding.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hand_counts
from tl_culture import MLPHooks, TLCultureError, collect
from tl_culture.model.bridge import bridge_attention, bridge_fast_path, check_backend, native_problem
from tl_culture.model.fastpath import ACT_MODULE_NAMES, NativeForward, act_module

TEXTS = {
    "en": ["the cat sat on the mat", "the dog sat on the cat and the mat", "a cat"],
    "de": ["der Hund schläft", "der Hund schläft auf der Matte im Haus", "Hund"],
}


def modules_of(model) -> list[tuple[str, int]]:
    return [(name, id(m)) for name, m in model.named_modules()]


@pytest.mark.parametrize("pack", [True, False])
def test_native_equals_hooks_and_hand_counts(tiny_hf_model, pack):
    """Packed rows and right-padded rows (attention mask): native with the bridge's eager attention
    == hooks == run_with_cache counts, bit for bit; the default (sdpa) within rounding."""
    from tl_culture.data.corpus import as_corpora
    from tl_culture.data.rows import encode

    kw = dict(seq_len=10, batch_size=2, pack=pack, progress=False)
    native = collect(tiny_hf_model, TEXTS, backend="native", attention="eager", **kw)
    hooks = collect(tiny_hf_model, TEXTS, backend="hooks", **kw)
    auto = collect(tiny_hf_model, TEXTS, **kw)
    assert native.meta["backend"] == "native" and auto.meta["backend"] == "native"
    assert native.meta["attention"] == hooks.meta["attention"] == "eager" and auto.meta["attention"] == "sdpa"
    assert hooks.meta["backend"] == "hooks"
    assert torch.equal(native.counts, hooks.counts)
    torch.testing.assert_close(native.sums, hooks.sums, rtol=1e-12, atol=1e-12)
    assert (auto.counts - hooks.counts).abs().sum() <= 1e-3 * hooks.counts.sum()
    torch.testing.assert_close(auto.sums, hooks.sums, rtol=1e-4, atol=1e-5)
    for k, corpus in enumerate(as_corpora(TEXTS).values()):
        rows = encode(corpus, tiny_hf_model.tokenizer, 10, pack=pack)
        if not pack:
            assert not bool(rows.attention_mask.all())  # the test really has padding
        counts, sums = hand_counts(tiny_hf_model, rows)
        assert torch.equal(native.counts[k], counts)
        torch.testing.assert_close(native.sums[k], sums, rtol=1e-5, atol=1e-6)
        assert native.tokens[k] == rows.n_tokens


def test_native_uses_the_models_activation_module(tiny_hf_model):
    mlp = MLPHooks.from_model(tiny_hf_model)
    nf = NativeForward(tiny_hf_model, mlp)
    assert nf.acts is not None and all(a is tiny_hf_model.blocks[i].mlp.original_component.act_fn
                                       for i, a in enumerate(nf.acts))
    assert nf.verify(torch.tensor([[1, 5, 9, 12, 40]])) is None and nf.acts is not None


def test_wrappers_restored_after_collect_and_after_errors(tiny_hf_model):
    ids = torch.tensor([[1, 5, 9, 12, 40, 41]])
    before, logits = modules_of(tiny_hf_model), tiny_hf_model(ids)
    collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, backend="native")
    assert modules_of(tiny_hf_model) == before
    assert tiny_hf_model.original_model.config._attn_implementation == "eager"  # sdpa switched back

    nf = NativeForward(tiny_hf_model, MLPHooks.from_model(tiny_hf_model))

    def boom(layer, pre, act):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), nf.hooked(boom):
        assert modules_of(tiny_hf_model) != before  # the wrappers are out while counting
        nf(ids)
    assert modules_of(tiny_hf_model) == before
    assert all(not g._forward_hooks for g in nf.gates)  # our torch hooks are gone too
    torch.testing.assert_close(tiny_hf_model(ids), logits, rtol=0, atol=0)


def test_attached_tl_hooks_run_on_the_hooks_backend(tiny_hf_model):
    """A user's TL hook (here: every layer-0 gate set to +1) must take effect during counting."""
    mlp = MLPHooks.from_model(tiny_hf_model)

    def force_on(pre, hook):
        return torch.ones_like(pre)

    with tiny_hf_model.hooks(fwd_hooks=[(mlp.pre(0), force_on)]):
        assert "hooks are attached" in native_problem(tiny_hf_model, mlp)
        stats = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False)
        with pytest.raises(TLCultureError, match=r"hooks are attached to the model \(blocks\.0\.mlp\."):
            collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, backend="native")
    assert stats.meta["backend"] == "hooks" and "hooks are attached" in stats.meta["backend_note"]
    assert torch.equal(stats.counts[:, 0], stats.tokens[:, None].expand(-1, mlp.d_mlp))
    assert native_problem(tiny_hf_model, mlp) is None  # the hook is gone with the context


def test_probe_refuses_a_bridge_that_computes_differently(tiny_hf_model):
    """A wrapper that changes the computation (here a torch hook on a bridge norm; folded weights
    would do the same) fails the probe: auto falls back to the hooks, which count what the bridge
    computes; native refuses."""
    handle = tiny_hf_model.blocks[1].ln2.register_forward_hook(lambda module, args, out: out * 3.0)
    try:
        mlp = MLPHooks.from_model(tiny_hf_model)
        problem = NativeForward(tiny_hf_model, mlp).verify(torch.tensor([[1, 5, 9, 12]]))
        assert "layer 1: hook_pre differs" in problem
        auto = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False)
        hooks = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, backend="hooks")
        assert auto.meta["backend"] == "hooks" and "layer 1: hook_pre differs" in auto.meta["backend_note"]
        assert torch.equal(auto.counts, hooks.counts)
        with pytest.raises(TLCultureError, match="native backend cannot run: layer 1"):
            collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, backend="native")
    finally:
        handle.remove()
    assert collect(tiny_hf_model, TEXTS, seq_len=10, progress=False).meta["backend"] == "native"


def test_attention_choices(tiny_hf_model, monkeypatch):
    cfg = tiny_hf_model.original_model.config
    assert cfg._attn_implementation == "eager"
    eager = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, attention="eager")
    sdpa = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, attention="sdpa")
    assert sdpa.meta["backend"] == "native" and sdpa.meta["attention"] == "sdpa"
    assert eager.meta["backend"] == "native" and eager.meta["attention"] == "eager"
    assert cfg._attn_implementation == "eager"  # switched back for the bridge
    # another attention kernel: counts may differ only for activations within rounding of zero
    assert (sdpa.counts - eager.counts).abs().sum() <= 1e-3 * eager.counts.sum()
    torch.testing.assert_close(sdpa.sums, eager.sums, rtol=1e-4, atol=1e-5)
    with pytest.raises(TLCultureError, match="attention='sdpa' needs the native backend"):
        collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, attention="sdpa", backend="hooks")
    assert collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, attention="eager", backend="hooks").meta[
        "backend"] == "hooks"

    # an attention that breaks the model: the default falls back to the bridge's own, a request refuses
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    real = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def broken(*args, **kwargs):
        out, weights = real(*args, **kwargs)
        return out * 100.0, weights

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", broken)
    with torch.no_grad():
        tiny_hf_model.blocks[0].mlp.gate.original_component.weight.mul_(1.0)  # a new model state: probe again
    fallback = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False)
    assert fallback.meta["backend"] == "native" and fallback.meta["attention"] == "eager"
    assert "sdpa attention not used: layer" in fallback.meta["backend_note"]
    assert torch.equal(fallback.counts, eager.counts)
    with pytest.raises(TLCultureError, match="attention='sdpa' cannot run on this model: layer"):
        collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, attention="sdpa")
    with pytest.raises(TLCultureError, match="unknown backend 'fast'"):
        collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, backend="fast")


def test_layernorm_models_fall_back_to_hooks(dense_model):
    """The TL-native dense (LayerNorm) bridge is not bit-identical to its modules: auto uses hooks."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 64, (4, 12), generator=g)
    stats = collect(dense_model, {"a": rows}, seq_len=12, progress=False)
    assert stats.meta["backend"] == "hooks" and "differs from the TransformerLens forward" in stats.meta["backend_note"]
    with pytest.raises(TLCultureError, match="native backend cannot run: layer 0: hook_pre differs"):
        collect(dense_model, {"a": rows}, seq_len=12, progress=False, backend="native")


def test_native_problem_of_a_non_bridge(gated_model):
    class NotABridge:
        cfg = gated_model.cfg
        hook_dict = gated_model.hook_dict

    problem = native_problem(NotABridge(), MLPHooks.from_model(gated_model))
    assert "is not a TransformerLens 4.x TransformerBridge" in problem


def test_check_runs_once_per_model_state(tiny_hf_model, monkeypatch):
    calls = []
    check = NativeForward._verify
    monkeypatch.setattr(NativeForward, "_verify", lambda self, ids: calls.append(1) or check(self, ids))
    weight = tiny_hf_model.blocks[0].mlp.gate.original_component.weight
    with torch.no_grad():
        weight.mul_(1.0)  # a new model state: as if weights were edited in place
    for _ in range(2):
        assert collect(tiny_hf_model, TEXTS, seq_len=10, progress=False).meta["backend"] == "native"
    assert len(calls) == 1
    collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, attention="eager")  # another attention: checked
    assert len(calls) == 2
    with torch.no_grad():
        weight.mul_(1.0)
    collect(tiny_hf_model, TEXTS, seq_len=10, progress=False)
    assert len(calls) == 3


def test_checkpoint_refuses_another_attention(tiny_hf_model, tmp_path):
    collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, checkpoint_dir=tmp_path)  # sdpa
    with pytest.raises(TLCultureError, match="attention='sdpa', this run has attention='eager'"):
        collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, checkpoint_dir=tmp_path, attention="eager")
    with pytest.raises(TLCultureError, match="attention='sdpa', this run has attention='eager'"):
        collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, checkpoint_dir=tmp_path, backend="hooks")
    # the backend itself is no setting: native and hooks with the same attention give the same counts
    eager = tmp_path / "eager"
    collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, checkpoint_dir=eager, attention="eager")
    done = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, checkpoint_dir=eager, backend="hooks")
    fresh = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, backend="hooks")  # hooks: eager attention
    assert fresh.meta["backend"] == "hooks" and int(fresh.counts.sum()) > 0
    assert torch.equal(done.counts, fresh.counts) and torch.equal(done.tokens, fresh.tokens)


def test_a_swapped_hook_is_checked_again(tiny_hf_model):
    """Replacing a harmless wrapper hook by a harmful one (same number of hooks) is noticed."""
    ln2 = tiny_hf_model.blocks[0].ln2
    harmless = ln2.register_forward_hook(lambda module, args, out: None)
    try:
        assert collect(tiny_hf_model, TEXTS, seq_len=10, progress=False).meta["backend"] == "native"
    finally:
        harmless.remove()
    harmful = ln2.register_forward_hook(lambda module, args, out: out * 2.0)
    try:
        stats = collect(tiny_hf_model, TEXTS, seq_len=10, progress=False)
        assert stats.meta["backend"] == "hooks" and "layer 0: hook_pre differs" in stats.meta["backend_note"]
    finally:
        harmful.remove()


def test_error_messages(tiny_hf_model, gated_model):
    with pytest.raises(TLCultureError, match="unknown attention 'flash'; use one of eager, sdpa"):
        collect(tiny_hf_model, TEXTS, seq_len=10, progress=False, attention="flash")
    g = torch.Generator().manual_seed(0)
    rows = {"a": torch.randint(0, 64, (2, 8), generator=g)}
    # the TL-native gated model counts natively with its own attention, but has none to switch
    assert collect(gated_model, rows, seq_len=8, progress=False).meta["backend"] == "native"
    with pytest.raises(TLCultureError, match="attention='sdpa' cannot run on this model: the model names no HF "
                                             "attention implementation to switch; drop --attention"):
        collect(gated_model, rows, seq_len=8, progress=False, attention="sdpa")
    nf = NativeForward(tiny_hf_model, MLPHooks.from_model(tiny_hf_model))
    with pytest.raises(TLCultureError, match=r"call NativeForward inside its hooked\(...\) context"):
        nf(torch.tensor([[1, 5, 9]]))
    with nf.hooked(lambda layer, pre, act: None):
        with pytest.raises(TLCultureError, match="NativeForward.hooked is already active; it does not nest"):
            with nf.hooked(lambda layer, pre, act: None):
                pass


def test_bridge_fast_path_swaps_and_restores(tiny_hf_model):
    root = tiny_hf_model.original_model
    before, cfg = modules_of(tiny_hf_model), root.config
    mlp0 = root.model.layers[0]._modules["mlp"]
    with bridge_fast_path(root, attention="sdpa") as hf:
        assert hf is root and cfg._attn_implementation == "sdpa"
        inner = root.model.layers[0]._modules["mlp"]
        assert inner is mlp0._modules["_original_component"]  # the HF module itself, in the wrapper's slot
        assert not any("_original_component" in m._modules for m in root.modules())  # no wrapper left inside
    assert modules_of(tiny_hf_model) == before and cfg._attn_implementation == "eager"
    with pytest.raises(RuntimeError, match="inside"), bridge_fast_path(root):  # restored on errors too
        assert cfg._attn_implementation == "eager"  # no attention given: the config is left alone
        raise RuntimeError("inside")
    assert modules_of(tiny_hf_model) == before
    assert bridge_attention(tiny_hf_model) == "eager"


def test_act_module_names(tiny_hf_model):
    hf_mlp = tiny_hf_model.blocks[0].mlp.original_component
    assert act_module(hf_mlp) is hf_mlp.act_fn
    assert act_module(None) is None and act_module(torch.nn.Linear(2, 2)) is None
    for name in ACT_MODULE_NAMES:
        holder = torch.nn.Module()
        holder.add_module(name, torch.nn.GELU())
        assert act_module(holder) is getattr(holder, name)


@pytest.mark.parametrize("backend, attention, python, flags", [
    ("fast", None, "unknown backend 'fast'; use one of auto, hooks, native",
     "--backend must be one of auto, hooks, native, got 'fast'"),
    ("auto", "flash", "unknown attention 'flash'; use one of eager, sdpa",
     "--attention must be one of eager, sdpa, got 'flash'"),
    ("hooks", "sdpa", "attention='sdpa' needs the native backend; drop it or use backend='native'",
     "--attention sdpa needs the native backend; drop it or use --backend native"),
])
def test_check_backend(backend, attention, python, flags):
    for wording, message in ((False, python), (True, flags)):
        with pytest.raises(TLCultureError) as err:
            check_backend(backend, attention, flags=wording)
        assert str(err.value) == message
    for ok in [("auto", None), ("auto", "sdpa"), ("native", "sdpa"), ("hooks", "eager"), ("hooks", None)]:
        check_backend(*ok)
