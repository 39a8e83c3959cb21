"""Atomic file writing and the safetensors + JSON container used by every result object.

Every result object of tl-culture (`ActivationStats`, `NeuronSet`, `NLLMatrix`, ...) is saved as
one safetensors file whose string metadata holds a JSON document under the key ``tl_culture``.
Files are written to a temporary sibling first and moved into place with `os.replace`, so a
crash or an error never leaves a half-written or clobbered result behind.
"""

from __future__ import annotations

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


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give results the usual permissions (0666 minus the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
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

    header = {"kind": kind, "format_version": FORMAT_VERSION, **meta}
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={"tl_culture": json.dumps(header, ensure_ascii=False)})


def load_tensors(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by `save_tensors`, checking that it holds a ``kind`` object.

    Raises:
        TLCultureError: the file is missing, not a safetensors file, or holds another kind.
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise TLCultureError(f"{p}: no such file; check the path")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("tl_culture")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several unrelated types on corrupt input
        raise TLCultureError(
            f"{p}: not a readable tl-culture file ({type(exc).__name__}); it may be corrupted "
            f"or of another format"
        ) from exc
    if raw is None:
        raise TLCultureError(f"{p}: a safetensors file, but not one written by tl-culture")
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


def require(cond: bool, message: str, exc: Callable[[str], Exception] = TLCultureError) -> None:
    """Raise ``exc(message)`` unless ``cond``."""
    if not cond:
        raise exc(message)
