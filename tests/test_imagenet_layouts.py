"""Labelled data as the field lays it out: ImageNet synset folders, the flat ILSVRC2012
validation folder, and mini-ImageNet-style `filename,label` CSV files. The oracle for the
synset -> index mapping is torchvision's class order (n01440764 = tench = 0,
n15075141 = toilet tissue = 999) and the ILSVRC2012 ground truth (val_00000001 is a snake,
class 65)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgecls import cli
from edgecls.imaging.datasets import ImageSet, check_source
from edgecls.errors import DataError
from edgecls.spec import ModelSpec

IMAGENET = ModelSpec(name="in1k", architecture="x", num_classes=1000,
                     labels=[f"class {i}" for i in range(1000)])
TEN = ModelSpec(name="ten", architecture="x", num_classes=10, labels=[str(i) for i in range(10)])


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((12, 12, 3), 128, np.uint8))
    return path


def test_synset_folders_map_to_imagenet_indices(tmp_path):
    image(tmp_path / "val" / "n01440764" / "a.png")
    image(tmp_path / "val" / "n15075141" / "b.png")
    images = ImageSet.load(tmp_path / "val", IMAGENET)
    assert sorted(images.labels().tolist()) == [0, 999]


def test_a_synset_the_model_does_not_know_is_named(tmp_path):
    image(tmp_path / "val" / "n01440764" / "a.png")
    image(tmp_path / "val" / "n99999999" / "b.png")
    with pytest.raises(DataError, match="synset n99999999 is not one of ImageNet-1k"):
        ImageSet.load(tmp_path / "val", IMAGENET)
    with pytest.raises(DataError, match="has 10 classes, not ImageNet-1k's 1000"):
        ImageSet.load(tmp_path / "val", TEN)


def test_flat_ilsvrc_validation_folder_is_labelled_from_its_ground_truth(tmp_path):
    image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    image(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG")
    images = ImageSet.load(tmp_path / "val", IMAGENET)
    by_name = {i.key.rsplit("/", 1)[1]: i.label for i in images.items}
    assert by_name == {"ILSVRC2012_val_00000001.JPEG": 65, "ILSVRC2012_val_00000002.JPEG": 970}
    image(tmp_path / "plain" / "cat.png")
    assert ImageSet.load(tmp_path / "plain", IMAGENET).labels() is None


def test_csv_labels_by_synset_name_or_index(tmp_path):
    image(tmp_path / "images" / "n0144076400000005.jpg")
    image(tmp_path / "images" / "n1507514100000001.jpg")
    (tmp_path / "test.csv").write_text("filename,label\n"
                                       "n0144076400000005.jpg,n01440764\n"
                                       "n1507514100000001.jpg,n15075141\n")
    check_source(tmp_path / "test.csv")
    images = ImageSet.load(tmp_path / "test.csv", IMAGENET)
    assert images.labels().tolist() == [0, 999]
    image(tmp_path / "d" / "x.png")
    image(tmp_path / "d" / "y.png")
    (tmp_path / "d" / "split.csv").write_text("x.png,7\ny.png,three\n")
    with pytest.raises(DataError, match="labels in split.csv three"):
        ImageSet.load(tmp_path / "d" / "split.csv", TEN)
    (tmp_path / "d" / "split.csv").write_text("x.png,7\ny.png,3\n")
    assert ImageSet.load(tmp_path / "d" / "split.csv", TEN).labels().tolist() == [7, 3]


def test_csv_rows_cannot_leave_the_folder(tmp_path):
    image(tmp_path / "outside.png")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "split.csv").write_text("../outside.png,1\n")
    with pytest.raises(DataError, match="points outside"):
        ImageSet.load(tmp_path / "d" / "split.csv", TEN)


def test_limit_takes_a_class_stratified_subset(tmp_path):
    for synset in ("n01440764", "n01443537"):
        for k in range(6):
            image(tmp_path / "val" / synset / f"{k}.png")
    subset = ImageSet.load(tmp_path / "val", IMAGENET).subset(4)
    assert sorted(subset.labels().tolist()) == [0, 0, 1, 1]


def test_cli_names_a_missing_label_file(tmp_path, capsys):
    code = cli.main(["parity", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "nope.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1


def test_builtin_photo_roles_never_share_a_photo():
    """Calibration, selection and verification images of the built-in `photos` come from
    different photos (views of one photo are not independent), and the verification set is
    the 39 multi-scale crops of each of its 9 photos."""
    from edgecls.imaging.datasets import load_part, photo_of
    roles = {r: load_part("photos", None, r) for r in ("calib", "select", "verify")}
    photos = {r: {photo_of(i) for i in s.items} for r, s in roles.items()}
    assert not photos["calib"] & photos["select"]
    assert not photos["calib"] & photos["verify"]
    assert not photos["select"] & photos["verify"]
    assert len(photos["verify"]) == 9 and len(roles["verify"]) == 9 * 39
    # no two roles hold the same pixels under other names either
    digests = {r: {i.digest() for i in s.items} for r, s in roles.items()}
    assert not digests["calib"] & digests["verify"] and not digests["select"] & digests["verify"]
