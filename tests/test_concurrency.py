"""Concurrency: one Classifier shared by many threads gives exactly what serial calls give, on
every CPU backend; two processes exporting to one path leave one whole artifact.

The threads start together (run_concurrently's barrier), 8 of them, 1000 calls of mixed
batch sizes between them, on the digits CNN trained in this session (small, so the 4000
calls take seconds).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import run_concurrently

THREADS = 8
CALLS = 1000
BATCHES = (1, 2, 3, 5, 8, 13)


@pytest.fixture(scope="module")
def cpu_artifacts(digits_onnx, digits_ir, digits_tflite_fp32, digits_pt2) -> dict[str, Path]:
    return {"onnx": digits_onnx, "openvino": digits_ir, "tflite": digits_tflite_fp32,
            "torch": digits_pt2}


def _calls(crops: np.ndarray) -> list[np.ndarray]:
    """CALLS batches of the validation crops, of mixed sizes, in a fixed order."""
    rng = np.random.default_rng(1)
    sizes = rng.choice(BATCHES, CALLS)
    return [crops[rng.choice(len(crops), size, replace=False)] for size in sizes]


@pytest.fixture
def torch_threads_restored():
    """threads=1 on a torch session sets torch's process-wide intra-op threads: put them back."""
    import torch
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("backend", ["onnx", "openvino", "tflite", "torch"])
def test_one_classifier_many_threads(cpu_artifacts, digits_val, backend, torch_threads_restored):
    from edgecls.classifier import Classifier
    crops, labels, _ = digits_val
    calls = _calls(crops)
    # one runtime thread per call: 8 callers are the parallelism (and on 2 cores, torch's
    # intra-op pool under 8 callers costs 5x per call)
    with Classifier(cpu_artifacts[backend], threads=1, batch_size=4) as clf:   # batches split too
        serial = [clf.probabilities(list(batch)) for batch in calls]

        def worker(t: int) -> list[tuple[int, np.ndarray]]:
            return [(i, clf.probabilities(list(calls[i]))) for i in range(t, CALLS, THREADS)]

        concurrent = dict(pair for part in run_concurrently(worker, THREADS) for pair in part)
    assert sorted(concurrent) == list(range(CALLS))
    for i, expected in enumerate(serial):
        np.testing.assert_array_equal(concurrent[i], expected, err_msg=f"{backend} call {i}")
    # and the answers are real ones, not a constant: the model reads the digits
    firsts = np.concatenate(serial).argmax(1)
    assert len(set(firsts.tolist())) == 10


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np, torch
    from edgecls.exporting import export
    from edgecls.spec import ModelSpec
    name, fmt, out, meeting = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    torch.manual_seed(len(name) * 7919 + ord(name[-1]))   # each racer its own weights
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4)).eval()
    spec = ModelSpec(name, "tests.racer", 4, list("abcd"), input_size=(16, 16), resize=16)
    x = torch.from_numpy(np.linspace(-1, 1, 2 * 3 * 16 * 16, dtype=np.float32).reshape(2, 3, 16, 16))
    with torch.no_grad():
        np.save(meeting / f"{name}.npy", model(x).numpy())
    (meeting / f"{name}.ready").touch()
    deadline = time.monotonic() + 120                     # the other one died: give up
    while len(list(meeting.glob("*.ready"))) < 2:          # start the export together
        if time.monotonic() > deadline:
            sys.exit(f"{name}: the other racer never got ready")
        time.sleep(0.005)
    export(model, to=fmt, out=out, spec=spec, force=True)   # both mean to write it
""")


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("openvino", ".xml")])
def test_two_processes_export_to_one_path(tmp_path, fmt, suffix):
    """Both finish; the artifact is one racer's, whole (for OpenVINO: its .xml AND its .bin),
    and no temporary file is left beside it."""
    from edgecls.formats import open_session, read_spec
    out = tmp_path / "out" / f"model{suffix}"
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    racers = [subprocess.Popen([sys.executable, "-c", RACER, name, fmt, str(out), str(meeting)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for name in ("racer-a", "racer-b")]
    try:
        for racer in racers:
            _, err = racer.communicate(timeout=300)
            assert racer.returncode == 0, err
    finally:                       # a racer that hangs or outlives a failure is stopped
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.communicate()
    expected_files = sorted([out.name] + ([out.with_suffix(".bin").name] if fmt == "openvino"
                                          else []))
    assert sorted(p.name for p in out.parent.iterdir()) == expected_files
    winner = read_spec(out).name
    assert winner in ("racer-a", "racer-b")
    x = np.linspace(-1, 1, 2 * 3 * 16 * 16, dtype=np.float32).reshape(2, 3, 16, 16)
    with open_session(out) as session:
        got = session.run(x)
    mine = np.load(meeting / f"{winner}.npy")
    other = np.load(meeting / f"{({'racer-a', 'racer-b'} - {winner}).pop()}.npy")
    np.testing.assert_allclose(got, mine, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, other, atol=1e-3)      # the racers really differ
