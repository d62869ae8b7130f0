"""Adaptive rounding (AdaRound) of a torch CNN's weights, once, before any backend converts it.

Every INT8 backend here quantizes a convolution's weights the same way: BatchNorm folded
in, then int8 symmetric per output channel with scale = max|w| / 127 (ONNX Runtime, NNCF /
OpenVINO, ai-edge-quantizer / TFLite, the XNNPACK PT2E quantizer / ExecuTorch). Rounding each
weight to the nearest step is what they do; AdaRound (Nagel et al., "Up or Down? Adaptive
Rounding for Post-Training Quantization", 2020) chooses up or down per weight so that the
layer's OUTPUT changes least on calibration inputs. The chosen weights are written back into
the torch model exactly on that grid (divided by the BatchNorm factor the exporters fold in
again), and the largest weight of each channel stays where it is, so each backend computes the
same scale and its own rounding to nearest reproduces AdaRound's choice: one rounding, every
backend inherits it.

The layer-wise objective E||(W~ - W) x||^2 over the layer's input patches x is the quadratic
form tr(dW H dW^T) with H = E[x x^T] (the form GPTQ and BRECQ use). H is gathered in one
pass over the calibration images, after which an iteration of the optimisation is a small
matrix product: EfficientNet-Lite0's 50 layers take about two minutes on 2 cores. AIMET's
AdaRound (aimet-torch 2.42 installs under the pins) runs the layer on cached activations at
every iteration, more than 2 minutes per layer at 300 iterations on the same 2 cores (issue
18's measurements), which is why the quadratic form is written here.

Where it is used: a second start of the INT8 search for ONNX Runtime (backends/onnx/
export.py: the rounded model's own ONNX export is quantized, bias-corrected first) and for
full-integer TFLite and ExecuTorch (backends/onnx/torch_start.py); the search measures both
starts on the selection images. Measured (EfficientNet-Lite0, AMD EPYC with VNNI, H from the
84 calibration crops, 1000 iterations): summed layer output error 8.25 -> 1.52; mean KL to
FP32 on the 72 selection crops: ONNX Runtime 0.0088 -> 0.0053, full-integer TFLite 0.0207 ->
0.0166, ExecuTorch 0.0202 -> 0.0166; on the 351 verification crops ONNX Runtime 0.0147 ->
0.010 (the verdict's first pass for this model), TFLite 0.032 -> 0.027.

A rounding is kept for the process, and on disk for the next one (an export per backend
from the command line would otherwise find the same rounding again each time): in
$EDGECLS_CACHE/adaround (default ~/.cache/edgecls; EDGECLS_CACHE=none turns it off), one
file per digest of (this file's code, the model, the images, the iterations), written
whole or not at all, and computed by one process at a time (a lock per digest). What is
read back is untrusted bytes: only plain arrays (no pickles), only the layers this model
has at their shapes, and each weight at most one grid step from the model's own - the
choices AdaRound itself makes - or the file is ignored and the rounding found again.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

log = logging.getLogger("edgecls")

#: symmetric int8 with the narrow range [-127, 127]: the weight grid of every backend here
QMAX = 127
#: calibration images H is gathered from
IMAGES = 128
#: optimisation steps per layer (AdaRound's annealing schedule spread over them)
ITERATIONS = 1000
#: AdaRound's defaults: rounding regulariser weight, its annealed sharpness, warm start, step
REGULARISER, BETA, WARM_START, LEARNING_RATE = 0.01, (20.0, 2.0), 0.2, 1e-2
#: the rectified sigmoid's stretch (AdaRound's zeta, gamma)
ZETA, GAMMA = 1.1, -0.1

#: roundings already found in this process, by digest of (model, images, iterations): a
#: TFLite and an ExecuTorch export of one model from the same images, or a QAT run's PTQ
#: twin, ask for the same one (about two minutes for EfficientNet-Lite0 on 2 cores)
_FOUND: dict[str, tuple[Any, dict[str, Any]]] = {}
_FOUND_KEPT = 4


@dataclass
class _Layer:
    module: Any                       # nn.Conv2d or nn.Linear
    fold: Any = None                  # per-output-channel factor of the BatchNorm after it
    gram: Any = None                  # sum over input patches of x x^T, by group (float64)
    count: int = 0                    # how many patches


def adaptively_rounded(module, calibration, spec, *, images: int = IMAGES,
                       iterations: int = ITERATIONS) -> tuple[Any, dict[str, Any]]:
    """A copy of the torch `module` whose Conv2d and Linear weights are AdaRound's choice on
    the int8 grid each backend uses (BatchNorm folding included), and what the spec records.
    H comes from the first `images` of the CalibrationSet `calibration`, fed as `spec` says."""
    inputs = np.concatenate(list(calibration.batches(spec)))[:images]
    key = _digest(module, inputs, iterations)
    if key in _FOUND:
        log.info("adaptive rounding: the one found earlier for this model and these images")
        found, facts = _FOUND[key]
        return copy.deepcopy(found), dict(facts)
    with _computed_once(key):
        found = _load(key, module)
        if found is None:
            found = _round_layers(module, inputs, iterations)
            _store(key, *found)
    rounded, facts, _ = found
    while len(_FOUND) >= _FOUND_KEPT:
        _FOUND.pop(next(iter(_FOUND)))
    _FOUND[key] = (copy.deepcopy(rounded), dict(facts))
    return rounded, facts


def _round_layers(module, inputs: np.ndarray,
                  iterations: int) -> tuple[Any, dict[str, Any], list[str]]:
    """AdaRound of every Conv2d / Linear `inputs` run through, on a copy of `module`: (the
    copy, the facts, the names of the layers rounded)."""
    import torch

    module = copy.deepcopy(module).eval()
    start = time.perf_counter()
    layers = _gather(module, (inputs[i:i + 16] for i in range(0, len(inputs), 16)))
    log.info("adaptive rounding: %d layers, %d iterations each", len(layers), iterations)
    nearest_total = adaround_total = 0.0
    with torch.no_grad():
        for i, layer in enumerate(layers, 1):
            weight = layer.module.weight
            shape = (-1,) + (1,) * (weight.dim() - 1)
            fold = (layer.fold if layer.fold is not None
                    else torch.ones(weight.shape[0])).to(weight.dtype).view(shape)
            folded = weight * fold
            groups = getattr(layer.module, "groups", 1)
            by_group = folded.reshape(groups, folded.shape[0] // groups, -1)
            with torch.enable_grad():
                rounded, nearest, chosen = _round(by_group, layer.gram / layer.count, iterations)
            unfolded = rounded.reshape(folded.shape) / fold
            weight.copy_(torch.where(fold != 0, unfolded, weight))
            nearest_total += nearest
            adaround_total += chosen
            if i % 10 == 0 or i == len(layers):
                log.info("adaptive rounding: %d/%d layers (%.0f s)", i, len(layers),
                         time.perf_counter() - start)
    log.info("adaptive rounding: summed layer output error %.3g (nearest) -> %.3g, %.0f s",
             nearest_total, adaround_total, time.perf_counter() - start)
    names = {id(m): name for name, m in module.named_modules()}
    return (module, _facts(len(layers), iterations, len(inputs), nearest_total, adaround_total),
            [names[id(layer.module)] for layer in layers])


def _facts(layers: int, iterations: int, images: int, nearest: float,
           adaround: float) -> dict[str, Any]:
    """What the spec records of a rounding (quantization.rounding)."""
    return {"tool": "edgecls AdaRound (quadratic form, BatchNorm folded)",
            "layers": layers, "iterations": iterations, "images": images,
            "output_error": {"nearest": round(nearest, 6), "adaround": round(adaround, 6)}}


# -- the cache on disk ---------------------------------------------------------------------
#: the environment variable naming the cache folder ("none": no cache on disk)
CACHE_ENV = "EDGECLS_CACHE"
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _cache_file(key: str) -> Path | None:
    folder = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "edgecls")
    if folder.lower() == "none":
        return None
    return Path(folder) / "adaround" / f"{key}.npz"


@contextlib.contextmanager
def _computed_once(key: str) -> Iterator[None]:
    """Hold the digest's lock (POSIX flock on a lock file next to the cache file): a second
    process asking for the same rounding waits and then reads it instead of finding it too."""
    path = _cache_file(key)
    try:
        import fcntl
        if path is None:
            raise ImportError("no cache on disk")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except (ImportError, OSError):     # no cache, no flock, or a folder it cannot write: no lock
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)      # releases the lock


def _store(key: str, module, facts: dict[str, Any], names: list[str]) -> None:
    """The rounded layers' weights and the facts' numbers, as plain arrays, whole or not at all."""
    path = _cache_file(key)
    if path is None:
        return
    modules = dict(module.named_modules())
    arrays = {f"weight:{name}": modules[name].weight.detach().cpu().numpy() for name in names}
    arrays["facts"] = np.array(json.dumps({k: facts[k] for k in ("iterations", "images")}
                                          | dict(facts["output_error"])))
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("adaptive rounding: not cached (%s)", e)
    finally:
        tmp.unlink(missing_ok=True)


def _load(key: str, module) -> tuple[Any, dict[str, Any], list[str]] | None:
    """The cached rounding of `module`, or None (absent, or not what this code writes)."""
    path = _cache_file(key)
    if path is None or not path.is_file():
        return None
    try:
        found = _checked(path, module)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.warning("adaptive rounding: ignoring the cached %s (%s); finding it again",
                    path, str(e).splitlines()[0][:120])
        return None
    log.info("adaptive rounding: the one found earlier for this model and these images (%s)",
             path)
    return found


def _checked(path: Path, module) -> tuple[Any, dict[str, Any], list[str]]:
    """Read a cache file as untrusted: see the module docstring for what is accepted."""
    import torch

    modules = dict(module.named_modules())
    with zipfile.ZipFile(path) as archive:       # sizes before anything is decompressed
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            layer = modules.get(name.removeprefix("weight:"))
            expected = (4096 if name == "facts" else
                        layer.weight.numel() * 4 + 1024 if layer is not None and
                        isinstance(getattr(layer, "weight", None), torch.Tensor) else -1)
            if info.file_size > expected:
                raise ValueError(f"unexpected entry {info.filename!r}")
    with np.load(path, allow_pickle=False) as saved:
        numbers = json.loads(str(saved["facts"][()]))
        if not all(isinstance(numbers.get(k), (int, float)) for k in
                   ("iterations", "images", "nearest", "adaround")):
            raise ValueError("facts are not numbers")
        rounded = copy.deepcopy(module).eval()
        mine = dict(rounded.named_modules())
        names = [k.removeprefix("weight:") for k in saved.files if k != "facts"]
        for name in names:
            weight = mine[name].weight
            new = saved[f"weight:{name}"]
            if new.shape != tuple(weight.shape) or new.dtype != np.float32:
                raise ValueError(f"{name}: shape or type differs from the model's")
            old = weight.detach().cpu().numpy()
            step = np.abs(old.reshape(len(old), -1)).max(1) / QMAX
            moved = np.abs(new - old).reshape(len(old), -1).max(1)
            if not (np.isfinite(new).all() and (moved <= step * (1 + 1e-4) + 1e-12).all()):
                raise ValueError(f"{name}: a weight is more than one grid step from the model's")
            with torch.no_grad():
                weight.copy_(torch.from_numpy(new))
    return rounded, _facts(len(names), int(numbers["iterations"]), int(numbers["images"]),
                           float(numbers["nearest"]), float(numbers["adaround"])), names


def _digest(module, inputs: np.ndarray, iterations: int) -> str:
    """This file's code, the model's parameters and buffers, the images, the iterations."""
    h = hashlib.sha256(f"{_CODE};{type(module).__qualname__};{iterations};".encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        tensor = tensor.detach().cpu()
        h.update((tensor.float() if tensor.is_floating_point() else tensor).contiguous()
                 .numpy().tobytes())
    h.update(np.ascontiguousarray(inputs).tobytes())
    return h.hexdigest()


def _gather(module, batches: Iterable[np.ndarray]) -> list[_Layer]:
    """The Conv2d / Linear layers the batches run through, with the BatchNorm each feeds
    straight into (its output is that BatchNorm's input: the pair every exporter folds) and
    H's sums."""
    import torch

    layers = {m: _Layer(m) for m in module.modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    made_by: dict[int, Any] = {}

    def after_layer(mod, inputs, output):
        made_by[id(output)] = mod
        layer = layers[mod]
        gram, count = _gram(mod, inputs[0].detach())
        layer.gram = gram if layer.gram is None else layer.gram + gram
        layer.count += count

    def before_norm(norm, inputs):
        mod = made_by.get(id(inputs[0]))
        if mod is not None and norm.track_running_stats and norm.running_var is not None:
            scale = norm.weight.detach() if norm.weight is not None else 1.0
            layers[mod].fold = scale / torch.sqrt(norm.running_var + norm.eps)

    hooks = [m.register_forward_hook(after_layer) for m in layers]
    hooks += [m.register_forward_pre_hook(before_norm) for m in module.modules()
              if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            for batch in batches:
                made_by.clear()
                module(torch.as_tensor(np.ascontiguousarray(batch)))
    finally:
        for hook in hooks:
            hook.remove()
    return [layer for layer in layers.values() if layer.count]


def _gram(mod, x):
    """(sum over input patches of x x^T by group, float64; how many patches)."""
    import torch
    import torch.nn.functional as F

    if isinstance(mod, torch.nn.Linear):
        rows = x.reshape(-1, x.shape[-1]).double()
        return (rows.T @ rows)[None], rows.shape[0]
    padding = mod.padding
    if isinstance(padding, str):    # "same" / "valid": the patches H needs, near enough
        padding = tuple(d * (k - 1) // 2 for k, d in zip(mod.kernel_size, mod.dilation)) \
            if padding == "same" else 0
    # timm's Conv2dSame pads inside forward: these patches miss its last row and column,
    # which changes H by a few border positions
    cols = F.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=padding,
                    stride=mod.stride)                        # N, C*kh*kw, P
    n, width, positions = cols.shape
    groups = mod.groups
    cols = cols.view(n, groups, width // groups, positions).permute(1, 2, 0, 3) \
        .reshape(groups, width // groups, n * positions).double()
    return torch.bmm(cols, cols.transpose(1, 2)), n * positions


def _round(weight, hessian, iterations: int):
    """AdaRound of `weight` (groups, rows, K) against `hessian` (groups, K, K, the mean of
    x x^T): (the rounded weights on the grid, the output error of rounding to nearest, that of
    the chosen rounding)."""
    import torch

    absmax = weight.abs().amax(dim=2, keepdim=True)
    scale = torch.where(absmax > 0, absmax / QMAX, torch.ones_like(absmax))
    floor = torch.floor(weight / scale)
    # tr(dW H dW^T) = ||dW F||^2 with H = F F^T, F = V sqrt(L) from H's eigenvectors; only
    # the directions H has are kept (the classifier's H has the rank of the image count, 128
    # of 1280: a tenth of the work per step)
    values, vectors = torch.linalg.eigh(hessian)          # ascending
    values = values.clamp_min(0)
    rank = int((values > values[:, -1:].clamp_min(1e-30) * 1e-9).sum(dim=1).max())
    factor = (vectors[:, :, -rank:] * values[:, None, -rank:].sqrt()).float()

    def error(q):
        return float(_output_error(q * scale - weight, factor))

    # V starts where the soft rounding equals the remainder (AdaRound's initialisation)
    rest = (weight / scale - floor).clamp(0.01, 0.99)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    optimiser = torch.optim.Adam([v], lr=LEARNING_RATE)
    for step in range(iterations):
        soft = _soft(v)
        loss = _output_error(torch.clamp(floor + soft, -QMAX, QMAX) * scale - weight, factor)
        progress = step / iterations
        if progress >= WARM_START:           # then push every h to 0 or 1, ever harder
            beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (
                1 + math.cos(math.pi * (progress - WARM_START) / (1 - WARM_START)))
            loss = loss + REGULARISER * (1 - (2 * soft - 1).abs().pow(beta)).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        chosen = torch.clamp(floor + (_soft(v) >= 0.5).to(weight.dtype), -QMAX, QMAX)
        nearest = torch.clamp(torch.round(weight / scale), -QMAX, QMAX)
        return chosen * scale, error(nearest), error(chosen)


def _soft(v):
    """AdaRound's rectified sigmoid h(V) in [0, 1]."""
    import torch
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _output_error(delta, factor):
    """tr(dW H dW^T) summed over groups, with H = F F^T given as `factor` (groups, K, r)."""
    return (delta @ factor).pow(2).sum()


__all__ = ["adaptively_rounded", "IMAGES", "ITERATIONS", "QMAX"]
