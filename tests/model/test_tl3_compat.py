"""TransformerLens 3.x `HookedTransformer` compatibility (what SAELens users run).

The main suite targets TL 4.x. This file runs the same checks on TL 3.x: in-process when TL 3.x is the
installed version, otherwise in the interpreter named by ``$TL3_PYTHON`` (`.ci/run` builds one with
`scripts/tl3_env.sh`). Without either it is skipped locally and fails under CI.
"""

from pathlib import Path

import pytest
import torch

HAS_TL3 = False
try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: F401

    HAS_TL3 = True
except ImportError:
    pass



def _tiny_tl3(gated: bool):
    cfg = HookedTransformerConfig(
        d_model=16, d_head=4, n_heads=4, n_layers=2, n_ctx=32, d_vocab=50, d_mlp=24,
        act_fn="silu" if gated else "gelu", gated_mlp=gated, seed=0, normalization_type="LN",
    )
    return HookedTransformer(cfg).eval()


@pytest.mark.skipif(not HAS_TL3, reason="TL 3.x not installed here (see test_in_tl3_interpreter)")
@pytest.mark.parametrize("gated", [False, True])
def test_collect_and_ablate_on_hooked_transformer(gated):
    import tl_culture as tc

    model = _tiny_tl3(gated)
    rows = torch.randint(0, 50, (6, 10), generator=torch.Generator().manual_seed(0))
    stats = tc.collect(model, {"a": rows[:3], "b": rows[3:]}, seq_len=10, progress=False)
    act = torch.nn.functional.silu if gated else torch.nn.functional.gelu
    _, cache = model.run_with_cache(rows[:3])
    want = torch.stack([(act(cache[f"blocks.{l}.mlp.hook_pre"]) > 0).sum((0, 1)) for l in range(2)])
    assert torch.equal(stats.counts[0], want)
    ns = tc.identify(stats, top_rate=0.2)
    group = max(ns.groups, key=ns.count)
    assert ns.count(group) > 0
    with tc.ablate(ns, group).applied(model):
        out = model(rows[:1])

    def hand(x, hook):
        layer = int(hook.name.split(".")[1])
        x[..., ns.mask(group)[layer]] = 0
        return x

    ref = model.run_with_hooks(rows[:1], fwd_hooks=[(f"blocks.{l}.mlp.hook_post", hand) for l in range(2)])
    torch.testing.assert_close(out, ref)
    assert sum(len(h._forward_hooks) for h in model.hook_dict.values()) == 0


@pytest.mark.skipif(HAS_TL3, reason="already running on TL 3.x")
def test_in_tl3_interpreter():
    from tests.conftest import run_in_tl3_interpreter

    run_in_tl3_interpreter(Path(__file__), "hooked_transformer", passed=2)
