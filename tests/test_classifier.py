"""Classifier and the shared preprocessing: decoding (EXIF, gray, RGBA, 16-bit), input
types, batching, top-k and thread-safety - on real artifacts (the digits CNN trained in the
session and the real EfficientNet-Lite0)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import run_concurrently

from edgecls.imaging.preprocess import load_rgb, resize_crop, to_model_input
from edgecls.classifier import Classifier, Prediction
from edgecls.errors import ImageReadError


def _asymmetric_rgb(h: int = 24, w: int = 40) -> np.ndarray:
    """An image whose orientation can be told: red top-left block, blue bottom-right
    block, green elsewhere, large flat areas so JPEG keeps the colours."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :] = (0, 200, 0)
    a[: h // 2, : w // 2] = (220, 0, 0)
    a[h // 2:, w // 2:] = (0, 0, 220)
    return a


# -- decoding ------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation,transform", [
    (3, lambda a: np.rot90(a, 2)),          # upside down
    (6, lambda a: np.rot90(a, -1)),         # display = rotate 90 degrees clockwise
    (8, lambda a: np.rot90(a, 1)),          # display = rotate 90 degrees counter-clockwise
])
def test_load_rgb_applies_exif_orientation(tmp_path, orientation, transform):
    from PIL import Image, ImageOps

    stored = _asymmetric_rgb()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    expected = transform(stored)
    # PIL agrees on what the tag means (a check on the test itself)
    pil_view = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert pil_view.shape == expected.shape

    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        got = load_rgb(source)
        assert got.dtype == np.uint8 and got.shape == expected.shape, (type(source), got.shape)
        # JPEG is lossy; the blocks are large and far apart in colour
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 12, type(source)
        assert np.abs(got.astype(int) - pil_view.astype(int)).mean() < 6, type(source)


def test_load_rgb_grayscale_file_and_array(tmp_path):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (12, 1))   # 12 x 25
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), gray)
    from PIL import Image
    for source in (path, path.read_bytes(), gray, Image.open(path)):
        rgb = load_rgb(source)
        assert rgb.shape == (12, 25, 3) and rgb.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(rgb[:, :, c], gray)


def test_load_rgb_rgba_drops_alpha(tmp_path):
    from PIL import Image
    rgba = np.zeros((10, 14, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 120, 230
    rgba[..., 3] = np.linspace(0, 255, 14).astype(np.uint8)      # varying transparency
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))         # what training pipelines saw
    for source in (path, path.read_bytes(), rgba, Image.open(path)):
        rgb = load_rgb(source)
        assert rgb.shape == (10, 14, 3)
        np.testing.assert_array_equal(rgb, expected)
        assert tuple(rgb[0, 0]) == (10, 120, 230)                  # RGB order, not BGR


def test_load_rgb_16bit_png(tmp_path):
    rgb16 = np.zeros((8, 9, 3), np.uint16)
    rgb16[..., 0] = 65535           # R full
    rgb16[..., 1] = 32768           # G half
    rgb16[..., 2] = np.arange(9, dtype=np.uint16) * 8000
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really 16-bit
    expected = (rgb16 >> 8).astype(np.uint8)
    for source in (path, path.read_bytes(), rgb16):
        got = load_rgb(source)
        assert got.dtype == np.uint8 and got.shape == (8, 9, 3)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_load_rgb_float_array_and_bad_inputs(tmp_path):
    f = np.full((4, 5, 3), 0.5, np.float32)
    assert (load_rgb(f) == 128).all()
    with pytest.raises(ImageReadError, match=r"shape \(4, 5, 2\) is not an image"):
        load_rgb(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ImageReadError, match="dtype int64: use uint8, uint16 or float"):
        load_rgb(np.zeros((4, 5, 3), np.int64))
    with pytest.raises(ImageReadError, match="cannot use int as an image"):
        load_rgb(12345)
    with pytest.raises(ImageReadError, match="cannot decode image bytes: not an image"):
        load_rgb(b"")
    with pytest.raises(ImageReadError, match="cannot read image .*missing.jpg: No such file"):
        load_rgb(tmp_path / "missing.jpg")


def test_all_input_types_give_the_same_pixels(photo_files):
    from PIL import Image
    path = photo_files["chelsea"]
    ref = load_rgb(path)
    assert ref.shape == (300, 451, 3)          # skimage's chelsea, landscape, RGB
    np.testing.assert_array_equal(load_rgb(str(path)), ref)
    np.testing.assert_array_equal(load_rgb(path.read_bytes()), ref)
    np.testing.assert_array_equal(load_rgb(bytearray(path.read_bytes())), ref)
    np.testing.assert_array_equal(load_rgb(ref), ref)
    pil = load_rgb(Image.open(path))
    # PIL's and OpenCV's JPEG decoders may differ by a rounding step
    assert np.abs(pil.astype(int) - ref.astype(int)).mean() < 1.5


def test_resize_crop_follows_the_spec():
    from edgecls.spec import ModelSpec
    spec = ModelSpec("t", "t", 2, ["a", "b"], input_size=(20, 30), resize=40)
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 100:] = 255                         # right half white
    out = resize_crop(img, spec)
    assert out.shape == (20, 30, 3)
    # shorter side 100 -> 40, so 200 -> 80 wide; the centre crop straddles the edge
    assert out[:, :10].max() == 0 and out[:, -10:].min() == 255
    x = to_model_input(out[None], spec)
    assert x.shape == (1, 3, 20, 30) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0, 0], (0 - 0.485) / 0.229, rtol=1e-5)
    nhwc = to_model_input(out[None], spec.derive(layout="NHWC"))
    assert nhwc.shape == (1, 20, 30, 3)


# -- predictions ---------------------------------------------------------------------------
def test_digits_classifier_is_accurate_on_image_files(digits_onnx, digits_data, digits_model, tmp_path):
    """The real trained digits model, through files on disk, as a user would call it."""
    _, _, val, _ = digits_data
    subset = val.items[:60]
    files = []
    for item in subset:
        p = tmp_path / f"{item.key.replace(':', '_')}.png"
        cv2.imwrite(str(p), cv2.cvtColor(item.rgb(), cv2.COLOR_RGB2BGR))
        files.append(p)
    with Classifier(digits_onnx, topk=3) as clf:
        preds = clf.predict(files)
        assert len(preds) == len(files) and all(len(p) == 3 for p in preds)
        acc = np.mean([p[0].index == item.label for p, item in zip(preds, subset)])
        assert acc > 0.9, acc
        assert all(p[0].label == str(p[0].index) for p in preds)
        # the same images as arrays give the same answers
        arrays = clf.predict([item.rgb() for item in subset])
        assert [p[0].index for p in arrays] == [p[0].index for p in preds]


def test_topk_ordering_and_labels(effl0_onnx, photo_files):
    with Classifier(effl0_onnx) as clf:
        assert clf.spec.num_classes == 1000 and len(clf.spec.labels) == 1000
        preds = clf.predict(photo_files["coffee"], topk=7)
        assert isinstance(preds, list) and len(preds) == 7
        assert all(isinstance(p, Prediction) for p in preds)
        scores = [p.score for p in preds]
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
        assert len({p.index for p in preds}) == 7
        for p in preds:
            assert p.label == clf.spec.labels[p.index]
        probs = clf.probabilities(photo_files["coffee"])
        assert probs.shape == (1, 1000)
        np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-4)
        np.testing.assert_array_equal([p.index for p in preds], np.argsort(-probs[0])[:7])
        np.testing.assert_allclose(scores, probs[0][[p.index for p in preds]], rtol=1e-6)
        assert len(clf.predict(photo_files["coffee"])) == clf.topk == 5
        everything = clf.predict(photo_files["coffee"], topk=1000)
        assert sorted(p.index for p in everything) == list(range(1000))


def test_batches_match_single_images(effl0_onnx, photo_files):
    names = sorted(photo_files)
    files = [photo_files[n] for n in names]
    with Classifier(effl0_onnx, batch_size=3) as clf:
        batched = clf.probabilities(files)                 # several batches, last one short
        assert batched.shape == (len(files), 1000)
        singles = np.concatenate([clf.probabilities(f) for f in files])
        np.testing.assert_allclose(batched, singles, atol=1e-5)
        many = clf.predict(files, topk=2)
        assert len(many) == len(files) and all(len(p) == 2 for p in many)
        # a 4-D array is a batch of images (as many as a list of them); a tuple is a list
        crops = np.stack([resize_crop(load_rgb(f), clf.spec) for f in files])
        as_array = clf.predict(crops, topk=2)
        assert len(as_array) == len(files)
        assert as_array == clf.predict(list(crops), topk=2)
        assert clf.predict(crops[0], topk=2) == as_array[0]      # 3-D array: one image
        assert len(clf.predict(tuple(files[:2]))) == 2
        assert clf.probabilities([]).shape == (0, 1000)


def test_probabilities_match_torch_fed_by_torchvision(digits_onnx, digits_model, digits_data,
                                                      tmp_path):
    """Classifier on image files against the PyTorch model fed by a second, independent
    pipeline: PIL decoding and torchvision's transforms, torch's softmax. A fault in any step
    of edgecls' own (decode, resize, crop, channel order, normalisation, softmax) shows."""
    import torch
    from PIL import Image

    from edgecls.zoo.torchvision_shim import import_torchvision
    transforms = import_torchvision().transforms
    model, spec = digits_model
    _, _, val, _ = digits_data
    files = []
    for item in val.items[:80]:
        files.append(tmp_path / f"{item.key.replace(':', '_')}.png")
        Image.fromarray(item.rgb()).save(files[-1])
    pipeline = transforms.Compose([
        transforms.Resize(spec.resize, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(spec.input_size), transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std)])
    with torch.no_grad():
        batch = torch.stack([pipeline(Image.open(f).convert("RGB")) for f in files])
        expected = torch.softmax(model(batch), dim=1).numpy()
    with Classifier(digits_onnx) as clf:
        got = clf.probabilities(files)
        assert "onnxruntime" in repr(clf)
    assert got.shape == expected.shape == (80, 10)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 79 / 80
    # the pipelines differ by at most a rounding step of a pixel: probabilities barely move
    assert np.abs(got - expected).max() < 0.05, np.abs(got - expected).max()
    assert np.abs(got - expected).mean() < 2e-3


def test_thread_safety(effl0_onnx, photo_files):
    files = [photo_files[n] for n in sorted(photo_files)]
    jobs = files * 3
    with Classifier(effl0_onnx, threads=1) as clf:
        sequential = [clf.predict(f, topk=3) for f in jobs]
        # 4 threads, started together, each a share of the jobs
        shares = run_concurrently(lambda t: [clf.predict(f, topk=3) for f in jobs[t::4]], 4)
        concurrent = [None] * len(jobs)
        for t, share in enumerate(shares):
            concurrent[t::4] = share
    assert len(concurrent) == len(sequential)
    for s, c in zip(sequential, concurrent):
        assert [p.index for p in s] == [p.index for p in c]
        np.testing.assert_allclose([p.score for p in s], [p.score for p in c], atol=1e-5)
    # and the photos are not all the same answer (a real check, not a constant)
    assert len({s[0].index for s in sequential}) >= 4


def test_load_rgb_16bit_pil_image(tmp_path):
    from PIL import Image
    gray16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    path = tmp_path / "gray16.png"
    assert cv2.imwrite(str(path), gray16)
    image = Image.open(path)
    assert image.mode.startswith("I;16")
    np.testing.assert_array_equal(load_rgb(image), load_rgb(path))
