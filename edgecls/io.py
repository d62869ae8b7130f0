"""Atomic writes: an artifact appears under its final name complete, or not at all."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_paths(*finals: Path) -> Iterator[list[Path]]:
    """Temporary siblings of `finals` (same folder, same suffix). When the block succeeds
    they are renamed into place, the first one LAST (so e.g. an OpenVINO .xml never points
    at a .bin that is not there yet); when it fails they are removed."""
    first = finals[0]
    first.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{first.stem}.", suffix=f".tmp{first.suffix}",
                               dir=first.parent)
    os.close(fd)
    # Companions share the first temp's stem (x.tmp.xml -> x.tmp.bin): tools such as
    # OpenVINO write and read the pair by swapping the suffix.
    temps = [Path(tmp)] + [Path(tmp).with_suffix(f.suffix) for f in finals[1:]]
    try:
        yield temps
        for tmp, final in reversed(list(zip(temps, finals))):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def sha256(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:limit] if limit else h.hexdigest()
