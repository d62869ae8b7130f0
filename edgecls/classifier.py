"""Classifier: any artifact in, labelled predictions out.

    clf = Classifier("model.onnx", device="cpu")
    clf.predict("cat.jpg")            # [Prediction(label, index, score), ...] best first
    clf.predict([img1, img2])         # one list per image

Reads the ModelSpec embedded in the artifact, preprocesses exactly as it says (the shared
edgecls.calibration.preprocess), runs the backend session, softmax, top-k. Thread-safe:
sessions that are not (TFLite's Interpreter) are serialised by Session.run's lock.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgecls.backends.base import Session
from edgecls.calibration.preprocess import max_pixels_setting, preprocess
from edgecls.errors import UnsupportedOptionError
from edgecls.formats import open_session


class Prediction(NamedTuple):
    label: str
    index: int
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Classifier:
    def __init__(self, path: str | Path, device: str | None = None, threads: int | None = None,
                 topk: int = 5, batch_size: int = 16, max_pixels: int | None = None,
                 **options: Any):
        """`max_pixels`: images with more pixels are refused before they are decoded
        (default: $EDGECLS_MAX_PIXELS, else edgecls.calibration.preprocess.MAX_PIXELS)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UnsupportedOptionError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
        self.max_pixels = None if max_pixels is None else max_pixels_setting(max_pixels)
        self.session: Session = open_session(path, device=device, threads=threads, **options)
        self.spec = self.session.spec
        self.topk = topk
        self.batch_size = batch_size

    def probabilities(self, images: Any) -> np.ndarray:
        """N x classes probabilities for one image or a list of them."""
        batch = list(images) if _is_many(images) else [images]
        out = []
        for i in range(0, len(batch), self.batch_size):
            x = preprocess(batch[i:i + self.batch_size], self.spec, self.max_pixels)
            logits = self.session.run(x)
            out.append(logits if self.spec.output == "probabilities" else softmax(logits))
        return np.concatenate(out) if out else np.empty((0, self.spec.num_classes), np.float32)

    def predict(self, images: Any, topk: int | None = None):
        """Top-k predictions: a list for one image, a list of lists for several."""
        k = self.topk if topk is None else topk
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UnsupportedOptionError(f"topk must be a whole number >= 1, not {k!r}")
        probs = self.probabilities(images)
        results = [self._top(p, k) for p in probs]
        return results if _is_many(images) else results[0]

    def _top(self, probs: np.ndarray, k: int) -> list[Prediction]:
        idx = np.argsort(-probs, kind="stable")[:k]
        return [Prediction(self.spec.label(int(i)), int(i), float(probs[i])) for i in idx]

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Classifier({str(self.session.path)!r}, backend={self.session.backend}, "
                f"device={self.session.device_used}, precision={self.spec.precision})")


def _is_many(images: Any) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim == 4
    return isinstance(images, (list, tuple))
