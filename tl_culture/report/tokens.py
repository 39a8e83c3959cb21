"""Token views: how strongly each group's neurons fire on each token of a text (circuitsvis).

For a neuron set with masks ``M[g, l, j]`` and a text of T tokens, the value of group g at token t
is the mean activation of the group's selected neurons (``stat="mean"``, the default):

    a[l, t, j] = act_fn(blocks.{l}.mlp.hook_pre[t, j])          (the LAPE statistic, gate side)
    v[t, g]    = Σ_{l, j} M[g, l, j] · a[l, t, j]  /  Σ_{l, j} M[g, l, j]

or the share of them that fire (``stat="fraction"``): the same with ``a > 0`` in place of ``a``.
A group with no neuron gets 0. The values are computed by reducing hooks on ``hook_pre``
(a ``[pos, d_mlp] @ [d_mlp, group]`` product per layer) and the forward stops after the last
layer that holds a selected neuron, so nothing of size ``[layer, pos, d_mlp]`` is ever stored.

The views are circuitsvis objects (`RenderedHTML`): they show in a notebook and save as one
offline HTML file (circuitsvis' JavaScript inlined once; no CDN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture.data.rows import bos_prefix, prompt_ids
from tl_culture.errors import TLCultureError
from tl_culture.explore.text import decode_incrementally
from tl_culture.model.context import check_seq_len, model_context
from tl_culture.model.forward import run_to_layer
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import model_device, model_name
from tl_culture.selection.neurons import NeuronSet

STATS = ("mean", "fraction")


@dataclass
class TokenActivations:
    """Per-token values of several neuron groups on one text.

    Attributes:
        tokens: the text's tokens as strings (BOS excluded).
        token_ids: ``int64[pos]``.
        values: ``float32[pos, group]``: the statistic of each group at each token.
        labels: one label per group (column of ``values``).
        stat: ``"mean"`` (mean act_fn(gate) over the group's neurons) or ``"fraction"``.
    """

    tokens: list[str]
    token_ids: Int[torch.Tensor, " pos"]
    values: Float[torch.Tensor, "pos group"]
    labels: list[str]
    stat: str = "mean"
    meta: dict[str, Any] = field(default_factory=dict)

    def column(self, label: str) -> Float[torch.Tensor, " pos"]:
        if label not in self.labels:
            raise TLCultureError(f"unknown group {label!r}; these values have {', '.join(self.labels)}")
        return self.values[:, self.labels.index(label)]


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token adds, decoded incrementally (`decode_incrementally`).

    Decoding ids one by one breaks characters that a byte-level tokenizer splits over several
    tokens (each piece decodes to U+FFFD). Here token i gets ``tokenizer.decode(ids[:i+1])`` minus
    the text already shown; a token that ends inside a character gets ``""`` and the token
    completing it shows the whole character. Where the decoding is not prefix-stable, a token gets
    ``tokenizer.decode([id])``.
    """
    ids = [int(i) for i in ids]
    return decode_incrementally(tokenizer.decode, ids, lambda i: tokenizer.decode([ids[i]]))


def _tokenize(model: Any, text: str | torch.Tensor, max_tokens: int | None) -> tuple[torch.Tensor, int, list[str]]:
    """(ids with BOS first when the tokenizer has one, number of prefix tokens, str tokens without prefix)."""
    ids, n_prefix, strings = _ids(model, text, max_tokens)
    context = model_context(model)
    check_seq_len(context, len(ids), name=model_name(model), what="a token view of",
                  fix=f"keep at most {context.limit} tokens (max_tokens, --max-tokens)")
    return ids, n_prefix, strings


def _ids(model: Any, text: str | torch.Tensor, max_tokens: int | None) -> tuple[torch.Tensor, int, list[str]]:
    tok = getattr(model, "tokenizer", None)
    if isinstance(text, torch.Tensor):
        ids = text.flatten().long()
        if max_tokens is not None:
            ids = ids[:max_tokens]
        if tok is None:
            return ids, 0, [str(int(i)) for i in ids]
        return ids, 0, token_strings(tok, ids.tolist())
    if not isinstance(text, str) or not text.strip():
        raise TLCultureError("token views need a non-empty text (or a 1-D tensor of token ids)")
    if tok is None:
        raise TLCultureError("this model has no tokenizer; pass the text as a 1-D tensor of token ids")
    ids, n_prefix = prompt_ids(tok, text, max_tokens), len(bos_prefix(tok))
    return ids, n_prefix, token_strings(tok, ids[n_prefix:].tolist())


def _as_neuron_set(neurons: NeuronSet | Mapping[str, NeuronSet]) -> NeuronSet:
    """One NeuronSet; a mapping ``prefix -> NeuronSet`` is stacked with labels ``prefix:group``."""
    if isinstance(neurons, NeuronSet):
        return neurons
    if not isinstance(neurons, Mapping) or not neurons:
        raise TLCultureError("neurons must be a NeuronSet or a non-empty dict name -> NeuronSet")
    sets = list(neurons.items())
    first = sets[0][1]
    for _, ns in sets[1:]:
        first._check_shape(ns)
    groups = [f"{prefix}:{g}" for prefix, ns in sets for g in ns.groups]
    return NeuronSet(groups, torch.cat([ns.masks for _, ns in sets]), {})


def token_activations(
    model: Any,
    text: str | torch.Tensor,
    neurons: NeuronSet | Mapping[str, NeuronSet],
    groups: Sequence[str] | None = None,
    *,
    stat: str = "mean",
    max_tokens: int | None = 256,
) -> TokenActivations:
    """Per token, how strongly each group's selected neurons fire (see the module docstring).

    Args:
        model: a TransformerLens model with MLP hooks (and a tokenizer, for text).
        text: the text, or a 1-D tensor of token ids (used as is, no BOS added).
        neurons: a `NeuronSet`, or a dict ``name -> NeuronSet`` (labels become ``name:group``).
        groups: the groups to show, in order; default all.
        stat: ``"mean"`` (mean act_fn(gate) over the group's neurons) or ``"fraction"`` (share
            of them with act_fn(gate) > 0).
        max_tokens: keep at most this many tokens of the text.

    Returns:
        `TokenActivations` with ``values[pos, group]`` (BOS excluded).
    """
    if stat not in STATS:
        raise TLCultureError(f"stat must be one of {', '.join(STATS)}, got {stat!r}")
    ns = _as_neuron_set(neurons)
    if groups is not None:
        ns = ns.select(list(groups))
    mlp = MLPHooks.from_model(model)
    mlp.check_neurons(ns.n_layers, ns.d_mlp)
    ids, n_prefix, str_tokens = _tokenize(model, text, max_tokens)
    if len(ids) - n_prefix < 1:
        raise TLCultureError("the text gives no tokens; give some text")
    dev = model_device(model)
    masks = ns.masks.to(dev)  # [group, layer, neuron]
    n = masks.sum(dim=2)  # [group, layer]
    total = n.sum(dim=1).clamp(min=1).float()  # [group]
    used = [layer for layer in range(mlp.n_layers) if bool(n[:, layer].any())]
    acc = torch.zeros(len(ids), len(ns.groups), dtype=torch.float32, device=dev)

    def make(layer: int):
        name = mlp.pre(layer)
        w = masks[:, layer].T.float()  # [neuron, group]

        def hook(pre: torch.Tensor, hook: Any = None) -> None:
            mlp.check_width(pre, name)
            a = mlp.act(pre[0].float())  # [pos, neuron]
            if stat == "fraction":
                a = (a > 0).float()
            acc.add_(a @ w)

        return hook

    if used:
        with torch.inference_mode():
            hooks = [(mlp.pre(layer), make(layer)) for layer in used]
            run_to_layer(model, ids[None].to(dev), hooks, stop_at=mlp.pre(used[-1]))
    values = (acc / total[None]).cpu()[n_prefix:]
    meta = {"n_neurons": dict(zip(ns.groups, ns.masks.sum(dim=(1, 2)).tolist(), strict=True))}
    return TokenActivations(str_tokens, ids[n_prefix:].cpu(), values, list(ns.groups), stat, meta)


def neuron_activations(
    model: Any, text: str | torch.Tensor, layer: int, neuron: int, *, max_tokens: int | None = 256
) -> tuple[list[str], Float[torch.Tensor, " pos"]]:
    """``act_fn(hook_pre)`` of one neuron at each token of ``text`` (BOS excluded)."""
    mlp = MLPHooks.from_model(model)
    if not (0 <= layer < mlp.n_layers and 0 <= neuron < mlp.d_mlp):
        raise TLCultureError(
            f"neuron L{layer}.N{neuron} does not exist; the model has {mlp.n_layers} layers x {mlp.d_mlp} neurons"
        )
    ids, n_prefix, str_tokens = _tokenize(model, text, max_tokens)
    out: list[torch.Tensor] = []

    def hook(pre: torch.Tensor, hook: Any = None) -> None:
        out.append(mlp.act(pre[0, :, neuron].float()).cpu())

    with torch.inference_mode():
        run_to_layer(model, ids[None].to(model_device(model)), [(mlp.pre(layer), hook)], stop_at=mlp.pre(layer))
    return str_tokens, out[0][n_prefix:]


# --------------------------------------------------------------------------- circuitsvis views
def _circuitsvis():
    try:
        import circuitsvis  # noqa: F401
        from circuitsvis.utils.render import RenderedHTML
    except ImportError:
        raise TLCultureError("token views need circuitsvis: pip install 'tl-culture[viz]'") from None
    return RenderedHTML


def _view(rendered: Any, data: Any):
    """Wrap a circuitsvis `RenderedHTML` so that its notebook display is always the offline source."""
    from tl_culture.report.html import circuitsvis_call, render_view

    RenderedHTML = _circuitsvis()

    class TokenView(RenderedHTML):
        """A circuitsvis `RenderedHTML` that never pings the network to choose a source.

        Attributes:
            data: the numbers shown (`TokenActivations`, or a dict for top-k views).
            component: the circuitsvis component name.
            element_id: the id of the ``<div>`` the view renders into.
            call: the ``CircuitsVis.render(...)`` JavaScript of this view (without the library).
        """

        def __init__(self) -> None:
            self.element_id, self.component, self.call = circuitsvis_call(rendered.local_src)
            super().__init__(render_view(self.element_id, self.call), rendered.cdn_src)
            self.data = data

        def _repr_html_(self) -> str:  # circuitsvis would ping google.com, then load from a CDN
            return self.local_src

        def save(self, path: str | os.PathLike, title: str | None = None) -> Path:
            """Write one offline HTML page holding this view; returns the path."""
            from tl_culture.report.html import save_views

            return save_views(path, [(title or self.component, self)], title=title or self.component)

    return TokenView()


def colored_tokens(
    model: Any,
    text: str | torch.Tensor,
    neurons: NeuronSet | Mapping[str, NeuronSet],
    group: str,
    *,
    stat: str = "mean",
    max_tokens: int | None = 256,
):
    """circuitsvis ``ColoredTokens``: each token colored by how strongly ``group``'s neurons fire.

    Returns:
        A circuitsvis `RenderedHTML` (shows in a notebook; ``.save(path)`` writes offline HTML;
        ``.data`` holds the `TokenActivations`).
    """
    acts = token_activations(model, text, neurons, [group], stat=stat, max_tokens=max_tokens)
    vals = acts.values[:, 0]
    top = max(float(vals.abs().max()), 1e-6)
    _circuitsvis()
    from circuitsvis.tokens import colored_tokens as cv_colored_tokens

    return _view(cv_colored_tokens(acts.tokens, vals, min_value=-top, max_value=top), acts)


def colored_tokens_multi(
    model: Any,
    text: str | torch.Tensor,
    neurons: NeuronSet | Mapping[str, NeuronSet],
    groups: Sequence[str] | None = None,
    *,
    stat: str = "mean",
    max_tokens: int | None = 256,
):
    """circuitsvis ``ColoredTokensMulti``: the values of every group side by side (pick one to color by).

    Returns:
        A circuitsvis `RenderedHTML` with ``.data`` holding the `TokenActivations`.
    """
    acts = token_activations(model, text, neurons, groups, stat=stat, max_tokens=max_tokens)
    _circuitsvis()
    from circuitsvis.tokens import colored_tokens_multi as cv_colored_tokens_multi

    return _view(cv_colored_tokens_multi(acts.tokens, acts.values, acts.labels), acts)


def topk_tokens(
    model: Any,
    texts: Mapping[str, str | torch.Tensor],
    neurons: Sequence[tuple[int, int]],
    *,
    k: int = 10,
    max_tokens: int | None = 256,
):
    """circuitsvis ``TopkTokens``: the tokens of each corpus on which chosen neurons fire most.

    Args:
        model: a TransformerLens model.
        texts: corpus name -> a sample text of that corpus (one sample per corpus).
        neurons: ``(layer, neuron)`` pairs; one row of the view each (labelled ``L{layer}.N{neuron}``).
        k: top and bottom tokens shown per sample.
        max_tokens: tokens kept per text.

    Returns:
        A circuitsvis `RenderedHTML`; ``.data`` is ``{"tokens": {name: [str]}, "activations":
        {name: float[neuron, pos]}, "labels": [...]}``.
    """
    if not texts:
        raise TLCultureError("topk_tokens needs at least one text (corpus name -> text)")
    if not neurons:
        raise TLCultureError("topk_tokens needs at least one (layer, neuron) pair")
    if k < 1:
        raise TLCultureError(f"k must be at least 1, got {k}")
    labels = [f"L{int(layer)}.N{int(j)}" for layer, j in neurons]
    tokens, acts = {}, {}
    for name, text in texts.items():
        rows = []
        for layer, j in neurons:
            toks, a = neuron_activations(model, text, int(layer), int(j), max_tokens=max_tokens)
            rows.append(a)
        tokens[name], acts[name] = toks, torch.stack(rows)  # [neuron, pos]
    # circuitsvis wants per sample float[first_dim, pos, third_dim]: neurons x tokens x 1
    arrays = [acts[n][:, :, None].double().numpy() for n in texts]
    data = {"tokens": tokens, "activations": acts, "labels": labels}
    _circuitsvis()
    from circuitsvis.topk_tokens import topk_tokens as cv_topk_tokens

    view = cv_topk_tokens(
        [tokens[n] for n in texts], arrays, max_k=k, first_dimension_name="Neuron",
        third_dimension_name="act_fn(gate)", sample_labels=list(texts), first_dimension_labels=labels,
    )
    return _view(view, data)
