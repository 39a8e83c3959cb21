"""Atomic writes: results appear whole, with the usual permissions, or not at all."""

import errno
import json
import os

import pytest
import torch

from tl_culture._io import PartStore, atomic_path, load_tensors, save_tensors, write_text_atomic
from tl_culture.errors import TLCultureError


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


# --------------------------------------------------------------------------- write faults
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_disk_error_while_writing_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, code):
    target = tmp_path / "r.safetensors"
    save_tensors(target, "Thing", {"x": torch.arange(4)}, {})
    before = target.read_bytes()

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("safetensors.torch.save_file", refuse)
    with pytest.raises(TLCultureError) as e:
        save_tensors(target, "Thing", {"x": torch.arange(5)}, {})
    fix = "free some space" if code == errno.ENOSPC else "fix the folder's permissions or choose another --out"
    assert str(e.value) == (f"{target}: could not write it ({os.strerror(code)}); {fix}, then rerun the same "
                            "command (finished work is kept)")
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors"]


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EBADF, "bad file descriptor")

    monkeypatch.setattr("safetensors.torch.save_file", refuse)
    with pytest.raises(OSError, match="bad file descriptor"):
        save_tensors(tmp_path / "r.safetensors", "Thing", {"x": torch.arange(4)}, {})


# --------------------------------------------------------------------------- checksums
def _saved(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = {"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, dtype=torch.bfloat16)}
    save_tensors(path, "Thing", tensors, {"note": "x"})
    return path


def test_a_bit_flip_in_the_tensors_fails_the_checksum(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x04  # inside tensor a's bytes: safetensors itself reads it fine
    path.write_bytes(bytes(data))
    with pytest.raises(TLCultureError, match=rf"^{path}: fails its checksum \(the file is corrupted\); delete it"):
        load_tensors(path, "Thing")


@pytest.mark.parametrize("cut", [0, 10, 200])
def test_truncated_and_empty_files_are_one_line(tmp_path, cut):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(TLCultureError, match=rf"^{path}: not a readable tl-culture file \(\w+\); it may be corrupted"):
        load_tensors(path, "Thing")


def test_round_trip_and_files_without_a_checksum(tmp_path):
    from safetensors.torch import save_file

    tensors, meta = load_tensors(_saved(tmp_path), "Thing")
    assert meta["note"] == "x" and torch.equal(tensors["a"], torch.arange(1000, dtype=torch.float32))
    old = tmp_path / "old.safetensors"  # written by a version without checksums: read as it is
    save_file({"a": torch.zeros(2)}, str(old), metadata={"tl_culture": json.dumps({"kind": "Thing"})})
    assert torch.equal(load_tensors(old, "Thing")[0]["a"], torch.zeros(2))


# --------------------------------------------------------------------------- parts
def test_part_store_keeps_units_of_its_settings_only(tmp_path):
    store = PartStore(tmp_path / "parts", "settings-1")
    assert store.get("Run(kind='ablate', group='en/x', control=0)") is None and len(store) == 0
    store.put("Run(kind='ablate', group='en/x', control=0)", {"lang:en": torch.tensor([0.5, 1.5])}, {"n": 2})
    tensors, record = store.get("Run(kind='ablate', group='en/x', control=0)")
    assert torch.equal(tensors["lang:en"], torch.tensor([0.5, 1.5])) and record == {"n": 2} and len(store) == 1
    assert PartStore(tmp_path / "parts", "settings-2").get("Run(kind='ablate', group='en/x', control=0)") is None
    assert store.child("language").folder == tmp_path / "parts" / "language"
    flip = store.path("Run(kind='ablate', group='en/x', control=0)")
    data = bytearray(flip.read_bytes())
    data[-3] ^= 0x10
    flip.write_bytes(bytes(data))
    with pytest.raises(TLCultureError, match="fails its checksum"):  # never used silently
        store.get("Run(kind='ablate', group='en/x', control=0)")


def test_part_store_records_keep_what_the_tensors_order_loses(tmp_path):
    store = PartStore(tmp_path, "s")
    store.put("k", {"lang:en": torch.zeros(1), "cult:zh": torch.ones(1)}, {"evals": ["lang:en", "cult:zh"]})
    tensors, record = store.get("k")
    assert sorted(tensors) == ["cult:zh", "lang:en"] and record["evals"] == ["lang:en", "cult:zh"]
