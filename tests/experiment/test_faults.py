"""Faults during `tl-culture run`: kill -9, SIGTERM and Ctrl-C at stage boundaries and inside the long
stages, then the same command again; write errors at every write site; corrupted files; a changed
setting on resume. The rerun must give bit-identical numbers to an uninterrupted run, doing less work.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.experiment.run_digest import differences, digest_run
from tl_culture.errors import TLCultureError
from tl_culture.experiment.config import ExperimentConfig
from tl_culture.experiment.lock import work_path
from tl_culture.experiment.run import run_experiment
from tl_culture.experiment.rundir import RunDir

#: The child: `tl-culture run` in a subprocess that stops itself at ``argv[1]`` and prints, on
#: success, how much work it did (scored batches, counted batches, decoded conditions, units kept).
CHILD = r"""
import functools, json, os, signal, sys
import tl_culture.counting.collect as collect_mod
import tl_culture.evaluation.nll as nll_mod
import tl_culture.evaluation.steering as steer_mod
import tl_culture.experiment.stages as stages
from tl_culture._io import PartStore
from tl_culture.counting.checkpoint import CollectCheckpoint
from tl_culture.experiment.manifest import Manifest
from tl_culture.cli.app import main

stop, args = sys.argv[1], sys.argv[2:]
how, _, where = stop.partition("@")      # kill|term|int @ finish:STAGE | put:STAGE:N | ckpt:N
work = {"scored": 0, "counted": 0, "decoded": 0, "put": {}, "ckpt": 0}
SIG = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}

def maybe(point):
    if point == where:
        os.kill(os.getpid(), SIG[how])

def counted(name, f):
    @functools.wraps(f)
    def g(*a, **k):
        work[name] += 1
        return f(*a, **k)
    return g

nll_mod._score_batch = counted("scored", nll_mod._score_batch)
collect_mod._run_batch = counted("counted", collect_mod._run_batch)
steer_mod.decode = counted("decoded", steer_mod.decode)
stages.collect = functools.partial(collect_mod.collect, checkpoint_every=1)

put = PartStore.put
def put_and_maybe_stop(self, key, tensors, record=None):
    put(self, key, tensors, record)
    stage = next(p.split("-")[0] for p in self.folder.parts
                 if p.split("-")[0] in ("evaluation", "steering", "stability"))
    work["put"][stage] = work["put"].get(stage, 0) + 1
    maybe(f"put:{stage}:{work['put'][stage]}")
PartStore.put = put_and_maybe_stop

save = CollectCheckpoint.save
def save_and_maybe_stop(self, progress, complete=False):
    save(self, progress, complete)
    work["ckpt"] += 1
    maybe(f"ckpt:{work['ckpt']}")
CollectCheckpoint.save = save_and_maybe_stop

finish = Manifest.finish
def finish_and_maybe_stop(self, name, inputs, files):
    finish(self, name, inputs, files)
    maybe(f"finish:{name}")
Manifest.finish = finish_and_maybe_stop

rc = main(["run", *args])
print("WORK " + json.dumps(work), flush=True)
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("Tell me about your city.\nWhat is a good breakfast?\nDescribe a holiday.\n", encoding="utf-8")
    return path


def run_args(model_dir: Path, out: Path, prompts: Path, *more: str) -> list[str]:
    return ["--model", str(model_dir), "--out", str(out), "--device", "cpu", "--seq-len", "32", "--max-tokens",
            "300", "--batch-size", "2", "--top-rate", "0.1", "--eval-tokens", "40", "--eval-batch-size", "2",
            "--controls", "2", "--bootstrap", "30", "--stability", "--prompts", str(prompts), "--steer-tokens", "3",
            "--no-examples", "--no-report", "--no-progress", *more]


def child(stop: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::UserWarning"}
    return subprocess.run([sys.executable, "-c", CHILD, stop, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def work_done(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(next(line[5:] for line in proc.stdout.splitlines() if line.startswith("WORK ")))


def same_numbers(a: Path, b: Path) -> None:
    """Bit-identical statistics, neurons and Δ NLL arrays (`run_digest`), stability and steering texts."""
    assert differences(digest_run(a), digest_run(b)) == []
    assert RunDir(a).read_stability() == RunDir(b).read_stability()
    steer_a, steer_b = RunDir(a).read_steering(), RunDir(b).read_steering()
    assert steer_a and set(steer_a) == set(steer_b)
    for t in steer_a:
        assert steer_a[t].outputs == steer_b[t].outputs


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_hf_dir, prompts):
    """An uninterrupted run, and the work it did."""
    out = tmp_path_factory.mktemp("clean") / "run"
    return out, work_done(child("none", run_args(tiny_hf_dir, out, prompts)))


def test_killed_stopped_and_interrupted_runs_continue_to_the_same_numbers(tmp_path, tiny_hf_dir, prompts, clean):
    """One output folder, stopped at every stage boundary and inside every long stage in turn; each
    rerun continues where the last stopped, and the last one does less work than a clean run."""
    out, args = tmp_path / "run", run_args(tiny_hf_dir, tmp_path / "run", prompts)
    stops = ["kill@ckpt:3", "kill@finish:count", "kill@put:evaluation:5", "term@put:evaluation:9",
             "kill@finish:evaluation", "int@put:stability:1", "kill@put:steering:2", "kill@finish:steering"]
    finished = []
    for stop in stops:
        proc = child(stop, args)
        code = {"kill": -signal.SIGKILL, "term": 143, "int": 130}[stop.split("@")[0]]
        assert proc.returncode == code, (stop, proc.stderr[-2000:])
        if code != -signal.SIGKILL:  # a stopped run says so in one line
            assert proc.stderr.strip().splitlines()[-1].startswith(
                f"tl-culture: {'terminated' if code == 143 else 'interrupted'}; outputs written so far are complete "
                "files; `tl-culture run` continues where it stopped when rerun")
        assert not out.exists() and work_path(out).is_dir()
        stages = json.loads((work_path(out) / "stages.json").read_text())["stages"]
        done = [name for name, rec in stages.items() if rec["files"] is not None]
        assert set(finished) <= set(done), stop  # nothing finished earlier was lost
        finished = done
    assert finished == ["count", "selection", "evaluation", "stability", "steering"]
    work = work_done(child("none", args))
    assert not work_path(out).exists() and not list(tmp_path.glob(".run.*"))
    same_numbers(out, clean[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] == dict.fromkeys(finished, "reused")
    assert work["scored"] == work["counted"] == work["decoded"] == 0 < clean[1]["scored"]


def test_a_run_killed_inside_the_evaluation_keeps_its_finished_passes(tmp_path, tiny_hf_dir, prompts, clean):
    out = tmp_path / "run"
    args = run_args(tiny_hf_dir, out, prompts)
    assert child("kill@put:evaluation:12", args).returncode == -signal.SIGKILL
    work = work_done(child("none", args))
    same_numbers(out, clean[0])
    assert json.loads((out / "summary.json").read_text())["stages"] == {
        "count": "reused", "selection": "reused", "evaluation": "continued", "stability": "computed",
        "steering": "computed"}
    assert 0 < work["scored"] < clean[1]["scored"] and work["counted"] < clean[1]["counted"]
    # exactly the 12 passes finished before the kill were taken from the parts, none scored again
    assert work["put"]["evaluation"] == clean[1]["put"]["evaluation"] - 12


def test_a_changed_setting_recomputes_exactly_the_stages_it_affects(tmp_path, tiny_hf_dir, prompts):
    out = tmp_path / "run"
    assert child("kill@put:evaluation:5", run_args(tiny_hf_dir, out, prompts)).returncode == -signal.SIGKILL
    proc = child("none", run_args(tiny_hf_dir, out, prompts, "--controls", "1"))
    work = work_done(proc)
    notes = [line for line in proc.stderr.splitlines() if line.startswith("tl-culture: note: resuming")]
    assert notes == [f"tl-culture: note: resuming {out}: reusing count, selection; computing evaluation "
                     "(control_seeds: 2 -> 1); stability; steering (--restart starts over)"]
    assert work["counted"] > 0  # stability counts; the statistics were reused
    ref = tmp_path / "ref"
    work_done(child("none", run_args(tiny_hf_dir, ref, prompts, "--controls", "1")))
    same_numbers(out, ref)
    assert json.loads((out / "summary.json").read_text())["stages"]["count"] == "reused"
    # a finished run rerun with another setting: only what the setting changes is computed again
    work = work_done(child("none", run_args(tiny_hf_dir, out, prompts, "--controls", "1", "--steer-tokens", "2")))
    assert work["scored"] == work["counted"] == 0 < work["decoded"]
    # --restart computes everything
    work = work_done(child("none", run_args(tiny_hf_dir, out, prompts, "--controls", "1", "--restart")))
    assert work["scored"] > 0 and work["counted"] > 0
    assert json.loads((out / "summary.json").read_text())["stages"] == dict.fromkeys(
        ["count", "selection", "evaluation", "stability", "steering"], "computed")


# --------------------------------------------------------------------------- in-process: writes and files
def small(out: Path, **kw) -> ExperimentConfig:
    return ExperimentConfig(**{"out": str(out), "seq_len": 32, "max_tokens": 300, "top_rate": 0.1, "progress": False,
                               "eval_tokens": 24, "bootstrap": 20, "control_seeds": 1, "stability": True,
                               "examples": False, "report": False, **kw})


@contextmanager
def quiet():
    """Ignore the runs' warnings (too few bootstrap units on the tiny corpora, resume notes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def write_sites(tmp_path_factory, tiny_hf_model):
    """The files a run writes, in order: one site per kind of file (digits and hashes ignored)."""
    seen: list[str] = []
    real = os.replace

    def spy(src, dst, *a, **k):
        seen.append(Path(dst).name)
        return real(src, dst, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(os, "replace", spy)
    with quiet():
        run_experiment(small(tmp_path_factory.mktemp("sites") / "run"), model=tiny_hf_model)
    mp.undo()
    kinds: dict[str, int] = {}
    for i, name in enumerate(seen):
        kind = "part" if len(name.split(".")[0]) == 24 else "".join(c for c in name if not c.isdigit())
        kinds.setdefault(kind, i)
    return kinds


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_write_error_at_every_site_is_one_line_loses_nothing_and_resumes(tmp_path, tiny_hf_model, write_sites,
                                                                           code):
    out, ref = tmp_path / "run", tmp_path / "ref"
    with quiet():
        run_experiment(small(out), model=tiny_hf_model)
        run_experiment(small(ref, control_seeds=2), model=tiny_hf_model)
    earlier = files_of(out)
    real = os.replace
    assert {"stages.json", "samples.json", "rank.safetensors", "stats_language.safetensors", "languages.safetensors",
            "neurons.txt", "part", "language.json", "stability.json", "documents.json", "summary.json",
            "run"} <= set(write_sites)  # checkpoints, parts, every result file, the swap
    for kind, at in write_sites.items():
        calls = {"n": 0}

        def faulty(src, dst, *a, calls=calls, at=at, **k):
            calls["n"] += 1
            if calls["n"] == at + 1:
                raise OSError(code, os.strerror(code), str(dst))
            return real(src, dst, *a, **k)

        os.replace = faulty
        try:
            with pytest.raises(TLCultureError) as e, quiet():
                run_experiment(small(out, control_seeds=2, restart=True), model=tiny_hf_model)
        finally:
            os.replace = real
        text = str(e.value)
        assert "\n" not in text and f"could not write it ({os.strerror(code)})" in text, (kind, text)
        assert files_of(out) == earlier, kind  # the earlier result untouched
        assert not [p for p in tmp_path.rglob("*.tmp")], kind  # no half-written file anywhere
    with quiet():
        run_experiment(small(out, control_seeds=2), model=tiny_hf_model)  # the next run finishes
    same_numbers_in_process(out, ref)


def same_numbers_in_process(a: Path, b: Path) -> None:
    assert differences(digest_run(a), digest_run(b)) == []
    assert RunDir(a).read_stability() == RunDir(b).read_stability()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("which", ["stats_language.safetensors", "neurons/pure.safetensors", "nll/culture.json",
                                   "stability.json", "part"])
def test_a_corrupted_file_of_an_unfinished_run_is_named_never_used(tmp_path, tiny_hf_model, which, damage):
    out = tmp_path / "run"

    def broken(run, model):
        raise RuntimeError("stop before the swap")

    with pytest.raises(RuntimeError), quiet():  # parts are removed at the swap: stop the run just before it
        run_experiment(small(out, report=True), model=tiny_hf_model, reporter=broken)
    work = work_path(out)
    path = next((work / ".parts").rglob("*.safetensors")) if which == "part" else work / which
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else
                     data[:-40] + bytes([data[-40] ^ 0x08]) + data[-39:])
    if which == "part":  # parts are read when their stage is computed: make it be
        (work / "stages.json").write_text(json.dumps({**json.loads((work / "stages.json").read_text()),
                                                      "stages": {}}), encoding="utf-8")
    with pytest.raises(TLCultureError) as e, quiet():
        run_experiment(small(out), model=tiny_hf_model)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(path)) and "delete it" in text, text
