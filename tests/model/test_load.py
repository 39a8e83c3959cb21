"""Integration on the embedded Gemma 3 270M with FLORES-200 (slow: about a minute or two)."""

import pytest
import torch

from tl_culture import MLPHooks, collect, identify

pytestmark = pytest.mark.slow

LANGS = ["en", "de", "da", "zh", "ru", "fa"]


def test_gemma_statistic_is_act_fn_of_gate(default_model):
    mlp = MLPHooks.from_model(default_model)
    assert (mlp.n_layers, mlp.d_mlp, mlp.gated, mlp.act_fn) == (18, 2048, True, "gelu_pytorch_tanh")
    ids = default_model.tokenizer("Die Katze schläft auf dem Sofa.", return_tensors="pt").input_ids
    stats = collect(default_model, {"a": ids, "b": ids}, seq_len=ids.shape[1], progress=False)
    with torch.inference_mode():
        _, cache = default_model.run_with_cache(ids, names_filter=lambda n: n.endswith("mlp.hook_pre"))
    want = torch.stack([(torch.nn.functional.gelu(cache[mlp.pre(l)], approximate="tanh") > 0).sum((0, 1))
                        for l in range(18)])
    assert torch.equal(stats.counts[0], want)


def test_flores_languages_get_neurons(default_model, shared_data):
    corpora = {lang: shared_data / "flores" / f"{lang}.txt" for lang in LANGS}
    stats = collect(default_model, corpora, seq_len=256, max_tokens=1000, progress=False)
    assert stats.tokens.tolist() == [1000] * 6
    ns = identify(stats)
    assert ns.meta["n_selected"] == round(18 * 2048 * 0.01) == 369
    assert ns.count() <= 369
    assert sum(n > 0 for n in ns.counts().values()) >= 5
    print(ns.table())
