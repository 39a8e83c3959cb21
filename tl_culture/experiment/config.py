"""`ExperimentConfig`: every setting of a culture-neuron experiment, its defaults and validation."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tl_culture.data.corpus import Corpus, demo_corpora, load_corpus
from tl_culture.errors import TLCultureError
from tl_culture.model.fastpath import ATTENTIONS, BACKENDS

CATEGORIES = ("language", "culture", "compound", "pure", "generic")


@dataclass
class ExperimentConfig:
    """Settings of one culture-neuron experiment.

    Attributes:
        out: output folder (replaced atomically at the end).
        model: model spec for `load_model` (``"default"`` = embedded Gemma 3 270M).
        languages: language name -> corpus spec; empty = the demo corpus.
        cultures: culture name -> corpus spec; empty = the demo corpus.
        pairs: culture -> language, where the names differ.
        seq_len, batch_size, max_tokens: collection settings (``max_tokens`` per group).
        eval_fraction: share of each corpus's documents held out for evaluation.
        top_rate, filter_rate, activation_bar_ratio: LAPE constants.
        seed: seed of the held-out split and of the controls.
        device, dtype: where and how to run the model.
        backend, attention: how `collect` runs the model (see `tl_culture.stats.collect`).
        evaluate: run the Δ NLL evaluation stage (``nll/{category}.json``).
        eval_tokens: scored held-out tokens per eval corpus (the 262k-vocab unembedding is the cost).
        eval_batch_size: rows per evaluation forward (memory ≈ rows × seq_len × d_vocab × 4 bytes).
        control_seeds: random-neuron control seeds per group (0 = none).
        bootstrap: bootstrap resamples for the 95 % CIs (0 = none).
        eval_mode: ``"matched"`` (language sets on language held-out text, culture-side sets on
            culture held-out text) or ``"all"`` (every set on every held-out corpus).
        max_documents: keep at most this many documents per corpus (required for streamed
            ``hf:`` corpora).
        stability: also select on two disjoint halves of every selection corpus and save the
            per-group Jaccard of the two sets (``stability.json``; doubles the collection cost).
        report: write ``report.html`` with figures and token views at the end (needs the ``viz``
            extra; skipped with a warning when matplotlib or circuitsvis is missing).
    """

    out: str
    model: str = "default"
    languages: dict[str, str] = field(default_factory=dict)
    cultures: dict[str, str] = field(default_factory=dict)
    pairs: dict[str, str] = field(default_factory=dict)
    seq_len: int = 256
    batch_size: int = 8
    max_tokens: int | None = None
    eval_fraction: float = 0.15
    top_rate: float = 0.01
    filter_rate: float = 0.95
    activation_bar_ratio: float = 0.95
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    backend: str = "auto"
    attention: str | None = None
    progress: bool = True
    evaluate: bool = True
    eval_tokens: int | None = 128
    eval_batch_size: int = 4
    control_seeds: int = 1
    bootstrap: int = 1000
    eval_mode: str = "matched"
    max_documents: int | None = None
    stability: bool = False
    report: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
        if self.eval_batch_size < 1:
            raise TLCultureError(f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")
        if self.control_seeds < 0 or self.bootstrap < 0:
            raise TLCultureError("--controls and --bootstrap must be 0 or more")
        if self.backend not in BACKENDS:
            raise TLCultureError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.attention is not None and self.attention not in ATTENTIONS:
            raise TLCultureError(f"--attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.attention == "sdpa" and self.backend == "hooks":
            raise TLCultureError("--attention sdpa needs the native backend; drop it or use --backend native")
        if self.eval_mode not in ("matched", "all"):
            raise TLCultureError(f"--eval-mode must be matched or all, got {self.eval_mode!r}")
        if self.max_documents is not None and self.max_documents < 1:
            raise TLCultureError(f"max_documents must be positive, got {self.max_documents}")
        if bool(self.languages) != bool(self.cultures):
            raise TLCultureError("give both --language and --culture corpora, or neither for the demo corpus")
        unknown = [c for c in self.pairs if c not in self.cultures]
        if unknown:
            raise TLCultureError(f"--pair names unknown cultures {unknown}; cultures are {list(self.cultures)}")

    def collect_kwargs(self) -> dict[str, Any]:
        """The `collect` settings of this experiment."""
        return dict(
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            progress=self.progress,
            backend=self.backend,
            attention=self.attention,
        )

    def load_corpora(self) -> tuple[dict[str, Corpus], dict[str, Corpus]]:
        """(languages, cultures) as named corpora."""
        if not self.languages:
            return demo_corpora()
        return self._load(self.languages), self._load(self.cultures)

    def _load(self, specs: dict[str, str]) -> dict[str, Corpus]:
        for name, spec in specs.items():
            if str(spec).startswith("hf:") and self.max_documents is None:
                raise TLCultureError(f"corpus {name!r} streams {spec}; set max_documents (--max-documents) to bound it")
        return {k: load_corpus(v, name=k, max_documents=self.max_documents) for k, v in specs.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> ExperimentConfig:
        """Read a TOML or JSON config; ``overrides`` (e.g. from the CLI) win over the file.

        Relative corpus and model paths are taken relative to the config file's folder, so a
        config works from any working directory. Keys are the field names of this class; the
        tables ``languages``, ``cultures`` and ``pairs`` map names to corpus specs.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise TLCultureError(f"config {p} does not exist; check the path")
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(p.read_text(encoding="utf-8"))
            else:
                import tomllib

                data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TLCultureError(f"config {p} is not valid {p.suffix.lstrip('.') or 'TOML'}: {first}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TLCultureError(f"config {p}: unknown keys {unknown}; known keys are {sorted(known - {'extra'})}")

        def resolve(spec: Any) -> Any:
            text = str(spec)
            if text.startswith("hf:") or text == "default" or Path(text).expanduser().is_absolute():
                return spec
            local = p.parent / text
            return os.path.normpath(local) if local.exists() or text.startswith(".") else spec

        for table in ("languages", "cultures"):
            if table in data:
                data[table] = {str(k): resolve(v) for k, v in dict(data[table]).items()}
        if "model" in data:
            data["model"] = resolve(data["model"])
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        if "out" not in merged:
            raise TLCultureError(f"config {p} has no 'out'; give --out")
        return cls(**merged)
