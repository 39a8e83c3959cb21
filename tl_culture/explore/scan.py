"""`top_examples`: stream each group's corpus once and keep every chosen neuron's top activating contexts.

Per group, batches ``b = 0, 1, ...`` of ``batch_size`` rows (`tl_culture.data.rows.RowStream`,
the rows `tl_culture.counting.collect.collect` counts) run through the model with a hook on
``blocks.{l}.mlp.hook_pre`` of every layer holding a chosen neuron; the forward stops after the
last of them (`tl_culture.model.forward.run_to_layer`). Each hook applies ``act_fn`` to the layer
(in the model's dtype, as the model does), takes the chosen columns and updates a
`tl_culture.explore.topk.RunningTopK` on the model's device: nothing of size ``[layer, pos, d_mlp]``
is stored, only ``O(neurons × groups × k × window)``.

Under an initialised ``torch.distributed`` process group (``torchrun``), rank r of W runs the
batches with ``b % W == r``; the ranks gather their top k and merge them with the same order
(value, then position), so every rank returns what one process computes with the same batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Int

from tl_culture._version import __version__
from tl_culture.counting.ranks import all_reduce_sum, rank_world, reduce_device
from tl_culture.data.corpus import as_corpora
from tl_culture.data.rows import RowStream
from tl_culture.errors import TLCultureError
from tl_culture.explore.examples import NeuronExamples, neuron_list
from tl_culture.explore.text import REPLACEMENT, TokenText
from tl_culture.explore.topk import FIELDS, RunningTopK
from tl_culture.model.context import row_length
from tl_culture.model.forward import run_to_layer
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import model_device, model_name

#: Tokens per row of `top_examples` unless the model's context is shorter.
DEFAULT_SEQ_LEN = 512


def top_examples(
    model: Any,
    corpora: Mapping[str, Any],
    neurons: Any,
    *,
    k: int = 16,
    window: int = 12,
    max_tokens: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    pack: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    allow_long_context: bool = False,
) -> NeuronExamples:
    """Each chosen neuron's k highest activations per group, with their contexts (see the module docstring).

    Long because it documents the twelve settings of the public API; the body is a loop over groups.

    Args:
        model: a TransformerLens model (TL 4.x `TransformerBridge` or TL 3.x `HookedTransformer`).
        corpora: group name -> corpus-like (`Corpus`, path, list of strings, or ``[row, pos]``
            token tensor), as for `collect`.
        neurons: a `NeuronSet` (the union of its groups), a ``bool[layer, neuron]`` mask or
            ``(layer, neuron)`` pairs.
        k: contexts kept per neuron and group.
        window: tokens kept on each side of a context's maximum (within its row).
        max_tokens: cap on the tokens scanned per group (the first ones of its row stream).
        seq_len: tokens per row; default `DEFAULT_SEQ_LEN`, or the model's context where that is
            shorter (`tl_culture.model.context`).
        batch_size, pack: the batches and rows, as for `collect`.
        allow_long_context: as for `collect`.
        device: where to run; default the model's device.
        progress: show a tqdm bar per group.
        distributed: use the initialised process group; default: whenever one is initialised.

    Returns:
        `NeuronExamples` over the groups of ``corpora``, in order.
    """
    if k < 1 or window < 0 or batch_size < 1:
        raise TLCultureError(f"k and batch_size must be at least 1, window at least 0; got {k}, {batch_size}, {window}")
    mlp = MLPHooks.from_model(model)
    seq_len, _ = row_length(model, seq_len, DEFAULT_SEQ_LEN, name=model_name(model),
                            allow_long_context=allow_long_context)
    layers, idx = neuron_list(neurons, mlp)
    named = as_corpora(corpora)
    dev = torch.device(device) if device is not None else model_device(model)
    rank, world = rank_world() if distributed is not False else (0, 1)
    tokenizer = getattr(model, "tokenizer", None)
    per_group, scanned = [], []
    for g, corpus in named.items():
        stream = RowStream(corpus, tokenizer, seq_len, block_rows=batch_size, pack=pack, max_tokens=max_tokens)
        scan = _GroupScan(model, mlp, layers, idx, k, window, dev)
        n_tokens = scan.run(stream, rank, world, progress, f"examples {g}")
        top, n_tokens = _merge_ranks(scan.ranked(), n_tokens, dev, world)
        per_group.append(top)
        scanned.append(n_tokens)
    meta = {
        "model": model_name(model), "hook": "act_fn(blocks.{l}.mlp.hook_pre)", "act_fn": mlp.act_fn,
        "k": k, "window": window, "seq_len": seq_len, "batch_size": batch_size, "pack": pack,
        "max_tokens": max_tokens, "world_size": world, "tl_culture": __version__,
        "corpora": {g: {"fingerprint": c.fingerprint, "source": c.source} for g, c in named.items()},
    }
    return _assemble(list(named), layers, idx, per_group, scanned, seq_len, TokenText(tokenizer), meta)


class _GroupScan:
    """The running top k of every chosen neuron over one group's batches, one `RunningTopK` per layer."""

    def __init__(self, model: Any, mlp: MLPHooks, layers: torch.Tensor, idx: torch.Tensor, k: int, window: int,
                 dev: torch.device) -> None:
        self.model, self.mlp, self.dev = model, mlp, dev
        self.used = sorted(set(layers.tolist()))
        self.cols = {layer: idx[layers == layer].to(dev) for layer in self.used}
        self.states = {layer: RunningTopK.empty(len(self.cols[layer]), k, window, dev) for layer in self.used}
        self.batch: dict[str, torch.Tensor] = {}

    def _hook(self, layer: int):
        name = self.mlp.pre(layer)

        def hook(pre: torch.Tensor, hook: Any = None) -> None:
            self.mlp.check_width(pre, name)
            acts = self.mlp.act(pre)[..., self.cols[layer]]  # act_fn in the model's dtype, as the model applies it
            self.states[layer].update(acts, self.batch["ids"], self.batch["counted"], self.batch["first_key"])

        return hook

    def run(self, stream: RowStream, rank: int, world: int, progress: bool, desc: str) -> int:
        """Run this rank's share of the stream's batches; returns the counted tokens it scanned."""
        from tqdm.auto import tqdm

        hooks = [(self.mlp.pre(layer), self._hook(layer)) for layer in self.used]
        n_tokens = 0
        bar = tqdm(total=stream.estimated_tokens(), desc=desc, unit="tok", unit_scale=True,
                   disable=not progress or rank != 0, leave=False)
        with bar, torch.inference_mode():
            for b, batch in enumerate(stream):
                if b % world != rank:
                    continue
                batch = batch.trimmed()
                rows = b * stream.block_rows + torch.arange(len(batch))
                self.batch = {"ids": batch.input_ids.to(self.dev), "counted": batch.count_mask.to(self.dev),
                              "first_key": (rows * stream.seq_len).to(self.dev)}
                attn = batch.attention_mask
                mask = None if bool(attn.all()) else attn.long().to(self.dev)
                run_to_layer(self.model, self.batch["ids"], hooks, stop_at=self.mlp.pre(self.used[-1]),
                             attention_mask=mask)
                n_tokens += batch.n_tokens
                bar.update(batch.n_tokens)
        self.batch = {}
        return n_tokens

    def ranked(self) -> RunningTopK:
        """Every chosen neuron's top k (layers in order, as `neuron_list` sorts them), best first, on the CPU."""
        parts = [self.states[layer].ranked() for layer in self.used]
        return RunningTopK(*(torch.cat([getattr(p, f) for p in parts]) for f in FIELDS))


def _gather(t: torch.Tensor, dev: torch.device) -> list[torch.Tensor]:
    import torch.distributed as dist

    x = t.to(reduce_device(dev)).contiguous()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return [o.cpu() for o in out]


def _merge_ranks(top: RunningTopK, n_tokens: int, dev: torch.device, world: int) -> tuple[RunningTopK, int]:
    """The top k over every rank's share (every rank gets the same), and the tokens scanned by all."""
    if world == 1:
        return top, n_tokens
    fields = [_gather(getattr(top, f), dev) for f in FIELDS]
    parts = [RunningTopK(*(f[r] for f in fields)) for r in range(world)]
    (total,) = all_reduce_sum([torch.tensor([n_tokens], dtype=torch.long)], dev)
    return RunningTopK.merged(parts), int(total[0])


def _texts(win_ids: Int[torch.Tensor, "... w"], text: TokenText) -> tuple[Int[torch.Tensor, "... w"], list[str]]:
    """Index of each token's text in a table of texts (-1 outside a window), and the table.

    A token's text is `TokenText.piece`; the windows holding a token that ends inside a character
    are decoded as a whole (`TokenText.window`).
    """
    valid = win_ids >= 0
    uniq = torch.unique(win_ids[valid]).tolist()
    if not uniq:
        return torch.full_like(win_ids, -1), []
    where: dict[str, int] = {}
    lut = torch.full((uniq[-1] + 1,), -1, dtype=torch.long)
    broken = torch.zeros(uniq[-1] + 1, dtype=torch.bool)
    for i in uniq:
        piece = text.piece(i)
        lut[i] = where.setdefault(piece, len(where))
        broken[i] = REPLACEMENT in piece
    safe = win_ids.clamp(min=0)
    out = torch.where(valid, lut[safe], -1)
    w = win_ids.shape[-1]
    flat_ids, flat_out = win_ids.reshape(-1, w), out.view(-1, w)
    for c in (broken[safe] & valid).reshape(-1, w).any(1).nonzero().flatten().tolist():
        keep = flat_ids[c] >= 0
        pieces = text.window(flat_ids[c][keep].tolist())
        flat_out[c, keep] = torch.tensor([where.setdefault(p, len(where)) for p in pieces], dtype=torch.long)
    return out, list(where)


def _assemble(
    groups: list[str], layers: torch.Tensor, idx: torch.Tensor, per_group: list[RunningTopK], scanned: list[int],
    seq_len: int, text: TokenText, meta: dict[str, Any],
) -> NeuronExamples:
    """Stack the groups' top k into a `NeuronExamples`, clearing empty slots and naming the tokens."""
    vals = torch.stack([p.vals for p in per_group], 1)
    empty = ~torch.isfinite(vals)
    keys = torch.stack([p.keys for p in per_group], 1).masked_fill(empty, -1)
    win_ids = torch.stack([p.win_ids for p in per_group], 1).masked_fill(empty[..., None], -1)
    win_vals = torch.stack([p.win_vals for p in per_group], 1).masked_fill(empty[..., None], 0.0)
    row = torch.where(empty, -1, keys // seq_len)
    pos = torch.where(empty, -1, keys % seq_len)
    token_text, strings = _texts(win_ids, text)
    vals = vals.masked_fill(empty, float("-inf"))
    return NeuronExamples(groups, layers, idx, vals, row, pos, win_ids, win_vals, token_text, strings,
                          torch.tensor(scanned, dtype=torch.long), meta)
