"""The sweep's cache, a folder: one JSON per finished stage of a cell, and the artifacts.

    <out>/cache/export/<key>.json      what the export made (or its one-line error)
    <out>/cache/artifacts/<key>/...    the artifact's files
    <out>/cache/parity/<key>.json
    <out>/cache/timing/<key>.json

Every file is written to a temporary name and renamed, so an interrupted sweep leaves only
finished stages behind.

Nothing read back is trusted: the folder may have been edited, copied from someone else or
written by another version. Each entry is checked against its stage's schema (the fields,
their types and bounds; no other field); an artifact is a plain file name whose file lies
in the entry's own artifacts folder (no link, nothing outside the cache). An entry that
fails is ignored, with a warning, and its stage runs again.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from edgecls.io import atomic_paths
from edgecls.verdict import OUTCOMES as OUTCOMES_OF_A_VERDICT

log = logging.getLogger("edgecls")

STAGES = ("export", "parity", "timing")
#: the largest entry read back (a cell's results are a few KB)
MAX_ENTRY_BYTES = 1 << 20
#: the longest string in an entry (an error's one line, a label, a CPU name)
MAX_TEXT = 4096
#: a cache key (plan.digest: 20 hex digits) and an artifact's file name: no separator, no
#: "..", no leading dot
KEY = re.compile(r"[0-9a-f]{8,64}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


class BadEntry(ValueError):
    """A cache entry that is not what its stage writes."""


class Cache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def get(self, stage: str, key: str, *, suffixes: Sequence[str] = ()) -> dict[str, Any] | None:
        """The entry of `stage` under `key`, checked; None when there is none or it is bad
        (then a warning says why). `suffixes`: those an export's artifact may have."""
        path = self._entry(stage, key)
        try:
            if path.is_symlink() or not path.is_file():
                raise FileNotFoundError(path)
            with path.open("rb") as f:
                raw = f.read(MAX_ENTRY_BYTES + 1)
        except OSError:             # absent (or unreadable): the stage runs
            return None
        try:
            if len(raw) > MAX_ENTRY_BYTES:
                raise BadEntry(f"larger than {MAX_ENTRY_BYTES} bytes")
            try:
                value = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as e:   # a run killed while writing, or worse
                raise BadEntry(f"not JSON ({type(e).__name__})") from None
            check_entry(stage, value)
            if stage == "export" and "artifact" in value:
                self._check_artifact(key, value["artifact"], suffixes)
        except BadEntry as e:
            log.warning("sweep cache: ignoring %s/%s.json (%s); running that stage again",
                        stage, key, e)
            return None
        return value

    def put(self, stage: str, key: str, result: dict[str, Any]) -> None:
        with atomic_paths(self._entry(stage, key)) as (tmp,):
            tmp.write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")

    def artifact(self, key: str, name: str) -> Path:
        """Where the artifact `name` of the export `key` lies (both checked: inside the cache)."""
        return self._artifacts(key) / _file_name(name)

    def files(self, key: str) -> dict[str, bytes]:
        """The export's artifact files: plain files with plain names only (a link or
        anything else found there is left behind, with a warning)."""
        folder = self._artifacts(key)
        if folder.is_symlink() or not folder.is_dir():
            return {}
        found = {}
        for f in sorted(folder.iterdir()):
            if f.name.startswith("."):      # an interrupted write's temporary file
                continue
            if f.is_symlink() or not f.is_file() or not FILE_NAME.fullmatch(f.name) \
                    or ".." in f.name:
                log.warning("sweep cache: ignoring %s in artifacts/%s (not a plain file)",
                            f.name[:80], key)
                continue
            found[f.name] = f.read_bytes()
        return found

    def put_files(self, key: str, files: dict[str, bytes]) -> None:
        folder = self._artifacts(key)
        finals = [folder / _file_name(name) for name in files]
        with atomic_paths(*finals) as temps:
            for tmp, data in zip(temps, files.values()):
                tmp.write_bytes(data)

    # -- inside the folder ---------------------------------------------------------------
    def _entry(self, stage: str, key: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"no cache stage {stage!r}")
        return self.folder / stage / f"{_key(key)}.json"

    def _artifacts(self, key: str) -> Path:
        return self.folder / "artifacts" / _key(key)

    def _check_artifact(self, key: str, name: str, suffixes: Sequence[str]) -> None:
        if suffixes and not any(name.endswith(s) for s in suffixes):
            raise BadEntry(f"artifact {name[:80]!r} is not a {'/'.join(suffixes)} file")
        path = self.artifact(key, name)
        root = (self.folder / "artifacts").resolve()
        if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(root):
            raise BadEntry(f"its artifact {name[:80]!r} is not a file in artifacts/{key}")


def _key(key: str) -> str:
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise ValueError(f"not a cache key: {str(key)[:80]!r}")
    return key


def _file_name(name: Any) -> str:
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or ".." in name:
        raise BadEntry(f"{str(name)[:80]!r} is not a plain file name")
    return name


# -- the schema of each stage --------------------------------------------------------------
Check = Callable[[Any], bool]


def _text(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 53


def _outcome(v: Any) -> bool:
    return v in OUTCOMES_OF_A_VERDICT


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _fraction(v: Any) -> bool:
    return _number(v) and -1e-9 <= v <= 1 + 1e-9


def _interval(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_fraction(x) for x in v)


def _texts(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 1000 and all(_text(x) for x in v)


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _machine(v: Any) -> bool:
    """hardware.describe(): the fields the table reads, and flat values elsewhere."""
    if not isinstance(v, dict) or len(v) > 64:
        return False
    needed = {"cpu": _text, "arch": _text, "cores": _count, "int8_isa": _text, "os": _text,
              "python": _text}
    if any(k not in v or not check(v[k]) for k, check in needed.items()):
        return False
    return all(_text(k) and (v_ is None or _text(v_) or _number(v_) or _flag(v_) or _texts(v_))
               for k, v_ in v.items() if k not in needed)


#: every field an entry of each stage may have; the required ones are marked True
SCHEMAS: dict[str, dict[str, tuple[Check, bool]]] = {
    "export": {"artifact": (lambda v: isinstance(v, str), True),   # checked as a file name
               "export_s": (_number, True), "trained": (_flag, True),
               "recipe": (_optional(_text), False)},
    "parity": {"data": (_text, True), "n": (_count, True), "labelled": (_flag, True),
               "top1": (_optional(_fraction), False), "top1_ci": (_optional(_interval), False),
               "top5": (_optional(_fraction), False), "top5_ci": (_optional(_interval), False),
               "agreement": (_optional(_fraction), False),
               "agreement_ci": (_optional(_interval), False),
               "top1_drop": (_optional(_number), False),
               "reference_top1": (_optional(_fraction), False),
               "passed": (_flag, True), "outcome": (_optional(_outcome), False),
               "kl": (_optional(_number), False), "tolerance": (_optional(_text), False),
               "failures": (_texts, True)},
    "timing": {"artifact": (_text, True), "backend": (_text, True), "precision": (_text, True),
               "threads": (_count, True), "batch": (_count, True), "p50_ms": (_positive, True),
               "p90_ms": (_positive, True), "p99_ms": (_positive, True),
               "fps_1": (_positive, True), "fps_batch": (_positive, True),
               "runs": (_count, True), "stable": (_flag, True), "peak_rss_mb": (_number, True),
               "size_mb": (_number, True), "machine": (_machine, True),
               "node": (_optional(_text), False)},
}
#: the one-field entries any stage may record instead: why it failed, or was not run
OUTCOMES = {"export": ("error",), "parity": ("error", "skipped"), "timing": ("error",)}


def check_entry(stage: str, value: Any) -> None:
    """Raise BadEntry unless `value` is what `stage` writes."""
    if not isinstance(value, dict):
        raise BadEntry(f"a {type(value).__name__}, not an object")
    if len(value) == 1 and next(iter(value)) in OUTCOMES[stage]:
        if not _text(next(iter(value.values()))):
            raise BadEntry(f"its {next(iter(value))!r} is not a line of text")
        return
    schema = SCHEMAS[stage]
    unknown = sorted(str(k)[:40] for k in value if k not in schema)
    if unknown:
        raise BadEntry(f"unknown field(s) {', '.join(unknown[:5])}")
    for name, (check, required) in schema.items():
        if name not in value:
            if required:
                raise BadEntry(f"no {name!r}")
        elif not check(value[name]):
            raise BadEntry(f"its {name!r} is {type(value[name]).__name__} {str(value[name])[:40]!r}")
    if stage == "export":
        _file_name(value["artifact"])


__all__ = ["Cache", "BadEntry", "check_entry", "SCHEMAS"]
