"""One writer per output folder, and the work folder a run writes before it replaces the output folder.

The lock is ``.{out}.lock`` beside the output folder, held with ``fcntl.flock`` (an advisory lock
the operating system drops when the process ends, also on ``kill -9``) and holding the pid, host
and start time of its holder, so that:

- a second run into the same folder is refused at once, with one line naming the process that
  holds it;
- a lock file left by a process that is gone is taken over, with a one-line note;
- staging and backup folders that such a process left beside the output (``.{out}.tmp-*``,
  ``.{out}.old-*``) are removed, with a one-line note: no live run can be using them while the
  lock is held.

Both notes are `RuntimeWarning`s. The swap of a finished run into place happens under the lock, so
two runs cannot interleave it.

`work_folder` holds the lock around a run's work folder, ``.{out}.work`` beside ``out``: it
survives an error or a crash, the next run into ``out`` continues in it, and it replaces ``out``
when the run succeeds.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tl_culture._io import DISK_ERRORS, write_error
from tl_culture.errors import TLCultureError


def lock_path(out: Path) -> Path:
    """The lock file of output folder ``out``."""
    return out.with_name(f".{out.name}.lock")


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"process {info['pid']} on {info['host']} (since {info['started']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _remove_leftovers(out: Path) -> None:
    """Remove the staging and backup folders of runs into ``out`` that ended without cleaning up.

    A run that died in the middle of its swap (the old ``out`` moved aside, the new one not yet in
    place) leaves no ``out`` but a backup: the backup is moved back first, so a finished result is
    never lost (the unfinished run's work folder then makes it anew).
    """
    backups = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if backups and not out.exists():
        os.replace(backups[-1], out)
        warnings.warn(f"put back {out} from {backups[-1].name}, moved aside by a run that died while replacing it",
                      RuntimeWarning, stacklevel=3)
    left = sorted(p for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*") for p in out.parent.glob(pattern))
    for p in left:
        shutil.rmtree(p, ignore_errors=True)
    if left:
        warnings.warn(f"removed {len(left)} folder(s) left beside {out} by an earlier run that did not finish "
                      f"({', '.join(p.name for p in left)})", RuntimeWarning, stacklevel=3)


def _acquire(path: Path, out: Path) -> int:
    """An open descriptor of ``path`` holding its flock; the file is the one at ``path`` now (not one a
    releasing run unlinked between our open and our lock)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TLCultureError(f"{out} is being written by {_holder(path.read_text(errors='replace'))}; wait "
                                 "for it to finish, or give another --out") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the file was unlinked by the run that released it: lock the new one


@contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of output folder ``out`` for the block (see the module docstring).

    The lock file is removed when the block ends (also on errors); a process killed inside it leaves
    the file, which the next run takes over.

    Raises:
        TLCultureError: another live process holds it.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out)
    fd = _acquire(path, out)
    try:
        before = os.read(fd, 4096).decode(errors="replace")
        if before.strip():
            warnings.warn(f"took over the lock of {out} from {_holder(before)}, which is no longer running",
                          RuntimeWarning, stacklevel=3)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _remove_leftovers(out)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiting opener then sees another inode
        os.close(fd)  # closing drops the flock


def work_path(out: str | os.PathLike) -> Path:
    """The work folder of a run into ``out``: ``.{out}.work`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.work")


def _new_work(out: Path, work: Path, adopt: bool) -> None:
    """Make ``work``: a copy of ``out`` when ``adopt``, else empty.

    The copy is made under a staging name first (removed by the next lock if it dies), with hard
    links where the file system has them: results are replaced, never written in place.
    """
    if not adopt:
        work.mkdir()
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.rmdir(tmp)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(out, tmp, copy_function=link)
    os.replace(tmp, work)


@contextmanager
def work_folder(out: str | os.PathLike, *, restart: bool = False, adopt_if: str | None = None,
                drop: str | None = None) -> Iterator[Path]:
    """Hold ``out``'s lock around its work folder; move the folder over ``out`` when the block succeeds.

    Args:
        out: the output folder.
        restart: remove an existing work folder first.
        adopt_if: a file name: without a work folder, an ``out`` holding this file is copied into a
            new one (a finished run that a rerun may partly reuse).
        drop: a name inside the work folder removed before the swap (what only a rerun needs).

    On an error the work folder stays and ``out`` is left as it was. The old ``out`` is moved aside
    before the new one moves in and removed after, under the lock.
    """
    out = Path(out)
    with run_lock(out):
        work = work_path(out)
        with _disk_errors(work):
            if restart:
                shutil.rmtree(work, ignore_errors=True)
            if not work.is_dir():
                _new_work(out, work, adopt=not restart and adopt_if is not None and (out / adopt_if).is_file())
        yield work
        with _disk_errors(out):
            if drop:
                shutil.rmtree(work / drop, ignore_errors=True)
            backup = None
            if out.exists():
                backup = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, backup)
            try:
                os.replace(work, out)
            except OSError:
                if backup is not None:
                    os.replace(backup, out)  # the earlier result back in place
                raise
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """A full disk or a refused permission in the block as `write_error`'s one line naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise write_error(exc.filename or path, exc) from exc
        raise


__all__ = ["lock_path", "run_lock", "work_folder", "work_path"]
