"""Δ NLL evaluation of neuron ablations, with the controls the reference code lacks.

For an eval corpus e with counted target tokens t (the BOS position is never a target, padding is
excluded) and a model run with intervention I:

    NLL_I(e)   = (1 / |T_e|) Σ_{t ∈ T_e} −log softmax(logits_I[t − 1])[x_t]     (nats/token)
    Δ[g, e]    = NLL_{ablate g}(e) − NLL_{none}(e)

Controls:

- random neurons: ablate as many random neurons as group g has, with the same count in every
  layer (`random_like`), for several seeds; ``control_delta`` is the mean over seeds.
- bootstrap CIs: the per-token NLLs of a corpus are cut into fixed-size chunks of consecutive
  tokens; chunks are resampled with replacement (paired: the same chunks for baseline and
  ablation), giving ``Δ*_b = Σ_chunks w_bc d_c / Σ_chunks w_bc n_c`` and the 2.5/97.5 percentiles.
  No extra forwards.
- split-half stability (`split_half_stability`): Jaccard of the LAPE sets found on two disjoint
  halves of every corpus.

Shared prefix: the layers below the lowest intervened layer ``L0`` compute the same thing for every
intervention. The baseline forward stores ``blocks.{L0}.hook_resid_pre``; each intervention then
runs only blocks ``L0..`` (``start_at_layer=L0``; on a TL 4.x bridge, which still executes the
lower blocks internally, those blocks are replaced by the identity for that call). The first batch
checks that this resumed forward reproduces the baseline logits; if not, every intervention runs
the full forward (``meta["shared_prefix"]`` says which was used).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tl_culture._io import write_json_atomic
from tl_culture.data.corpus import Corpus, TokenRows, as_corpora, encode
from tl_culture.errors import TLCultureError
from tl_culture.intervene.interventions import Intervention, ablate, random_like
from tl_culture.model.load import MLPHooks, model_device, model_name
from tl_culture.selection.neurons import NeuronSet

KIND = "NLLMatrix"


# --------------------------------------------------------------------------- result
def _nan_nested(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_nested(v) for v in x]
    return math.nan if x is None else x


def _json(t: torch.Tensor | None) -> Any:
    if t is None:
        return None
    return _null_nested(t.tolist())


def _null_nested(x: Any) -> Any:
    if isinstance(x, list):
        return [_null_nested(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


@dataclass
class NLLMatrix:
    """Mean next-token NLL at baseline and with each group's neurons ablated.

    Attributes:
        groups: rows: the ablated groups.
        evals: columns: the eval corpora.
        baseline: ``float64[eval]``: mean NLL without intervention (nats/token).
        ablated: ``float64[group, eval]``: mean NLL with the group's neurons ablated.
        tokens: ``int64[eval]``: scored target tokens per eval corpus.
        delta_ci_low, delta_ci_high: ``float64[group, eval]``: bootstrap 95 % CI of delta.
        control_delta: ``float64[group, eval]``: Δ NLL of the random-neuron control (mean over seeds).
        control_ci_low, control_ci_high: bootstrap 95 % CI of the control Δ.
        meta: settings and provenance (model, seeds, shared_prefix, seconds, ...).
    """

    groups: list[str]
    evals: list[str]
    baseline: Float[torch.Tensor, " eval"]
    ablated: Float[torch.Tensor, "group eval"]
    tokens: Int[torch.Tensor, " eval"]
    delta_ci_low: Float[torch.Tensor, "group eval"] | None = None
    delta_ci_high: Float[torch.Tensor, "group eval"] | None = None
    control_delta: Float[torch.Tensor, "group eval"] | None = None
    control_ci_low: Float[torch.Tensor, "group eval"] | None = None
    control_ci_high: Float[torch.Tensor, "group eval"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.groups, self.evals = [str(g) for g in self.groups], [str(e) for e in self.evals]
        G, E = len(self.groups), len(self.evals)
        self.baseline = torch.as_tensor(_nan_nested(self.baseline), dtype=torch.float64).reshape(-1)
        self.tokens = torch.as_tensor(self.tokens, dtype=torch.int64).reshape(-1)
        if self.baseline.shape != (E,) or self.tokens.shape != (E,):
            raise TLCultureError(f"NLLMatrix baseline/tokens must have one value per eval corpus ({E})")
        for name in ("ablated", "delta_ci_low", "delta_ci_high", "control_delta", "control_ci_low", "control_ci_high"):
            v = getattr(self, name)
            if v is not None:
                t = torch.as_tensor(_nan_nested(v), dtype=torch.float64)
                if G == 0:
                    t = t.reshape(0, E)
                if tuple(t.shape) != (G, E):
                    raise TLCultureError(f"NLLMatrix {name} has shape {tuple(t.shape)}, expected ({G}, {E})")
                setattr(self, name, t)
        if self.ablated is None:
            raise TLCultureError("NLLMatrix needs the ablated NLLs")

    @property
    def delta(self) -> Float[torch.Tensor, "group eval"]:
        """``ablated − baseline[None]`` (nats/token)."""
        return self.ablated - self.baseline[None]

    def cell(self, group: str, eval_name: str) -> float:
        """Δ NLL of ``group`` ablated on ``eval_name``."""
        if group not in self.groups:
            raise TLCultureError(f"unknown group {group!r}; this matrix has {', '.join(self.groups)}")
        if eval_name not in self.evals:
            raise TLCultureError(f"unknown eval corpus {eval_name!r}; this matrix has {', '.join(self.evals)}")
        return float(self.delta[self.groups.index(group), self.evals.index(eval_name)])

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "format_version": 1,
            "groups": self.groups,
            "evals": self.evals,
            "baseline": _json(self.baseline),
            "ablated": _json(self.ablated),
            "delta": _json(self.delta),
            "tokens": self.tokens.tolist(),
            "delta_ci_low": _json(self.delta_ci_low),
            "delta_ci_high": _json(self.delta_ci_high),
            "control_delta": _json(self.control_delta),
            "control_ci_low": _json(self.control_ci_low),
            "control_ci_high": _json(self.control_ci_high),
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (atomic; NaN as null). ``delta`` is included for readers; it is recomputed on load."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> NLLMatrix:
        """Read a file written by `save`."""
        import json

        p = Path(path)
        if not p.is_file():
            raise TLCultureError(f"{p}: no such file; check the path")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            why = type(exc).__name__
            raise TLCultureError(f"{p}: not a JSON NLLMatrix file ({why}); it may be corrupted") from None
        if not isinstance(d, dict) or d.get("kind") != KIND:
            kind = d.get("kind") if isinstance(d, dict) else None
            raise TLCultureError(f"{p}: holds a {kind!r} object, not an NLLMatrix; pass an nll/*.json file")
        keys = ("delta_ci_low", "delta_ci_high", "control_delta", "control_ci_low", "control_ci_high")
        return cls(d["groups"], d["evals"], d["baseline"], d["ablated"], d["tokens"],
                   **{k: d.get(k) for k in keys}, meta=d.get("meta", {}))

    # ---------------------------------------------------------------- display
    def table(self, digits: int = 3) -> str:
        """Plain text: baseline NLL, then Δ NLL per group (with the CI), then the random control."""
        w = max([8] + [len(g) for g in self.groups] + [len("baseline")])
        cw = max([10 if self.delta_ci_low is None else 24] + [len(e) + 1 for e in self.evals])
        head = f"{'':<{w}} " + " ".join(f"{e:>{cw}}" for e in self.evals)
        lines = ["Δ NLL (nats/token): rows = ablated group, columns = eval text", head]
        lines.append(f"{'baseline':<{w}} " + " ".join(f"{float(b):>{cw}.{digits}f}" for b in self.baseline))

        def fmt(v: float, lo: float | None, hi: float | None) -> str:
            if not math.isfinite(v):
                return f"{'-':>{cw}}"
            s = f"{v:+.{digits}f}"
            if lo is not None and math.isfinite(lo):
                s += f" [{lo:+.{digits}f},{hi:+.{digits}f}]"
            return f"{s:>{cw}}"

        def block(vals, lo, hi) -> None:
            for gi, g in enumerate(self.groups):
                cells = [
                    fmt(float(vals[gi, ei]), None if lo is None else float(lo[gi, ei]),
                        None if hi is None else float(hi[gi, ei]))
                    for ei in range(len(self.evals))
                ]
                lines.append(f"{g:<{w}} " + " ".join(cells))

        block(self.delta, self.delta_ci_low, self.delta_ci_high)
        if self.control_delta is not None:
            seeds = self.meta.get("control_seeds", "?")
            lines.append(f"random-neuron control (same per-layer counts, {seeds} seed(s)):")
            block(self.control_delta, self.control_ci_low, self.control_ci_high)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"NLLMatrix({len(self.groups)} groups x {len(self.evals)} evals)"


# --------------------------------------------------------------------------- held-out check
def _chain(source: str) -> tuple[str, list[str]]:
    base, *tags = str(source).split("#")
    return base, tags


def check_heldout(
    eval_corpora: Mapping[str, Corpus],
    neurons: NeuronSet,
    selection: Mapping[str, Any] | Sequence[Corpus] | None = None,
) -> None:
    """Refuse eval text that is (or contains, or lies inside) the text the neurons were selected on.

    Three checks, each against every selection corpus:

    1. content: the same fingerprint as a corpus recorded in ``neurons.meta["stats_meta"]["corpora"]``;
    2. provenance: the same source with nested split tags, e.g. eval ``en.txt`` or
       ``en.txt#select`` vs selection ``en.txt#select`` (sibling splits such as ``#heldout`` and
       ``#select`` of `Corpus.split` are disjoint by construction and pass);
    3. documents: when ``selection`` corpora are given, any document present in both.

    Raises:
        TLCultureError: naming the eval corpus and the selection corpus it overlaps.
    """
    fix = "evaluate on held-out text (Corpus.split) or pass allow_overlap=True (--allow-overlap)"
    recorded = ((neurons.meta or {}).get("stats_meta") or {}).get("corpora") or {}
    for ename, ec in eval_corpora.items():
        efp, (ebase, etags) = ec.fingerprint, _chain(ec.source)
        for sname, info in recorded.items():
            info = info or {}
            if info.get("fingerprint") == efp:
                raise TLCultureError(f"eval corpus {ename!r} is the selection text of group {sname!r}; {fix}")
            sbase, stags = _chain(info.get("source") or "")
            nested = etags[: len(stags)] == stags or stags[: len(etags)] == etags
            if sbase and ebase == sbase and sbase not in ("list", "tensor") and nested:
                raise TLCultureError(
                    f"eval corpus {ename!r} ({ec.source}) overlaps the selection text of group {sname!r} "
                    f"({info.get('source')}); {fix}"
                )
    if selection:
        sel = as_corpora(selection) if isinstance(selection, Mapping) else {c.name: c for c in selection}
        for ename, ec in eval_corpora.items():
            if ec.documents is None:
                continue
            docs = set(ec.documents)
            for sname, sc in sel.items():
                n = len(docs.intersection(sc.documents or []))
                if n:
                    raise TLCultureError(
                        f"eval corpus {ename!r} shares {n} document(s) with selection corpus {sname!r}; {fix}"
                    )


# --------------------------------------------------------------------------- forwards
def token_nll(
    logits: Float[torch.Tensor, "batch pos vocab"],
    input_ids: Int[torch.Tensor, "batch pos"],
    count_mask: Bool[torch.Tensor, "batch pos"],
    chunk: int = 64,
) -> Float[torch.Tensor, " n"]:
    """Next-token NLL of every counted token, in row-major order (nats, float64).

    ``nll[t] = logsumexp(logits[t − 1]) − logits[t − 1, x_t]`` for every position t with
    ``count_mask[t]`` (so the BOS at t = 0 and padding are never targets). The log-softmax is
    computed ``chunk`` positions at a time in float32, so memory beyond the logits stays at
    ``chunk × d_vocab`` floats.
    """
    out = []
    tmask = count_mask[:, 1:].to(logits.device)
    targets = input_ids[:, 1:].to(logits.device)
    for b in range(logits.shape[0]):
        pos = torch.nonzero(tmask[b]).flatten()
        for s in range(0, len(pos), chunk):
            p = pos[s : s + chunk]
            x = logits[b, p].float()
            lse = torch.logsumexp(x, dim=-1)
            out.append((lse - x.gather(1, targets[b, p, None]).squeeze(1)).double())
    if not out:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(out).cpu()


class _StopAt(Exception):
    pass


class _Runner:
    """Runs baseline forwards (storing the residual at ``L0``) and interventions from ``L0``."""

    def __init__(self, model: Any, L0: int, shared: bool) -> None:
        self.model, self.L0 = model, L0
        self.shared = shared and L0 > 0
        self.reason = "" if self.shared else ("lowest intervened layer is 0" if L0 == 0 else "disabled")
        self.checked = False
        self._tuple_out: bool | None = None

    def _kwargs(self, attn: torch.Tensor) -> dict[str, Any]:
        return {} if bool(attn.all()) else {"attention_mask": attn.long()}

    def baseline(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        store: dict[str, torch.Tensor] = {}
        if not self.shared:
            return self.model(ids, **self._kwargs(attn)), None

        def grab(x: torch.Tensor, hook: Any = None) -> None:
            store["resid"] = x.detach().clone()

        handle = None
        blocks = getattr(self.model, "blocks", None)
        oc = getattr(blocks[0], "original_component", None) if blocks is not None else None
        if oc is not None and self._tuple_out is None:
            handle = oc.register_forward_hook(lambda mod, inp, out: setattr(self, "_tuple_out", isinstance(out, tuple)))
        try:
            with self.model.hooks(fwd_hooks=[(f"blocks.{self.L0}.hook_resid_pre", grab)]):
                logits = self.model(ids, **self._kwargs(attn))
        finally:
            if handle is not None:
                handle.remove()
        return logits, store.get("resid")

    @contextmanager
    def _skip_lower_blocks(self) -> Iterator[None]:
        """On a bridge, make blocks ``0..L0-1`` the identity (their output is discarded anyway)."""
        patched = []
        blocks = list(getattr(self.model, "blocks", []))[: self.L0]
        tup = bool(self._tuple_out)
        try:
            for b in blocks:
                oc = getattr(b, "original_component", None)
                if oc is None:
                    continue

                def identity(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                    return (hidden_states,) if tup else hidden_states

                patched.append((oc, oc.__dict__.get("forward")))  # an instance forward (accelerate) is restored
                oc.forward = identity
            yield
        finally:
            for oc, previous in patched:
                if previous is None:
                    del oc.forward
                else:
                    oc.forward = previous

    def resume(self, resid: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        with self._skip_lower_blocks():
            return self.model(resid, start_at_layer=self.L0, **self._kwargs(attn))

    def run(self, ids, attn, resid, hooks) -> torch.Tensor:
        with self.model.hooks(fwd_hooks=hooks):
            if self.shared and resid is not None:
                return self.resume(resid, attn)
            return self.model(ids, **self._kwargs(attn))

    def verify(self, base_logits: torch.Tensor, attn: torch.Tensor, resid: torch.Tensor | None) -> None:
        """First batch: the resumed forward must reproduce the baseline logits, else fall back."""
        if not self.shared or self.checked:
            return
        self.checked = True
        try:
            again = self.resume(resid, attn)
            real = attn.bool()
            ok = torch.allclose(again[real].float(), base_logits[real].float(), rtol=1e-4, atol=1e-4)
            why = f"max |Δ logits| {float((again[real] - base_logits[real]).abs().max()):.3g}"
        except Exception as exc:  # an architecture the resumed forward does not support
            ok, why = False, f"{type(exc).__name__}: {str(exc)[:120]}"
        if not ok:
            warnings.warn(f"shared-prefix forward is not exact on this model ({why}); using full forwards",
                          stacklevel=3)
            self.shared, self.reason = False, f"not exact: {why}"


def _has_user_hooks(model: Any) -> bool:
    return any(getattr(hp, "fwd_hooks", None) for hp in getattr(model, "hook_dict", {}).values())


def _batches(rows: TokenRows, owner: torch.Tensor, batch_size: int):
    for s in range(0, len(rows), batch_size):
        b = rows.slice(s, s + batch_size)
        width = int(b.attention_mask.any(0).nonzero().max()) + 1
        yield (b.input_ids[:, :width], b.attention_mask[:, :width], b.count_mask[:, :width], owner[s : s + batch_size])


def _stack(encoded: list[TokenRows]) -> tuple[TokenRows, torch.Tensor]:
    width = max(r.input_ids.shape[1] for r in encoded)

    def pad(t: torch.Tensor, v: Any) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)

    ids = torch.cat([pad(r.input_ids, 0) for r in encoded])
    attn = torch.cat([pad(r.attention_mask, False) for r in encoded])
    count = torch.cat([pad(r.count_mask, False) for r in encoded])
    owner = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, r in enumerate(encoded)])
    return TokenRows(ids, attn, count), owner


def token_nlls(
    model: Any,
    eval_corpora: Mapping[str, Any],
    interventions: Sequence[Intervention | None],
    *,
    seq_len: int = 256,
    batch_size: int = 4,
    max_tokens: int | None = 256,
    shared_prefix: bool = True,
    progress: bool = True,
    desc: str = "Δ NLL",
) -> tuple[list[list[torch.Tensor]], dict[str, Any]]:
    """Per-token NLLs of every eval corpus under every intervention (``None`` = baseline).

    Returns:
        ``nll[i][e]``: ``float64[tokens]`` for intervention i and eval corpus e (row-major token
        order, the same tokens for every i), and run info (shared_prefix, L0, seconds).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise TLCultureError(f"batch_size must be at least 1, got {batch_size}")
    for it in interventions:
        if it is not None:
            it.validate(model)
    named = as_corpora(eval_corpora)
    tok = getattr(model, "tokenizer", None)
    encoded = [encode(c, tok, seq_len, pack=True, max_tokens=max_tokens) for c in named.values()]
    rows, owner = _stack(encoded)
    dev = model_device(model)
    layers = [min(it.layers) for it in interventions if it is not None and it.layers]
    L0 = min(layers) if layers else 0
    user_hooks = _has_user_hooks(model)
    runner = _Runner(model, L0, shared_prefix and not user_hooks)
    if user_hooks and shared_prefix:
        runner.reason = "the model has hooks attached"
    hook_lists = [None if it is None else it.fwd_hooks(model) for it in interventions]
    E = len(named)
    parts: list[list[list[torch.Tensor]]] = [[[] for _ in range(E)] for _ in interventions]
    t0 = time.perf_counter()
    n_batches = -(-len(rows) // batch_size)
    with torch.inference_mode(), tqdm(total=n_batches * len(interventions), desc=desc, unit="fwd",
                                      disable=not progress, leave=False) as bar:
        for ids, attn, count, own in _batches(rows, owner, batch_size):
            ids, attn = ids.to(dev), attn.to(dev)
            base_logits, resid = runner.baseline(ids, attn)
            runner.verify(base_logits, attn, resid)
            for i, hooks in enumerate(hook_lists):
                if hooks is None:
                    logits = base_logits
                elif not hooks:  # an empty group: nothing to change
                    logits = base_logits
                else:
                    logits = runner.run(ids, attn, resid, hooks)
                for r in range(len(own)):
                    parts[i][int(own[r])].append(token_nll(logits[r : r + 1], ids[r : r + 1], count[r : r + 1]))
                bar.update(1)
                del logits
            del base_logits, resid
    nll = [[torch.cat(p) if p else torch.zeros(0, dtype=torch.float64) for p in per] for per in parts]
    info = {"shared_prefix": runner.shared, "shared_prefix_note": runner.reason, "start_layer": L0,
            "seconds": round(time.perf_counter() - t0, 3), "seq_len": seq_len, "max_tokens": max_tokens,
            "batch_size": batch_size}
    return nll, info


# --------------------------------------------------------------------------- bootstrap
def chunk_sums(x: Float[torch.Tensor, " n"], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and sizes of consecutive chunks of ``chunk`` tokens (the last may be shorter)."""
    n = x.shape[0]
    ids = torch.arange(n) // chunk
    k = int(ids[-1]) + 1 if n else 0
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, ids, x.double())
    sizes = torch.zeros(k, dtype=torch.float64).index_add_(0, ids, torch.ones(n, dtype=torch.float64))
    return sums, sizes


def bootstrap_ci(
    diff: Float[torch.Tensor, " n"],
    *,
    chunk: int = 16,
    n_boot: int = 1000,
    level: float = 0.95,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(diff)`` resampling chunks of ``chunk`` consecutive tokens.

    ``mean*_b = Σ_c w_bc s_c / Σ_c w_bc n_c`` with ``w_b ~ Multinomial(k, 1/k)`` over the k chunks
    (chunk sums s_c, sizes n_c). Returns ``(nan, nan)`` for fewer than two chunks.
    """
    s, n = chunk_sums(diff, chunk)
    k = s.shape[0]
    if k < 2 or n_boot < 1:
        return math.nan, math.nan
    g = generator or torch.Generator().manual_seed(0)
    draws = torch.randint(0, k, (n_boot, k), generator=g)
    w = torch.zeros(n_boot, k, dtype=torch.float64).scatter_add_(1, draws, torch.ones(n_boot, k, dtype=torch.float64))
    means = (w @ s) / (w @ n)
    a = (1.0 - level) / 2
    q = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.float64))
    return float(q[0]), float(q[1])


# --------------------------------------------------------------------------- Δ NLL
def delta_nll(
    model: Any,
    eval_corpora: Mapping[str, Any],
    neurons: NeuronSet,
    *,
    groups: Sequence[str] | None = None,
    seq_len: int = 256,
    batch_size: int = 4,
    max_tokens: int | None = 256,
    controls: int = 1,
    seed: int = 0,
    bootstrap: int = 1000,
    chunk: int = 16,
    selection: Mapping[str, Any] | Sequence[Corpus] | None = None,
    allow_overlap: bool = False,
    shared_prefix: bool = True,
    progress: bool = True,
    baseline_cache: dict[Any, list[torch.Tensor]] | None = None,
) -> NLLMatrix:
    """Δ NLL of ablating each group's neurons, on every eval corpus, with controls.

    Args:
        model: a TransformerLens model with a tokenizer (or eval corpora of token rows).
        eval_corpora: eval name -> corpus-like (held-out text).
        neurons: the neuron sets; rows of the result are its groups (or ``groups``).
        groups: which groups to ablate (default all).
        seq_len: tokens per row (BOS included).
        batch_size: rows per forward; memory ≈ batch_size × seq_len × d_vocab × 4 bytes of logits.
        max_tokens: scored tokens per eval corpus (None = all).
        controls: random-neuron control seeds per group (0 = none).
        seed: seed of the random controls and the bootstrap.
        bootstrap: bootstrap resamples for the CIs (0 = none).
        chunk: tokens per bootstrap chunk.
        selection: the corpora the neurons were selected on, for a document-level overlap check.
        allow_overlap: skip the held-out check.
        shared_prefix: compute the layers below the lowest intervened layer once per batch.
        progress: show a tqdm bar.
        baseline_cache: a dict shared between calls on the same model: the baseline per-token
            NLLs of eval corpora already scored with the same settings (keyed by their
            fingerprints, seq_len, batch_size and max_tokens) are reused instead of recomputed.
            Valid while the model's weights and hooks stay the same (`evaluate_categories` uses
            one per call).

    Returns:
        An `NLLMatrix` (rows = groups, columns = eval corpora).
    """
    mlp = MLPHooks.from_model(model)
    mlp.check_neurons(neurons.n_layers, neurons.d_mlp)
    if controls < 0 or bootstrap < 0 or chunk < 1:
        raise TLCultureError("controls and bootstrap must be >= 0 and chunk >= 1")
    groups = list(neurons.groups if groups is None else groups)
    if not groups:
        raise TLCultureError("no groups to ablate; give at least one group name")
    for g in groups:
        neurons.index(g)
    named = as_corpora(eval_corpora)
    if not allow_overlap:
        check_heldout(named, neurons, selection)
    ints: list[Intervention | None] = [ablate(neurons, g) for g in groups]
    for s in range(controls):
        ints += [random_like(neurons, g, seed=_control_seed(seed, s, gi)) for gi, g in enumerate(groups)]
    key = (tuple((n, c.fingerprint) for n, c in named.items()), seq_len, batch_size, max_tokens)
    cached = baseline_cache.get(key) if baseline_cache is not None else None
    nll, info = token_nlls(model, named, ints if cached is not None else [None, *ints], seq_len=seq_len,
                           batch_size=batch_size, max_tokens=max_tokens, shared_prefix=shared_prefix,
                           progress=progress)
    if cached is not None:
        nll = [cached, *nll]
    elif baseline_cache is not None:
        baseline_cache[key] = nll[0]
    info["baseline_reused"] = cached is not None
    G, E = len(groups), len(named)
    base = torch.tensor([float(x.mean()) if len(x) else math.nan for x in nll[0]], dtype=torch.float64)
    ablated = torch.tensor([[float(x.mean()) if len(x) else math.nan for x in nll[1 + gi]] for gi in range(G)],
                           dtype=torch.float64)
    tokens = torch.tensor([len(x) for x in nll[0]], dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed))
    out = dict(groups=groups, evals=list(named), baseline=base, ablated=ablated, tokens=tokens)
    if bootstrap:
        lo, hi = _nans(G, E), _nans(G, E)
        for gi in range(G):
            for e in range(E):
                lo[gi, e], hi[gi, e] = bootstrap_ci(nll[1 + gi][e] - nll[0][e], chunk=chunk, n_boot=bootstrap,
                                                    generator=gen)
        out.update(delta_ci_low=lo, delta_ci_high=hi)
    if controls:
        ctrl = [[torch.stack([nll[1 + G * (s + 1) + gi][e] for s in range(controls)]).mean(0) - nll[0][e]
                 for e in range(E)] for gi in range(G)]
        out["control_delta"] = torch.tensor([[float(d.mean()) if len(d) else math.nan for d in row] for row in ctrl],
                                            dtype=torch.float64)
        if bootstrap:
            lo, hi = _nans(G, E), _nans(G, E)
            for gi in range(G):
                for e in range(E):
                    lo[gi, e], hi[gi, e] = bootstrap_ci(ctrl[gi][e], chunk=chunk, n_boot=bootstrap, generator=gen)
            out.update(control_ci_low=lo, control_ci_high=hi)
    meta = {
        "model": model_name(model),
        "category": (neurons.meta or {}).get("category"),
        "neurons": {g: neurons.count(g) for g in groups},
        "control_seeds": controls,
        "seed": seed,
        "bootstrap": bootstrap,
        "bootstrap_chunk": chunk,
        "ci_level": 0.95,
        "eval_corpora": {n: {"fingerprint": c.fingerprint, "source": c.source} for n, c in named.items()},
        **info,
    }
    return NLLMatrix(**out, meta=meta)


def _nans(G: int, E: int) -> torch.Tensor:
    return torch.full((G, E), math.nan, dtype=torch.float64)


def _control_seed(seed: int, s: int, gi: int) -> int:
    """Independent, reproducible seed for control s of group gi."""
    return (int(seed) * 1_000_003 + s * 7_919 + gi) % (2**63 - 1)


# --------------------------------------------------------------------------- categories
EVAL_MODES = ("matched", "all")


def evaluate_categories(
    model: Any,
    categories: Mapping[str, NeuronSet],
    heldout: Mapping[str, Corpus],
    pairs: Mapping[str, str],
    *,
    mode: str = "matched",
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, NLLMatrix]:
    """Δ NLL matrices of the culture-neuron categories on held-out text (the `run` stage).

    Args:
        model: the model.
        categories: `culture_categories` output (language, culture, compound, pure, generic).
        heldout: held-out corpora keyed ``lang:xx`` and ``cult:xx``.
        pairs: culture -> its language.
        mode: ``"matched"``: the language category on the languages' held-out text
            (``lang:l(c)`` for every culture c), every culture-side category on the cultures'
            (``cult:c``); ``"all"``: every category on every held-out corpus.
        progress: show progress bars.
        **kwargs: passed to `delta_nll` (seq_len, max_tokens, controls, bootstrap, seed, ...).
    """
    if mode not in EVAL_MODES:
        raise TLCultureError(f"unknown eval mode {mode!r}; use one of {', '.join(EVAL_MODES)}")
    cultures = list(pairs)
    lang_cols = {f"lang:{pairs[c]}": heldout[f"lang:{pairs[c]}"] for c in cultures}
    cult_cols = {f"cult:{c}": heldout[f"cult:{c}"] for c in cultures}
    out, baselines = {}, {}  # one baseline per set of eval corpora, shared by the categories
    for name, ns in categories.items():
        if mode == "all":
            cols = dict(heldout)
        else:
            cols = lang_cols if name == "language" else cult_cols
        out[name] = delta_nll(model, cols, ns, progress=progress, baseline_cache=baselines, **kwargs)
        out[name].meta["eval_mode"] = mode
    return out


def summarize(m: NLLMatrix, pairs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Headline numbers of a matrix: mean Δ on matched cells (a group's own text) vs the others.

    A cell (g, e) is matched when the eval name (without its ``lang:``/``cult:`` prefix) is g or
    g's paired language.
    """
    pairs = dict(pairs or {})
    d = m.delta
    own = torch.tensor([[e.split(":", 1)[-1] in (g, pairs.get(g, g)) for e in m.evals] for g in m.groups],
                       dtype=torch.bool).reshape(len(m.groups), len(m.evals))

    def mean(x: torch.Tensor, sel: torch.Tensor) -> float | None:
        v = x[sel & torch.isfinite(x)]
        return round(float(v.mean()), 5) if v.numel() else None

    out = {"matched_delta": mean(d, own), "other_delta": mean(d, ~own)}
    if m.control_delta is not None:
        out["matched_control_delta"] = mean(m.control_delta, own)
    out.update({k: m.meta.get(k) for k in ("seconds", "shared_prefix", "start_layer")})
    return out


# --------------------------------------------------------------------------- split-half
def split_half_stability(
    model: Any,
    corpora: Mapping[str, Any],
    *,
    seed: int = 0,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
    progress: bool = True,
    **collect_kw: Any,
) -> dict[str, float]:
    """Per-group Jaccard of the LAPE sets selected on two disjoint halves of every corpus.

    Each corpus is split by `Corpus.halves` (documents, seeded); statistics are collected on
    each half separately and `identify` run on each; the result is
    ``J_g = |S_g^(1) ∩ S_g^(2)| / |S_g^(1) ∪ S_g^(2)|`` (0 where both sets are empty).
    ``collect_kw`` (``backend``, ``attention``, ``device``, ...) go to `collect`.
    """
    from tl_culture.counting.collect import collect
    from tl_culture.selection.lape import identify

    named = as_corpora(corpora)
    halves = {g: c.halves(seed) for g, c in named.items()}
    kw = dict(seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens, progress=progress, **collect_kw)
    lape = dict(top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio)
    sets = [identify(collect(model, {g: h[i] for g, h in halves.items()}, **kw), **lape) for i in (0, 1)]
    j = sets[0].jaccard(sets[1])
    return {g: float(j[i, i]) for i, g in enumerate(sets[0].groups)}


__all__ = [
    "NLLMatrix",
    "bootstrap_ci",
    "check_heldout",
    "chunk_sums",
    "delta_nll",
    "evaluate_categories",
    "split_half_stability",
    "summarize",
    "token_nll",
    "token_nlls",
]
