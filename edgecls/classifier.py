"""Classifier: any artifact in, labelled predictions out.

    clf = Classifier("model.onnx", device="cpu")
    clf.predict("cat.jpg")            # [Prediction(label, index, score), ...] best first
    clf.predict([img1, img2])         # one list per image
    for preds in clf.predict_iter(paths, workers=2): ...   # decoding overlaps inference

Reads the ModelSpec embedded in the artifact, preprocesses exactly as it says (the shared
edgecls.imaging.preprocess), runs the backend session, softmax, top-k. Thread-safe:
sessions that are not (TFLite's Interpreter) are serialised by Session.run's lock.
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np

from edgecls.backends.base import Session
from edgecls.imaging.preprocess import (max_pixels_setting, model_input_dtype, preprocess,
                                            preprocess_into)
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
        (default: $EDGECLS_MAX_PIXELS, else edgecls.imaging.preprocess.MAX_PIXELS)."""
        _whole("batch_size", batch_size)
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
        k = _whole("topk", self.topk if topk is None else topk)
        probs = self.probabilities(images)
        results = [self._top(p, k) for p in probs]
        return results if _is_many(images) else results[0]

    def predict_iter(self, images: Iterable[Any], workers: int = 2, topk: int | None = None,
                     batch_size: int | None = None) -> Iterator[list[Prediction]]:
        """Top-k predictions for each image, in order, as they are ready. `workers` threads
        decode and preprocess (OpenCV and numpy release the GIL) straight into the next
        batches while the runtime infers the current one; at most two batches are read
        ahead, so memory stays flat on any number of images."""
        k = _whole("topk", self.topk if topk is None else topk)
        size = _whole("batch_size", batch_size or self.batch_size)
        with ThreadPoolExecutor(max_workers=_whole("workers", workers)) as pool:
            ahead: collections.deque = collections.deque()
            source = iter(images)
            while True:
                while len(ahead) < 2 and self._submit_batch(pool, source, size, ahead):
                    pass
                if not ahead:
                    return
                batch, jobs = ahead.popleft()
                for job in jobs:
                    job.result()               # re-raises a worker's ImageReadError here
                logits = self.session.run(batch)
                probs = logits if self.spec.output == "probabilities" else softmax(logits)
                yield from (self._top(p, k) for p in probs)

    def _submit_batch(self, pool, source: Iterator[Any], size: int, ahead) -> bool:
        chunk = [image for _, image in zip(range(size), source)]
        if not chunk:
            return False
        batch = np.empty(self.spec.input_shape(len(chunk)), model_input_dtype(self.spec))
        ahead.append((batch, [pool.submit(preprocess_into, image, self.spec, batch[i:i + 1],
                                          self.max_pixels)
                              for i, image in enumerate(chunk)]))
        return True

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


def _whole(name: str, value: Any) -> int:
    """`value` when it is a whole number >= 1, else the one-line error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsupportedOptionError(f"{name} must be a whole number >= 1, not {value!r}")
    return value
