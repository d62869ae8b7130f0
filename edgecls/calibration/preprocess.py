"""The one preprocessing function. Classifier, calibration and parity all call it, so the
three can never drift apart.

Two stages, so that parity can decode and crop once and then feed every artifact:
  load_rgb(image)            -> HxWx3 uint8 RGB (EXIF applied; gray/alpha/16-bit handled)
  resize_crop(rgb, spec)     -> input_size uint8 RGB (shorter side to spec.resize, centre crop)
  to_model_input(batch, spec)-> the artifact's input tensor (layout, dtype, normalisation)

preprocess(images, spec) does both for many images, the fast way (Classifier's path): a JPEG
much larger than the model needs is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
as PIL's draft mode does), OpenCV's BGR is kept until the normalisation reads the channels
in the order the spec wants, and each image is normalised straight into its row of the batch.
Apart from the reduced decode (a fraction of a grey level, tested), the numbers are the
two-stage path's, bit for bit.
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
}
#: a JPEG is decoded at reduced scale only while its shorter side keeps this many times the
#: spec's resize: the area resize that follows then still averages >= 2x2 decoded pixels
DRAFT_MARGIN = 2
_DRAFT = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
          (2, cv2.IMREAD_REDUCED_COLOR_2))


def load_rgb(image: Any) -> np.ndarray:
    """Decode a path, bytes, PIL image or array into an HxWx3 uint8 RGB array."""
    encoded = _encoded(image)
    if encoded is not None:
        return cv2.cvtColor(_decode(*encoded), cv2.COLOR_BGR2RGB)
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


def _encoded(image: Any) -> tuple[np.ndarray, str] | None:
    """(the file's bytes, a name for errors) for a path or bytes; None for anything else."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            return np.fromfile(path, dtype=np.uint8), str(path)  # + imdecode: unicode-safe
        except OSError as e:
            raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return np.frombuffer(image, dtype=np.uint8), "image bytes"
    return None


def _decode(data: np.ndarray, source: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """BGR. IMREAD_COLOR (and its reduced-scale forms) applies the EXIF orientation, expands
    grayscale, drops alpha (as PIL's convert("RGB") does, which is what most training
    pipelines saw) and scales 16-bit to 8."""
    bgr = cv2.imdecode(data, flags) if data.size else None
    if bgr is None:
        raise ImageReadError(f"cannot decode {source}: not an image, or a truncated one")
    return bgr


def draft_flags(data: np.ndarray, spec: ModelSpec) -> int:
    """The imdecode flags for an encoded image: the smallest JPEG scale that still leaves
    DRAFT_MARGIN x spec.resize pixels on the shorter side, else a full decode."""
    size = jpeg_size(data)
    if size is not None:
        for factor, flags in _DRAFT:
            if min(size) // factor >= DRAFT_MARGIN * spec.resize:
                return flags
    return cv2.IMREAD_COLOR


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, without decoding; None when `data` is not
    a JPEG (or its header is cut short)."""
    b = memoryview(data)
    if len(b) < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:                       # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):   # a frame header
            return (b[i + 5] << 8 | b[i + 6]), (b[i + 7] << 8 | b[i + 8])
        i += 2 + (b[i + 2] << 8 | b[i + 3])
    return None


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
    """Shorter side to spec.resize, then a centre crop of spec.input_size."""
    out_h, out_w = spec.input_size
    h, w = rgb.shape[:2]
    scale = spec.resize / min(h, w)
    new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    # Shrinking with INTER_AREA anti-aliases, as PIL/torchvision's resize does; enlarging
    # uses the interpolation the model was trained with.
    flag = cv2.INTER_AREA if scale < 1 else INTERPOLATION[spec.interpolation]
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=flag)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return resized[top:top + out_h, left:left + out_w]


def to_model_input(batch: np.ndarray, spec: ModelSpec, order: str = "RGB",
                   out: np.ndarray | None = None) -> np.ndarray:
    """NxHxWx3 uint8 pixels in channel `order` -> the tensor the artifact takes, as its spec
    says (into `out` when given). One pass per channel: read in the order the spec wants,
    normalised, written in its layout; (x - mean) / std in float32, as a whole-array
    expression would compute it."""
    out = np.empty(spec.input_shape(len(batch)), model_input_dtype(spec)) if out is None else out
    planes = out.transpose(1, 0, 2, 3) if spec.layout == "NCHW" else np.moveaxis(out, 3, 0)
    mean, std = _mean_std(spec)
    for c, name in enumerate(spec.channel_order):
        src = batch[..., order.index(name)]
        if spec.normalization_in_graph:
            planes[c] = src
        else:
            np.subtract(src, mean[c], out=planes[c], dtype=np.float32)
            np.divide(planes[c], std[c], out=planes[c])
    return out


def model_input_dtype(spec: ModelSpec) -> type:
    return np.uint8 if spec.normalization_in_graph else np.float32


def _mean_std(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(spec.mean, np.float32) * 255.0, np.asarray(spec.std, np.float32) * 255.0)


def crop_batch(images: Iterable[Any], spec: ModelSpec) -> np.ndarray:
    """Decode and crop many images into one NxHxWx3 uint8 batch."""
    crops = [resize_crop(load_rgb(im), spec) for im in images]
    h, w = spec.input_size
    return np.stack(crops) if crops else np.empty((0, h, w, 3), np.uint8)


def preprocess(images: Iterable[Any], spec: ModelSpec) -> np.ndarray:
    """Many images -> the artifact's input batch, the fast way (see the module's notes)."""
    images = list(images)
    out = np.empty(spec.input_shape(len(images)), model_input_dtype(spec))
    for i, image in enumerate(images):
        preprocess_into(image, spec, out[i:i + 1])
    return out


def preprocess_into(image: Any, spec: ModelSpec, out: np.ndarray) -> np.ndarray:
    """One image -> `out`, a 1-image slice of a model input batch (thread-safe: OpenCV and
    numpy release the GIL, so threads preprocess in parallel)."""
    encoded = _encoded(image)
    if encoded is None:
        return to_model_input(resize_crop(load_rgb(image), spec)[None], spec, out=out)
    data, source = encoded
    bgr = _decode(data, source, draft_flags(data, spec))
    return to_model_input(resize_crop(bgr, spec)[None], spec, order="BGR", out=out)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array (for thumbnails in reports)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else b""


__all__ = ["load_rgb", "resize_crop", "to_model_input", "crop_batch", "preprocess",
           "preprocess_into", "draft_flags", "jpeg_size", "encode_png", "INTERPOLATION"]
