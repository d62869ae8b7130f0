"""Atomic writes: an artifact appears under its final name complete, or not at all.

Written files get the mode a plain `open(path, "w")` would give them (0o666 less the umask),
every file of an artifact the same one (an OpenVINO .xml and its .bin alike)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

from edgecls.errors import ArtifactError, OutputError


def read_artifact(path: Path) -> bytes:
    """An artifact's bytes; a file that cannot be read is a one-line ArtifactError."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read it ({e.strerror or e})") from None


@contextlib.contextmanager
def atomic_paths(*finals: Path, overwrite: bool = True) -> Iterator[list[Path]]:
    """Temporary siblings of `finals` (same folder, same suffix). When the block succeeds
    they are renamed into place, the first one LAST (so e.g. an OpenVINO .xml never points
    at a .bin that is not there yet); when it fails they are removed. With overwrite=False
    a final that exists by then (made by someone else during the block) is never replaced:
    OutputError, and nothing is renamed."""
    first = finals[0]
    folder = first.parent.absolute()
    made = [p for p in (folder, *folder.parents) if not p.exists()]    # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        tmp, mode = _reserve(first)
        # Companions share the first temp's stem (x.tmp.xml -> x.tmp.bin): tools such as
        # OpenVINO write and read the pair by swapping the suffix.
        temps = [tmp] + [tmp.with_suffix(f.suffix) for f in finals[1:]]
        try:
            yield temps
            for path in temps:    # whoever made a file (a tool may recreate it): one mode
                if path.exists() and stat.S_IMODE(path.stat().st_mode) != mode:
                    os.chmod(path, mode)
            with _folder_lock(first.parent):   # two writers of one pair: one wins, whole
                if not overwrite:
                    taken = [f for f in finals if os.path.lexists(f)]
                    if taken:
                        raise OutputError(f"{taken[0]} exists (it appeared while this was "
                                          "written): pass --force to replace it, or -o "
                                          "another path; nothing was written")
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


def write_texts(folder: Path, texts: dict[str, str]) -> dict[str, Path]:
    """The files `texts` names (file name -> text, rendered beforehand) in `folder`, all or
    none: renamed into place together by atomic_paths. The one writer of report files."""
    paths = {name: Path(folder) / name for name in texts}
    with atomic_paths(*paths.values()) as temps:
        for tmp, text in zip(temps, texts.values()):
            tmp.write_text(text, encoding="utf-8")
    return paths


def _reserve(first: Path) -> tuple[Path, int]:
    """A new empty temporary sibling of `first`, created with mode 0o666 so the umask (and a
    default ACL) applies as to any new file (mkstemp's 0o600 would survive the rename), and
    the mode it got: the umask read without os.umask, whose set-and-restore races threads."""
    while True:
        path = first.parent / f".{first.stem}.{secrets.token_hex(4)}.tmp{first.suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o666)
        except FileExistsError:
            continue
        try:
            return path, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


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
