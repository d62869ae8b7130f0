"""The images a student trains on, is steered by and is judged on: never one photo in two roles.

Three roles, as for PTQ (edgecls.imaging.datasets): the student trains on one set, its
epochs are chosen on selection images (the `validation` side here: early stopping, the best
epoch), and the artifact is judged on verification images that neither saw. From the
built-in `photos` each role has its own photos (PHOTO_ROLES): training on the calibration
photos, selection on the selection photos, verification on the verification photos. Any
other source is split by photo (a folder: by file, one file, one photo) into training and
selection, unless selection images are given (--select); verification is --data.

Training images are streamed: decoded, augmented and preprocessed a batch at a time, so
memory does not grow with the training set. Validation images (at most VALIDATION_SIZE)
are preprocessed once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from edgecls.imaging.datasets import (ROLE_SPLIT, ImageSet, load_part, photo_of,
                                          verification_for)
from edgecls.imaging.preprocess import resize_crop, to_model_input
from edgecls.errors import DataError
from edgecls.spec import ModelSpec

#: share of the photos held out for selection when no --select is given
VALIDATION_SHARE = 1 / 3
VALIDATION_SIZE = 500
PHOTO_SETS = ("photos", "photos-all")
#: distillation augmentation: square crops of this share of the shorter side, and flips
CROP_SCALE = (0.6, 1.0)


@dataclass
class Split:
    train: ImageSet          # what the student learns from (labelled in supervised mode)
    validation: ImageSet     # selection: never trained on; early stopping, the best epoch
    calibration: ImageSet    # the initial ranges, measured before training
    how: str                 # how the two sides were made
    verification: Any = None  # what the export judges the artifact on (--data; or None)

    def describe(self) -> dict[str, Any]:
        """What the spec and the report record about the split."""
        return {"how": self.how, "train": _describe(self.train),
                "validation": _describe(self.validation),
                "verification": _named(self.verification),
                "calibration": {"source": self.calibration.name, "size": len(self.calibration),
                                "hash": self.calibration.digest()}}


def _named(source: Any) -> Any:
    """A verification source as the spec records it: a built-in set or folder by name, an
    image set by its facts (never its repr: the spec's strings are bounded)."""
    if source is None or isinstance(source, ImageSet):
        return None if source is None else _describe(source)
    return str(source)


def _describe(images: ImageSet) -> dict[str, Any]:
    photos = sorted({photo_of(i) for i in images.items})
    facts: dict[str, Any] = {"source": images.name, "size": len(images), "hash": images.digest(),
                             "photos": len(photos)}
    if all(p.startswith("photos:") for p in photos):      # the built-in photos: by name
        facts["photo_names"] = [p.removeprefix("photos:") for p in photos]
    return facts


def split(calib: Any, train: Any, data: Any, spec: ModelSpec, size: int, seed: int,
          select: Any = None) -> Split:
    """Training, selection and verification images for QAT, disjoint by photo.

    Supervised (`train` given): a labelled image set. Distillation: the calibration images
    (from the built-in photos, the calibration photos). Selection is `select`, the built-in
    selection photos, or a share of the training source's photos; verification is `data`,
    or the built-in verification photos."""
    builtin = train is None and isinstance(calib, str) and calib in ROLE_SPLIT
    if train is not None:
        pool = _whole(train, spec)
        if not pool.labelled:
            raise DataError(f"--train {train}: supervised QAT needs labelled images (one "
                            "subfolder per class); for unlabelled images use --calib alone")
    elif calib is None:
        raise DataError("QAT needs images to learn from: --calib DIR (or photos), or a labelled "
                        "--train DIR")
    else:
        pool = load_part(calib, spec, "calib") if builtin else _whole(calib, spec)
    if select is not None or builtin:
        validation = _whole(select, spec) if select is not None else load_part(calib, spec, "select")
        how = f"selection from {validation.name}"
    else:
        validation = by_photo(pool, VALIDATION_SHARE, seed)
        how = f"by photo: {len(by_photos(validation))} of {len(by_photos(pool))} photos held out"
    held = {photo_of(i) for i in validation.items}
    kept = [i for i in pool.items if photo_of(i) not in held]
    if not kept:
        raise DataError(f"{pool.name}: no training images left once the selection photos are "
                        "taken out")
    training = ImageSet(pool.name, kept, pool.class_names).subset(size, seed=seed)
    calibration = training if train is None or calib is None else \
        load_part(calib, spec, "calib").subset(size, seed=seed, exclude=validation)
    return Split(training, validation.subset(VALIDATION_SIZE, seed=seed), calibration, how,
                 verification_for(data, calib))


def _whole(source: Any, spec: ModelSpec) -> ImageSet:
    return source if isinstance(source, ImageSet) else ImageSet.load(source, spec)


def by_photos(images: ImageSet) -> set[str]:
    return {photo_of(i) for i in images.items}


def by_photo(images: ImageSet, share: float, seed: int) -> ImageSet:
    """The images of a seeded `share` of the photos (at least one; never all)."""
    photos = sorted(by_photos(images))
    if len(photos) < 2:
        raise DataError(f"{images.name}: QAT chooses its epochs on photos it never trained on, "
                        "so it needs images of at least 2 photos (or selection images: --select DIR)")
    order = np.random.default_rng(seed).permutation(len(photos))
    count = min(len(photos) - 1, max(1, round(len(photos) * share)))
    held = {photos[i] for i in order[:count]}
    return ImageSet(f"{images.name}-selection",
                    [i for i in images.items if photo_of(i) in held], images.class_names)


# -- pixels ----------------------------------------------------------------------------------
def augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (CROP_SCALE of the shorter side) of a photo, flipped half the time."""
    h, w = rgb.shape[:2]
    side = max(1, int(min(h, w) * rng.uniform(*CROP_SCALE)))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = rgb[top:top + side, left:left + side]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def batches(images: ImageSet, spec: ModelSpec, batch_size: int, rng: np.random.Generator,
            augmented: bool) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(model inputs, labels or None) in a seeded random order, a batch decoded at a time."""
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch_size):
        items = [images.items[i] for i in order[start:start + batch_size]]
        pixels = np.stack([resize_crop(augment(i.rgb(), rng) if augmented else i.rgb(), spec)
                           for i in items])
        labels = np.array([i.label for i in items]) if images.labelled else None
        yield to_model_input(pixels, spec), labels


def inputs(images: ImageSet, spec: ModelSpec) -> np.ndarray:
    return to_model_input(images.crops(spec), spec)
