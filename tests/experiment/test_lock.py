"""One writer per output folder: a second run is refused, a dead holder's lock and leftovers are taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tl_culture import TLCultureError
from tl_culture.experiment.lock import lock_path, run_lock
from tl_culture.experiment.rundir import RunDir

HOLD = """
import sys, time
from tl_culture.experiment.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / "out"``."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_with_one_line_naming_the_first(holder):
    out, proc = holder
    out.mkdir()
    (out / "summary.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TLCultureError, match=rf"^{out} is being written by process {proc.pid} on .* \(since .*\); "
                                             "wait for it to finish, or give another --out$"):
        with RunDir.staged(out):
            pytest.fail("the block must not run")
    assert (out / "summary.json").read_text(encoding="utf-8") == "{}"  # nothing touched
    assert not list(out.parent.glob(".out.tmp-*"))


def test_a_dead_holders_lock_and_leftovers_are_taken_over(holder):
    out, proc = holder
    proc.kill()  # kill -9: no cleanup ran
    proc.wait()
    out.mkdir()  # the swap had finished: the backup is a leftover
    stale = [out.parent / ".out.tmp-abc123", out.parent / ".out.old-999"]
    for p in stale:
        p.mkdir()
        (p / "x").write_text("partial", encoding="utf-8")
    with pytest.warns(RuntimeWarning, match=rf"took over the lock of .*out from process {proc.pid} on .*, which is "
                                            "no longer running"):
        with pytest.warns(RuntimeWarning, match=r"removed 2 folder\(s\) left .*\(\.out\.old-999, \.out\.tmp-abc123\)"):
            with RunDir.staged(out) as run:
                info = json.loads(lock_path(out).read_text(encoding="utf-8"))
                assert info["pid"] == os.getpid()
                run.write_summary({"ok": True})
    assert not any(p.exists() for p in stale) and (out / "summary.json").is_file()
    assert not lock_path(out).exists()  # released cleanly


def test_the_lock_is_free_again_once_released(tmp_path):
    out = tmp_path / "out"
    once = "import sys\nfrom tl_culture.experiment.lock import run_lock\nwith run_lock(sys.argv[1]): print('ok')"
    with run_lock(out):
        busy = subprocess.run([sys.executable, "-c", once, str(out)], capture_output=True, text=True, timeout=60)
        assert busy.returncode != 0 and f"is being written by process {os.getpid()}" in busy.stderr
    free = subprocess.run([sys.executable, "-c", once, str(out)], capture_output=True, text=True, timeout=60)
    assert free.returncode == 0 and free.stdout.strip() == "ok" and "took over" not in free.stderr


def test_cli_second_run_exits_2_with_one_line(holder, capsys):
    from tl_culture.cli import main

    out, proc = holder
    assert main(["run", "--out", str(out), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"tl-culture: error: {out} is being written by process {proc.pid}")


def test_a_run_that_died_in_its_swap_gets_the_finished_result_back(tmp_path):
    out = tmp_path / "out"
    backup = tmp_path / ".out.old-4242"  # the old result moved aside; the new one never moved in
    backup.mkdir()
    (backup / "summary.json").write_text('{"n": 1}', encoding="utf-8")
    with pytest.warns(RuntimeWarning, match=r"put back .*out from \.out\.old-4242, moved aside by a run that died"):
        with pytest.raises(RuntimeError, match="stop"), RunDir.staged(out):
            raise RuntimeError("stop")
    assert RunDir.open(out).read_summary() == {"n": 1} and not backup.exists()
