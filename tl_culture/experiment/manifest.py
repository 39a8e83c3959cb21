"""``stages.json``: the checksum of every file a run wrote and what each of its stages was made from.

    {"format": "tl-culture stages",
     "files":  {"stats_language.safetensors": "<sha256>", "nll/language.json": "<sha256>", ...},
     "stages": {"count": {"inputs": {...}, "files": ["stats_language.safetensors", ...]}, ...}}

(a stage being computed has ``"files": null``.)

`RunDir` records a file's checksum each time it writes one and checks it each time it reads one
back, so a truncated, zero-length, bit-flipped or replaced file is one `TLCultureError` naming it
(older folders without ``stages.json`` are read unchecked). A stage's record says which inputs
(settings, fingerprints of the model, the corpora and the stages it read) made its files: a rerun
of the run reuses the stage only when its inputs are the same (`tl_culture.experiment.resume`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tl_culture._io import file_sha256, write_json_atomic
from tl_culture.errors import TLCultureError

MANIFEST_FORMAT = "tl-culture stages"
MANIFEST_FILE = "stages.json"


class Manifest:
    """The ``stages.json`` of a run folder (read once, written atomically on every change).

    Args:
        folder: the run folder.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_FILE
        self._data: dict[str, Any] | None = None

    def _read(self) -> dict[str, Any]:
        if self._data is None:
            self._data = {"format": MANIFEST_FORMAT, "files": {}, "stages": {}}
            if self.path.is_file():
                self._data = self._parse()
        return self._data

    def _parse(self) -> dict[str, Any]:
        fix = "delete it (every file of the folder is then read unchecked and every stage computed again)"
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise TLCultureError(f"{self.path}: corrupted; {fix}") from None
        ok = (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
              and isinstance(data.get("files"), dict) and isinstance(data.get("stages"), dict))
        if not ok:
            raise TLCultureError(f"{self.path}: not a tl-culture stages file; {fix}")
        return data

    def _rel(self, path: str | os.PathLike) -> str:
        return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()

    def record(self, *paths: str | os.PathLike) -> None:
        """Record the checksums of files just written into the folder."""
        files = self._read()["files"]
        for p in paths:
            files[self._rel(p)] = file_sha256(p)
        write_json_atomic(self.path, self._read())

    def check(self, path: str | os.PathLike) -> Path:
        """``path``, after checking it against its recorded checksum (files not recorded pass).

        Raises:
            TLCultureError: the file differs from what the run wrote.
        """
        want = self._read()["files"].get(self._rel(path))
        if want is not None and Path(path).is_file() and file_sha256(path) != want:
            raise TLCultureError(
                f"{path}: does not match the checksum in {MANIFEST_FILE} (corrupted or changed since the run "
                "wrote it); delete it and rerun the same `tl-culture run` to compute it again, or rerun with --restart"
            )
        return Path(path)

    def stage(self, name: str) -> dict[str, Any] | None:
        """The record of stage ``name`` (``{"inputs": ..., "files": [...]}``, files null while it is
        computed), or None."""
        return self._read()["stages"].get(name)

    def finish(self, name: str, inputs: dict[str, Any], files: list[str | os.PathLike]) -> None:
        """Record that stage ``name`` made ``files`` (already recorded) from ``inputs``."""
        self._read()["stages"][name] = {"inputs": inputs, "files": sorted(self._rel(p) for p in files)}
        write_json_atomic(self.path, self._read())

    def start(self, name: str, inputs: dict[str, Any]) -> None:
        """Record that stage ``name`` is being computed from ``inputs`` (``files`` null until it finishes)."""
        self._read()["stages"][name] = {"inputs": inputs, "files": None}
        write_json_atomic(self.path, self._read())

    def forget(self, name: str) -> None:
        """Drop the record of stage ``name``."""
        if self._read()["stages"].pop(name, None) is not None:
            write_json_atomic(self.path, self._read())

    def stage_files_ok(self, name: str) -> bool:
        """Whether every file of stage ``name`` is there (each checked against its checksum).

        Raises:
            TLCultureError: one of them differs from what the run wrote.
        """
        rec = self.stage(name) or {}
        if rec.get("files") is None:
            return False
        paths = [self.folder / rel for rel in rec["files"]]
        return all(p.is_file() and self.check(p) for p in paths)


__all__ = ["MANIFEST_FILE", "MANIFEST_FORMAT", "Manifest"]
