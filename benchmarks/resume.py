"""A killed `tl-culture run` resumed: wall time of the rerun against an uninterrupted run, same numbers.

    python benchmarks/resume.py --kill-at 0.8 [-- RUN OPTIONS]

Three runs of ``tl-culture run`` (the demo by default; options after ``--`` are passed to it), in
fresh folders: a clean run, timed; a run killed with SIGKILL at ``--kill-at`` of the clean run's wall
time; the same command again, timed. Reports both times, their ratio, the stages the rerun reused
(``summary.json``, ``stages``) and whether the two finished folders hold bit-identical numbers
(`tests/experiment/run_digest.py`).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def timed_run(cmd: list[str], kill_after: float | None = None) -> float:
    """Wall seconds of ``cmd``; with ``kill_after``, SIGKILL it then (returns the seconds it ran)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.experiment.run_digest import differences, digest_run

    base = [sys.executable, "-m", "tl_culture", "run", "--no-progress", *args.run_args]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        clean_out, killed_out = Path(tmp) / "clean", Path(tmp) / "killed"
        clean = timed_run([*base, "--out", str(clean_out)])
        ran = timed_run([*base, "--out", str(killed_out)], kill_after=args.kill_at * clean)
        rerun = timed_run([*base, "--out", str(killed_out)])
        same = differences(digest_run(clean_out), digest_run(killed_out)) == []
        stages = json.loads((killed_out / "summary.json").read_text())["stages"]
    return {
        "benchmark": "resume", "command": C.command_line("resume.py", args), "machine": C.machine_info(),
        "run_args": args.run_args, "kill_at": args.kill_at, "clean_s": clean, "killed_after_s": ran,
        "rerun_s": rerun, "rerun_vs_clean": rerun / clean, "stages": stages, "bit_identical": same,
    }


def report(out: dict[str, Any]) -> str:
    return (f"clean run {out['clean_s']:.0f} s; killed after {out['killed_after_s']:.0f} s; the same command again "
            f"{out['rerun_s']:.0f} s ({100 * out['rerun_vs_clean']:.0f} % of the clean run); stages {out['stages']}; "
            f"bit-identical numbers: {out['bit_identical']}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kill-at", type=float, default=0.8, help="kill at this share of the clean run's wall time")
    p.add_argument("--workdir", default=None, help="folder for the three runs (default: the system's temp)")
    p.add_argument("--out", default=str(C.RESULTS / "resume.json"))
    args = C.parse_recorded(p, own)
    args.run_args, args.argv = run_args, argv  # the recorded command keeps the run's options
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return C.cli_main(parse, run, report, argv)


if __name__ == "__main__":
    main()
