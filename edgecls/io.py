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
    folder = first.parent.absolute()
    made = [p for p in (folder, *folder.parents) if not p.exists()]    # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{first.stem}.", suffix=f".tmp{first.suffix}",
                                   dir=first.parent)
        os.close(fd)
        # Companions share the first temp's stem (x.tmp.xml -> x.tmp.bin): tools such as
        # OpenVINO write and read the pair by swapping the suffix.
        temps = [Path(tmp)] + [Path(tmp).with_suffix(f.suffix) for f in finals[1:]]
        try:
            yield temps
            with _folder_lock(first.parent):   # two writers of one pair: one wins, whole
                for tmp, final in reversed(list(zip(temps, finals))):
                    os.replace(tmp, final)
            done = True
        finally:
            for tmp in temps:
                tmp.unlink(missing_ok=True)
    finally:
        if not done:   # the folders made for it go too, when nothing else went into them
            for path in made:
                with contextlib.suppress(OSError):
                    path.rmdir()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder while files are renamed into it, so that when two
    processes finish the same artifact at once, an OpenVINO .xml is never paired with the
    other process's .bin. A lock on the folder itself leaves no lock file behind (POSIX
    flock; where there is none, the renames are each still atomic)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)      # releases the lock


def sha256(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:limit] if limit else h.hexdigest()
