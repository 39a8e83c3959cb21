"""Atomic writes: results appear whole, with the usual permissions, or not at all."""

import os

import pytest

from tl_culture._io import atomic_path, write_text_atomic


def test_written_file_has_umask_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "r.txt", "result")
        assert (tmp_path / "r.txt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]
