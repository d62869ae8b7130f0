"""The sweep's cache, a folder: one JSON per finished stage of a cell, and the artifacts.

    <out>/cache/export/<key>.json      what the export made (or its one-line error)
    <out>/cache/artifacts/<key>/...    the artifact's files
    <out>/cache/parity/<key>.json
    <out>/cache/timing/<key>.json

Every file is written to a temporary name and renamed, so an interrupted sweep leaves only
finished stages behind.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecls.io import atomic_paths


class Cache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def get(self, stage: str, key: str) -> dict[str, Any] | None:
        path = self.folder / stage / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):     # absent, or from a run killed while writing
            return None

    def put(self, stage: str, key: str, result: dict[str, Any]) -> None:
        with atomic_paths(self.folder / stage / f"{key}.json") as (tmp,):
            tmp.write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")

    def artifact(self, key: str, name: str) -> Path:
        return self.folder / "artifacts" / key / name

    def files(self, key: str) -> dict[str, bytes]:
        folder = self.folder / "artifacts" / key
        return {f.name: f.read_bytes() for f in folder.iterdir()} if folder.is_dir() else {}

    def put_files(self, key: str, files: dict[str, bytes]) -> None:
        folder = self.folder / "artifacts" / key
        finals = [folder / name for name in files]
        with atomic_paths(*finals) as temps:
            for tmp, data in zip(temps, files.values()):
                tmp.write_bytes(data)


__all__ = ["Cache"]
