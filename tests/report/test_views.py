"""tl_culture.report: token values against hand computations, offline HTML, figures' plotted numbers."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tl_culture import NeuronSet, TLCultureError
from tl_culture.report import (
    colored_tokens,
    colored_tokens_multi,
    diagonal_mask,
    external_references,
    neuron_activations,
    plot_category_counts,
    plot_delta_nll,
    plot_layer_distribution,
    plot_overlap,
    save_views,
    token_activations,
    topk_tokens,
    views_html,
)
from tl_culture.report.html import circuitsvis_call, circuitsvis_library
from tl_culture.report.tokens import token_strings

IDS = torch.tensor([5, 17, 3, 42, 8, 8, 60, 1, 29, 33])


def _masks(seed: int = 1, groups: int = 3, layers: int = 3, d_mlp: int = 32, p: float = 0.15) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(groups, layers, d_mlp, generator=g) < p


def _gate_acts(model, ids) -> list[torch.Tensor]:
    """act_fn(hook_pre) per layer, [pos, d_mlp], from a full run_with_cache (the slow reference)."""
    act = F.silu if model.cfg.act_fn == "silu" else F.gelu
    _, cache = model.run_with_cache(ids[None])
    return [act(cache[f"blocks.{layer}.mlp.hook_pre"][0]) for layer in range(model.cfg.n_layers)]


# --------------------------------------------------------------------------- token values
@pytest.mark.parametrize("stat", ["mean", "fraction"])
def test_token_activations_match_hand_computation(any_model, stat):
    masks = _masks()
    masks[2] = False
    masks[2, 0, 4] = True  # a group whose only neuron is in layer 0: the forward stops late enough
    ns = NeuronSet(["en", "de", "zh"], masks)
    acts = token_activations(any_model, IDS, ns, stat=stat)
    a = _gate_acts(any_model, IDS)
    expected = torch.zeros(len(IDS), 3)
    for g in range(3):
        total = 0
        for layer in range(3):
            sel = a[layer][:, masks[g, layer]]
            expected[:, g] += (sel > 0).float().sum(1) if stat == "fraction" else sel.sum(1)
            total += int(masks[g, layer].sum())
        expected[:, g] /= total
    assert acts.values.shape == (len(IDS), 3)
    torch.testing.assert_close(acts.values, expected, rtol=1e-5, atol=1e-6)
    assert acts.labels == ["en", "de", "zh"]
    assert acts.tokens == [str(int(i)) for i in IDS]
    if stat == "fraction":
        assert float(acts.values.min()) >= 0 and float(acts.values.max()) <= 1


def test_token_activations_group_selection_and_empty_group(gated_model):
    masks = _masks()
    masks[1] = False
    ns = NeuronSet(["en", "de", "zh"], masks)
    acts = token_activations(gated_model, IDS, ns, groups=["zh", "de"])
    full = token_activations(gated_model, IDS, ns)
    assert acts.labels == ["zh", "de"]
    torch.testing.assert_close(acts.column("zh"), full.column("zh"))
    assert torch.equal(acts.column("de"), torch.zeros(len(IDS)))  # no neuron: 0, not NaN
    stacked = token_activations(gated_model, IDS, {"language": ns, "culture": ns.select(["en"])})
    assert stacked.labels == ["language:en", "language:de", "language:zh", "culture:en"]
    torch.testing.assert_close(stacked.values[:, 3], full.column("en"))


def test_text_is_tokenized_with_bos_which_is_not_shown(tiny_hf_model):
    tok = tiny_hf_model.tokenizer
    ns = NeuronSet(["a"], torch.ones(1, 2, 48, dtype=torch.bool))
    text = "the cat sat on the mat"
    acts = token_activations(tiny_hf_model, text, ns)
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert acts.token_ids.tolist() == body
    ids = torch.tensor([tok.bos_token_id, *body])
    a = _gate_acts(tiny_hf_model, ids)
    expected = (a[0].sum(1) + a[1].sum(1)) / 96
    torch.testing.assert_close(acts.values[:, 0], expected[1:], rtol=1e-5, atol=1e-6)
    assert "".join(acts.tokens) == text
    assert len(token_activations(tiny_hf_model, text, ns, max_tokens=3).tokens) == 3


def test_token_strings_keep_multibyte_characters_whole(tiny_hf_model):
    tok = tiny_hf_model.tokenizer
    text = "кошка спит 猫在睡觉 گربه"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_strings(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    # the naive per-token decode breaks at least one character of this text
    assert any("\ufffd" in tok.decode([i]) for i in ids)


def test_neuron_activations_and_topk_tokens(dense_model):
    a = _gate_acts(dense_model, IDS)
    toks, v = neuron_activations(dense_model, IDS, 2, 7)
    torch.testing.assert_close(v, a[2][:, 7])
    view = topk_tokens(dense_model, {"x": IDS, "y": IDS.flip(0)}, [(2, 7), (0, 3)], k=4)
    assert view.data["labels"] == ["L2.N7", "L0.N3"]
    torch.testing.assert_close(view.data["activations"]["x"][1], a[0][:, 3])
    torch.testing.assert_close(view.data["activations"]["y"][0], _gate_acts(dense_model, IDS.flip(0))[2][:, 7])
    top = torch.topk(a[2][:, 7], 4).values.tolist()
    # the values circuitsvis receives: per sample [neuron][token][1] -> its topk lists
    assert '"topkVals": [[[[' in view.call
    first = view.call.split('"topkVals": ')[1]
    got = [row[0] for row in eval(first[: first.index("]]]]") + 4])[0][0]]  # sample x, neuron L2.N7
    np.testing.assert_allclose(got, top, rtol=1e-6)


def test_token_view_errors(gated_model, tiny_hf_model):
    ns = NeuronSet(["en"], _masks(groups=1))
    with pytest.raises(TLCultureError, match="stat must be one of mean, fraction, got 'max'"):
        token_activations(gated_model, IDS, ns, stat="max")
    with pytest.raises(TLCultureError, match="no tokenizer; pass the text as a 1-D tensor"):
        token_activations(gated_model, "hello", ns)
    with pytest.raises(TLCultureError, match="need a non-empty text"):
        token_activations(tiny_hf_model, "   ", NeuronSet(["en"], torch.zeros(1, 2, 48, dtype=torch.bool)))
    with pytest.raises(TLCultureError, match="neuron set is for 3 layers x 16 neurons, the model has 3 x 32"):
        token_activations(gated_model, IDS, NeuronSet(["en"], torch.zeros(1, 3, 16, dtype=torch.bool)))
    with pytest.raises(TLCultureError, match="unknown group 'fr'; this neuron set has en"):
        token_activations(gated_model, IDS, ns, groups=["fr"])
    with pytest.raises(TLCultureError, match="non-empty dict name -> NeuronSet"):
        token_activations(gated_model, IDS, {})
    with pytest.raises(TLCultureError, match="neuron L3.N0 does not exist; the model has 3 layers x 32 neurons"):
        neuron_activations(gated_model, IDS, 3, 0)
    with pytest.raises(TLCultureError, match="needs at least one text"):
        topk_tokens(gated_model, {}, [(0, 0)])
    with pytest.raises(TLCultureError, match="needs at least one \\(layer, neuron\\) pair"):
        topk_tokens(gated_model, {"x": IDS}, [])
    with pytest.raises(TLCultureError, match="k must be at least 1, got 0"):
        topk_tokens(gated_model, {"x": IDS}, [(0, 0)], k=0)


# --------------------------------------------------------------------------- circuitsvis, offline HTML
def test_views_are_circuitsvis_objects_that_never_touch_the_network(gated_model, monkeypatch, tmp_path):
    from circuitsvis.utils import render as cv_render
    from circuitsvis.utils.render import RenderedHTML

    def no_network():
        raise AssertionError("circuitsvis pinged the network")

    monkeypatch.setattr(cv_render, "internet_on", no_network)
    ns = NeuronSet(["en", "de", "zh"], _masks())
    multi = colored_tokens_multi(gated_model, IDS, ns)
    single = colored_tokens(gated_model, IDS, ns, "de")
    assert isinstance(multi, RenderedHTML) and isinstance(single, RenderedHTML)
    html = multi._repr_html_()
    assert html == multi.local_src
    assert html.count(circuitsvis_library()) == 1
    assert f'<div id="{multi.element_id}" class="cv-view"></div>' in html  # closed, unlike circuitsvis' <div/>
    assert "unpkg.com" in multi.cdn_src and "unpkg.com" not in html
    assert external_references(html) == []
    torch.testing.assert_close(single.data.values[:, 0], multi.data.column("de"))
    assert multi.component == "ColoredTokensMulti" and single.component == "ColoredTokens"
    path = single.save(tmp_path / "single.html", title="de neurons")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>de neurons</title>" in page
    assert external_references(page) == []
    both = save_views(tmp_path / "both.html", [("a", multi), ("b", single)]).read_text(encoding="utf-8")
    assert both.count(circuitsvis_library()) == 1  # the 1.3 MB library once per page
    assert both.count("CircuitsVis.render(") >= 2


def test_views_html_escapes_script_breaking_tokens():
    from circuitsvis.tokens import colored_tokens as cv_colored_tokens

    view = cv_colored_tokens(["</script><img src=//evil.example/x>", "ok"], [1.0, 2.0])
    element_id, component, call = circuitsvis_call(view.local_src)
    assert component == "ColoredTokens" and element_id.startswith("circuits-vis-")
    assert "</script>" not in call and "<\\/script>" in call
    page = views_html([("<b>title</b>", view)])
    assert "&lt;b&gt;title&lt;/b&gt;" in page
    # the only </script> are the ends of our two elements (library, then the render call)
    assert page.count("</script>") == 2 and page.endswith("</script></div>")
    assert "<!--" not in page and "<\\/script>" in circuitsvis_library()  # escaped, not deleted
    with pytest.raises(TLCultureError, match="unexpected circuitsvis output"):
        circuitsvis_call("<div>no view</div>")


@pytest.mark.parametrize("snippet", [
    '<script src="https://cdn.example.com/x.js"></script>',
    "<img src=//example.com/a.png>",
    '<link rel="stylesheet" href="style.css">',
    "<link rel=preconnect href=https://fonts.gstatic.com>",
    "<style>@import url(fonts.css);</style>",
    "<style>body{background:url('http://example.com/bg.png')}</style>",
    '<script type="module">import { render } from "https://unpkg.com/circuitsvis/dist/cdn/esm.js";</script>',
    '<script>import("//example.com/m.js")</script>',
    '<iframe src="about:blank"></iframe>',
    '<svg><image xlink:href="http://example.com/i.png"/></svg>',
    '<img srcset="http://example.com/a.png 2x">',
    '<meta http-equiv="refresh" content="0; url=http://example.com">',
])
def test_external_references_finds_every_kind_of_request(snippet):
    assert external_references(f"<html><body>{snippet}</body></html>") != []


def test_external_references_ignores_what_loads_nothing():
    text = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
        '<use xlink:href="#m1"/></svg><a href="#nll">Δ NLL</a><img src="data:image/png;base64,AAAA">'
        "<p>see https://arxiv.org/abs/2405.00000</p>"
    )
    assert external_references(text) == []
    assert external_references(circuitsvis_library()) == []


def test_import_tl_culture_does_not_import_matplotlib_or_circuitsvis():
    code = ("import sys, tl_culture, tl_culture.report.write, tl_culture.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'circuitsvis')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- figures
def _set(groups, members, n_layers=3, d_mlp=4):
    """NeuronSet from {group: [(layer, neuron), ...]}."""
    masks = torch.zeros(len(groups), n_layers, d_mlp, dtype=torch.bool)
    for gi, g in enumerate(groups):
        for layer, j in members.get(g, []):
            masks[gi, layer, j] = True
    return NeuronSet(groups, masks)


LANG = _set(["en", "de"], {"en": [(0, 0), (1, 1), (2, 2), (2, 3)], "de": [(2, 2), (2, 3), (1, 0)]})
CULT = _set(["en", "de"], {"en": [(2, 2), (2, 1)], "de": [(2, 3), (0, 1), (0, 2)]})


def test_layer_distribution_plots_the_per_layer_counts(tmp_path):
    f = plot_layer_distribution({"language": LANG, "culture": CULT})
    np.testing.assert_array_equal(f.data["counts"]["language"], [[1, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(f.data["counts"]["culture"], [[0, 0, 2], [2, 0, 1]])
    assert f.data["groups"]["culture"] == ["en", "de"]
    lines = f.fig.axes[1].get_lines()
    np.testing.assert_array_equal(lines[1].get_ydata(), [2, 0, 1])  # what is drawn is the data
    assert [t.get_text() for t in f.fig.axes[0].get_legend().get_texts()] == ["en (4)", "de (3)"]
    share = plot_layer_distribution(LANG, share=True)
    np.testing.assert_allclose(share.data["counts"]["neurons"], [[25, 25, 50], [0, 100 / 3, 200 / 3]])
    paths = f.save(tmp_path)
    assert [p.name for p in paths] == ["layers.png", "layers.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text(encoding="utf-8")
    assert svg.startswith("<svg") and "<?xml" not in svg and external_references(svg) == []


def test_overlap_plots_jaccard_by_hand():
    f = plot_overlap(CULT, LANG, labels=("culture", "language"))
    # en: culture {(2,2),(2,1)} vs language en {(0,0),(1,1),(2,2),(2,3)}: |∩| 1, |∪| 5
    # en vs de-language {(2,2),(2,3),(1,0)}: 1/4; de-culture {(2,3),(0,1),(0,2)} vs en: 1/6, vs de: 1/5
    np.testing.assert_allclose(f.data["jaccard"], [[1 / 5, 1 / 4], [1 / 6, 1 / 5]])
    np.testing.assert_array_equal(f.data["marked"], [[True, False], [False, True]])
    np.testing.assert_allclose(f.fig.axes[0].images[0].get_array(), f.data["jaccard"])
    assert len(f.fig.axes[0].patches) == 2  # the two paired cells are outlined
    texts = sorted(t.get_text() for t in f.fig.axes[0].texts)
    assert texts == sorted(["0.20", "0.25", "0.17", "0.20"])
    same = plot_overlap(LANG)
    np.testing.assert_allclose(same.data["jaccard"], [[1.0, 2 / 5], [2 / 5, 1.0]])
    shown = np.asarray(same.fig.axes[0].images[0].get_array(), dtype=float)
    assert np.isnan(shown[0, 0]) and shown[0, 1] == pytest.approx(0.4)  # trivial diagonal blanked


def test_category_counts_plot_every_category():
    from tl_culture import culture_categories

    cats = culture_categories(LANG, CULT)
    f = plot_category_counts(cats)
    # compound en = {(2,2)}, pure en = {(2,1)}; compound de = {(2,3)}, pure de = {(0,1),(0,2)}; generic = ∅
    np.testing.assert_array_equal(f.data["counts"], [[4, 2, 1, 1], [3, 3, 1, 2]])
    assert f.data["categories"] == ["language", "culture", "compound", "pure"] and f.data["generic"] == 0
    heights = [p.get_height() for p in f.fig.axes[0].patches]
    np.testing.assert_array_equal(heights, f.data["counts"].T.flatten())  # bars drawn per category
    with pytest.raises(TLCultureError, match="category counts need the culture category"):
        plot_category_counts({"language": LANG})


def _nll(groups, evals, ci=True, control=True):
    base = np.array([2.0, 3.0, 4.0, 5.0][: len(evals)])
    ablated = base[None] + np.arange(len(groups) * len(evals)).reshape(len(groups), len(evals)) / 10
    m = SimpleNamespace(groups=groups, evals=evals, baseline=base, ablated=ablated,
                        delta=ablated - base[None], delta_ci_low=None, delta_ci_high=None,
                        control_delta=None, control_ci_low=None, control_ci_high=None, tokens=None, meta={})
    if ci:
        m.delta_ci_low, m.delta_ci_high = m.delta - 0.05, m.delta + 0.07
    if control:
        m.control_delta = np.full((len(groups), len(evals)), 0.01) + np.arange(len(groups))[:, None] / 100
        m.control_ci_low, m.control_ci_high = m.control_delta - 0.01, m.control_delta + 0.02
    return m


def test_delta_nll_heatmap_diagonal_control_row_and_ci_bars():
    m = _nll(["en", "de"], ["lang:en", "lang:de", "cult:en", "cult:de"])
    f = plot_delta_nll(m)
    d = f.data
    np.testing.assert_allclose(d["delta"], [[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]])
    np.testing.assert_array_equal(d["diagonal"], [[1, 0, 1, 0], [0, 1, 0, 1]])
    np.testing.assert_allclose(d["control_row"], [0.015] * 4)  # mean over groups of 0.01 and 0.02
    heat = np.asarray(f.fig.axes[0].images[0].get_array(), dtype=float)
    np.testing.assert_allclose(heat[:2], d["delta"])
    np.testing.assert_allclose(heat[3], d["control_row"])
    assert len([p for p in f.fig.axes[0].patches]) == 4  # four outlined own-text cells
    bars = d["bars"]
    assert bars["labels"] == ["en → lang:en", "en → cult:en", "de → lang:de", "de → cult:de"]
    np.testing.assert_allclose(bars["delta"], [0.0, 0.2, 0.5, 0.7])
    np.testing.assert_allclose(bars["ci_low"], [-0.05, 0.15, 0.45, 0.65])
    np.testing.assert_allclose(bars["control"], [0.01, 0.01, 0.02, 0.02])
    bx = f.fig.axes[1]  # heatmap, bar panel, then the colorbar
    heights = [p.get_height() for p in bx.patches]
    np.testing.assert_allclose(heights, [0.0, 0.2, 0.5, 0.7, 0.01, 0.01, 0.02, 0.02])
    # error bars: segments from ci_low to ci_high around each ablated bar
    from matplotlib.container import BarContainer

    bar_container = next(c for c in bx.containers if isinstance(c, BarContainer))
    segs = bar_container.errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([s[0][1] for s in segs], bars["ci_low"])
    np.testing.assert_allclose([s[1][1] for s in segs], bars["ci_high"])


def test_delta_nll_control_row_averages_the_cells_with_a_control():
    m = _nll(["en", "de"], ["lang:en", "lang:de", "other"])
    m.control_delta = np.array([[0.01, np.nan, np.nan], [np.nan, 0.03, np.nan]])  # controls on own text only
    f = plot_delta_nll(m)
    np.testing.assert_allclose(f.data["control_row"], [0.01, 0.03, np.nan])
    heat = np.asarray(f.fig.axes[0].images[0].get_array(), dtype=float)
    np.testing.assert_allclose(heat[3], [0.01, 0.03, np.nan])


def test_delta_nll_without_optional_fields_and_one_group():
    f = plot_delta_nll(_nll(["generic"], ["cult:en", "cult:de"], ci=False, control=False))
    assert f.data["control_row"] is None and not f.data["diagonal"].any()
    assert f.data["bars"]["labels"] == ["cult:en", "cult:de"]  # one group: every cell is a bar
    assert f.data["bars"]["ci_low"] is None and f.data["bars"]["control"] is None
    heat = np.asarray(f.fig.axes[0].images[0].get_array(), dtype=float)
    assert heat.shape == (1, 2)
    no_bars = plot_delta_nll(_nll(["en", "de"], ["x", "y"], ci=False, control=False))
    assert no_bars.data["bars"]["labels"] == [] and len(no_bars.fig.axes) == 2  # heatmap + colorbar only
    bad = _nll(["en"], ["x", "y"])
    bad.delta = np.zeros((2, 2))
    with pytest.raises(TLCultureError, match=r"delta has shape \(2, 2\), expected \(1, 2\)"):
        plot_delta_nll(bad)


def test_diagonal_mask_with_pairs():
    got = diagonal_mask(["english", "de"], ["lang:en", "cult:english", "de", "lang:fr"], {"english": "en"})
    np.testing.assert_array_equal(got, [[1, 1, 0, 0], [0, 0, 1, 0]])
