"""Shared fixtures: a real model trained in the session on scikit-learn's digits, and the
real EfficientNet-Lite0 ImageNet weights with the photos that ship in installed packages."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable


def _share_the_cores_between_workers() -> None:
    """Each pytest-xdist worker gets its share of the cores for the runtimes' thread pools
    (torch's OpenMP, ONNX Runtime's intra-op pool, also in the quantizers and NNCF, and in
    the CLI subprocesses, which inherit the environment). Left alone, every worker's
    runtimes take every core and spin while waiting for each other: two processes each
    running EfficientNet-Lite0 with 2 threads on 2 cores (AMD EPYC) took 1.9x (torch) and
    1.6x (ONNX Runtime) the time they took with 1 thread each. Set before numpy and torch
    are imported; a value the user set is kept. ORT_INTRA_OP_NUM_THREADS is what ONNX
    Runtime reads for sessions that do not set their own count."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, len(os.sched_getaffinity(0)) // workers))
        for name in ("OMP_NUM_THREADS", "ORT_INTRA_OP_NUM_THREADS"):
            os.environ.setdefault(name, share)


_share_the_cores_between_workers()


def pytest_configure(config) -> None:
    """One cache folder for the run (edgecls.backends.adaround keeps roundings there),
    shared by the xdist workers, which inherit the environment when they start after this,
    and by the CLI subprocesses: three EfficientNet-Lite0 searches round the model once,
    never from a cache an earlier run or the user left. A value the user set is kept."""
    import tempfile
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("EDGECLS_CACHE"):
        return
    folder = tempfile.mkdtemp(prefix="edgecls-test-cache-")
    os.environ["EDGECLS_CACHE"] = folder
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))

import numpy as np  # noqa: E402  (after the threads are set)
import pytest  # noqa: E402

DIGITS_EPOCHS = 12


def run_concurrently(fn, n: int) -> list:
    """fn(0..n-1) on n threads that all start together (a barrier: no thread runs fn before
    every thread is ready, so they really overlap); results in order, and the first
    exception any thread raised is re-raised here."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    ready = threading.Barrier(n)

    def start(i: int):
        ready.wait(timeout=60)
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(start, range(n)))


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgecls", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def cli(capfd, monkeypatch):
    """run_cli without a new process: `cli(*args, cwd=...)` runs edgecls.cli.main(args) here
    (no interpreter start: about 0.5 s each on 2 busy cores, as these errors are decided
    before torch is imported) and returns what run_cli returns:
    the exit status (argparse's SystemExit included) and stdout and stderr as written to the
    file descriptors (native libraries' output too), with the log handler main() installs
    (the root logger's pytest handlers are set aside meanwhile, so main's logging.basicConfig
    takes effect as in a process of its own). For user errors decided before any native
    library prints; what is about a real process (an interpreter's exit status and traceback,
    signals, the environment it starts with, startup warnings) keeps run_cli."""
    import logging

    from edgecls.cli import main

    def run(*args, cwd: Path) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        capfd.readouterr()
        monkeypatch.chdir(cwd)
        monkeypatch.setenv("COLUMNS", "200")
        environ = dict(os.environ)
        root, ours = logging.getLogger(), logging.getLogger("edgecls")
        handlers, levels = root.handlers[:], (root.level, ours.level)
        root.handlers.clear()
        try:
            code = main(argv)
        except SystemExit as e:          # argparse's usage errors
            code = e.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            root.handlers[:] = handlers
            root.setLevel(levels[0])
            ours.setLevel(levels[1])
            os.environ.clear()           # main() sets OPENCV_LOG_LEVEL for its process
            os.environ.update(environ)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["edgecls", *argv], code, out, err)

    return run


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No weights cache and no network, whatever machine the tests run on."""
    dead = "http://127.0.0.1:9"
    return {"TORCH_HOME": str(tmp_path / "torch-home"), "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_OFFLINE": "1", "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead,
            "HTTPS_PROXY": dead, "no_proxy": "", "NO_PROXY": ""}


def assert_user_error(proc, *fragments: str, only_line: bool = True) -> str:
    """Exit 2, an `edgecls: error:` line naming the problem, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors_ = [l for l in lines if l.startswith("edgecls: error:")]
    assert len(errors_) == 1, proc.stderr
    if only_line:
        assert lines == errors_, proc.stderr
    assert lines[-1] == errors_[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors_[0], (fragment, errors_[0])
    return errors_[0]


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder of artifacts built once per test session, by whichever xdist worker asks
    first (pytest-xdist's recipe: a file lock in the folder the workers' temporary folders
    share); the other workers wait for it and reuse its files, never Python objects (they
    rebuild those from the files). `build(folder)` writes into the empty folder; a marker
    beside it, written after, says the folder is complete (a build that failed part-way is
    started again by the next worker that asks). The folder holds only what `build` wrote; it
    is shared: tests read its files and write their own elsewhere."""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / "built-once" / name
    done = root / "built-once" / f"{name}.done"
    with FileLock(str(root / f"built-once-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


#: `make test` (--dist loadfile --no-loadscope-reorder, and pytest_xdist_make_scheduler below)
#: hands whole files to whichever worker is free, in collection order: these files first,
#: longest first, so that no worker is left with a long one at the end (fixture seconds in
#: `make test` on 2 cores, AMD EPYC: the EfficientNet-Lite0 QAT 146, its ExecuTorch programs
#: 89, the sweep 96, its FP16/INT8 ONNX 73, the grayscale CNN through every format 24);
#: then the other files in their own order; the zoo and the per-family QAT lowerings last,
#: one test at a time (5-33 s each), to even out the end
LONG_FIRST = ("test_qat.py", "test_executorch.py", "test_sweep.py", "test_onnx_int8.py",
              "test_int8_targets.py", "test_sources.py")
ONE_TEST_AT_A_TIME = ("test_zoo_export.py", "test_qat_tflite_families.py")
#: in those files, the tests that build the long fixture start the file (prefixes of names)
STARTS_ITS_FILE = {"test_qat.py": ("test_effl0_",), "test_executorch.py": ("test_efficientnet_",),
                   "test_sweep.py": ("test_sweep_table", "test_failing_cells",
                                     "test_sweep_writes", "test_resume_skips"),
                   "test_onnx_int8.py": ("test_efficientnet_", "test_verdicts_hold",
                                         "test_the_spec_names"),
                   "test_int8_targets.py": ("test_efficientnet_lite0_int8_made_here",
                                            "test_guard_warns", "test_emulation_predicts"),
                   "test_sources.py": ("test_gray_cnn_through_the_cli",)}


def _start_order(item) -> tuple[int, bool]:
    file = item.path.name
    rank = (LONG_FIRST.index(file) if file in LONG_FIRST
            else len(LONG_FIRST) + (file in ONE_TEST_AT_A_TIME))
    return rank, not item.name.startswith(STARTS_ITS_FILE.get(file, ()))


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile (a file's tests on one worker: its module fixtures are built once),
    except the files in ONE_TEST_AT_A_TIME, whose tests are handed out one by one (a unit of
    work each: they share no fixture worth keeping together)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return nodeid if file.rsplit("/", 1)[-1] in ONE_TEST_AT_A_TIME else file

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_start_order)      # stable: the rest keep their order
    if importlib.util.find_spec("tensorrt") is None:
        skip = pytest.mark.skip(reason="TensorRT is not installed (needs an NVIDIA GPU and "
                                       "pip install 'edgecls[tensorrt]')")
        for item in items:
            if "needs_tensorrt" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_data():
    from edgecls.imaging.datasets import digits
    full = digits()
    calib, val = full.split(calib_size=200, val_size=400, seed=0)
    train_items = [i for i in full.items if i.key not in calib.keys() | val.keys()]
    return full, calib, val, train_items


def digits_spec():
    from edgecls.spec import ModelSpec
    return ModelSpec(name="digits_cnn", architecture="tests.DigitsCNN", num_classes=10,
                     labels=[str(i) for i in range(10)], input_size=(32, 32), resize=32,
                     interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                     weights="file:trained-in-test-session")


def _digits_cnn():
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1), nn.Hardsigmoid())
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32),
                                      nn.ReLU(), nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 10))

        def forward(self, x):
            x = self.stem(x)
            y = self.block(x)
            x = x + y * self.gate(y)
            return self.head(self.down(x))

    return DigitsCNN()


@pytest.fixture(scope="session")
def digits_model(digits_data, tmp_path_factory):
    """A small CNN (with BatchNorm, residual add and a squeeze-excite-like multiply, so
    quantizers meet the ops real mobile nets have) trained on the digits: ~97% accuracy.
    Trained once per session (built_once); the other workers load the trained weights and
    torch's random state as training left it."""
    import torch

    def build(folder: Path):
        torch.manual_seed(0)
        _, _, _, train_items = digits_data
        model = train(_digits_cnn(), train_items, digits_spec(), DIGITS_EPOCHS)
        torch.save({"state": model.state_dict(), "rng": torch.get_rng_state()},
                   folder / "digits_cnn.pt")

    saved = torch.load(built_once(tmp_path_factory, "digits-cnn", build) / "digits_cnn.pt")
    model = _digits_cnn()
    model.load_state_dict(saved["state"])
    torch.set_rng_state(saved["rng"])
    return model.eval(), digits_spec()


def train(model, items, spec, epochs: int):
    """`model` trained on labelled items, preprocessed as `spec` says (Adam, batches of 64);
    returned in eval mode."""
    import torch
    from torch import nn

    from edgecls.imaging.preprocess import resize_crop, to_model_input
    x = torch.from_numpy(to_model_input(np.stack([resize_crop(i.rgb(), spec) for i in items]), spec))
    y = torch.tensor([i.label for i in items])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_val(digits_model, digits_data):
    """Validation crops (uint8 NHWC), their labels, and the torch model's logits on them."""
    import torch

    from edgecls.imaging.preprocess import to_model_input
    model, spec = digits_model
    _, _, val, _ = digits_data
    crops, labels = val.crops(spec), val.labels()
    with torch.no_grad():
        ref = model(torch.from_numpy(to_model_input(crops, spec))).numpy()
    return crops, labels, ref


@pytest.fixture(scope="session")
def digits_onnx(request, tmp_path_factory) -> Path:
    return _digits_artifact(request, tmp_path_factory, "onnx", "digits.onnx")


def _digits_artifact(request, tmp_path_factory, to: str, name: str) -> Path:
    """The digits CNN exported once per session (built_once) as `name`."""
    def build(folder: Path):
        from edgecls.exporting import export
        model, spec = request.getfixturevalue("digits_model")
        export(model, to=to, out=folder / name, spec=spec)

    return built_once(tmp_path_factory, f"digits-{to}", build) / name


@pytest.fixture(scope="session")
def digits_ir(request, tmp_path_factory) -> Path:
    """The digits CNN as an FP32 OpenVINO IR (.xml + .bin)."""
    return _digits_artifact(request, tmp_path_factory, "openvino", "digits.xml")


@pytest.fixture(scope="session")
def digits_tflite_fp32(request, tmp_path_factory) -> Path:
    return _digits_artifact(request, tmp_path_factory, "tflite", "digits.tflite")


@pytest.fixture(scope="session")
def digits_pt2(request, tmp_path_factory) -> Path:
    return _digits_artifact(request, tmp_path_factory, "torch", "digits.pt2")


@pytest.fixture(scope="session")
def effl0_onnx(tmp_path_factory) -> Path:
    def build(folder: Path):
        from edgecls.exporting import export
        export("efficientnet_lite0", to="onnx", out=folder / "effl0.onnx")

    return built_once(tmp_path_factory, "effl0-onnx", build) / "effl0.onnx"


@pytest.fixture(scope="session")
def effl0_int8_auto(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 INT8 ONNX made for THIS machine (--target auto), calibrated on one
    half of the photo crops and searched/checked on the other (minutes on an AVX2-only CPU,
    where the target's recipe saturates and the search runs)."""
    def build(folder: Path):
        from edgecls.exporting import export
        export("efficientnet_lite0", to="onnx", precision="int8", calib="photos",
               out=folder / "effl0.int8.onnx")

    return built_once(tmp_path_factory, "effl0-int8", build) / "effl0.int8.onnx"


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory) -> dict[str, Path]:
    """The bundled photos written as JPEG files, as a user would have them."""
    import cv2

    from edgecls.imaging.datasets import photo_originals
    folder = tmp_path_factory.mktemp("photos")
    files = {}
    for item in photo_originals().items:
        path = folder / f"{item.key.split(':')[1]}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(item.rgb(), cv2.COLOR_RGB2BGR))
        files[path.stem] = path
    return files
