"""TransformerLens 3.x `HookedTransformer` compatibility (what SAELens users run), stage by stage.

The main suite targets TL 4.x. This file runs every stage on TL 3.x `HookedTransformer`s (gated
with rotary positions and RMSNorm, dense with learned positions and LayerNorm): in-process when TL
3.x is the installed version, otherwise in the interpreter named by ``$TL3_PYTHON`` (`.ci/run`
builds one with `scripts/tl3_env.sh`, with the extras these stages need). Without either it is
skipped locally and fails under CI. A `HookedTransformer` goes to the run through Python:
``run_experiment(cfg, model=ht)`` (the command line loads TL 4.x bridges).
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

HAS_TL3 = False
try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: F401

    HAS_TL3 = True
except ImportError:
    pass

needs_tl3 = pytest.mark.skipif(not HAS_TL3, reason="TL 3.x not installed here (see test_in_tl3_interpreter)")
KINDS = ["gated_rotary", "dense_learned"]
TEXTS = {
    "en": ["the cat sat on the mat", "the dog sat on the cat and the mat", "a cat and a dog"] * 4,
    "de": ["der Hund schläft", "der Hund schläft auf der Matte im Haus", "ein Hund"] * 4,
}
N_CTX = 48


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.conftest import make_tiny_hf_checkpoint

    return AutoTokenizer.from_pretrained(str(make_tiny_hf_checkpoint(tmp_path_factory.mktemp("tok"), "llama")))


def _tiny_tl3(kind: str, tokenizer=None, d_vocab: int = 50):
    gated = kind == "gated_rotary"
    cfg = HookedTransformerConfig(
        d_model=16, d_head=4, n_heads=4, n_layers=2, n_ctx=N_CTX, d_vocab=len(tokenizer) if tokenizer else d_vocab,
        d_mlp=24, act_fn="silu" if gated else "gelu", gated_mlp=gated, seed=0,
        normalization_type="RMS" if gated else "LN", positional_embedding_type="rotary" if gated else "standard",
    )
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


@pytest.fixture(scope="module", params=KINDS)
def ht(request, tokenizer):
    return _tiny_tl3(request.param, tokenizer)


def _act(model):
    return F.silu if model.cfg.gated_mlp else F.gelu


def _set(model, mask, values):
    """Hand hooks that set act_fn(gate) of ``mask`` to ``values``: hook_post = v (× up projection, gated)."""
    store = {}

    def keep(x, hook):
        store["lin"] = x

    def post(x, hook):
        layer = int(hook.name.split(".")[1])
        m = mask[layer]
        v = values[layer, m].to(x.dtype)
        x[..., m] = v * store["lin"][..., m] if model.cfg.gated_mlp else v
        return x

    hooks = [(f"blocks.{layer}.mlp.hook_post", post) for layer in range(2)]
    if model.cfg.gated_mlp:
        hooks = [(f"blocks.{layer}.mlp.hook_pre_linear", keep) for layer in range(2)] + hooks
        hooks.sort(key=lambda h: (h[0].split(".")[1], "post" in h[0]))
    return hooks


@needs_tl3
@pytest.mark.parametrize("kind", KINDS)
def test_collect_and_ablate_on_hooked_transformer(kind):
    import tl_culture as tc

    model = _tiny_tl3(kind)
    rows = torch.randint(0, 50, (6, 10), generator=torch.Generator().manual_seed(0))
    stats = tc.collect(model, {"a": rows[:3], "b": rows[3:]}, seq_len=10, progress=False)
    assert stats.meta["backend"] == "hooks"
    with pytest.raises(tc.TLCultureError, match=f"^rows of 64 tokens are longer than .* context of {N_CTX} positions "
                                                r"\(cfg.n_ctx of the TransformerLens model\); use seq_len 48"):
        tc.collect(model, {"a": torch.randint(0, 50, (1, 64))}, seq_len=64, progress=False)
    act = _act(model)
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


@needs_tl3
@pytest.mark.parametrize("kind", KINDS)
def test_scale_and_set_on_hooked_transformer_equal_hand_hooks(kind):
    import tl_culture as tc

    model = _tiny_tl3(kind)
    rows = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 2, 24, dtype=torch.bool)
    mask[0, :, 3:9] = True
    ns = tc.NeuronSet(["g"], mask)
    values = torch.randn(2, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def scaled(x, hook):
        x[..., mask[0, int(hook.name.split(".")[1])]] *= 3.0
        return x

    with torch.no_grad():
        want = model.run_with_hooks(rows, fwd_hooks=[(f"blocks.{l}.mlp.hook_post", scaled) for l in range(2)])
        torch.testing.assert_close(model.run_with_hooks(rows, fwd_hooks=tc.scale(ns, "g", 3.0).fwd_hooks(model)), want)
        want = model.run_with_hooks(rows, fwd_hooks=_set(model, mask[0], values))
        got = model.run_with_hooks(rows, fwd_hooks=tc.set_to(ns, "g", values).fwd_hooks(model))
        torch.testing.assert_close(got, want)


@needs_tl3
def test_delta_nll_on_hooked_transformer_equals_a_hand_nll(ht):
    import tl_culture as tc
    from tl_culture.data.rows import encode

    mask = torch.zeros(2, 2, 24, dtype=torch.bool)
    mask[0, 1, :8], mask[1, 0, 4:12] = True, True
    ns = tc.NeuronSet(["en", "de"], mask)
    m = tc.delta_nll(ht, TEXTS, ns, seq_len=16, max_tokens=None, controls=1, bootstrap=50, progress=False,
                     allow_overlap=True)
    assert m.meta["backend"] == "hooks" and "TransformerBridge" in m.meta["backend_note"]
    for ei, e in enumerate(m.evals):
        rows = encode(tc.Corpus(e, documents=TEXTS[e]), ht.tokenizer, 16)
        with torch.no_grad():
            for gi, g in enumerate([None, *m.groups]):
                hooks = tc.ablate(ns, g).fwd_hooks(ht) if g else []
                logits = ht.run_with_hooks(rows.input_ids, fwd_hooks=hooks, attention_mask=rows.attention_mask)
                lp = F.log_softmax(logits[:, :-1].double(), -1).gather(-1, rows.input_ids[:, 1:, None])[..., 0]
                hand = float(-lp[rows.count_mask[:, 1:]].mean())
                got = m.baseline[ei] if g is None else m.ablated[gi - 1, ei]
                assert float(got) == pytest.approx(hand, abs=1e-5), (e, g)
    assert torch.isfinite(m.control_delta).tolist() == [[True, False], [False, True]]  # controls on own text


@needs_tl3
def test_top_examples_on_hooked_transformer_equal_a_hand_scan(ht):
    import tl_culture as tc
    from tl_culture.data.rows import encode

    chosen = torch.zeros(2, 24, dtype=torch.bool)
    chosen[1, :5] = True
    ex = tc.top_examples(ht, {"en": TEXTS["en"]}, chosen, k=3, window=2, progress=False)
    assert ex.meta["seq_len"] == N_CTX  # the default 512, fitted to cfg.n_ctx
    rows = encode(tc.Corpus("en", documents=TEXTS["en"]), ht.tokenizer, N_CTX)
    _, cache = ht.run_with_cache(rows.input_ids, attention_mask=rows.attention_mask)
    acts = _act(ht)(cache["blocks.1.mlp.hook_pre"])[rows.count_mask]  # [token, neuron]
    want = acts[:, :5].topk(3, dim=0).values.T  # [neuron, k]
    assert ex.layers.tolist() == [1] * 5 and ex.neurons.tolist() == list(range(5))
    torch.testing.assert_close(ex.activation[:, 0].float(), want.float(), atol=1e-5, rtol=0)


@needs_tl3
def test_decoding_on_hooked_transformer_runs_uncached_and_refuses_the_cache(ht):
    import tl_culture as tc
    from tl_culture.intervene.decode import cache_problem, decode

    assert "TransformerBridge" in cache_problem(ht)
    prompt = tc.data.rows.prompt_ids(ht, "the cat")
    with pytest.raises(tc.TLCultureError, match="^cannot decode with a KV cache: .*; use cache=False$"):
        decode(ht, [prompt], None, max_new_tokens=4, cache=True)
    got = decode(ht, [prompt], None, max_new_tokens=4)[0]
    ids = prompt[None]
    with torch.no_grad():
        for _ in range(4):  # the plain greedy loop
            ids = torch.cat([ids, ht(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert got == ids[0, len(prompt):].tolist()
    with pytest.raises(tc.TLCultureError, match=f"context of {N_CTX} positions"):
        decode(ht, [prompt], None, max_new_tokens=N_CTX)


@needs_tl3
def test_steer_eval_on_hooked_transformer_with_its_language_identifier(ht):
    import tl_culture as tc

    mask = torch.zeros(1, 2, 24, dtype=torch.bool)
    mask[0, 1, :6] = True
    edit = tc.scale(tc.NeuronSet(["de"], mask), "de", 4.0)
    res = tc.steer_eval(ht, ["the cat sat", "der Hund"], edit, "de", controls=1, max_new_tokens=4, modes=("greedy",))
    assert len(res.outputs) == 2 * 3  # two prompts x baseline, steered, one control
    for cond in ("baseline", "steered", "control"):
        rate, lo, hi = res.rate(cond, "greedy")
        assert 0.0 <= lo <= rate <= hi <= 1.0
    assert res.meta["identifier"]["name"] == "py3langid"


@needs_tl3
def test_run_experiment_with_a_hooked_transformer_and_its_report(tokenizer, tmp_path):
    from tl_culture.experiment.config import ExperimentConfig
    from tl_culture.experiment.run import run_experiment
    from tl_culture.report.write import report_stage, write_report

    model = _tiny_tl3("gated_rotary", tokenizer)
    files = {}
    for name, docs in TEXTS.items():
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(docs * 3) + "\n", encoding="utf-8")
    cfg = ExperimentConfig(out=str(tmp_path / "run"), languages={k: str(v) for k, v in files.items()},
                           cultures={k: str(v) for k, v in files.items()}, seq_len=24, top_rate=0.1, eval_tokens=40,
                           control_seeds=1, bootstrap=20, progress=False, examples=False)
    res = run_experiment(cfg, model=model, reporter=report_stage)
    assert set(res.nll) == {"language", "culture", "compound", "pure", "generic"}
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "Δ NLL under ablation" in html and "<td>statistics counted with</td><td>backend hooks" in html
    assert write_report(tmp_path / "run", model=model).is_file()
    with pytest.raises(Exception, match=f"context of {N_CTX} positions"):
        run_experiment(ExperimentConfig(**{**cfg.__dict__, "out": str(tmp_path / "long"), "seq_len": 64}), model=model)
    assert not (tmp_path / "long").exists()


@pytest.mark.skipif(HAS_TL3, reason="already running on TL 3.x")
def test_in_tl3_interpreter():
    from tests.conftest import run_in_tl3_interpreter

    run_in_tl3_interpreter(Path(__file__), "hooked_transformer", passed=13)
