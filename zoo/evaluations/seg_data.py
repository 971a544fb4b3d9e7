"""Semantic-segmentation data for the linear probe: ADE20k, Pascal VOC 2012 and a generic folder.

Layouts (``--format``):

* ``ade20k``: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` with
  ``annotations/{training,validation}/*.png`` label maps (0 = "other", 1..150 the classes). ADE20k's
  *reduce-zero-label* convention applies: label 0 becomes the ignore index, label k becomes k - 1.
* ``voc``: ``VOC2012/{JPEGImages,SegmentationClass}`` with ``ImageSets/Segmentation/{train,val}.txt``;
  the masks are palette PNGs read as class indices (0 = background, 1..20, 255 = object borders, ignored).
* ``folder``: ``images/`` + ``masks/`` (index PNGs with the image's stem) + ``classes.txt`` (one class name
  a line, index = line number); ``images/{train,val}/`` + ``masks/{train,val}/`` when split, else a
  deterministic split by a hash of the file name.

A missing or mismatched layout, an image without a mask and an RGB mask are one-line errors naming the
file; a label outside the class range is reported by :func:`load_mask` with the file and the value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from zoo.errors import ConfigError, ZooError

IGNORE_INDEX = 255
FORMATS = ("ade20k", "voc", "folder")
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FOLDER_VAL_FRACTION = 0.2  # generic folders without train/val subfolders

ADE20K_CLASS_COUNT = 150
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


@dataclass(frozen=True)
class SegSplit:
    """One split of a segmentation set: image and mask paths, pairwise."""

    images: tuple[Path, ...]
    masks: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class SegDataset:
    """A segmentation data set: classes, the label convention and its train/val splits."""

    name: str  # "ade20k", "voc" or the folder's name (metrics are named miou_<name>)
    format: str
    root: Path
    classes: tuple[str, ...]
    reduce_zero_label: bool
    train: SegSplit
    val: SegSplit

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"name": self.name, "format": self.format, "root": str(self.root), "classes": self.num_classes,
                "train_images": len(self.train), "val_images": len(self.val),
                "reduce_zero_label": self.reduce_zero_label, "ignore_index": IGNORE_INDEX}


def load_seg_dataset(path: str | Path, fmt: str) -> SegDataset:
    """The data set at ``path`` in layout ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown segmentation format '{fmt}'; use one of {', '.join(FORMATS)}")
    root = Path(path)
    if not root.is_dir():
        raise ZooError(f"segmentation data folder not found: {root}")
    return {"ade20k": _ade20k, "voc": _voc, "folder": _folder}[fmt](root)


# --------------------------------------------------------------------------- layouts


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pair(images: Sequence[Path], mask_dir: Path, what: str) -> SegSplit:
    """Each image with ``mask_dir/<stem>.png``; a missing mask is an error naming the image."""
    masks = []
    for image in images:
        mask = mask_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise ZooError(f"{what}: image {image} has no mask (expected {mask})")
        masks.append(mask)
    return SegSplit(tuple(images), tuple(masks))


def _require(folder: Path, expected: str) -> Path:
    if not folder.is_dir():
        raise ZooError(f"not a {expected} layout: {folder} is missing")
    return folder


def _ade20k(root: Path) -> SegDataset:
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    splits = {}
    for split, folder in (("train", "training"), ("val", "validation")):
        images = _images_in(_require(base / "images" / folder, "ADE20k (ADEChallengeData2016/images/...)"))
        masks = _require(base / "annotations" / folder, "ADE20k (ADEChallengeData2016/annotations/...)")
        if not images:
            raise ZooError(f"no images in {base / 'images' / folder}")
        splits[split] = _pair(images, masks, "ADE20k")
    classes = tuple(f"class{i}" for i in range(1, ADE20K_CLASS_COUNT + 1))
    return SegDataset("ade20k", "ade20k", base, classes, True, splits["train"], splits["val"])


def _voc(root: Path) -> SegDataset:
    base = root
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if candidate.is_dir():
            base = candidate
    jpegs = _require(base / "JPEGImages", "Pascal VOC 2012 (VOC2012/JPEGImages)")
    masks = _require(base / "SegmentationClass", "Pascal VOC 2012 (VOC2012/SegmentationClass)")
    lists = _require(base / "ImageSets" / "Segmentation", "Pascal VOC 2012 (ImageSets/Segmentation)")
    splits = {}
    for split in SPLITS:
        list_file = lists / f"{split}.txt"
        if not list_file.is_file():
            raise ZooError(f"not a Pascal VOC 2012 layout: {list_file} is missing")
        ids = [line.strip() for line in list_file.read_text(encoding="utf-8", errors="replace").splitlines()
               if line.strip()]
        images = []
        for image_id in ids:
            image = jpegs / f"{image_id}.jpg"
            if not image.is_file():
                raise ZooError(f"{list_file} names '{image_id}' but {image} does not exist")
            images.append(image)
        if not images:
            raise ZooError(f"{list_file} lists no images")
        splits[split] = _pair(images, masks, "Pascal VOC")
    return SegDataset("voc", "voc", base, VOC_CLASSES, False, splits["train"], splits["val"])


def _folder(root: Path) -> SegDataset:
    image_dir = _require(root / "images", "segmentation folder (images/, masks/, classes.txt)")
    mask_dir = _require(root / "masks", "segmentation folder (images/, masks/, classes.txt)")
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise ZooError(f"not a segmentation folder layout: {classes_file} is missing (one class name a line)")
    classes = tuple(line.strip() for line in classes_file.read_text(encoding="utf-8", errors="replace").splitlines()
                    if line.strip())
    if len(classes) < 2:
        raise ZooError(f"{classes_file} names {len(classes)} class(es); a segmentation set needs at least 2")
    if len(classes) > IGNORE_INDEX:
        raise ZooError(f"{classes_file} names {len(classes)} classes; at most {IGNORE_INDEX} fit index PNGs")
    if (image_dir / "train").is_dir():
        splits = {split: _pair(_images_in(_require(image_dir / split, "split segmentation folder")),
                               _require(mask_dir / split, "split segmentation folder"), root.name)
                  for split in SPLITS}
    else:
        images = _images_in(image_dir)
        val = [p for p in images if _hash_fraction(p.name) < FOLDER_VAL_FRACTION]
        train = [p for p in images if _hash_fraction(p.name) >= FOLDER_VAL_FRACTION]
        if not val and len(train) > 1:
            val, train = train[-1:], train[:-1]
        splits = {"train": _pair(train, mask_dir, root.name), "val": _pair(val, mask_dir, root.name)}
    for split in SPLITS:
        if not len(splits[split]):
            raise ZooError(f"no {split} images in {image_dir}")
    return SegDataset(root.name, "folder", root, classes, False, splits["train"], splits["val"])


def _hash_fraction(name: str) -> float:
    """A stable number in [0, 1) from a file name (the split does not depend on listing order)."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16) / 16 ** 8


# --------------------------------------------------------------------------- reading


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]; an unreadable file is one line naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ZooError(f"cannot read image {path}: {err}") from None


def load_mask(path: Path, num_classes: int, reduce_zero_label: bool) -> np.ndarray:
    """Class indices int64 [H, W] with :data:`IGNORE_INDEX` for ignored pixels.

    Palette (``P``) and greyscale (``L``) PNGs are read as indices; an RGB mask, or a label that is neither a
    class nor the ignore index, is an error naming the file.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16"):
                raise ZooError(f"mask {path} is a {image.mode} image; expected an index PNG (mode P or L)")
            labels = np.asarray(image).astype(np.int64)
    except ZooError:
        raise
    except (OSError, ValueError) as err:
        raise ZooError(f"cannot read mask {path}: {err}") from None
    if reduce_zero_label:  # ADE20k: 0 ("other") is ignored, 1..150 -> 0..149
        labels = np.where(labels == 0, IGNORE_INDEX, labels - 1)
        labels[labels == IGNORE_INDEX - 1] = IGNORE_INDEX
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        value = int(labels[bad][0]) + (1 if reduce_zero_label else 0)
        raise ZooError(f"mask {path} has label {value} outside the {num_classes} classes "
                       f"(0..{num_classes - 1}{' after reduce-zero-label' if reduce_zero_label else ''}, "
                       f"{IGNORE_INDEX} = ignore)")
    return labels


# --------------------------------------------------------------------------- a set with a known answer


SHAPE_CLASSES = ("background", "disc", "square", "triangle")


def write_shapes_dataset(folder: str | Path, count: int = 24, size: int = 96, seed: int = 0,
                         val_fraction: float = 0.25) -> Path:
    """A generated segmentation set whose answer is known: coloured shapes on textured backgrounds.

    Each image holds one to three shapes (disc, square, triangle), each class in its own hue band, on a
    noisy striped background; the mask marks each pixel with its shape's class (background = 0). Written in
    the ``folder`` layout with ``images/{train,val}``, ``masks/{train,val}`` and ``classes.txt``.
    """
    from PIL import Image, ImageDraw

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    hues = {1: (220, 60, 40), 2: (40, 200, 60), 3: (50, 80, 230)}  # class -> base colour
    n_val = max(1, int(round(count * val_fraction)))
    for i in range(count):
        split = "val" if i < n_val else "train"
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "masks" / split).mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:size, 0:size]
        period = rng.uniform(6, 14)
        stripes = (np.sin((xx * rng.uniform(-1, 1) + yy) / period) * 30 + 110).astype(np.float32)
        background = stripes[..., None] + rng.normal(0, 18, (size, size, 3))
        image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
        mask = Image.new("L", (size, size), 0)
        draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        for _ in range(int(rng.integers(1, 4))):
            label = int(rng.integers(1, 4))
            r = int(rng.integers(size // 8, size // 4))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in hues[label])
            box = [cx - r, cy - r, cx + r, cy + r]
            if label == 1:
                draw.ellipse(box, fill=colour)
                mask_draw.ellipse(box, fill=label)
            elif label == 2:
                draw.rectangle(box, fill=colour)
                mask_draw.rectangle(box, fill=label)
            else:
                points = [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
                draw.polygon(points, fill=colour)
                mask_draw.polygon(points, fill=label)
        image.save(folder / "images" / split / f"{i:04d}.png")
        mask.save(folder / "masks" / split / f"{i:04d}.png")
    (folder / "classes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n", encoding="utf-8")
    return folder
