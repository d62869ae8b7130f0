"""The one preprocessing function. Classifier, calibration and parity all call it, so the
three can never drift apart.

Two stages, so that parity can decode and crop once and then feed every artifact:
  load_rgb(image)            -> HxWx3 uint8 RGB (EXIF applied; gray/alpha/16-bit handled)
  resize_crop(rgb, spec)     -> input_size uint8 RGB (shorter side to spec.resize, centre crop;
                                or, with no spec.resize, a plain resize to input_size)
  to_model_input(batch, spec)-> the artifact's input tensor (channels, layout, dtype,
                                normalisation)
"""
from __future__ import annotations


from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from edgecls.errors import ImageReadError
from edgecls.spec import ModelSpec

INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
# ITU-R 601-2 luma in 16-bit fixed point, exactly as PIL's convert("L") (what torchvision's
# Grayscale does to PIL images, so what grayscale models were usually trained on)
_LUMA = np.array([19595, 38470, 7471], np.uint32)


def load_rgb(image: Any) -> np.ndarray:
    """Decode a path, bytes, PIL image or array into an HxWx3 uint8 RGB array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode: unicode-safe
        except OSError as e:
            raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from None
        return _decode(data, str(path))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(np.frombuffer(image, dtype=np.uint8), "image bytes")
    if isinstance(image, np.ndarray):
        return _normalise_array(image, "array")
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, without importing PIL
        from PIL import ImageOps
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):  # convert("RGB") would clip, not scale, 16-bit
            return _normalise_array(np.asarray(image).astype(np.uint16), "PIL image")
        return np.asarray(image.convert("RGB"))
    raise ImageReadError(f"cannot use {type(image).__name__} as an image: pass a path, bytes, "
                         "a PIL image or an HxWx3 uint8 RGB array")


def _decode(data: np.ndarray, source: str) -> np.ndarray:
    # IMREAD_COLOR applies the EXIF orientation, expands grayscale, drops alpha (as PIL's
    # convert("RGB") does, which is what most training pipelines saw) and scales 16-bit to 8.
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageReadError(f"cannot decode {source}: not an image, or a truncated one")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _normalise_array(a: np.ndarray, source: str) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"{source} of shape {a.shape} is not an image: expected HxW, "
                             "HxWx3 (RGB) or HxWx4 (RGBA)")
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype in (np.float32, np.float64):
        a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)  # floats are taken as [0, 1]
    elif a.dtype != np.uint8:
        raise ImageReadError(f"{source} has dtype {a.dtype}: use uint8, uint16 or float in [0, 1]")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def resize_crop(rgb: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Shorter side to spec.resize, then a centre crop of spec.input_size; without
    spec.resize, a plain resize to spec.input_size (the aspect ratio is not kept)."""
    out_h, out_w = spec.input_size
    h, w = rgb.shape[:2]
    if spec.resize is None:
        shrink = out_h < h and out_w < w
        flag = cv2.INTER_AREA if shrink else INTERPOLATION[spec.interpolation]
        return cv2.resize(rgb, (out_w, out_h), interpolation=flag)
    scale = spec.resize / min(h, w)
    new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    # Shrinking with INTER_AREA anti-aliases, as PIL/torchvision's resize does; enlarging
    # uses the interpolation the model was trained with.
    flag = cv2.INTER_AREA if scale < 1 else INTERPOLATION[spec.interpolation]
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=flag)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return resized[top:top + out_h, left:left + out_w]


def to_model_input(batch: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """NxHxWx3 uint8 RGB -> the tensor the artifact takes, as its spec says."""
    if spec.channels == 1:
        x = ((batch.astype(np.uint32) @ _LUMA + 32768) >> 16).astype(np.uint8)[..., None]
    else:
        x = batch if spec.channel_order == "RGB" else batch[..., ::-1]
    if not spec.normalization_in_graph:
        mean = np.asarray(spec.mean, np.float32) * 255.0
        std = np.asarray(spec.std, np.float32) * 255.0
        x = (x.astype(np.float32) - mean) / std
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def crop_batch(images: Iterable[Any], spec: ModelSpec) -> np.ndarray:
    """Decode and crop many images into one NxHxWx3 uint8 batch."""
    crops = [resize_crop(load_rgb(im), spec) for im in images]
    h, w = spec.input_size
    return np.stack(crops) if crops else np.empty((0, h, w, 3), np.uint8)


def preprocess(images: Iterable[Any], spec: ModelSpec) -> np.ndarray:
    return to_model_input(crop_batch(images, spec), spec)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array (for thumbnails in reports)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else b""


__all__ = ["load_rgb", "resize_crop", "to_model_input", "crop_batch", "preprocess", "encode_png",
           "INTERPOLATION"]
