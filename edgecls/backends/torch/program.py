"""Loading a .pt2 (torch.export) program without running code from the file.

torch.export.load unpickles parts of the archive: weights and constants stored as pickles
(with torch.load(..., weights_only=False)) and Python objects among the constants
(pickle.loads, TorchScript's pickler). A classifier's program holds tensors only. So edgecls
refuses an archive that holds pickled Python objects, unless trusted, and loads the rest
with torch.load forced to weights_only (TORCH_FORCE_WEIGHTS_ONLY_LOAD), which restores
tensors and nothing else: a pickle that would run code fails to load instead.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import threading
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator
from unittest import mock       # patch.dict: the environment, restored whatever happens

from edgecls.backends.torch.container import read_member
from edgecls.errors import ArtifactError, first_line

_ENV_LOCK = threading.Lock()     # the switch is process-wide: one load at a time flips it


def pickled_objects(archive: zipfile.ZipFile, path: Path) -> list[str]:
    """The constants of a .pt2 archive that only unpickling Python objects restores (its
    config files read capped: edgecls.backends.torch.container.read_member)."""
    from torch.export.pt2_archive.constants import (CUSTOM_OBJ_FILENAME_PREFIX,
                                                    OPAQUE_OBJ_FILENAME_PREFIX)

    prefixes = (CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX)
    found = []
    for name in archive.namelist():
        if "/data/constants/" in name and name.endswith("config.json"):
            try:
                config = json.loads(read_member(archive, name, path))
            except RecursionError:
                raise ValueError(f"{name} is nested too deeply") from None
            config = config.get("config", {}) if isinstance(config, dict) else None
            if not isinstance(config, dict):
                raise ValueError(f"{name} is not a constants config")
            found += [fqn for fqn, meta in config.items() if not isinstance(meta, dict)
                      or str(meta.get("path_name", "")).startswith(prefixes)]
    return found


def load_program(file: IO[bytes], path: Path, trust_remote_code: bool = False) -> Any:
    """The torch.export.ExportedProgram in an open .pt2 file (read from its start)."""
    import torch
    if not trust_remote_code:
        try:
            with zipfile.ZipFile(file) as archive:
                objects = pickled_objects(archive, path)
        except (zipfile.BadZipFile, ValueError) as e:
            raise ArtifactError(f"{path}: not a .pt2 archive ({first_line(e)})") from None
        if objects:
            raise ArtifactError(f"{path}: the program holds pickled Python objects "
                                f"({', '.join(objects[:3])}); loading them runs code from the "
                                "file: pass --trust-remote-code if you trust it")
        file.seek(0)
    with _weights_only(not trust_remote_code):
        try:
            return torch.export.load(file)
        except pickle.UnpicklingError:     # weights_only met a pickle of more than tensors
            raise ArtifactError(f"{path}: the program holds a pickle of more than tensors; "
                                "loading it runs code from the file: pass --trust-remote-code "
                                "if you trust it") from None
        except Exception as e:  # torch's deserializer raises many kinds
            raise ArtifactError(f"{path}: torch cannot load it ({first_line(e)})") from None


@contextlib.contextmanager
def _weights_only(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    with _ENV_LOCK, mock.patch.dict(os.environ, {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}):
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # both set is torch's error
        yield
