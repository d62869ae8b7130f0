"""Security of what edgecls spawns and of the sweep (issue 19, findings 4, 6 and 7):

- the timing child (INT8 search, --to best, every sweep cell) imports nothing from the folder
  it is started in, nor from a PYTHONPATH someone else set;
- the local Ray a sweep starts listens on loopback only, with token authentication and a
  private token, and its workers do not import from the working folder;
- a packed folder carries its images only (no dotfiles, other files, links out, no more than
  the cap), and unpacking refuses unsafe member names;
- the sweep cache is validated: a bad entry is ignored with a warning and its stage runs again.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecls.errors import DataError, UnsupportedOptionError

PLANT = "import pathlib\npathlib.Path({marker!r}).write_text(__name__)\n"


def _plant(folder: Path, marker: Path, *modules: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in modules:
        (folder / f"{name}.py").write_text(PLANT.format(marker=str(marker)))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small real ONNX artifact (a conv net on the digits spec; untrained: timing only)."""
    import torch
    from conftest import digits_spec
    from torch import nn

    from edgecls.exporting import export
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 10)).eval()
    return export(model, to="onnx", out=tmp_path_factory.mktemp("tiny") / "tiny.onnx",
                  spec=digits_spec().derive(name="tiny"))


# -- finding 4: a planted module in the working folder -------------------------------------
def test_timing_child_imports_nothing_from_the_working_folder(tiny_onnx, tmp_path, monkeypatch):
    from edgecls.timing import in_subprocess
    marker = tmp_path / "planted-module-ran"
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    _plant(here, marker, "argparse", "json", "numpy")     # what timing imports first
    _plant(elsewhere, marker, "argparse", "json", "numpy")
    monkeypatch.chdir(here)
    monkeypatch.setenv("PYTHONPATH", str(elsewhere))      # ignored by the child too
    timing = in_subprocess(tiny_onnx, threads=1, batch=2, seconds=0.05)
    assert not marker.exists(), f"a planted {marker.read_text()}.py ran in the timing child"
    assert timing.p50_ms > 0 and timing.runs >= 1 and timing.artifact == "tiny.onnx"
    from edgecls.timing import python_command  # the one way edgecls starts Python
    assert python_command("edgecls.timing")[1] == "-I"


# -- finding 6: the local Ray ------------------------------------------------------------------
def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def _listening(psutil) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening TCP/UDP socket of this process (the
    driver's own server) and its descendants: the GCS, the raylet, the agents, the workers."""
    found = []
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = (proc.net_connections if hasattr(proc, "net_connections")
                     else proc.connections)("inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(name, c.laddr.ip, c.laddr.port) for c in conns
                  if c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE) and c.laddr]
    return found


def _forget_ray_token() -> None:
    """Ray keeps the token it first read for the life of the process; this test changes
    HOME, so before and after it Ray must read the token again (or the next local Ray in
    this process meets its GCS with the other token)."""
    try:
        from ray._raylet import AuthenticationTokenLoader
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


@pytest.mark.timeout(180)
def test_local_ray_listens_on_loopback_only_with_a_private_token(tmp_path, monkeypatch):
    """Starts Ray the way `edgecls sweep` does (its own function) from a folder holding a
    planted module; fails if any Ray process listens on a non-loopback address."""
    import psutil
    import ray
    from edgecls.sweep.runner import _start_ray
    if ray.is_initialized():
        ray.shutdown()
    home, planted = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    marker = tmp_path / "planted-module-ran"
    _plant(planted, marker, "edgecls_planted_probe")
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(planted)

    @ray.remote
    def probe():
        import importlib
        import os
        try:
            importlib.import_module("edgecls_planted_probe")
            imported = True
        except ImportError:
            imported = False
        return imported, os.getcwd()

    _forget_ray_token()
    try:
        stop = _start_ray(ray, None, 1, 1)
        try:
            imported, worker_cwd = ray.get(probe.remote(), timeout=120)
            listening = _listening(psutil)
            nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]
        finally:
            (stop if callable(stop) else ray.shutdown)()
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)     # Ray set it for this process
        _forget_ray_token()
    assert listening, "found no Ray process listening at all"
    exposed = [entry for entry in listening if not _loopback(entry[1])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    assert nodes and all(_loopback(a) for a in nodes), nodes
    # its token: written before Ray could write it world-readable, and kept private
    token = home / ".ray" / "auth_token"
    assert token.is_file() and len(token.read_text().strip()) == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    # its workers started elsewhere than the working folder, and imported nothing from it
    assert not imported and not marker.exists()
    assert Path(worker_cwd).resolve() != planted.resolve()


def test_ray_token_is_made_private_and_auth_cannot_be_switched_off(tmp_path, monkeypatch):
    from edgecls.sweep.runner import _token_auth, token_path
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")      # restored afterwards
    existing = tmp_path / ".ray" / "auth_token"        # as Ray <= 2.60 writes it: 0644
    existing.parent.mkdir(mode=0o755)
    existing.write_text("a" * 64)
    existing.chmod(0o644)
    _token_auth()
    assert token_path() == existing and existing.read_text() == "a" * 64
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert stat.S_IMODE(existing.parent.stat().st_mode) == 0o700
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(UnsupportedOptionError, match="token authentication only") as e:
        _token_auth()
    assert "\n" not in str(e.value)


# -- finding 6: packed folders --------------------------------------------------------------
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def test_packed_folder_carries_only_its_images(tmp_path):
    from edgecls.sweep.work import Packed
    folder = tmp_path / "data"
    (folder / "cat").mkdir(parents=True)
    (folder / "dog").mkdir()
    (folder / "cat" / "1.png").write_bytes(PNG)
    (folder / "dog" / "2.JPG").write_bytes(PNG)
    (folder / "cat" / ".hidden.png").write_bytes(PNG)            # a dotfile
    (folder / ".git").mkdir()
    (folder / ".git" / "3.png").write_bytes(PNG)                 # in a dot folder
    (folder / "cat" / "notes.txt").write_text("not an image")
    (folder / "id_rsa").write_text("not an image either")
    (folder / "cat" / "again.png").symlink_to(folder / "cat" / "1.png")   # stays inside: ok
    packed = Packed.of(folder)
    assert sorted(packed.files) == ["cat/1.png", "cat/again.png", "dog/2.JPG"]
    assert packed.name == "data"
    # "sub/.." is the folder itself, never a folder named ".."
    assert Packed.of(folder / "cat" / "..").name == "data"
    # a link out of the folder is refused (nothing of it is read), in one line
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    (folder / "cat" / "cat.png").symlink_to(secret)
    with pytest.raises(DataError, match="links outside the folder") as e:
        Packed.of(folder)
    assert "\n" not in str(e.value) and "s3cret" not in str(e.value)
    (folder / "cat" / "cat.png").unlink()
    # no more than the cap
    with pytest.raises(DataError, match="MiB of images") as e:
        Packed.of(folder, limit=100)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, member", [
    ("..", "x.png"),
    ("sub/..", "x.png"),
    ("/abs", "x.png"),
    (".hidden", "x.png"),
    ("ok", "../escaped.png"),
    ("ok", "sub/../../escaped.png"),
    ("ok", "ABSOLUTE"),
    ("ok", "a\\..\\..\\escaped.png"),
    ("ok", ".hidden.png"),
    ("ok", "sub//x.png"),
    ("ok", "./x.png"),
    ("ok", "run.sh"),
    ("ok", "x.png\n.bashrc"),
])
def test_unpacking_refuses_unsafe_members(tmp_path, name, member):
    from edgecls.sweep.work import Packed
    where = tmp_path / "node" / "work"
    where.mkdir(parents=True)
    if member == "ABSOLUTE":
        member = str(tmp_path / "escaped.png")
    with pytest.raises(DataError) as e:
        Packed(name, {member: PNG}).unpack(where)
    assert "\n" not in str(e.value)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if not p.is_relative_to(where)], written


def test_unpacking_round_trip_and_size_cap(tmp_path):
    from edgecls.sweep.work import Packed
    packed = Packed("val", {"cat/1.png": PNG, "dog/2.png": PNG})
    root = packed.unpack(tmp_path)
    assert root == tmp_path / "val" and (root / "dog" / "2.png").read_bytes() == PNG
    with pytest.raises(DataError, match="MiB"):
        Packed("val2", {"a.png": PNG, "b.png": PNG}).unpack(tmp_path, limit=100)


# -- finding 7: the sweep cache ---------------------------------------------------------------
@pytest.fixture
def planned(tmp_path):
    """A baseline cell of a zoo model, its cache, and a function that reads the cell back
    the way a sweep does before it decides what to run."""
    from edgecls.sweep.cache import Cache
    from edgecls.sweep.plan import cells, models_of
    from edgecls.sweep.runner import _from_cache
    models = models_of(["mobilenet_v2"])
    cell = cells(models, ["onnx"], ["fp32"])[0]
    cache = Cache(tmp_path / "out" / "cache")

    def read():
        return _from_cache(cell, models, cache, "none", None, 300, None, None, 1, 8, 0.3,
                           "local", False)
    return cache, read


GOOD_EXPORT = {"artifact": "mobilenet_v2.onnx", "export_s": 1.5, "trained": False,
               "recipe": None}
GOOD_PARITY = {"skipped": "random weights"}
MACHINE = {"cpu": "Some CPU", "arch": "x86_64", "cores": 2, "int8_isa": "avx2", "os": "Linux 6",
           "python": "3.11.7", "u8s8_saturates": True, "int8_flags": ["avx2"],
           "flags_from": "cpuinfo"}
GOOD_TIMING = {"artifact": "mobilenet_v2.onnx", "backend": "onnxruntime", "precision": "fp32",
               "threads": 1, "batch": 8, "p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 1.5,
               "fps_1": 1000.0, "fps_batch": 900.0, "runs": 50, "stable": True,
               "peak_rss_mb": 12.0, "size_mb": 13.6, "machine": MACHINE, "node": "abc"}


def _fill(cache, keys, export=GOOD_EXPORT, parity=GOOD_PARITY, timing=GOOD_TIMING,
          files=True):
    for stage, value in (("export", export), ("parity", parity), ("timing", timing)):
        path = cache.folder / stage / f"{keys[stage]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value if isinstance(value, str) else json.dumps(value))
    if files:
        cache.put_files(keys["export"], {"mobilenet_v2.onnx": b"onnx bytes"})


def test_valid_cache_entries_are_used(planned):
    cache, read = planned
    keys = read().keys
    _fill(cache, keys)
    result = read()
    assert result.cached == ["export", "parity", "timing"]
    assert result.export == GOOD_EXPORT and result.timing == GOOD_TIMING
    assert result.artifact(cache) == cache.folder / "artifacts" / keys["export"] / "mobilenet_v2.onnx"


@pytest.mark.parametrize("stage, value", [
    ("export", []),                                                      # not an object
    ("export", "[1, 2"),                                                 # not JSON
    ("export", {**GOOD_EXPORT, "artifact": "/etc/passwd"}),             # outside the cache
    ("export", {**GOOD_EXPORT, "artifact": "../../../escaped.onnx"}),
    ("export", {**GOOD_EXPORT, "artifact": "elsewhere.onnx"}),          # no such file here
    ("export", {**GOOD_EXPORT, "artifact": "mobilenet_v2.xml"}),        # not this format's
    ("export", {**GOOD_EXPORT, "export_s": "fast"}),
    ("export", {**GOOD_EXPORT, "extra": 1}),
    ("export", {"error": ["not", "a", "line"]}),
    ("parity", {"data": "val", "n": 10, "labelled": True, "top1": "high", "passed": True,
                "failures": []}),
    ("parity", {"skipped": "x", "error": "y"}),
    ("parity", "[" * 100_000),                                           # too deep for json
    ("timing", {**GOOD_TIMING, "p50_ms": 0}),                            # the table divides by it
    ("timing", {**GOOD_TIMING, "machine": {"cpu": "x"}}),
    ("timing", {**GOOD_TIMING, "stable": "yes"}),
    ("timing", 42),
])
def test_bad_cache_entries_are_ignored_with_a_warning(planned, caplog, stage, value):
    cache, read = planned
    keys = read().keys
    _fill(cache, keys, **{stage: value})
    with caplog.at_level(logging.WARNING, logger="edgecls"):
        result = read()
    assert stage not in result.cached and getattr(result, stage) is None   # it runs again
    assert len(result.cached) < 3
    assert [r for r in caplog.records if r.levelno == logging.WARNING
            and "sweep cache" in r.getMessage() and stage in r.getMessage()], caplog.text
    if stage == "export":
        assert result.artifact(cache) is None
    else:
        assert "export" in result.cached       # the good stages are kept


def test_cache_artifact_links_are_not_followed(planned, tmp_path, caplog):
    cache, read = planned
    keys = read().keys
    _fill(cache, keys, files=False)
    folder = cache.folder / "artifacts" / keys["export"]
    folder.mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    (folder / "mobilenet_v2.onnx").symlink_to(secret)
    with caplog.at_level(logging.WARNING, logger="edgecls"):
        result = read()
        sent = cache.files(keys["export"])
    assert result.export is None and "export" not in result.cached
    assert sent == {} and "sweep cache" in caplog.text


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=20)
_entries = st.one_of(
    _json,
    st.fixed_dictionaries({k: _json for k in GOOD_EXPORT}),
    st.fixed_dictionaries({k: _json for k in GOOD_TIMING}),
    st.builds(lambda d, k, v: {**d, k: v}, st.sampled_from([GOOD_EXPORT, GOOD_TIMING]),
              st.sampled_from(sorted(set(GOOD_EXPORT) | set(GOOD_TIMING))), _json))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stage=st.sampled_from(["export", "parity", "timing"]), value=_entries,
       raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_fuzzed_cache_entries_never_raise(tmp_path, stage, value, raw):
    from edgecls.sweep.cache import Cache, check_entry
    cache = Cache(tmp_path / "fuzz-cache")
    key = "0123456789abcdef0123"
    path = cache.folder / stage / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if raw is not None else json.dumps(value).encode())
    found = cache.get(stage, key, suffixes=(".onnx",))
    if found is not None:
        check_entry(stage, found)
        if "artifact" in found and stage == "export":
            assert cache.artifact(key, found["artifact"]).is_relative_to(cache.folder)
