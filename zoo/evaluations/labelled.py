"""Labelled image sets for classification evaluations (k-NN, zero-shot).

A set is ``sklearn:digits`` (ships with scikit-learn, no download), a folder
with one sub-folder per class, optionally already split into ``train/`` and
``val/``, or labelled WebDataset shards (``/data/val-{00..07}.tar``: samples
with a ``cls`` member); otherwise a stratified, seeded split is made. Items are
image paths, shard samples (:class:`zoo.data.ShardSample`), or 2-D grey arrays
in [0, 1] for the built-in set.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ConfigError, ZooError, unknown_name

VAL_FRACTION = 0.2
SPLIT_SEED = 0
DIGITS_SOURCE = "sklearn:digits"
DIGITS_MAX_VALUE = 16.0  # load_digits pixels are 0..16
DIGIT_CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_DIR, VAL_DIR = "train", "val"


@dataclass
class Split:
    """Images (paths, or 2-D grey arrays for built-in sets) and their integer labels."""

    items: list[Any]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class LabelledData:
    """A labelled image set split into train (the k-NN memory) and val (the queries)."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    split: str  # "folders" (train/ + val/) or "random" (stratified, seeded)
    class_names: list[str] = field(default_factory=list)  # for zero-shot prompts (default: classes)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "classes": len(self.classes), "train_images": len(self.train),
                "val_images": len(self.val), "split": self.split}


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: images}`` for every sub-folder of ``root`` that holds images."""
    from zoo.data import folder_images

    found = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = folder_images(sub)
        if images:
            found[sub.name] = images
    return found


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and val indices, every class held out in proportion (scikit-learn, seeded)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    index = np.arange(len(labels))
    try:
        train, val = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError as err:  # a class with one image, or fewer val images than classes
        raise ZooError(f"cannot make a stratified {val_fraction:g} validation split: {err} "
                       "(add images, change --val-fraction or give train/ and val/ sub-folders)") from None
    return np.sort(train), np.sort(val)


def _subsample(split: Split, per_class: int | None, seed: int) -> Split:
    """At most ``per_class`` items of each class (deterministic), for quick checks."""
    if per_class is None:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(split.labels):
        where = np.flatnonzero(split.labels == label)
        keep.extend(np.sort(rng.permutation(where)[:per_class]).tolist())
    keep = sorted(keep)
    return Split([split.items[i] for i in keep], split.labels[keep])


def load_digits_data(val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> LabelledData:
    """scikit-learn's 8×8 handwritten digits (1797 images, ships with the package, no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train, val = stratified_split(labels, val_fraction, seed)
    images = list(digits.images.astype(np.float32) / DIGITS_MAX_VALUE)
    return LabelledData(DIGITS_SOURCE, [str(c) for c in range(10)],
                        Split([images[i] for i in train], labels[train]), Split([images[i] for i in val], labels[val]),
                        "random", list(DIGIT_CLASS_NAMES))


def load_labelled(data: str | Path, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED,
                  per_class: int | None = None) -> LabelledData:
    """A labelled set: ``sklearn:digits`` or a folder with one sub-folder per class.

    A folder with ``train/`` and ``val/`` sub-folders uses them as the split;
    otherwise a stratified ``val_fraction`` split with ``seed`` is made.
    ``per_class`` keeps at most that many images per class in each split.
    """
    text = str(data)
    if text.startswith("sklearn:"):
        if text != DIGITS_SOURCE:
            raise unknown_name("built-in data set", text, [DIGITS_SOURCE])
        labelled = load_digits_data(val_fraction, seed)
    else:
        from zoo.data.shards import looks_like_shards

        if looks_like_shards(text):
            labelled = _load_shards(text, val_fraction, seed)
        else:
            labelled = _load_folder(Path(text).expanduser(), val_fraction, seed)
    labelled.train = _subsample(labelled.train, per_class, seed)
    labelled.val = _subsample(labelled.val, per_class, seed)
    return labelled


def _load_shards(spec: str, val_fraction: float, seed: int) -> LabelledData:
    """Labelled shards: classes are the ``cls`` values (as text), split stratified and seeded."""
    from zoo.data import labelled_shards

    items, values = labelled_shards(spec)
    found = sorted(set(values.tolist()))
    if len(found) < 2:
        raise ZooError(f"only one class ({found[0] if found else 'none'}) in {spec}; classification needs two or more")
    position = {value: i for i, value in enumerate(found)}
    labels = np.array([position[v] for v in values.tolist()], dtype=np.int64)
    train, val = stratified_split(labels, val_fraction, seed)
    classes = [str(v) for v in found]
    return LabelledData(spec, classes, Split([items[i] for i in train], labels[train]),
                        Split([items[i] for i in val], labels[val]), "random", list(classes))


def _load_folder(root: Path, val_fraction: float, seed: int) -> LabelledData:
    if not root.is_dir():
        raise ZooError(f"data folder not found: {root} (give a folder with one sub-folder per class, "
                       f"or {DIGITS_SOURCE})")
    hint = f"expected {root}/<class>/<image> or {root}/{TRAIN_DIR}/<class>/ and {root}/{VAL_DIR}/<class>/"
    if (root / TRAIN_DIR).is_dir() and (root / VAL_DIR).is_dir():
        train, val = _class_folders(root / TRAIN_DIR), _class_folders(root / VAL_DIR)
        if not train or not val:
            raise ZooError(f"no class sub-folders with images in {root / (VAL_DIR if train else TRAIN_DIR)}; {hint}")
        classes = sorted(train)
        extra = sorted(set(val) - set(train))
        if extra:
            raise ZooError(f"classes in {root / VAL_DIR} but not in {root / TRAIN_DIR}: {', '.join(extra[:5])}")

        def split_of(folders: dict[str, list[Path]]) -> Split:
            items = [(p, classes.index(c)) for c in classes for p in folders.get(c, [])]
            return Split([p for p, _ in items], np.array([y for _, y in items], dtype=np.int64))

        return LabelledData(str(root), classes, split_of(train), split_of(val), "folders", list(classes))
    folders = _class_folders(root)
    if not folders:
        raise ZooError(f"no class sub-folders with images in {root}; {hint}")
    if len(folders) < 2:
        raise ZooError(f"only one class ('{next(iter(folders))}') in {root}; classification needs two or more")
    classes = sorted(folders)
    paths = [p for c in classes for p in folders[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in folders[c]], dtype=np.int64)
    train, val = stratified_split(labels, val_fraction, seed)
    return LabelledData(str(root), classes, Split([paths[i] for i in train], labels[train]),
                        Split([paths[i] for i in val], labels[val]), "random", list(classes))


def export_digits(folder: str | Path, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED,
                  size: int = 32) -> dict[str, int]:
    """Write ``sklearn:digits`` as ``folder/{train,val}/<digit>/<index>.png`` (grey, ``size`` px)."""
    from PIL import Image

    from zoo.atomic import atomic_write_bytes

    data = load_digits_data(val_fraction, seed)
    counts = {}
    for split_name, split in ((TRAIN_DIR, data.train), (VAL_DIR, data.val)):
        for i, (image, label) in enumerate(zip(split.items, split.labels)):
            pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
            picture = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.NEAREST)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            atomic_write_bytes(Path(folder) / split_name / data.classes[label] / f"{i:05d}.png", buffer.getvalue())
        counts[split_name] = len(split)
    return counts


def parse_class_names(text: str | None, default: list[str], count: int) -> list[str]:
    """``--classes``: comma-separated names or a file with one name per line (default: the set's names)."""
    if not text:
        return list(default)
    path = Path(text).expanduser()
    names = ([line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
             if path.is_file() else [n.strip() for n in text.split(",") if n.strip()])
    if len(names) != count:
        raise ConfigError(f"--classes gives {len(names)} names but the data has {count} classes")
    return names
