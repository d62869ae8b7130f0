"""qat(): quantization-aware training with PT2E (torchao), for one family of backends.

    student = qat(model, spec, calib="photos", to="tflite", epochs=3)
    export(student, to="tflite", precision="int8", spec=spec)

1. Capture: torch.export of a deep copy of the model (without the copy the exported module
   can share parameters with the teacher), then BatchNorm folded into the convolutions: a
   few hundred images must never move BN statistics, so BN is frozen from the first step.
2. prepare_qat_pt2e with the family's quantizer (families.py).
3. Ranges: observers on and fake quantization off over the calibration images, so the
   student starts as the PTQ model with global min/max ranges (epoch 0 of the history).
4. Epochs: the student learns to match the FP32 teacher's logits (KL, "distillation") on
   augmented training images, plus cross-entropy with the labels in supervised mode.
   Observers keep widening the ranges for the first epoch and are frozen after it, so the
   last epochs train against fixed scales. After each epoch: agreement with the teacher
   and KL on the held-out photos; the best epoch (Checkpoint.score: top-1 with labels, else
   KL) is kept, training stops once PATIENCE epochs bring no improvement, and a checkpoint is written (resume=True continues it).
5. Learning rate: steps 2-4 once per rate in LEARNING_RATES (or the one asked for), each
   from the same start; the best epoch of all on the selection images is the student.

Seeded: the same data, seed and thread count give the same student. Runs on CUDA when
torch sees a GPU, else on the CPU.
"""
from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import edgecls.qat_training.data as qdata
from edgecls import hardware, metrics, targets
from edgecls.backends.onnx import DEFAULT_OPSET
from edgecls.backends.onnx.bias_correction import available, corrected_module
from edgecls.backends.onnx.export import export_fp32
from edgecls.backends.pixel_input import pixel_inputs, pixel_spec
from edgecls.errors import UnsupportedOptionError
from edgecls.imaging.datasets import CalibrationSet
from edgecls.io import atomic_paths
from edgecls.qat_training.families import Family, require, resolve
from edgecls.qat_training.student import QATStudent
from edgecls.spec import ModelSpec, safe_name

log = logging.getLogger("edgecls")

PATIENCE = 2            # epochs without a better held-out score before stopping
OBSERVE_EPOCHS = 1      # epochs during which the observers still widen the ranges
TEMPERATURE = 1.0       # of the distillation softmax
BATCH_SIZE = 8
# Adam's step sizes tried, each a training of its own; the selection images choose (--lr: one).
# The best step depends on the start: EfficientNet-Lite0 distilled on photos into TFLite, KL
# on the 72 selection crops, best of 3 epochs (AMD EPYC VNNI). From the bias-corrected model
# (before the rounded start): 5e-6 -> 0.014, 1e-5 -> 0.017, 2e-5 -> 0.020. From the rounded,
# bias-corrected model (epoch 0: 0.0166): 5e-6 -> 0.0163, 1e-5 -> 0.0149, 2e-5 -> 0.0112,
# 5e-5 -> 0.0138 (then diverging). About 70-95 s per training for Lite0 on 2 cores.
LEARNING_RATES = (5e-6, 2e-5)


def qat(model: Any, spec: ModelSpec, calib: Any = "photos", train: Any = None, *,
        data: Any = None, select: Any = None, to: str = "onnx", target: str | None = None, epochs: int = 3,
        lr: float | None = None, seed: int = 0, resume: bool = False,
        checkpoint: str | Path | None = None, size: int = 300,
        progress: bool = True) -> QATStudent:
    """Train a fake-quantized copy of `model` (FP32, with its `spec`) for the backends of
    `to` on `target`; see the module docstring. `calib`: images to learn from without
    labels (distillation), `train`: a labelled set (supervised), `select`: the images the
    best epoch and learning rate are chosen on (default: the selection photos, or a third of
    the photos held out), `data`: the verification images its artifacts are judged on
    (qat_training.data), `size`: at most this many training images, `lr`: one learning
    rate (default: each of LEARNING_RATES, one training each, the best kept)."""
    family, chosen = resolve(to, target)
    require(family)
    rates = LEARNING_RATES if lr is None else (lr,)
    if epochs < 1 or min(rates) <= 0:
        raise UnsupportedOptionError("QAT needs epochs >= 1 and a positive learning rate")
    split = qdata.split(calib, train, data, spec, size, seed, select)
    mode = "supervised" if train is not None else "distillation"
    path = Path(checkpoint) if checkpoint else default_checkpoint(spec, family)
    teacher = model.eval()
    if family.pixel_input:   # teacher and student take pixels - 128 (scaled), as the PTQ twin does
        folded = pixel_inputs([teacher], spec, CalibrationSet(split.calibration, spec))
        if folded is not None:
            teacher, spec = folded[0], pixel_spec(spec)
    start, methods = ptq_start(teacher, spec, split)
    runs = []
    for rate in rates:
        where = path if len(rates) == 1 else path.with_name(f"{path.stem}.lr{rate:g}{path.suffix}")
        runs.append(_train(start, teacher, spec, split, family, chosen, mode, methods, rate,
                           seed, epochs, resume, where, progress))
    best = max(runs, key=lambda r: Checkpoint.score(r.state.best_row))
    best.module.load_state_dict(best.state.best_state)
    best.module.cpu()
    recipe = _recipe(family, chosen, best.quantizer, split, mode, best.state, epochs, best.lr,
                     seed, best.device, sum(r.seconds for r in runs))
    if len(runs) > 1:
        recipe["learning_rates"] = {f"{r.lr:g}": {"best_epoch": r.state.best_epoch,
                                                  **r.state.best_row} for r in runs}
        log.info("QAT %s: learning rate %g chosen on the selection images (%s)", spec.name,
                 best.lr, ", ".join(f"{r.lr:g}: KL {r.state.best_row['kl']:.4g}" for r in runs))
    recipe.update(methods)
    return QATStudent(best.module, teacher, spec, family, chosen, best.quantizer, split, recipe)


@dataclass
class _Trained:
    lr: float
    module: Any
    state: "Checkpoint"
    quantizer: Any
    device: Any
    seconds: float


def _train(start, teacher, spec: ModelSpec, split, family: Family, chosen, mode: str,
           methods: dict[str, Any], lr: float, seed: int, epochs: int, resume: bool,
           path: Path, progress: bool) -> _Trained:
    """One training at one learning rate from `start`, checkpointed at `path`."""
    import torch

    fingerprint = {"model": spec.name, "weights": spec.weights, "family": family.name,
                   "target": chosen.name, "mode": mode, "lr": lr, "seed": seed,
                   "train": split.train.digest(), "validation": split.validation.digest(),
                   "start": sorted(methods)}
    torch.manual_seed(seed)
    quantizer = family.quantizer(chosen)
    module = prepare(start, spec, quantizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    teacher_on_device = copy.deepcopy(teacher).to(device)
    run = Run(module, teacher_on_device, spec, split, device)
    state = Checkpoint.load(path, fingerprint) if resume else None
    started = time.perf_counter()
    if state is None:
        run.calibrate()
        state = Checkpoint(path, fingerprint)
        state.record(0, run.evaluate(loss=None), module)
    else:
        module.load_state_dict(state.state)
        log.info("resuming %s from epoch %d (%s)", spec.name, state.epoch, path)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    if state.optimizer:
        optimizer.load_state_dict(state.optimizer)
    for epoch in range(state.epoch + 1, epochs + 1):
        if state.epoch - state.best_epoch >= PATIENCE:
            log.info("held-out score stopped improving: stopping after epoch %d", state.epoch)
            break
        observing = epoch <= OBSERVE_EPOCHS
        loss = run.epoch(optimizer, epoch, epochs, mode, seed, observing, progress)
        state.record(epoch, run.evaluate(loss), module, optimizer)
        state.save()
        _report(spec, state.history[-1], epochs, lr)
    return _Trained(lr, module, state, quantizer, device, time.perf_counter() - started)


def ptq_start(teacher, spec: ModelSpec, split) -> tuple[Any, dict[str, Any]]:
    """What the student is prepared from, and the methods that made it: a copy of the
    teacher adaptively rounded (edgecls.backends.adaround) and then given NNCF's full bias
    correction, both found on the calibration images - the PTQ search's second start
    (backends/onnx/torch_start.py), so epoch 0 is that PTQ model and training goes on from
    there; the teacher itself stays the reference. Without NNCF: rounded only."""
    from edgecls.backends.adaround import adaptively_rounded

    calibration = CalibrationSet(split.calibration, spec)
    rounded, rounding = adaptively_rounded(teacher, calibration, spec)
    methods: dict[str, Any] = {"rounding": rounding}
    if not available():        # (corrected_module says so too; this skips the ONNX export)
        return rounded, methods
    with tempfile.TemporaryDirectory(prefix="edgecls-qat-") as work:
        fp32 = Path(work) / "rounded.onnx"
        export_fp32(rounded, spec.derive(format="onnx", exported_from="torch",
                                         tools=dict(spec.tools)), fp32, DEFAULT_OPSET)
        corrected, correction = corrected_module(rounded, fp32, spec, calibration)
    if correction:
        methods["bias_correction"] = correction
    return corrected, methods


def default_checkpoint(spec: ModelSpec, family: Family, folder: Path = Path("out")) -> Path:
    """The checkpoint file in `folder`: a plain file name whatever the spec's name (a spec
    read from a file has a safe one; safe_name() keeps it so after any change)."""
    return folder / f"{safe_name(spec.name)}.{family.name}-qat.pt"


def prepare(model: Any, spec: ModelSpec, quantizer: Any):
    """The fake-quant GraphModule: capture, fold BatchNorm, prepare_qat_pt2e."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    # torchao's private graph pass (0.18): the BatchNorm fold prepare_pt2e runs for PTQ;
    # torchao has no public one for a captured graph (its public fuse_conv_bn_weights folds
    # tensors, not graph nodes), and prepare_qat_pt2e keeps BatchNorm (families.py says why
    # it must go first). Should torchao move it, every QAT test fails on this import.
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    h, w = spec.input_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    captured = torch.export.export(copy.deepcopy(model).eval(), (torch.randn(2, spec.channels, h, w),),
                                   dynamic_shapes=({0: batch},)).module()
    _fuse_conv_bn_(captured)     # what prepare_pt2e does for PTQ; see families.py for QAT
    captured.recompile()
    return prepare_qat_pt2e(captured, quantizer)


def fake_quantizers(module) -> list:
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase
    return [m for m in module.modules() if isinstance(m, FakeQuantizeBase)]


@dataclass
class Run:
    """One training run's moving parts."""
    module: Any
    teacher: Any
    spec: ModelSpec
    split: qdata.Split
    device: Any

    def __post_init__(self):
        import torch
        x = qdata.inputs(self.split.validation, self.spec)
        self.val_x = torch.from_numpy(x)
        self.val_ref = self._logits(self.teacher, self.val_x)
        self.val_labels = self.split.validation.labels()

    def _switch(self, fake_quant: bool, observe: bool) -> None:
        for fq in fake_quantizers(self.module):
            fq.enable_fake_quant(fake_quant)
            fq.enable_observer(observe)

    def _logits(self, model, x, batch: int = 32) -> np.ndarray:
        import torch
        with torch.no_grad():
            return np.concatenate([model(x[i:i + batch].to(self.device)).float().cpu().numpy()
                                   for i in range(0, len(x), batch)])

    def calibrate(self) -> None:
        """Observers on, fake quantization off: the global min/max of the calibration images
        (decoded a batch at a time)."""
        import torch
        self._switch(fake_quant=False, observe=True)
        with torch.no_grad():
            for x, _ in qdata.batches(self.split.calibration, self.spec, 32,
                                      np.random.default_rng(0), augmented=False):
                self.module(torch.from_numpy(x).to(self.device))
        self._switch(fake_quant=True, observe=False)

    def epoch(self, optimizer, epoch: int, epochs: int, mode: str, seed: int, observing: bool,
              progress: bool) -> float:
        import torch
        import torch.nn.functional as F

        self._switch(fake_quant=True, observe=observing)
        rng = np.random.default_rng([seed, epoch])
        total, seen = 0.0, 0
        steps = -(-len(self.split.train) // BATCH_SIZE)
        with _progress(progress, f"QAT epoch {epoch}/{epochs}", steps) as advance:
            for x, labels in qdata.batches(self.split.train, self.spec, BATCH_SIZE, rng,
                                           augmented=mode == "distillation"):
                x = torch.from_numpy(x).to(self.device)
                with torch.no_grad():
                    target = self.teacher(x)
                out = self.module(x)
                loss = distillation_loss(out, target)
                if mode == "supervised":
                    loss = loss + F.cross_entropy(out, torch.from_numpy(labels).to(self.device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(x)
                seen += len(x)
                advance(loss.item())
        self._switch(fake_quant=True, observe=False)
        return total / max(seen, 1)

    def evaluate(self, loss: float | None) -> dict[str, Any]:
        got = self._logits(self.module, self.val_x)
        agree = got.argmax(1) == self.val_ref.argmax(1)
        row = {"loss": loss, "agreement": float(agree.mean()), "agreeing": int(agree.sum()),
               "n": len(agree), "kl": float(metrics.kl_divergence(self.val_ref, got).mean())}
        if self.val_labels is not None:
            row["top1"] = float((got.argmax(1) == self.val_labels).mean())
        return row


def distillation_loss(student, teacher, temperature: float = TEMPERATURE):
    """KL(teacher || student) on softened outputs, scaled by T^2 (Hinton et al.)."""
    import torch.nn.functional as F
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                    log_target=True, reduction="batchmean") * t * t


class _progress:
    """A rich progress bar over one epoch's batches (with the running loss), or nothing."""

    def __init__(self, show: bool, description: str, total: int):
        self.show, self.description, self.total = show, description, total

    def __enter__(self):
        if not self.show:
            return lambda loss: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeElapsedColumn
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                             transient=True)
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total, loss="-")
        return lambda loss: self._bar.update(task, advance=1, loss=f"{loss:.4f}")

    def __exit__(self, *exc):
        if self.show:
            self._bar.stop()


def _report(spec: ModelSpec, row: dict[str, Any], epochs: int, lr: float) -> None:
    top1 = f", top-1 {row['top1']:.1%}" if "top1" in row else ""
    log.info("QAT %s (lr %g) epoch %d/%d: loss %.4f, held-out agreement %.1f%% (%d/%d), "
             "KL %.4f%s", spec.name, lr, row["epoch"], epochs, row["loss"],
             100 * row["agreement"], row["agreeing"], row["n"], row["kl"], top1)


# -- checkpoints -------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """The state after each epoch, and the best one so far, in one file (written atomically;
    read with weights_only=True)."""
    path: Path
    fingerprint: dict[str, Any]
    epoch: int = 0
    state: dict | None = None
    optimizer: dict | None = None
    best_epoch: int = 0
    best_state: dict | None = None
    history: list | None = None

    @staticmethod
    def score(row: dict[str, Any]) -> tuple[float, float]:
        """Higher is better. With labels, top-1 accuracy (KL breaks ties). Without, KL to the
        teacher: on a few dozen held-out images one image moves agreement by 2 points, so
        agreement is too coarse to choose between epochs (measured on EfficientNet-Lite0:
        the epoch with the best agreement was not the one that generalised)."""
        if "top1" in row:
            return row["top1"], -row["kl"]
        return -row["kl"], row["agreement"]

    @property
    def best_row(self) -> dict[str, Any]:
        """The history's row of the best epoch."""
        return next(r for r in self.history if r["epoch"] == self.best_epoch)

    def record(self, epoch: int, row: dict[str, Any], module, optimizer=None) -> None:
        self.history = (self.history or []) + [{"epoch": epoch, **row}]
        self.epoch = epoch
        self.state = _cpu(module.state_dict())
        self.optimizer = optimizer.state_dict() if optimizer is not None else None
        best = next(r for r in self.history if r["epoch"] == self.best_epoch)
        if self.best_state is None or self.score(row) > self.score(best):
            self.best_epoch, self.best_state = epoch, self.state

    def save(self) -> None:
        import torch

        with atomic_paths(self.path) as (tmp,):
            torch.save({"fingerprint": self.fingerprint, "epoch": self.epoch,
                        "state": self.state, "optimizer": self.optimizer,
                        "best_epoch": self.best_epoch, "best_state": self.best_state,
                        "history": self.history}, tmp)

    @classmethod
    def load(cls, path: Path, fingerprint: dict[str, Any]) -> "Checkpoint | None":
        import torch
        if not path.is_file():
            log.info("no QAT checkpoint at %s: starting from the beginning", path)
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        changed = {k: (saved["fingerprint"].get(k), v) for k, v in fingerprint.items()
                   if saved["fingerprint"].get(k) != v}
        if changed:
            what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise UnsupportedOptionError(f"{path} was trained with other settings ({what}): "
                                         "use the same ones to resume, or drop --resume")
        return cls(path, fingerprint, saved["epoch"], saved["state"], saved["optimizer"],
                   saved["best_epoch"], saved["best_state"], saved["history"])


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _recipe(family: Family, target: targets.Target, quantizer: Any, split: qdata.Split,
            mode: str, state: Checkpoint, epochs: int, lr: float, seed: int, device: Any,
            seconds: float) -> dict[str, Any]:
    import torchao
    trained = state.history[-1]["epoch"]
    return {
        "method": "qat", "mode": mode, "family": family.name,
        "tool": f"torchao {torchao.__version__} (prepare_qat_pt2e, convert_pt2e)",
        "quantizer": type(quantizer).__name__, "lowering": family.lowering,
        "activations": family.activations,
        "weights": family.weights_for(target),
        "epochs": trained, "epochs_requested": epochs, "best_epoch": state.best_epoch,
        "stopped_early": trained < epochs, "lr": lr, "seed": seed, "batch_size": BATCH_SIZE,
        "loss": "KL(teacher || student)" + (" + cross-entropy" if mode == "supervised" else ""),
        "temperature": TEMPERATURE, "batchnorm": "folded before training (frozen)",
        "observers": f"global min/max; frozen after epoch {OBSERVE_EPOCHS}",
        "teacher": {"name": "fp32 torch model", "weights": state.fingerprint["weights"]},
        "split": split.describe(), "history": state.history,
        "device": str(device), "train_seconds": round(seconds, 1),
        **targets.record(target, hardware.cpu().int8_isa),
        **CalibrationSet(split.train, None).recipe()}
