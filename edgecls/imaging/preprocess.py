"""The one preprocessing function. Classifier, calibration and parity all call it, so the
three can never drift apart.

Two stages, so that parity can decode and crop once and then feed every artifact:
  load_rgb(image)            -> HxWx3 uint8 RGB (EXIF applied; gray/alpha/16-bit handled)
  resize_crop(rgb, spec)     -> input_size uint8 RGB (shorter side to spec.resize, centre crop;
                                or, with no spec.resize, a plain resize to input_size)
  to_model_input(batch, spec)-> the artifact's input tensor (channels, layout, dtype,
                                normalisation)

preprocess(images, spec) does both for many images, the fast way (Classifier's path): a JPEG
much larger than the model needs is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
as PIL's draft mode does), OpenCV's BGR is kept until the normalisation reads the channels
in the order the spec wants, and each image is normalised straight into its row of the batch.
Apart from the reduced decode (a fraction of a grey level, tested), the numbers are the
two-stage path's, bit for bit.
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
#: a JPEG is decoded at reduced scale only while its shorter side keeps this many times the
#: size it is resized to: the area resize that follows then still averages >= 2x2 pixels
DRAFT_MARGIN = 2
_DRAFT = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
          (2, cv2.IMREAD_REDUCED_COLOR_2))
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
    encoded = _encoded(image)
    if encoded is not None:
        data, source = encoded
        return cv2.cvtColor(_decode(data, source, max_pixels), cv2.COLOR_BGR2RGB)
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


def _encoded(image: Any) -> tuple[np.ndarray, str] | None:
    """(the file's bytes, a name for errors) for a path or bytes; None for anything else."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.exists() and not path.is_file():   # a folder, or a device that never ends
            raise ImageReadError(f"cannot read image {path}: not a regular file")
        try:
            return np.fromfile(path, dtype=np.uint8), str(path)  # + imdecode: unicode-safe
        except OSError as e:
            raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return np.frombuffer(image, dtype=np.uint8), "image bytes"
    return None


def _decode(data: np.ndarray, source: str, max_pixels: int | None,
            spec: ModelSpec | None = None) -> np.ndarray:
    """BGR. The size is read from the header (imagesize) and checked against the pixel limit
    before anything is decoded; with a `spec`, a large JPEG is decoded at reduced scale
    (draft_flags). IMREAD_COLOR (and its reduced forms) applies the EXIF orientation, expands
    grayscale, drops alpha (as PIL's convert("RGB") does, which is what most training
    pipelines saw) and scales 16-bit to 8."""
    width, height = image_size(data)
    if width < 1 or height < 1:   # unreadable, or a header that claims no pixels
        raise ImageReadError(f"cannot decode {source}: not an image ({READABLE}) or a "
                             "truncated one")
    check_pixels(width, height, source, max_pixels)
    flags = cv2.IMREAD_COLOR if spec is None else draft_flags(data, spec, (width, height))
    try:
        bgr = cv2.imdecode(data, flags)
    except cv2.error as e:   # e.g. its own pixel limit, or a header it cannot accept
        raise ImageReadError(f"cannot decode {source}: OpenCV refused it "
                             f"({str(e).strip().splitlines()[-1][:200]})") from None
    if bgr is None or not bgr.size:
        raise ImageReadError(f"cannot decode {source}: not an image ({READABLE}) or a "
                             "truncated one")
    check_pixels(bgr.shape[1], bgr.shape[0], source, max_pixels)  # what was really decoded
    return bgr


def image_size(data: np.ndarray) -> tuple[int, int]:
    """(width, height) from an encoded image's header, without decoding; (-1, -1) when the
    header cannot be read."""
    import imagesize
    return imagesize.get(io.BytesIO(data.tobytes())) if data.size else (-1, -1)


def draft_flags(data: np.ndarray, spec: ModelSpec, size: tuple[int, int] | None = None) -> int:
    """The imdecode flags for an encoded image: for a JPEG, the smallest scale that still
    leaves DRAFT_MARGIN times what the image is resized to (spec.resize on the shorter side,
    or the input size itself with no resize), else a full decode. `size`: its (width,
    height), when already read."""
    if data.size < 2 or data[0] != 0xFF or data[1] != 0xD8:   # not a JPEG
        return cv2.IMREAD_COLOR
    width, height = size or image_size(data)
    target = spec.resize or max(spec.input_size)
    for factor, flags in _DRAFT:
        if min(width, height) // factor >= DRAFT_MARGIN * target:
            return flags
    return cv2.IMREAD_COLOR


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


def to_model_input(batch: np.ndarray, spec: ModelSpec, order: str = "RGB",
                   out: np.ndarray | None = None) -> np.ndarray:
    """NxHxWx3 uint8 pixels in channel `order` -> the tensor the artifact takes, as its spec
    says (into `out` when given). One pass per channel: read in the order the spec wants (or
    the luma of the three for a grayscale model), normalised, written in its layout;
    (x - mean) / std in float32, as a whole-array expression would compute it."""
    out = np.empty(spec.input_shape(len(batch)), model_input_dtype(spec)) if out is None else out
    planes = out.transpose(1, 0, 2, 3) if spec.layout == "NCHW" else np.moveaxis(out, 3, 0)
    mean = np.asarray(spec.mean, np.float32) * 255.0
    std = np.asarray(spec.std, np.float32) * 255.0
    for c, src in enumerate(_channels(batch, spec, order)):
        if spec.normalization_in_graph:
            planes[c] = src
        else:
            np.subtract(src, mean[c], out=planes[c], dtype=np.float32)
            np.divide(planes[c], std[c], out=planes[c])
    return out


def _channels(batch: np.ndarray, spec: ModelSpec, order: str) -> Iterable[np.ndarray]:
    """The model's input channels, as uint8 N x H x W planes."""
    if spec.channels == 1:
        luma = _LUMA[["RGB".index(name) for name in order]]
        yield ((batch.astype(np.uint32) @ luma + 32768) >> 16).astype(np.uint8)
    else:
        for name in spec.channel_order:
            yield batch[..., order.index(name)]


def model_input_dtype(spec: ModelSpec) -> type:
    return np.uint8 if spec.normalization_in_graph else np.float32


def crop_batch(images: Iterable[Any], spec: ModelSpec, max_pixels: int | None = None) -> np.ndarray:
    """Decode and crop many images into one NxHxWx3 uint8 batch."""
    crops = [resize_crop(load_rgb(im, max_pixels), spec) for im in images]
    h, w = spec.input_size
    return np.stack(crops) if crops else np.empty((0, h, w, 3), np.uint8)


def preprocess(images: Iterable[Any], spec: ModelSpec, max_pixels: int | None = None) -> np.ndarray:
    """Many images -> the artifact's input batch, the fast way (see the module's notes)."""
    images = list(images)
    out = np.empty(spec.input_shape(len(images)), model_input_dtype(spec))
    for i, image in enumerate(images):
        preprocess_into(image, spec, out[i:i + 1], max_pixels)
    return out


def preprocess_into(image: Any, spec: ModelSpec, out: np.ndarray,
                    max_pixels: int | None = None) -> np.ndarray:
    """One image -> `out`, a 1-image slice of a model input batch (thread-safe: OpenCV and
    numpy release the GIL, so threads preprocess in parallel)."""
    encoded = _encoded(image)
    if encoded is None:
        rgb = load_rgb(image, max_pixels)
        return to_model_input(resize_crop(rgb, spec)[None], spec, out=out)
    data, source = encoded
    bgr = _decode(data, source, max_pixels, spec)
    return to_model_input(resize_crop(bgr, spec)[None], spec, order="BGR", out=out)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array (for thumbnails in reports)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else b""


__all__ = ["MAX_PIXELS", "MAX_PIXELS_ENV", "max_pixels_setting", "check_pixels", "load_rgb",
           "resize_crop", "to_model_input", "crop_batch", "preprocess", "preprocess_into",
           "draft_flags", "image_size", "model_input_dtype", "encode_png", "INTERPOLATION"]
