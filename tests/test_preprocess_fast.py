"""The fast image path (reduced-scale JPEG decoding, BGR kept to the fused normalisation,
rows written in place) against the two-stage path it replaces, and Classifier.predict_iter."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from edgecls.imaging.preprocess import (crop_batch, draft_flags, image_size, preprocess,
                                            to_model_input)
from edgecls.errors import ImageReadError
from edgecls.spec import ModelSpec

SPECS = [dict(), dict(layout="NHWC"), dict(channel_order="BGR"),
         dict(normalization_in_graph=True, layout="NHWC"), dict(interpolation="bicubic"),
         dict(resize=None), dict(channels=1, mean=(0.5,), std=(0.25,))]


def _spec(**changes) -> ModelSpec:
    base = ModelSpec(name="t", architecture="t", num_classes=10, labels=[str(i) for i in range(10)],
                     input_size=(224, 224), resize=256)
    return base.derive(**changes)


def _reference(images, spec):
    """The two-stage path, as it was: decode to RGB, resize and crop, then normalise."""
    x = crop_batch(images, spec)
    if spec.channels == 1:   # PIL's convert("L"): ITU-R 601-2 luma, rounded
        x = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in x])[..., None]
    else:
        x = x if spec.channel_order == "RGB" else x[..., ::-1]
    if not spec.normalization_in_graph:
        mean = np.asarray(spec.mean, np.float32) * 255.0
        std = np.asarray(spec.std, np.float32) * 255.0
        x = (x.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else x)


@pytest.fixture(scope="module")
def big_jpegs(photo_files, tmp_path_factory):
    """The photos at camera size (4x), where decoding dominates and draft mode applies."""
    folder = tmp_path_factory.mktemp("big")
    out = []
    for name, path in list(photo_files.items())[:6]:
        bgr = cv2.imread(str(path))
        big = cv2.resize(bgr, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
        out.append(folder / f"{name}.jpg")
        cv2.imwrite(str(out[-1]), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return out


@pytest.mark.parametrize("changes", SPECS)
def test_fast_path_is_bit_exact_where_nothing_is_reduced(photo_files, changes):
    spec = _spec(**changes)
    paths = list(photo_files.values())
    assert all(draft_flags(np.fromfile(p, np.uint8), spec) == cv2.IMREAD_COLOR for p in paths)
    arrays = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths[:3]]
    for images in (paths, [p.read_bytes() for p in paths], arrays):
        got, want = preprocess(images, spec), _reference(images, spec)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)


def test_reduced_decoding_of_large_jpegs_stays_close(big_jpegs):
    spec = _spec()
    flags = [draft_flags(np.fromfile(p, np.uint8), spec) for p in big_jpegs]
    assert set(flags) <= {cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4}
    assert any(f != cv2.IMREAD_COLOR for f in flags)
    std = np.asarray(spec.std, np.float32) * 255.0
    diff = np.abs(preprocess(big_jpegs, spec) - _reference(big_jpegs, spec)) * std[:, None, None]
    assert diff.mean() < 1.0            # grey levels: a fraction of one on average
    assert np.percentile(diff, 99) < 8


def test_reduced_decoding_keeps_predictions(big_jpegs, effl0_onnx):
    from edgecls.formats import open_session
    with open_session(effl0_onnx, threads=2) as session:
        fast = session.run(preprocess(big_jpegs, session.spec))
        exact = session.run(_reference(big_jpegs, session.spec))
    assert np.array_equal(fast.argmax(1), exact.argmax(1))


def test_reduced_decoding_applies_exif_orientation(big_jpegs, tmp_path):
    rotated = tmp_path / "rotated.jpg"
    with Image.open(big_jpegs[0]) as im:
        exif = im.getexif()
        exif[0x0112] = 6                        # "rotate 90 CW to view"
        im.save(rotated, exif=exif, quality=92)
    spec = _spec(input_size=(224, 160), resize=240)   # not square: a wrong turn would show
    assert draft_flags(np.fromfile(rotated, np.uint8), spec) != cv2.IMREAD_COLOR
    std = np.asarray(spec.std, np.float32) * 255.0
    diff = np.abs(preprocess([rotated], spec) - _reference([rotated], spec)) * std[:, None, None]
    assert diff.mean() < 1.0


def test_draft_decoding_reads_the_size_from_the_header(photo_files, tmp_path):
    path = next(iter(photo_files.values()))
    data = np.fromfile(path, np.uint8)
    assert image_size(data)[::-1] == cv2.imread(str(path)).shape[:2]
    assert image_size(np.zeros(0, np.uint8)) == (-1, -1)
    big_png = tmp_path / "x.png"       # only JPEGs have reduced decoding
    cv2.imwrite(str(big_png), np.zeros((2000, 3000, 3), np.uint8))
    assert draft_flags(np.fromfile(big_png, np.uint8), _spec()) == cv2.IMREAD_COLOR
    small = _spec(input_size=(32, 32), resize=None)    # no resize: the input size counts
    assert draft_flags(data, small) != cv2.IMREAD_COLOR


def test_to_model_input_writes_into_a_given_batch():
    spec = _spec(input_size=(8, 6), resize=8)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
    out = np.full(spec.input_shape(3), np.nan, np.float32)
    to_model_input(pixels, spec, out=out[1:])
    assert np.isnan(out[0]).all() and np.array_equal(out[1:], _norm(pixels, spec))


def _norm(pixels, spec):
    mean = np.asarray(spec.mean, np.float32) * 255.0
    std = np.asarray(spec.std, np.float32) * 255.0
    return ((pixels.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)


def test_predict_iter_matches_predict_in_order(digits_onnx, digits_data, tmp_path):
    from edgecls.classifier import Classifier
    _, _, val, _ = digits_data
    paths = []
    for i, item in enumerate(val.items[:11]):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), item.rgb())
    with Classifier(digits_onnx, threads=1) as clf:
        want = clf.predict(paths, topk=3)
        got = list(clf.predict_iter(iter(paths), workers=2, topk=3, batch_size=4))
        assert got == want
        with pytest.raises(ImageReadError, match="cannot decode"):
            list(clf.predict_iter(paths[:2] + [b"not an image"], workers=2))
