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

import io
import math
import os
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from edgecls.errors import ImageReadError
from edgecls.spec import ModelSpec

#: The most pixels an image may have; checked from the file's header BEFORE it is decoded,
#: so a small file that claims 60000 x 60000 pixels (a decompression bomb) costs nothing.
#: 2**28 (16384 x 16384) takes a 200-megapixel phone photo. Raised per call (max_pixels=)
#: or for the process with the environment variable below.
MAX_PIXELS = 2 ** 28
MAX_PIXELS_ENV = "EDGECLS_MAX_PIXELS"
#: What the header reader (imagesize) and OpenCV both read; anything else is refused
#: rather than decoded blind.
READABLE = "JPEG, PNG, BMP, WebP, TIFF, GIF, JPEG 2000 or PNM"

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


def max_pixels_setting(max_pixels: int | None = None) -> int:
    """The pixel limit in force: the argument, else $EDGECLS_MAX_PIXELS, else MAX_PIXELS."""
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
        if not text:
            return MAX_PIXELS
        if not text.isdigit():
            raise ImageReadError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} is not a "
                                 f"whole number of pixels; set it to one (default {MAX_PIXELS}) "
                                 "or unset it")
        max_pixels = int(text)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ImageReadError(f"max_pixels must be a positive whole number, not {max_pixels!r}")
    return max_pixels


def check_pixels(width: int, height: int, source: str, max_pixels: int | None = None) -> None:
    """ImageReadError when width x height is over the limit, naming how to raise it."""
    limit = max_pixels_setting(max_pixels)
    if width * height > limit:
        raise ImageReadError(
            f"{source} is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{limit:,} (a guard against decompression bombs); if you trust it, raise the limit "
            f"with max_pixels= or {MAX_PIXELS_ENV}")


def load_rgb(image: Any, max_pixels: int | None = None) -> np.ndarray:
    """Decode a path, bytes, PIL image or array into an HxWx3 uint8 RGB array; images over
    `max_pixels` (see max_pixels_setting) are refused before they are decoded."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.exists() and not path.is_file():   # a folder, or a device that never ends
            raise ImageReadError(f"cannot read image {path}: not a regular file")
        try:
            data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode: unicode-safe
        except OSError as e:
            raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from None
        return _decode(data, str(path), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(np.frombuffer(image, dtype=np.uint8), "image bytes", max_pixels)
    if isinstance(image, np.ndarray):
        return _normalise_array(image, "array", max_pixels)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, without importing PIL
        return _from_pil(image, max_pixels)
    raise ImageReadError(f"cannot use {type(image).__name__} as an image: pass a path, bytes, "
                         "a PIL image or an HxWx3 uint8 RGB array")


def _from_pil(image: Any, max_pixels: int | None) -> np.ndarray:
    # A PIL image opened from a file is lazy: its size is known, its pixels are not decoded
    # until convert() - so the limit is checked first here too.
    check_pixels(*image.size, "PIL image", max_pixels)
    from PIL import Image, ImageOps
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):  # convert("RGB") would clip, not scale, 16-bit
            return _normalise_array(np.asarray(image).astype(np.uint16), "PIL image", max_pixels)
        return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL's decoders report truncated or corrupt data as OSError / SyntaxError
        raise ImageReadError(f"cannot decode PIL image: {type(e).__name__}: {e}") from None


def _decode(data: np.ndarray, source: str, max_pixels: int | None) -> np.ndarray:
    import imagesize
    width, height = imagesize.get(io.BytesIO(data.tobytes())) if data.size else (-1, -1)
    if width < 1 or height < 1:   # unreadable, or a header that claims no pixels
        raise ImageReadError(f"cannot decode {source}: not an image ({READABLE}) or a "
                             "truncated one")
    check_pixels(width, height, source, max_pixels)
    # IMREAD_COLOR applies the EXIF orientation, expands grayscale, drops alpha (as PIL's
    # convert("RGB") does, which is what most training pipelines saw) and scales 16-bit to 8.
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:   # e.g. its own pixel limit, or a header it cannot accept
        raise ImageReadError(f"cannot decode {source}: OpenCV refused it "
                             f"({str(e).strip().splitlines()[-1][:200]})") from None
    if bgr is None or not bgr.size:
        raise ImageReadError(f"cannot decode {source}: not an image ({READABLE}) or a "
                             "truncated one")
    check_pixels(bgr.shape[1], bgr.shape[0], source, max_pixels)  # what was really decoded
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _normalise_array(a: np.ndarray, source: str, max_pixels: int | None = None) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or not a.shape[0] or not a.shape[1]:
        raise ImageReadError(f"{source} of shape {a.shape} is not an image: expected HxW, "
                             "HxWx3 (RGB) or HxWx4 (RGBA), at least 1 x 1")
    check_pixels(a.shape[1], a.shape[0], source, max_pixels)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype in (np.float32, np.float64):
        if not np.isfinite(a).all():
            raise ImageReadError(f"{source} has NaN or infinite values")
        if a.min() < 0 or a.max() > 1:   # 0..255 floats would all clip to white
            raise ImageReadError(f"{source} holds floats in [{a.min():g}, {a.max():g}]: float "
                                 "images must be in [0, 1] (divide by 255, or pass uint8)")
        a = (a * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageReadError(f"{source} has dtype {a.dtype}: use uint8, uint16 or float in [0, 1]")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def resize_crop(rgb: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Shorter side to spec.resize, then a centre crop of spec.input_size; without
    spec.resize, a plain resize to spec.input_size (the aspect ratio is not kept)."""
    out_h, out_w = spec.input_size
    if spec.resize is None:   # straight to the output size: nothing large is made
        h, w = rgb.shape[:2]
        shrink = out_h < h and out_w < w
        flag = cv2.INTER_AREA if shrink else INTERPOLATION[spec.interpolation]
        return cv2.resize(rgb, (out_w, out_h), interpolation=flag)
    rgb = _centre_strip(rgb, spec)
    h, w = rgb.shape[:2]
    scale = spec.resize / min(h, w)
    new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    # Shrinking with INTER_AREA anti-aliases, as PIL/torchvision's resize does; enlarging
    # uses the interpolation the model was trained with.
    flag = cv2.INTER_AREA if scale < 1 else INTERPOLATION[spec.interpolation]
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=flag)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return resized[top:top + out_h, left:left + out_w]


def _centre_strip(rgb: np.ndarray, spec: ModelSpec, most: int = 4) -> np.ndarray:
    """The centre part of a very elongated image that the centre crop can reach.

    Resizing the shorter side of a 1 x 10000 strip to 256 would make a 256 x 2.5M image of
    which the crop keeps 224 columns; beyond `most` times the crop's extent along the long
    side, the source is cut to that extent first (its centre, so the crop is the same)."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    scale = spec.resize / short
    out_h, out_w = spec.input_size
    keep_h = min(h, max(short, math.ceil(most * out_h / scale)))   # never below the shorter
    keep_w = min(w, max(short, math.ceil(most * out_w / scale)))   # side: same scale
    top, left = (h - keep_h) // 2, (w - keep_w) // 2
    return rgb[top:top + keep_h, left:left + keep_w]


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


def crop_batch(images: Iterable[Any], spec: ModelSpec, max_pixels: int | None = None) -> np.ndarray:
    """Decode and crop many images into one NxHxWx3 uint8 batch."""
    crops = [resize_crop(load_rgb(im, max_pixels), spec) for im in images]
    h, w = spec.input_size
    return np.stack(crops) if crops else np.empty((0, h, w, 3), np.uint8)


def preprocess(images: Iterable[Any], spec: ModelSpec, max_pixels: int | None = None) -> np.ndarray:
    return to_model_input(crop_batch(images, spec, max_pixels), spec)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array (for thumbnails in reports)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else b""


__all__ = ["MAX_PIXELS", "MAX_PIXELS_ENV", "max_pixels_setting", "check_pixels", "load_rgb",
           "resize_crop", "to_model_input", "crop_batch", "preprocess", "encode_png",
           "INTERPOLATION"]
