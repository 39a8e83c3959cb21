"""`ExperimentConfig`: every setting of a culture-neuron experiment, its default, help and validation.

This class is the one home of the settings of `tl-culture run`: the command line's flags, defaults
and help are generated from its fields (`tl_culture.cli._options`). A field's ``metadata`` holds
its command-line help and, where they differ from the plain field, its flag (``flag``), value
check (``check``: ``"positive"``, ``"count"`` or ``"rate"``), ``choices`` and ``metavar``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tl_culture.data.corpus import SPLITS, Corpus, demo_corpora, load_corpus
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.controls import DEFAULT_CONTROLS
from tl_culture.evaluation.delta import CONTROL_CELLS, EVAL_MODES
from tl_culture.model.bridge import ATTENTIONS, BACKENDS, check_backend
from tl_culture.model.load import DEFAULT_MODEL
from tl_culture.selection.lape import ACTIVATION_BAR_RATIO, FILTER_RATE, TOP_RATE

CATEGORIES = ("language", "culture", "compound", "pure", "generic")
#: The fields that say which model to load and where (`load_model`'s settings).
MODEL_FIELDS = ("model", "device", "dtype")
#: The fields that are settings of `tl_culture.counting.collect.collect`, under the same names.
COLLECT_FIELDS = ("seq_len", "batch_size", "max_tokens", "backend", "attention", "allow_long_context", "progress")
#: The two sides of an experiment; ``max_tokens`` and ``max_documents`` have a per-side setting each.
SIDES = ("language", "culture")
_TEXT = ("max_documents", "max_documents_language", "max_documents_culture", "eval_fraction", "split", "seed")
_COUNT = ("seq_len", "batch_size", "max_tokens", "max_tokens_language", "max_tokens_culture", "backend", "attention",
          "allow_long_context")
_LAPE = ("top_rate", "filter_rate", "activation_bar_ratio")
#: The settings each stage of a run is made from, in run order (`tl_culture.experiment.resume`):
#: a rerun into the same folder computes again the stages whose settings (or inputs) changed.
STAGE_FIELDS = {
    "count": _TEXT + _COUNT,
    "selection": (*_LAPE, "pairs"),
    "examples": ("examples_tokens", "seq_len", "batch_size", "allow_long_context"),
    "evaluation": ("eval_mode", "eval_tokens", "eval_min_documents", "eval_batch_size", "control_seeds",
                   "control_cells", "bootstrap", "seq_len", "backend", "attention", "allow_long_context", *_TEXT),
    "stability": _TEXT + _COUNT + _LAPE,
    "steering": ("steer_tokens", "control_seeds", "seed", "allow_long_context"),
}


def _opt(help: str, **more: Any) -> dict[str, Any]:
    """Field metadata: the command-line help and (optionally) flag, check, choices, metavar."""
    return {"help": help, **more}


def _corpora(flag: str, help: str, metavar: str = "NAME=PATH") -> Any:
    return field(default_factory=dict, metadata=_opt(help, flag=flag, metavar=metavar))


@dataclass
class ExperimentConfig:
    """Settings of one culture-neuron experiment; each field's ``metadata["help"]`` says what it does.

    ``languages`` and ``cultures`` map group names to corpus specs (`load_corpus`); both empty
    means the demo corpus. ``pairs`` maps a culture to its language where the names differ.
    ``eval_mode`` ``"matched"`` scores language sets on the languages' held-out text and the
    culture-side sets on the cultures'; ``"all"`` scores every set on every held-out corpus.
    Evaluation memory is about ``eval_batch_size × seq_len × d_vocab × 4`` bytes of logits.
    """

    out: str = field(default="runs/demo", metadata=_opt("output folder (replaced as a whole at the end)"))
    model: str = field(default=DEFAULT_MODEL, metadata=_opt(
        f"'{DEFAULT_MODEL}' (the embedded Gemma 3 270M), a HF checkpoint folder or a hub name"))
    languages: dict[str, str] = _corpora("--language", "a language corpus (repeat)")
    cultures: dict[str, str] = _corpora("--culture", "a culture corpus (repeat)")
    pairs: dict[str, str] = _corpora(
        "--pair", "pair a culture with a language of another name (repeat)", "CULTURE=LANGUAGE")
    seq_len: int = field(default=256, metadata=_opt("tokens per row, BOS included", check="positive"))
    batch_size: int = field(default=8, metadata=_opt("rows per counting forward", check="positive"))
    max_tokens: int | None = field(default=None, metadata=_opt(
        "cap on the counted tokens per group (default: every token)", check="positive"))
    max_documents: int | None = field(default=None, metadata=_opt(
        "keep at most this many documents per corpus (required for streamed hf: corpora)", check="positive"))
    max_tokens_language: int | None = field(default=None, metadata=_opt(
        "cap on the counted tokens per language group (default: --max-tokens)", check="positive"))
    max_tokens_culture: int | None = field(default=None, metadata=_opt(
        "cap on the counted tokens per culture group (default: --max-tokens)", check="positive"))
    max_documents_language: int | None = field(default=None, metadata=_opt(
        "keep at most this many documents per language corpus (default: --max-documents)", check="positive"))
    max_documents_culture: int | None = field(default=None, metadata=_opt(
        "keep at most this many documents per culture corpus (default: --max-documents)", check="positive"))
    eval_fraction: float = field(default=0.15, metadata=_opt(
        "share of each corpus's documents held out for evaluation", check="rate"))
    split: str = field(default="random", metadata=_opt(
        "random: a seeded random share of each corpus's documents is held out; head: its first documents "
        "(a contiguous head, the reference protocol), the rest select", choices=SPLITS))
    top_rate: float = field(default=TOP_RATE, metadata=_opt("LAPE: share of all neurons selected", check="rate"))
    filter_rate: float = field(default=FILTER_RATE, metadata=_opt(
        "LAPE: a candidate has some group's P above this quantile of all P", check="rate"))
    activation_bar_ratio: float = field(default=ACTIVATION_BAR_RATIO, metadata=_opt(
        "LAPE: a neuron belongs to every group whose P is above this quantile of all P",
        flag="--bar-ratio", check="rate"))
    seed: int = field(default=0, metadata=_opt("seed of the held-out split, the controls and the bootstrap"))
    device: str | None = field(default=None, metadata=_opt(
        "cpu, cuda, cuda:1, ... (default: cuda if available)"))
    dtype: str | None = field(default=None, metadata=_opt("float32 (default), bfloat16, float16"))
    backend: str = field(default="auto", metadata=_opt(
        "how counting and scoring run the model. hooks: TransformerLens hooks; native: the bridge's HF modules "
        "without its wrappers (faster; same counts, NLLs within 1e-4 nats, and a fused unembedding); auto: "
        "native when no TransformerLens hooks are attached and it checks out", choices=BACKENDS))
    attention: str | None = field(default=None, metadata=_opt(
        "attention of the native backend (default: sdpa where the model supports it); eager makes the counts "
        "bit-identical to the hooks backend", choices=ATTENTIONS))
    allow_long_context: bool = field(default=False, metadata=_opt(
        "run rows (and prompts plus new tokens) longer than the positions the model was trained on, never longer "
        "than it can run; recorded in the results' meta as beyond_trained_positions"))
    progress: bool = field(default=True, metadata=_opt("hide the progress bars", flag="--no-progress"))
    evaluate: bool = field(default=True, metadata=_opt(
        "skip the Δ NLL evaluation stage (nll/{category}.json)", flag="--no-eval"))
    eval_tokens: int | None = field(default=128, metadata=_opt(
        "scored held-out tokens per eval corpus; null in a JSON config scores every token", check="positive"))
    eval_min_documents: int | None = field(default=None, metadata=_opt(
        "score at least this many held-out documents of every eval corpus, raising its eval_tokens cap where "
        "its documents are short (30 gives the document bootstrap its 30 units)", check="positive"))
    eval_batch_size: int = field(default=4, metadata=_opt("rows per evaluation forward", check="positive"))
    control_seeds: int = field(default=DEFAULT_CONTROLS, metadata=_opt(
        "random-neuron control draws per group, outside every selected neuron (0 = none)", flag="--controls",
        check="count"))
    control_cells: str = field(default="own", metadata=_opt(
        "which Δ NLL cells get the random controls. own: each set's own-language and own-culture text (the "
        "cells every 'beats its control' statement reads); all: every cell", choices=CONTROL_CELLS))
    bootstrap: int = field(default=1000, metadata=_opt(
        "bootstrap resamples for the 95 % CIs (0 = none)", check="count"))
    eval_mode: str = field(default="matched", metadata=_opt(
        "matched: language sets on language text, culture-side sets on culture text; all: every set on "
        "every text", choices=EVAL_MODES))
    examples: bool = field(default=True, metadata=_opt(
        "skip the selected neurons' top activating contexts and direct effects (examples.safetensors, "
        "writes.safetensors; the report's neuron explorer shows them)", flag="--no-examples"))
    examples_tokens: int | None = field(default=20_000, metadata=_opt(
        "tokens scanned per group for the top activating contexts; null in a JSON config scans every "
        "selection token", check="positive"))
    stability: bool = field(default=False, metadata=_opt(
        "also select on two disjoint halves of every selection corpus and save the per-group Jaccard "
        "(stability.json; doubles the counting)"))
    prompts: str | None = field(default=None, metadata=_opt(
        "steering prompts, one per line: set each language's neurons to their mean on that language and "
        "measure the share of greedy continuations in that language, vs random neurons (steering/*.json)",
        metavar="FILE"))
    steer_tokens: int = field(default=24, metadata=_opt(
        "new tokens per steering continuation", check="positive"))
    report: bool = field(default=True, metadata=_opt(
        "skip report.html (figures, tables, token views; needs the viz extra)", flag="--no-report"))
    restart: bool = field(default=False, metadata=_opt(
        "start over: compute every stage again instead of continuing what an earlier run into --out left "
        "(a run that crashed or was stopped continues where it stopped; a finished one is reused where its "
        "settings are unchanged)"))

    def __post_init__(self) -> None:
        self._check_numbers()
        check_backend(self.backend, self.attention, flags=True)
        if self.split not in SPLITS:
            raise TLCultureError(f"--split must be {' or '.join(SPLITS)}, got {self.split!r}")
        if self.control_cells not in CONTROL_CELLS:
            raise TLCultureError(f"--control-cells must be {' or '.join(CONTROL_CELLS)}, got {self.control_cells!r}")
        if self.eval_mode not in EVAL_MODES:
            raise TLCultureError(f"--eval-mode must be {' or '.join(EVAL_MODES)}, got {self.eval_mode!r}")
        if bool(self.languages) != bool(self.cultures):
            raise TLCultureError("give both --language and --culture corpora, or neither for the demo corpus")
        unknown = [c for c in self.pairs if c not in self.cultures]
        if unknown:
            raise TLCultureError(f"--pair names unknown cultures {unknown}; cultures are {list(self.cultures)}")

    def _check_numbers(self) -> None:
        if self.seq_len < 2:
            raise TLCultureError(f"--seq-len must be at least 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise TLCultureError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise TLCultureError(f"--max-tokens must be positive, got {self.max_tokens}")
        for name in ("eval_fraction", "top_rate", "filter_rate", "activation_bar_ratio"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise TLCultureError(f"{name.replace('_', '-')} must be in (0, 1), got {v}")
        if self.eval_tokens is not None and self.eval_tokens < 1:
            raise TLCultureError(f"--eval-tokens must be positive, got {self.eval_tokens}")
        if self.eval_min_documents is not None and self.eval_min_documents < 1:
            raise TLCultureError(f"--eval-min-documents must be positive, got {self.eval_min_documents}")
        if self.examples_tokens is not None and self.examples_tokens < 1:
            raise TLCultureError(f"--examples-tokens must be positive, got {self.examples_tokens}")
        if self.steer_tokens < 1:
            raise TLCultureError(f"--steer-tokens must be positive, got {self.steer_tokens}")
        if self.eval_batch_size < 1:
            raise TLCultureError(f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")
        if self.control_seeds < 0 or self.bootstrap < 0:
            raise TLCultureError("--controls and --bootstrap must be 0 or more")
        if self.max_documents is not None and self.max_documents < 1:
            raise TLCultureError(f"max_documents must be positive, got {self.max_documents}")
        for name in (f"{cap}_{side}" for cap in ("max_tokens", "max_documents") for side in SIDES):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TLCultureError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")

    def cap(self, name: str, side: str) -> int | None:
        """``max_tokens`` or ``max_documents`` (``name``) of one side: the side's own setting, else the shared one.

        Args:
            name: ``"max_tokens"`` or ``"max_documents"``.
            side: ``"language"`` or ``"culture"`` (`SIDES`).
        """
        own = getattr(self, f"{name}_{side}")
        return own if own is not None else getattr(self, name)

    def collect_kwargs(self, side: str | None = None) -> dict[str, Any]:
        """The `collect` settings of this experiment; with ``side``, that side's ``max_tokens``.

        A token cap samples documents with the experiment's ``seed`` (``sample_seed``).
        """
        kw = {name: getattr(self, name) for name in COLLECT_FIELDS}
        kw["sample_seed"] = self.seed
        if side is not None:
            kw["max_tokens"] = self.cap("max_tokens", side)
        return kw

    def stage_settings(self, stage: str) -> dict[str, Any]:
        """The settings ``stage`` of a run is made from (`STAGE_FIELDS`), by name."""
        return {name: getattr(self, name) for name in STAGE_FIELDS[stage]}

    def corpus_specs(self, side: str) -> dict[str, str]:
        """The corpus specs of one side (``languages`` or ``cultures``).

        Raises:
            TLCultureError: a streamed ``hf:`` corpus of that side has no document cap.
        """
        specs = self.languages if side == "language" else self.cultures
        for name, spec in specs.items():
            if str(spec).startswith("hf:") and self.cap("max_documents", side) is None:
                raise TLCultureError(
                    f"corpus {name!r} streams {spec}; set max_documents (--max-documents or "
                    f"--max-documents-{side}) to bound it"
                )
        return dict(specs)

    def load_corpora(self) -> tuple[dict[str, Corpus], dict[str, Corpus]]:
        """(languages, cultures) as named corpora."""
        if not self.languages:
            return demo_corpora()
        specs = {side: self.corpus_specs(side) for side in SIDES}  # both sides checked before any is read
        return self._load("language", specs["language"]), self._load("culture", specs["culture"])

    def _load(self, side: str, specs: dict[str, str]) -> dict[str, Corpus]:
        n = self.cap("max_documents", side)
        return {k: load_corpus(v, name=k, max_documents=n) for k, v in specs.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> ExperimentConfig:
        """Read a TOML or JSON config; ``overrides`` that are not None (e.g. from the CLI) win over the file.

        Keys are the field names of this class; the tables ``languages``, ``cultures`` and
        ``pairs`` map names to corpus specs. Relative corpus and model paths are taken relative to
        the config file's folder, so a config works from any working directory. The file or the
        overrides must give ``out``.
        """
        p = Path(path).expanduser()
        data = _read(p)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TLCultureError(f"config {p}: unknown keys {unknown}; known keys are {sorted(known)}")
        for table in ("languages", "cultures"):
            if table in data:
                data[table] = {str(k): _resolve(v, p.parent) for k, v in dict(data[table]).items()}
        for key in ("model", "prompts"):
            if key in data:
                data[key] = _resolve(data[key], p.parent)
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        if "out" not in merged:
            raise TLCultureError(f"config {p} has no 'out'; give --out")
        return cls(**merged)


def _read(p: Path) -> dict[str, Any]:
    """The table of a TOML (or, by suffix, JSON) config file; one-line errors."""
    if not p.is_file():
        raise TLCultureError(f"config {p} does not exist; check the path")
    try:
        if p.suffix.lower() == ".json":
            return json.loads(p.read_text(encoding="utf-8"))
        import tomllib

        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TLCultureError(f"config {p} is not valid {p.suffix.lstrip('.') or 'TOML'}: {first}") from None


def _resolve(spec: Any, folder: Path) -> Any:
    """A corpus or model spec of a config file, a relative path taken relative to ``folder``."""
    text = str(spec)
    if text.startswith("hf:") or text == DEFAULT_MODEL or Path(text).expanduser().is_absolute():
        return spec
    local = folder / text
    return os.path.normpath(local) if local.exists() or text.startswith(".") else spec


__all__ = ["CATEGORIES", "COLLECT_FIELDS", "MODEL_FIELDS", "SIDES", "STAGE_FIELDS", "ExperimentConfig"]
