"""Atomic file writing and the safetensors + JSON container used by every result object.

Every result object of tl-culture (`ActivationStats`, `NeuronSet`, `NLLMatrix`, ...) is saved as
one safetensors file whose string metadata holds a JSON document under the key ``tl_culture``.
Files are written to a temporary sibling first and moved into place with `os.replace`, so a
crash or an error never leaves a half-written or clobbered result behind; a full disk or a
refused permission while writing is one `TLCultureError` naming the file. Each safetensors file
carries the sha256 of its metadata and tensors (`CHECKSUM_KEY`), checked when it is read:
a truncated, zero-length, bit-flipped or foreign file is one `TLCultureError` naming it.

`PartStore` keeps the finished units of a long computation (one file each, same container), so
that a rerun after a crash continues where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tl_culture.errors import TLCultureError

FORMAT_VERSION = 1
#: The safetensors metadata key of a file's checksum (sha256 of the header JSON and the tensors).
CHECKSUM_KEY = "tl_culture_sha256"
#: Write errors that are the machine's, not the program's: reported as one line naming the file.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO})


def write_error(path: str | os.PathLike, exc: OSError) -> TLCultureError:
    """The one-line error of a failed write of ``path``: the problem and the fix."""
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    fix = ("free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "fix the folder's permissions or choose another --out" if exc.errno in (errno.EACCES, errno.EPERM,
                                                                                          errno.EROFS)
           else "check the disk")
    return TLCultureError(f"{path}: could not write it ({what}); {fix}, then rerun the same command "
                          "(finished work is kept)")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched; an `OSError` of
    the disk (`DISK_ERRORS`: full, no permission, read-only) becomes `write_error`'s one line.
    """
    target = Path(path)
    tmp_path = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        # mkstemp creates 0600; give results the usual permissions (0666 minus the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise write_error(target, exc) from exc
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_tensors(
    path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Save named tensors and a JSON-able ``meta`` dict as one safetensors file, atomically."""
    from safetensors.torch import save_file

    header = json.dumps({"kind": kind, "format_version": FORMAT_VERSION, **meta}, ensure_ascii=False)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={"tl_culture": header, CHECKSUM_KEY: _checksum(header, clean)})


def _checksum(header: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a file's header JSON and its tensors (names, dtypes, shapes and raw bytes, by name)."""
    h = hashlib.sha256(header.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"\0{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_tensors(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by `save_tensors`, checking that it holds a ``kind`` object.

    A file with a checksum (every file this version writes) is checked against it; files of
    earlier versions have none and are read as they are.

    Raises:
        TLCultureError: the file is missing, not a safetensors file, fails its checksum, or holds
            another kind.
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise TLCultureError(f"{p}: no such file; check the path")
    try:
        with safe_open(str(p), framework="pt") as f:
            stored = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several unrelated types on corrupt input
        raise TLCultureError(
            f"{p}: not a readable tl-culture file ({type(exc).__name__}); it may be corrupted "
            f"(delete it and compute it again) or of another format"
        ) from exc
    raw = stored.get("tl_culture")
    if raw is None:
        raise TLCultureError(f"{p}: a safetensors file, but not one written by tl-culture")
    if CHECKSUM_KEY in stored and stored[CHECKSUM_KEY] != _checksum(raw, tensors):
        raise TLCultureError(f"{p}: fails its checksum (the file is corrupted); delete it and compute it again")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TLCultureError(f"{p}: corrupted tl-culture metadata ({exc.msg})") from exc
    if meta.get("kind") != kind:
        raise TLCultureError(
            f"{p}: holds a {meta.get('kind')!r} object, expected {kind!r}; pass the right file"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise TLCultureError(f"{p}: written by a newer tl-culture; upgrade to read it")
    return tensors, meta


PART_KIND = "Part"


class PartStore:
    """Finished units of a long computation, one file each in ``folder``, for a rerun to continue from.

    A unit is named by a string key and holds named tensors and a JSON-able record. Each file
    carries ``settings`` (a fingerprint of everything the unit's result depends on, given by the
    caller); a file made with other settings is not used (the rerun computes the unit again and
    replaces it). Files are written atomically and checked on reading (`load_tensors`), so a
    ``kill -9`` loses at most the unit in progress and a corrupted file is never used silently.

    Args:
        folder: where the units live (created on the first `put`).
        settings: the fingerprint the units must share with this computation.
    """

    def __init__(self, folder: str | os.PathLike, settings: str) -> None:
        self.folder, self.settings = Path(folder), settings

    def __repr__(self) -> str:
        return f"PartStore({str(self.folder)!r})"

    def child(self, name: str) -> PartStore:
        """The store of a sub-computation (its own folder, the same settings)."""
        return PartStore(self.folder / name, self.settings)

    def path(self, key: str) -> Path:
        """The file of unit ``key`` (named by its hash, so any key is a safe file name)."""
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"

    def get(self, key: str) -> tuple[dict[str, torch.Tensor], Any] | None:
        """``(tensors, record)`` of a finished unit made with these settings; None when there is none."""
        path = self.path(key)
        if not path.is_file():
            return None
        tensors, meta = load_tensors(path, PART_KIND)
        if meta.get("key") != key or meta.get("settings") != self.settings:
            return None
        return tensors, meta.get("record")

    def put(self, key: str, tensors: dict[str, torch.Tensor], record: Any = None) -> None:
        """Keep a finished unit (atomically)."""
        save_tensors(self.path(key), PART_KIND, tensors, {"key": key, "settings": self.settings, "record": record})

    def __len__(self) -> int:
        return len(list(self.folder.glob("*.safetensors"))) if self.folder.is_dir() else 0


def require(cond: bool, message: str, exc: Callable[[str], Exception] = TLCultureError) -> None:
    """Raise ``exc(message)`` unless ``cond``."""
    if not cond:
        raise exc(message)
