"""Continuations of many prompts, with or without an intervention, decoded with a KV cache.

Each step picks the next token from the last position's logits (float32, on the CPU):

    greedy (temperature = 0):  x_{t+1} = argmax logits_t
    sampling:                  x_{t+1} ~ softmax(logits_t / temperature), restricted to the top_k

with one generator per prompt, seeded ``seed + i`` for prompt i, so a prompt's draws do not depend
on the batch it is in and two conditions (baseline, steered) of one prompt share their seed.

Two decoders give the same tokens on the same logits:

- cached (TL 4.x `TransformerBridge` over a HF model): the HF model's own modules run inside
  `bridge_fast_path`, with its KV cache; prompts are left-padded into batches (attention mask,
  positions counted from each prompt's first real token) and each step feeds one token per
  prompt. The intervention is applied as torch forward hooks on each layer's activation module,
  whose output is ``a = act_fn(gate)`` (checked by `NativeForward.verify`): ``a -> mul * a + add``
  at the edited neurons, the map `Intervention` applies at ``hook_post``. Ablation and set are
  the same numbers as the TransformerLens hooks; a scale by a factor that is not a power of two
  can differ in the last float bit (``(k a) lin`` vs ``k (a lin)``).
- uncached (every other model): one prompt at a time, a full forward of the whole sequence per
  step under `Intervention.applied`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture.errors import TLCultureError
from tl_culture.intervene.interventions import Intervention
from tl_culture.model.bridge import bridge_fast_path, native_problem
from tl_culture.model.context import check_seq_len, model_context
from tl_culture.model.fastpath import NativeForward
from tl_culture.model.hooks import MLPHooks
from tl_culture.model.load import model_device, model_name


def pick_token(logits: Float[torch.Tensor, " vocab"], temperature: float, top_k: int | None, g: torch.Generator) -> int:
    """The next token from one position's logits (argmax, or a top-k sample drawn from ``g``)."""
    logits = logits.float().cpu()
    if temperature == 0.0:
        return int(logits.argmax())
    z = logits / temperature
    if top_k is not None and top_k < z.shape[0]:
        kth = torch.topk(z, top_k).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(z, -1), 1, generator=g))


def cache_problem(model: Any) -> str | None:
    """Why ``model`` cannot be decoded with the cached decoder (None: it can)."""
    try:
        mlp = MLPHooks.from_model(model)
    except TLCultureError as exc:
        return str(exc)
    problem = native_problem(model, mlp)
    if problem is not None:
        return problem
    nf = NativeForward(model, mlp)
    probe = torch.arange(1, 9, device=model_device(model))[None] % int(model.cfg.d_vocab)
    problem = nf.verify(probe)
    if problem is None and nf.acts is None:
        problem = "its MLPs have no activation module whose output is act_fn(hook_pre)"
    return problem


@contextmanager
def _act_hooks(acts: list[torch.nn.Module], intervention: Intervention | None, device: torch.device,
               dtype: torch.dtype) -> Iterator[None]:
    """Apply ``intervention`` as forward hooks on the activation modules for the block."""
    handles = []
    maps = intervention._device_maps(device, dtype) if intervention is not None else {}

    def edit(idx: torch.Tensor, mul: torch.Tensor, add: torch.Tensor):
        def hook(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
            new = out[..., idx] * mul.to(out.dtype) + add.to(out.dtype)
            return out.index_copy(out.dim() - 1, idx, new)

        return hook

    try:
        for layer, (idx, mul, add, _) in maps.items():
            handles.append(acts[layer].register_forward_hook(edit(idx, mul, add)))
        yield
    finally:
        for h in handles:
            h.remove()


def _cache_kwarg(root: torch.nn.Module) -> str:
    params = inspect.signature(root.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _left_pad(batch: Sequence[torch.Tensor], pad: int) -> tuple[Int[torch.Tensor, "b t"], Int[torch.Tensor, "b t"]]:
    width = max(int(x.numel()) for x in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - x.numel():] = x
        mask[i, width - x.numel():] = 1
    return ids, mask


@torch.inference_mode()
def _cached_batch(root: torch.nn.Module, batch: Sequence[torch.Tensor], gens: list[torch.Generator], *,
                  max_new_tokens: int, temperature: float, top_k: int | None, eos: int | None, pad: int,
                  device: torch.device) -> list[list[int]]:
    """Decode one left-padded batch with the HF model's KV cache (inside the fast path)."""
    ids, mask = _left_pad(batch, pad)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    kw: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(root.forward).parameters:
        kw["logits_to_keep"] = 1
    out = root(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
    name = _cache_kwarg(root)
    outs: list[list[int]] = [[] for _ in batch]
    done = [False] * len(batch)
    for step in range(max_new_tokens):
        last = out.logits[:, -1]
        nxt = [0] * len(batch)
        for i in range(len(batch)):
            if not done[i]:
                nxt[i] = pick_token(last[i], temperature, top_k, gens[i])
                outs[i].append(nxt[i])
                done[i] = eos is not None and nxt[i] == eos
        if all(done) or step == max_new_tokens - 1:
            break
        kw[name] = getattr(out, "cache", None) or out.past_key_values
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = pos[:, -1:] + 1
        out = root(input_ids=torch.tensor(nxt, device=device)[:, None], attention_mask=mask, position_ids=pos, **kw)
    return outs


@torch.inference_mode()
def _uncached_one(model: Any, ids: torch.Tensor, g: torch.Generator, *, max_new_tokens: int, temperature: float,
                  top_k: int | None, eos: int | None) -> list[int]:
    """Decode one prompt with a full TransformerLens forward per step."""
    dev = model_device(model)
    x = ids.to(dev)[None]
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = pick_token(model(x)[0, -1], temperature, top_k, g)
        out.append(nxt)
        if eos is not None and nxt == eos:
            break
        x = torch.cat([x, torch.tensor([[nxt]], device=dev)], dim=1)
    return out


def decode(
    model: Any,
    prompts: Sequence[torch.Tensor],
    intervention: Intervention | None = None,
    *,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    top_k: int | None = 50,
    seed: int = 0,
    eos: int | None = None,
    batch_size: int = 16,
    cache: bool | None = None,
    allow_long_context: bool = False,
) -> list[list[int]]:
    """Continue every prompt (1-D token ids, BOS included), with ``intervention`` applied if given.

    Args:
        model: a TransformerLens model.
        prompts: the prompts' token ids.
        intervention: the edit to apply while decoding (None: the plain model).
        max_new_tokens: tokens to generate per prompt (fewer when ``eos`` comes first).
        temperature: 0 for greedy decoding, > 0 to sample.
        top_k: sample only among the top_k tokens (None = all).
        seed: prompt i samples from a generator seeded ``seed + i``.
        eos: stop a prompt's continuation after this token id (None: never).
        batch_size: prompts per batch of the cached decoder.
        cache: True needs the cached decoder, False uses the uncached one, None picks the cached
            one when `cache_problem` finds none.
        allow_long_context: decode past the positions the model was trained on (never past those
            it can run; `tl_culture.model.context`).

    Returns:
        The generated ids of each prompt, in order.
    """
    if intervention is not None:
        intervention.validate(model)
    longest = max((len(p) for p in prompts), default=0) + max_new_tokens
    check_seq_len(model_context(model), longest, name=model_name(model), allow_long_context=allow_long_context,
                  what="a prompt and its new tokens take", fix="use shorter prompts or fewer new tokens")
    problem = cache_problem(model) if cache is not False else "not asked for"
    if cache and problem is not None:
        raise TLCultureError(f"cannot decode with a KV cache: {problem}; use cache=False")
    gens = [torch.Generator().manual_seed(int(seed) + i) for i in range(len(prompts))]
    kw = {"max_new_tokens": max_new_tokens, "temperature": float(temperature), "top_k": top_k, "eos": eos}
    if problem is not None:
        with intervention.applied(model) if intervention is not None else nullcontext():
            return [_uncached_one(model, p, g, **kw) for p, g in zip(prompts, gens, strict=True)]
    dev = model_device(model)
    acts = NativeForward(model, MLPHooks.from_model(model)).acts
    dtype = next(model.original_model.parameters()).dtype
    pad = int(getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0)
    out: list[list[int]] = []
    with bridge_fast_path(model.original_model) as root, _act_hooks(acts, intervention, dev, dtype):
        for s in range(0, len(prompts), batch_size):
            out += _cached_batch(root, prompts[s:s + batch_size], gens[s:s + batch_size], pad=pad, device=dev, **kw)
    return out


__all__ = ["cache_problem", "decode", "pick_token"]
