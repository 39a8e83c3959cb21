"""`RunDir`: the folder `run_experiment` writes, with every file name, reader and writer of it.

    summary.json                     settings, model, token and neuron counts, Δ NLL summaries
    stats_language.safetensors       `ActivationStats` of the language corpora (selection part)
    stats_culture.safetensors        `ActivationStats` of the culture corpora (selection part)
    neurons/languages.safetensors    LAPE language neurons
    neurons/{category}.safetensors   the culture categories (`CATEGORIES`)
    neurons.txt                      the neuron tables as text
    nll/{category}.json              Δ NLL matrices (when the run evaluated)
    stability.json                   split-half Jaccard per group (when the run measured it)
    steering/{language}.json         measured steering, `SteerEval` (when the run had prompts)
    samples.json                     a few held-out documents per corpus (the report's token views)
    documents.json                   which documents each stage read (per file: count, line ranges)
    examples.safetensors             top activating contexts of the selected neurons (`NeuronExamples`)
    writes.safetensors               their direct effects on the logits (`NeuronWrites`)
    report.html, figures/            the report
    explorer.html                    the neuron explorer alone (`tl-culture explore`)
    stages.json                      every file's checksum, and what each stage was made from

A run is written into a work folder beside its destination (`RunDir.staged`), which replaces
the destination only when every stage has succeeded, so a failing run never damages an earlier
result; the work folder outlives a crash, so that the same run continues from it. Every file
written is recorded in ``stages.json`` (`tl_culture.experiment.manifest`) and checked when read
back. Readers raise `TLCultureError` with a one-line message naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_culture._io import write_json_atomic, write_text_atomic
from tl_culture.counting.stats import ActivationStats
from tl_culture.data.corpus import Corpus
from tl_culture.errors import TLCultureError
from tl_culture.evaluation.matrix import NLLMatrix
from tl_culture.evaluation.steer_result import SteerEval
from tl_culture.experiment.config import CATEGORIES
from tl_culture.experiment.lock import work_folder
from tl_culture.experiment.manifest import MANIFEST_FILE, Manifest
from tl_culture.explore.examples import NeuronExamples
from tl_culture.explore.writes import NeuronWrites
from tl_culture.selection.neurons import NeuronSet

#: The two kinds of statistics a run counts, one file each.
STATS_KINDS = ("language", "culture")
#: The corpus kinds of ``samples.json``.
SAMPLE_KINDS = ("languages", "cultures")
SAMPLES_FORMAT = "tl-culture held-out samples"
#: Held-out documents kept per corpus in ``samples.json``, and the characters kept of each.
SAMPLES_PER_CORPUS = 3
SAMPLE_CHARS = 10_000


@dataclass
class RunContents:
    """What the report shows of a run folder.

    Attributes:
        summary: ``summary.json``.
        languages: the LAPE language neurons.
        categories: category name -> neuron set, in `CATEGORIES` order.
        nll: category -> Δ NLL matrix, in `CATEGORIES` order (other names after, sorted); empty
            without ``nll/``.
        stats_culture: the culture statistics; None when the file is absent.
        neuron_table: ``neurons.txt``; ``""`` when absent.
        samples: ``{"languages" | "cultures": {name: [document, ...]}}``; None for a folder
            without ``samples.json``.
        stats_language: the language statistics; None when the file is absent.
        examples: the selected neurons' top contexts; None when the run did not compute them.
        writes: their direct effects; None when the run did not compute them.
        steering: target language -> measured steering; None when the run had no prompts.
    """

    summary: dict[str, Any]
    languages: NeuronSet
    categories: dict[str, NeuronSet]
    nll: dict[str, NLLMatrix]
    stats_culture: ActivationStats | None
    neuron_table: str
    samples: dict[str, dict[str, list[str]]] | None
    stats_language: ActivationStats | None = None
    examples: NeuronExamples | None = None
    writes: NeuronWrites | None = None
    steering: dict[str, SteerEval] | None = None


class RunDir:
    """A run folder: the names of its files and how each is written and read.

    Args:
        path: the folder (need not exist yet for writing; `open` checks it for reading).
    """

    SUMMARY = "summary.json"
    NEURONS = "neurons"
    NEURON_TABLE = "neurons.txt"
    NLL = "nll"
    STABILITY = "stability.json"
    SAMPLES = "samples.json"
    DOCUMENTS = "documents.json"
    REPORT = "report.html"
    FIGURES = "figures"
    LANGUAGE_NEURONS = "languages"
    EXAMPLES = "examples.safetensors"
    WRITES = "writes.safetensors"
    EXPLORER = "explorer.html"
    STEERING = "steering"

    #: Units of unfinished stages (collect checkpoints, scored passes, steering conditions);
    #: removed when the run succeeds.
    PARTS = ".parts"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = Manifest(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """An existing run folder; raises `TLCultureError` when there is no such folder."""
        run = cls(path)
        if not run.path.is_dir():
            raise TLCultureError(f"{run.path}: no such run folder; give the --out folder of `tl-culture run`")
        return run

    @classmethod
    @contextmanager
    def staged(cls, out: str | os.PathLike, restart: bool = False) -> Iterator[RunDir]:
        """The work folder of a run into ``out`` (`tl_culture.experiment.lock.work_folder`), which
        replaces ``out`` when the block ends without error and outlives a crash for the next run to
        continue from; ``restart`` starts it empty. Parts of unfinished stages are not moved."""
        with work_folder(out, restart=restart, adopt_if=MANIFEST_FILE, drop=cls.PARTS) as work:
            yield cls(work)

    def parts_path(self, stage: str, settings: str) -> Path:
        """Where the parts of ``stage`` computed with ``settings`` (a fingerprint) live."""
        return self.path / self.PARTS / f"{stage}-{settings[:16]}"

    def parts(self, stage: str, settings: str) -> Path:
        """The parts folder of an unfinished stage computed with ``settings`` (a fingerprint).

        Parts of the same stage made with other settings are removed.
        """
        root = self.path / self.PARTS
        keep = self.parts_path(stage, settings)
        for old in root.glob(f"{stage}-*") if root.is_dir() else ():
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
        return keep

    # ------------------------------------------------------------------ paths
    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def neuron_table_path(self) -> Path:
        return self.path / self.NEURON_TABLE

    @property
    def stability_path(self) -> Path:
        return self.path / self.STABILITY

    @property
    def samples_path(self) -> Path:
        return self.path / self.SAMPLES

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    @property
    def figures_dir(self) -> Path:
        return self.path / self.FIGURES

    @property
    def nll_dir(self) -> Path:
        return self.path / self.NLL

    def stats_path(self, kind: str) -> Path:
        """``stats_{kind}.safetensors``, kind ``language`` or ``culture``."""
        if kind not in STATS_KINDS:
            raise TLCultureError(f"unknown statistics kind {kind!r}; use one of {', '.join(STATS_KINDS)}")
        return self.path / f"stats_{kind}.safetensors"

    def neurons_path(self, name: str) -> Path:
        """``neurons/{name}.safetensors`` (``languages`` or a category)."""
        return self.path / self.NEURONS / f"{name}.safetensors"

    def nll_path(self, category: str) -> Path:
        return self.nll_dir / f"{category}.json"

    # ------------------------------------------------------------------ writing
    def _wrote(self, *paths: Path) -> list[Path]:
        """Record the checksums of files just written (`Manifest.record`); return their paths."""
        self.manifest.record(*paths)
        return list(paths)

    def write_stats(self, kind: str, stats: ActivationStats) -> list[Path]:
        stats.save(self.stats_path(kind))
        return self._wrote(self.stats_path(kind))

    def write_neurons(self, languages: NeuronSet, categories: Mapping[str, NeuronSet], table: str) -> list[Path]:
        """The language neurons, every category and the text tables (``neurons.txt``)."""
        (self.path / self.NEURONS).mkdir(parents=True, exist_ok=True)
        languages.save(self.neurons_path(self.LANGUAGE_NEURONS))
        for name, ns in categories.items():
            ns.save(self.neurons_path(name))
        write_text_atomic(self.neuron_table_path, table)
        names = [self.LANGUAGE_NEURONS, *categories]
        return self._wrote(*(self.neurons_path(n) for n in names), self.neuron_table_path)

    def write_nll(self, matrices: Mapping[str, NLLMatrix]) -> list[Path]:
        self.nll_dir.mkdir(parents=True, exist_ok=True)
        for name, m in matrices.items():
            m.save(self.nll_path(name))
        return self._wrote(*(self.nll_path(name) for name in matrices))

    def write_steering(self, evals: Mapping[str, SteerEval]) -> list[Path]:
        """``steering/{language}.json``, one `SteerEval` per target language."""
        (self.path / self.STEERING).mkdir(parents=True, exist_ok=True)
        for target, ev in evals.items():
            ev.save(self.path / self.STEERING / f"{target}.json")
        return self._wrote(*(self.path / self.STEERING / f"{target}.json" for target in evals))

    def write_summary(self, summary: Mapping[str, Any]) -> list[Path]:
        write_json_atomic(self.summary_path, summary)
        return self._wrote(self.summary_path)

    def write_stability(self, stability: Mapping[str, Mapping[str, float]]) -> list[Path]:
        write_json_atomic(self.stability_path, stability)
        return self._wrote(self.stability_path)

    def write_documents(self, record: Mapping[str, Any]) -> None:
        """``documents.json``: the documents each stage read (`tl_culture.data.sampling.document_record`)."""
        write_json_atomic(self.path / self.DOCUMENTS, record)
        self._wrote(self.path / self.DOCUMENTS)

    def read_documents(self) -> dict[str, Any] | None:
        """``documents.json``, or None for a folder written without it."""
        path = self.path / self.DOCUMENTS
        return self._json(path, self.DOCUMENTS) if path.is_file() else None

    def write_samples(self, languages: Mapping[str, Corpus], cultures: Mapping[str, Corpus]) -> None:
        """``samples.json``: the first `SAMPLES_PER_CORPUS` documents of each held-out corpus.

        Each document is cut at `SAMPLE_CHARS` characters (far more than a token view shows);
        a pre-tokenized corpus has no documents and gets an empty list.
        """
        def first(c: Corpus) -> list[str]:
            return [d[:SAMPLE_CHARS] for d in (c.documents or [])[:SAMPLES_PER_CORPUS]]

        body = {kind: {name: first(c) for name, c in held.items()}
                for kind, held in zip(SAMPLE_KINDS, (languages, cultures), strict=True)}
        write_json_atomic(self.samples_path, {"format": SAMPLES_FORMAT, **body})
        self._wrote(self.samples_path)

    def write_examples(self, examples: NeuronExamples, writes: NeuronWrites) -> list[Path]:
        """The selected neurons' top contexts and direct effects (the report's neuron explorer)."""
        examples.save(self.path / self.EXAMPLES)
        writes.save(self.path / self.WRITES)
        return self._wrote(self.path / self.EXAMPLES, self.path / self.WRITES)

    def write_report(self, html: str) -> Path:
        """``report.html`` (atomic); returns its path."""
        write_text_atomic(self.report_path, html)
        return self.report_path

    # ------------------------------------------------------------------ reading
    def _need(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise TLCultureError(f"{path}: missing {what}; is this a run folder written by `tl-culture run`?")
        return self.manifest.check(path)

    def _json(self, path: Path, what: str) -> Any:
        try:
            return json.loads(self._need(path, what).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TLCultureError(f"{path}: corrupted JSON ({exc.msg}); rerun `tl-culture run`") from None
        except UnicodeDecodeError:
            raise TLCultureError(f"{path}: not UTF-8 text; rerun `tl-culture run`") from None

    def read_summary(self) -> dict[str, Any]:
        summary = self._json(self.summary_path, self.SUMMARY)
        if not isinstance(summary, dict):
            raise TLCultureError(f"{self.summary_path}: not a run summary (a JSON object); rerun `tl-culture run`")
        return summary

    def read_language_neurons(self) -> NeuronSet:
        return NeuronSet.load(self._need(self.neurons_path(self.LANGUAGE_NEURONS), "language neurons"))

    def read_categories(self) -> dict[str, NeuronSet]:
        return {c: NeuronSet.load(self._need(self.neurons_path(c), f"{c} neurons")) for c in CATEGORIES}

    def read_nll(self) -> dict[str, NLLMatrix]:
        """Every ``nll/*.json``, categories in `CATEGORIES` order, other names after (sorted)."""
        if not self.nll_dir.is_dir():
            return {}
        order = {c: i for i, c in enumerate(CATEGORIES)}
        paths = sorted(self.nll_dir.glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
        return {p.stem: NLLMatrix.load(self.manifest.check(p)) for p in paths}

    def read_stats(self, kind: str) -> ActivationStats | None:
        """``stats_{kind}.safetensors``, or None when the file is absent."""
        path = self.stats_path(kind)
        return ActivationStats.load(self.manifest.check(path)) if path.is_file() else None

    def read_neuron_table(self) -> str:
        """``neurons.txt``, or ``""`` when absent."""
        path = self.neuron_table_path
        return self.manifest.check(path).read_text(encoding="utf-8") if path.is_file() else ""

    def read_stability(self) -> dict[str, dict[str, float]] | None:
        """``stability.json``, or None when the run did not measure it."""
        return self._json(self.stability_path, self.STABILITY) if self.stability_path.is_file() else None

    def read_samples(self) -> dict[str, dict[str, list[str]]] | None:
        """``samples.json`` without its format tag, or None for a folder written without it."""
        if not self.samples_path.is_file():
            return None
        raw = self._json(self.samples_path, self.SAMPLES)
        ok = isinstance(raw, dict) and raw.get("format") == SAMPLES_FORMAT and all(
            isinstance(raw.get(k), dict)
            and all(isinstance(docs, list) and all(isinstance(d, str) for d in docs) for docs in raw[k].values())
            for k in SAMPLE_KINDS
        )
        if not ok:
            raise TLCultureError(f"{self.samples_path}: not a held-out samples file; rerun `tl-culture run`")
        return {k: {str(n): list(docs) for n, docs in raw[k].items()} for k in SAMPLE_KINDS}

    def read_examples(self) -> tuple[NeuronExamples | None, NeuronWrites | None]:
        """``(examples, writes)``; each None when its file is absent."""
        ex, wr = self.path / self.EXAMPLES, self.path / self.WRITES
        return (NeuronExamples.load(self.manifest.check(ex)) if ex.is_file() else None,
                NeuronWrites.load(self.manifest.check(wr)) if wr.is_file() else None)

    def read_steering(self) -> dict[str, SteerEval] | None:
        """Every ``steering/*.json`` by target language (sorted), or None without the folder."""
        folder = self.path / self.STEERING
        if not folder.is_dir():
            return None
        return {p.stem: SteerEval.load(self.manifest.check(p)) for p in sorted(folder.glob("*.json"))}

    def load(self) -> RunContents:
        """Everything the report shows (see `RunContents`)."""
        examples, writes = self.read_examples()
        return RunContents(
            summary=self.read_summary(),
            languages=self.read_language_neurons(),
            categories=self.read_categories(),
            nll=self.read_nll(),
            stats_culture=self.read_stats("culture"),
            neuron_table=self.read_neuron_table(),
            samples=self.read_samples(),
            stats_language=self.read_stats("language"),
            examples=examples,
            writes=writes,
            steering=self.read_steering(),
        )
