"""Run-level resume: what each stage of a run is made from, and what a rerun reuses of an earlier try.

A run's stages, in order (each only when the run has it):

    count       statistics of the selection text        (stats_*.safetensors)
    selection   LAPE neurons and culture categories      (neurons/, neurons.txt)
    examples    top contexts and direct effects          (examples.safetensors, writes.safetensors)
    evaluation  Δ NLL matrices                           (nll/*.json)
    stability   split-half Jaccard                       (stability.json)
    steering    measured steering                        (steering/*.json)

The inputs of a stage (`stage_inputs`) are its settings (`STAGE_FIELDS`), the fingerprints of what
it reads (model weights and tokenizer, device type, corpora, prompts) and the fingerprint of the
inputs of the stages it reads. A rerun into the same output folder (`RunDir.staged` keeps the work
folder of an unfinished run, and copies a finished one) reuses a stage when its recorded inputs
(`tl_culture.experiment.manifest`) are the same and its files pass their checksums; every other
stage is computed again, continuing from the finished units it left in its parts folder (collect
checkpoints, scored passes, steering conditions, stability sides), which carry the same
fingerprint. Reused and recomputed results are bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tl_culture._io import PartStore
from tl_culture.counting.checkpoint import tokenizer_fingerprint, weights_fingerprint
from tl_culture.data.corpus import Corpus
from tl_culture.experiment.config import STAGE_FIELDS, ExperimentConfig
from tl_culture.experiment.rundir import RunDir
from tl_culture.model.load import model_device, model_name

#: The stages of a run, in the order they run.
STAGES = tuple(STAGE_FIELDS)


def fingerprint(obj: Any) -> str:
    """sha256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_inputs(
    cfg: ExperimentConfig, model: Any, selection: Mapping[str, Mapping[str, Corpus]], heldout: Mapping[str, Corpus],
    prompts: list[str] | None,
) -> dict[str, dict[str, Any]]:
    """The inputs of every stage this run has (see the module docstring)."""
    made_by = {"model": model_name(model), "weights": weights_fingerprint(model),
               "tokenizer": tokenizer_fingerprint(getattr(model, "tokenizer", None)),
               "device": model_device(model).type}
    text = {side: {g: c.fingerprint for g, c in corpora.items()} for side, corpora in selection.items()}
    count = {**made_by, "corpora": text, "settings": cfg.stage_settings("count")}
    chosen = {"count": fingerprint(count), "settings": cfg.stage_settings("selection")}
    after = {"selection": fingerprint(chosen)}
    inputs = {"count": count, "selection": chosen}
    if cfg.examples:
        inputs["examples"] = {**after, "settings": cfg.stage_settings("examples")}
    if cfg.evaluate:
        inputs["evaluation"] = {**after, "heldout": {n: c.fingerprint for n, c in heldout.items()},
                                "settings": cfg.stage_settings("evaluation")}
    if cfg.stability:
        inputs["stability"] = {**made_by, "corpora": text, "settings": cfg.stage_settings("stability")}
    if prompts is not None:
        inputs["steering"] = {**after, "count": chosen["count"], "prompts": fingerprint(prompts),
                              "settings": cfg.stage_settings("steering")}
    return inputs


def _why(old: Any, new: Any, path: tuple[str, ...] = ()) -> str:
    """What differs between a stage's recorded and present inputs, in a few words."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(k for k in old if k not in new)]:
            if old.get(key) != new.get(key):
                return _why(old.get(key), new.get(key), (*path, key))
    where = path[0] if path else ""
    if where == "settings":
        return f"{path[-1]}: {old!r} -> {new!r}"
    if where in STAGES:
        return f"its input stage {where} changed"
    if where in ("corpora", "heldout"):
        return f"the text of {'/'.join(path[1:])} changed"
    return f"the {where or 'inputs'} changed"


class Resume:
    """Which stages of a run are reused, and the parts of the others (see the module docstring).

    Args:
        run: the run's work folder.
        inputs: `stage_inputs` of this run.
        out: the output folder (named in the note).
    """

    def __init__(self, run: RunDir, inputs: dict[str, dict[str, Any]], out: str | Path) -> None:
        self.run, self.inputs, self.out = run, inputs, out
        self.keys = {stage: fingerprint(inp) for stage, inp in inputs.items()}  # what its parts carry
        self.why: dict[str, str | None] = {}  # stage -> why it is computed (None: reused)
        for stage, inp in inputs.items():
            rec = run.manifest.stage(stage)
            if rec is None:
                self.why[stage] = "new"
            elif rec["inputs"] != inp:
                self.why[stage] = _why(rec["inputs"], inp)
            elif rec["files"] is None:
                self.why[stage] = "new"  # begun, not finished: its parts carry on
            elif not run.manifest.stage_files_ok(stage):
                self.why[stage] = "a file of it is missing"
            else:
                self.why[stage] = None
        self.had_parts = {s: self._has_parts(s) for s in inputs if self.why[s] is not None}

    def _has_parts(self, stage: str) -> bool:
        folder = self.run.parts_path(stage, self.keys[stage])
        return folder.is_dir() and any(folder.rglob("*.safetensors"))

    def reused(self, stage: str) -> bool:
        """Whether ``stage``'s files are taken as they are."""
        return self.why[stage] is None

    def parts(self, stage: str) -> Path:
        """The parts folder of ``stage``, which is being computed (so recorded)."""
        self.run.manifest.start(stage, self.inputs[stage])
        return self.run.parts(stage, self.keys[stage])

    def store(self, stage: str) -> PartStore:
        """A `PartStore` of ``stage``'s finished units, fingerprinted with its inputs."""
        return PartStore(self.parts(stage), self.keys[stage])

    def finish(self, stage: str, files: list[Path]) -> None:
        """Record that ``stage`` made ``files``."""
        self.run.manifest.finish(stage, self.inputs[stage], files)

    def drop_absent(self) -> None:
        """Remove the files and records of stages an earlier try had and this run has not."""
        for stage in STAGES:
            rec = self.run.manifest.stage(stage)
            if stage not in self.inputs and rec is not None:
                for rel in rec["files"] or ():
                    (self.run.path / rel).unlink(missing_ok=True)
                self.run.manifest.forget(stage)

    def note(self) -> str | None:
        """One line on what is reused and why the rest is computed; None for a run from scratch."""
        reused = [s for s, w in self.why.items() if w is None]
        continued = [s for s, had in self.had_parts.items() if had]
        if not reused and not continued:
            return None
        computed = [s + (f" ({w})" if w != "new" else "") + (", continuing its finished parts"
                                                            if self.had_parts.get(s) else "")
                    for s, w in self.why.items() if w is not None]
        return (f"resuming {self.out}: reusing {', '.join(reused) or 'no stage'}; "
                f"computing {'; '.join(computed) or 'nothing'} (--restart starts over)")

    def warn(self) -> None:
        """`note` as a `RuntimeWarning` (the CLI prints it on one line)."""
        line = self.note()
        if line:
            warnings.warn(line, RuntimeWarning, stacklevel=3)

    def summary(self) -> dict[str, str]:
        """Per stage: ``reused``, ``continued`` (computed from finished parts) or ``computed``."""
        return {s: "reused" if w is None else "continued" if self.had_parts.get(s) else "computed"
                for s, w in self.why.items()}


__all__ = ["STAGES", "Resume", "fingerprint", "stage_inputs"]
