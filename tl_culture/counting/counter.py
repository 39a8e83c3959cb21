"""`Counter`: the LAPE statistic of one group, counted from forwards that stop after the last MLP.

The statistic is read at ``blocks.{l}.mlp.hook_pre``. Every supported activation function is
sign-preserving (act_fn(z) > 0 iff z > 0, tested per activation and dtype), so the count tests
the gate pre-activation's sign in the model's dtype, which is the reference's test of
act_fn(gate) in the model's dtype; the sums pass it through act_fn. Masked counting and summing
are one GEMV per layer with a 0/1 weight row over the batch's tokens (counts exact; sums float32
within a batch, float64 across batches). On gated MLPs this is NOT ``hook_post``, whose sign also
depends on the up projection. Only reducing hooks run (never ``run_with_cache``), and the forward
stops once the last MLP hook has fired (`tl_culture.model.forward`), so the unembedding is never
computed.

The hooks are TransformerLens hooks on ``hook_pre`` (backend ``"hooks"``), or, on a TL 4.x bridge
with no TransformerLens hooks attached, the bridge fast path's torch hooks on its own HF modules
(``"native"``, `tl_culture.model.fastpath`, checked on a probe input first); `choose_backend`
picks for ``"auto"``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_culture.data.rows import TokenRows
from tl_culture.errors import TLCultureError
from tl_culture.model.bridge import bridge_attention, native_problem
from tl_culture.model.fastpath import NativeForward
from tl_culture.model.forward import stop_after, until_stop
from tl_culture.model.hooks import MLPHooks


class Counter:
    """Accumulates the LAPE statistic of one group from forwards that stop after the last MLP.

    `add` takes one layer's gate pre-activations. `attached` routes a forward's layers to it,
    either through TransformerLens hooks on ``blocks.{l}.mlp.hook_pre`` or, given a verified
    `NativeForward`, through the bridge fast path's torch hooks on the HF modules;
    `run_batch` then runs one batch. Counts live on the model's device until copied out.
    """

    def __init__(
        self,
        model: Any,
        mlp: MLPHooks,
        device: torch.device,
        with_sums: bool = True,
        native: NativeForward | None = None,
    ) -> None:
        self.model, self.mlp, self.device, self.native = model, mlp, device, native
        self.counts = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.int64, device=device)
        self.sums = torch.zeros(mlp.n_layers, mlp.d_mlp, dtype=torch.float64, device=device) if with_sums else None
        self.tokens = 0
        self._weights: torch.Tensor | None = None  # [1, batch*pos] float32 counting weights
        self._signs: torch.Tensor | None = None  # [batch*pos, d_mlp] float32 scratch, reused by every layer

    def start_from(
        self,
        counts: Int[torch.Tensor, "layer neuron"],
        tokens: int,
        sums: Float[torch.Tensor, "layer neuron"] | None = None,
    ) -> None:
        """Continue from partial results (a checkpoint): later batches add to these values."""
        self.counts.copy_(counts)
        self.tokens = int(tokens)
        if self.sums is not None and sums is not None:
            self.sums.copy_(sums)

    def add(
        self,
        layer: int,
        pre: Float[torch.Tensor, "... d_mlp"],
        act: Float[torch.Tensor, "... d_mlp"] | None = None,
    ) -> None:
        """Count (and sum) one layer of the current batch.

        ``counts[layer] += w @ 1[pre > 0]`` and ``sums[layer] += w @ act_fn(pre)``, with ``w`` the
        batch's 0/1 counting weights. act_fn(z) > 0 iff z > 0 for every activation in ACTIVATIONS,
        so the sign test runs on the gate pre-activation in the model's dtype; the 0/1 matrix is
        written straight into a reused float32 buffer and the masked count is one GEMV, exact in
        float32 (< 2**24 tokens). ``act`` (the model's own act_fn output) saves recomputing it.
        """
        name = self.mlp.pre(layer)
        self.mlp.check_width(pre, name)
        x = pre.reshape(-1, self.mlp.d_mlp)  # [batch*pos, d_mlp], model dtype
        w = self._weights  # [1, batch*pos] float32: 1 on counted tokens, 0 on BOS/padding
        if w is None or w.shape[1] != x.shape[0]:
            raise TLCultureError(f"{name}: got {x.shape[0]} positions outside Counter.run_batch")
        if self._signs is None or self._signs.shape != x.shape or self._signs.device != x.device:
            self._signs = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        torch.gt(x, 0, out=self._signs)
        self.counts[layer] += (w @ self._signs).squeeze(0).to(torch.int64)
        if self.sums is not None:
            # act_fn in the model dtype, per-batch partial sum in float32, running total in float64
            a = self.mlp.act(x) if act is None else act.reshape(-1, self.mlp.d_mlp)
            self.sums[layer] += (w @ a.to(torch.float32)).squeeze(0).to(torch.float64)

    def fwd_hooks(self) -> list[tuple[str, Any]]:
        """TransformerLens hooks that feed `add` and stop the forward after the last layer."""

        def make(layer: int):
            def hook(pre: torch.Tensor, hook: Any = None) -> None:
                self.add(layer, pre)

            return hook

        hooks = [(self.mlp.pre(layer), make(layer)) for layer in range(self.mlp.n_layers)]
        return stop_after(hooks, self.mlp.pre(self.mlp.n_layers - 1))

    def attached(self) -> AbstractContextManager[Any]:
        """Context in which `run_batch` counts: the fast path's torch hooks, or TransformerLens hooks."""
        if self.native is not None:
            return self.native.hooked(self.add, with_act=self.sums is not None)
        return self.model.hooks(fwd_hooks=self.fwd_hooks())

    def run_batch(self, batch: TokenRows) -> int:
        """Run one batch of rows (inside `attached`); returns the number of counted tokens."""
        batch = batch.trimmed()
        ids = batch.input_ids.to(self.device, non_blocking=True)
        attn, count = batch.attention_mask, batch.count_mask
        if count.numel() >= 2**24:
            raise TLCultureError(f"a batch of {count.numel()} tokens is too large to count exactly; lower --batch-size")
        self._weights = count.reshape(1, -1).to(device=self.device, dtype=torch.float32)
        mask = None if bool(attn.all()) else attn.long().to(self.device)
        try:
            if self.native is not None:
                self.native(ids, attention_mask=mask)
            else:
                until_stop(self.model, ids, **({} if mask is None else {"attention_mask": mask}))
        finally:
            self._weights = None
        n = int(count.sum())
        self.tokens += n
        return n


def probe_ids(rows: TokenRows, device: torch.device, max_len: int = 32) -> Int[torch.Tensor, "1 pos"]:
    """The first row's first real tokens (at most ``max_len``): the input `NativeForward.verify` compares on."""
    n = max(1, min(max_len, int(rows.attention_mask[0].sum())))
    return rows.input_ids[:1, :n].to(device)


def choose_backend(
    model: Any, mlp: MLPHooks, backend: str, attention: str | None, probe: torch.Tensor
) -> tuple[NativeForward | None, str, str | None, str | None]:
    """``(fast path or None, backend name, attention implementation, note)`` for `collect`.

    Tries, in order: native with ``attention`` (default sdpa), native with the bridge's own
    attention (when sdpa was only the default), the hooks (``auto`` only). Falling back is quiet;
    the reason goes into the statistics' meta as the note. On LayerNorm models (GPT-2, TL-native
    dense models) the bridge's forward differs from the HF modules' in the last float bit, so the
    probe refuses the native forward by design.
    """
    if backend == "hooks":
        return None, "hooks", bridge_attention(model), None
    problem = native_problem(model, mlp)
    native, note = None, None
    if problem is None:
        native = NativeForward(model, mlp, attention=attention or "sdpa")
        problem = native.verify(probe)
        if problem is None and native.attention_problem is not None:
            if attention is not None:
                raise TLCultureError(
                    f"attention={attention!r} cannot run on this model: {native.attention_problem}; drop --attention"
                )
            note = f"sdpa attention not used: {native.attention_problem}"
            native.attention = None
    if problem is None:
        return native, "native", native.attn_implementation, note
    if backend == "native" or attention is not None:
        fix = "use backend='hooks'" + (f" without attention={attention!r}" if attention is not None else "")
        raise TLCultureError(f"the native backend cannot run: {problem}; {fix}")
    return None, "hooks", bridge_attention(model), problem
