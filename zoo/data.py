"""Images for distillation: sources, a deterministic held-out split, and
augmented batches that are a pure function of ``(seed, step)``.

Sources: a folder (recursive), a text file listing image paths (relative to
the file's folder), or ``bundled`` sample images that ship with installed
packages (scikit-learn, matplotlib, ultralytics). Unreadable images are
skipped, counted and reported in one warning line.

A folder is walked once per real directory (a directory symlink loop, or two
links to one folder, is listed once) and every source is de-duplicated by
resolved file path, so a file reached twice trains once and can never be both
held out and trained on. ``data.path`` with ``data.source: bundled`` is a
:class:`~zoo.errors.ConfigError` (the path would be ignored).

For the run record (note to the distillation engine): :func:`load_images`
returns an :class:`ImageSet` whose ``skipped`` (list of paths),
``skipped_count``, ``skipped_names`` (the first :data:`RECORD_FIRST`, relative
to the source root), ``duplicates`` (entries dropped as the same file),
``verified`` (images decoded before the first step) and ``verify_seconds``
(the time that took) describe the data; ``describe()`` returns all of them as
plain JSON values. The verify pass is bounded by ``data.verify_limit``: up to
that many images every one is decoded up front; above it only the held-out
images are (evaluation has no fallback for a bad file) and the rest are
checked lazily while training.

Augmentation is random scale + crop: ONE crop box per image, drawn from a
generator keyed on ``(seed, step, sample index)``; the crop is resized to a
single *shared* resolution (the max of the student and teacher resolutions).
The engine resizes that tensor for the student and each teacher resizes it
for itself, so every view shows exactly the same crop.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.errors import ConfigError, ZooError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
# (package, folder inside it, file names or None for every image there)
BUNDLED_IMAGES: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
    ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")),
    ("ultralytics", "assets", None),
)
REPORT_FIRST = 3  # bad paths named in the warning line
RECORD_FIRST = 5  # bad paths named in the run record


class DataWarning(UserWarning):
    """Some images were skipped."""


# --------------------------------------------------------------------------- sources


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def bundled_images() -> list[Path]:
    """Sample images shipped with installed packages (found via importlib, no network)."""
    found: list[Path] = []
    for package, folder, names in BUNDLED_IMAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(list(spec.submodule_search_locations)[0]) / folder
        if not base.is_dir():
            continue
        candidates = [base / n for n in names] if names else sorted(p for p in base.iterdir() if _is_image(p))
        found.extend(p for p in candidates if p.is_file())
    return found


def walk_images(folder: Path) -> tuple[list[Path], list[Path], int]:
    """``(images, broken, duplicates)`` under ``folder``: each real directory walked once.

    Symlinks are followed, but a directory whose resolved path was already
    walked (a symlink loop, or a second link to the same folder) is skipped,
    and a file whose resolved path was already listed is counted in
    ``duplicates`` instead of listed again. ``broken``: image names that are
    not files (e.g. dangling symlinks). The walk is sorted, so the first path
    to reach a file is always the same one.
    """
    images: list[Path] = []
    broken: list[Path] = []
    duplicates = 0
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    stack = [Path(folder)]
    while stack:
        directory = stack.pop()
        real = os.path.realpath(directory)
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:  # unreadable folder: nothing to list in it (os.walk's behaviour)
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir():
                    subdirs.append(Path(entry.path))
                    continue
                if not _is_image(Path(entry.name)):
                    continue
                if not entry.is_file():
                    broken.append(Path(entry.path))
                    continue
                # a plain entry's resolved path is its real folder + name: no syscall per file
                resolved = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
            except OSError:
                broken.append(Path(entry.path))
                continue
            if resolved in seen_files:
                duplicates += 1
                continue
            seen_files.add(resolved)
            images.append(Path(entry.path))
        stack.extend(reversed(subdirs))
    return sorted(images), broken, duplicates


def folder_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursive, symlinks followed, each file once), sorted."""
    return walk_images(folder)[0]


def unique_by_resolved_path(paths: Sequence[Path]) -> tuple[list[Path], list[Path], int]:
    """``(files, not_files, dropped)``: the first of the paths that resolve to one file is kept, in order.

    One ``lstat`` per path and one ``realpath`` per distinct folder (not per
    file): a plain file's resolved path is its folder's resolved path + name;
    only symlinks are resolved on their own.
    """
    folders: dict[str, str] = {}
    seen: set[str] = set()
    kept: list[Path] = []
    not_files: list[Path] = []
    for path in paths:
        text = os.fspath(path)
        try:
            mode = os.lstat(text).st_mode
            if stat.S_ISLNK(mode):
                resolved = os.path.realpath(text)
                is_file = os.path.isfile(resolved)
            else:
                parent, name = os.path.split(os.path.abspath(text))
                if parent not in folders:
                    folders[parent] = os.path.realpath(parent)
                resolved, is_file = os.path.join(folders[parent], name), stat.S_ISREG(mode)
        except OSError:
            resolved, is_file = "", False
        if not is_file:
            not_files.append(path)
        elif resolved not in seen:
            seen.add(resolved)
            kept.append(path)
    return kept, not_files, len(paths) - len(kept) - len(not_files)


def list_file_images(list_file: Path) -> list[Path]:
    """Paths listed one per line (blank lines and ``#`` comments ignored), relative to the file's folder."""
    base = list_file.parent
    images = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            images.append(path if path.is_absolute() else base / path)
    return images


def check_source(source: str, path: str | None) -> None:
    """Refuse a ``data.path`` that ``data.source`` would ignore (one-line :class:`ConfigError`)."""
    if source == "bundled" and path:
        raise ConfigError(f"recipe key 'data.path' ({path}) is ignored by data.source 'bundled'; "
                          "set data.source=auto (or folder/list) to read it, or drop data.path")


def resolve_source(source: str, path: str | None) -> tuple[str, list[Path], Path | None]:
    """``(source kind, image paths, root for relative names)`` of a recipe's ``data`` section."""
    return _resolve_source(source, path)[:3]


def _resolve_source(source: str, path: str | None) -> tuple[str, list[Path], Path | None, list[Path], int]:
    """As :func:`resolve_source`, plus the broken entries and the duplicates dropped while listing."""
    check_source(source, path)
    if source == "auto":
        source = "bundled" if not path else ("folder" if Path(path).expanduser().is_dir() else "list")
    if source == "bundled":
        images = bundled_images()
        if not images:
            raise ZooError("no bundled sample images found (scikit-learn, matplotlib or ultralytics provide them); "
                           "give a folder with --set data.path=/path/to/images")
        images, missing, duplicates = unique_by_resolved_path(images)
        return source, images, None, missing, duplicates
    if not path:
        raise ConfigError(f"recipe key 'data.path' is required for data.source '{source}' "
                          "(e.g. --set data.path=/path/to/images)")
    where = Path(path).expanduser()
    if source == "folder":
        if not where.is_dir():
            raise ZooError(f"image folder not found: {where}")
        images, broken, duplicates = walk_images(where)
        return source, images, where, broken, duplicates
    if source == "list":
        if not where.is_file():
            raise ZooError(f"image list file not found: {where}")
        images, missing, duplicates = unique_by_resolved_path(list_file_images(where))
        return source, images, where.parent, missing, duplicates
    raise ConfigError(f"recipe key 'data.source' must be auto, bundled, folder or list, got '{source}'")


def _readable(path: Path) -> bool:
    """True when PIL can fully decode the image (catches corrupt and truncated files)."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "skip this file"
        return False


@dataclass
class ImageSet:
    """The usable images of a source, split into train and held-out lists (see the module docstring)."""

    source: str
    train: list[Path]
    holdout: list[Path]
    skipped: list[Path]
    root: Path | None
    duplicates: int = 0  # listed entries dropped because they resolve to a file already listed
    verified: int = 0  # images fully decoded before the first step
    verify_seconds: float = 0.0  # time the verify pass took

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    @property
    def skipped_names(self) -> list[str]:
        """The first :data:`RECORD_FIRST` skipped files, relative to the source root."""
        return [_relative(p, self.root) for p in self.skipped[:RECORD_FIRST]]

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "root": str(self.root) if self.root else None, "train_images": len(self.train),
                "holdout_images": len(self.holdout), "skipped_images": len(self.skipped),
                "skipped_names": self.skipped_names, "duplicates": self.duplicates,
                "verified_images": self.verified, "verify_seconds": round(self.verify_seconds, 3)}


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name if root is None else path.as_posix()


def holdout_split(paths: Sequence[Path], count: int, root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """``(train, holdout)``: the ``count`` images with the smallest SHA-1 of their relative path.

    Deterministic, independent of listing order, and stable when images are added
    elsewhere (an image stays held out unless a smaller hash arrives). At least
    one image is kept for training. Disjoint by resolved path: an entry that is
    the same file as a held-out one (a second link to it) is not trained on either.
    """
    count = max(0, min(count, len(paths) - 1))
    keyed = sorted(paths, key=lambda p: hashlib.sha1(_relative(p, root).encode()).hexdigest())
    held: list[Path] = []
    held_files: set[str] = set()
    for path in keyed:
        if len(held) == count:
            break
        resolved = os.path.realpath(path)
        if resolved not in held_files:
            held.append(path)
            held_files.add(resolved)
    train = [p for p in paths if os.path.realpath(p) not in held_files]
    if not train and held:  # every entry was one file: keep it for training
        return [held[0]], []
    return train, held


def load_images(source: str = "auto", path: str | None = None, holdout: int = 2, verify_limit: int = 20000,
                warn: bool = True) -> ImageSet:
    """Find, check and split the images of a recipe's ``data`` section.

    At most ``verify_limit`` images are decoded up front: all of them when the
    source has no more than that, else only the held-out candidates (bad ones
    are replaced by the next in hash order); the rest are checked lazily
    (:class:`CropDataset` substitutes a readable neighbour for a bad file).
    Unreadable images are skipped and reported in one warning line; the count,
    the first names and the verify cost are on the returned :class:`ImageSet`.
    """
    kind, images, root, bad, duplicates = _resolve_source(source, path)
    started = time.perf_counter()
    verified = 0
    if len(images) <= verify_limit:
        unreadable = [p for p in images if not _readable(p)]
        verified = len(images)
        bad_set = set(unreadable)
        good = [p for p in images if p not in bad_set]
        bad = bad + unreadable
        train, held = holdout_split(good, holdout, root) if good else ([], [])
    else:
        good = images
        train, held, unreadable, verified = _verified_holdout(images, holdout, root, verify_limit)
        bad = bad + unreadable
    seconds = time.perf_counter() - started
    if bad and warn:
        first = ", ".join(str(p) for p in bad[:REPORT_FIRST]) + (", ..." if len(bad) > REPORT_FIRST else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {first}", DataWarning, stacklevel=2)
    if not good or not train:
        where = root or "the bundled sample images"
        raise ZooError(f"no usable images in {where} ({len(bad)} unreadable; extensions: {' '.join(IMAGE_EXTENSIONS)})")
    return ImageSet(kind, train, held, bad, root, duplicates, verified, seconds)


def _verified_holdout(images: list[Path], count: int, root: Path | None,
                      limit: int) -> tuple[list[Path], list[Path], list[Path], int]:
    """A large source: only the held-out images are decoded now (at most ``limit`` of them).

    A bad held-out image is dropped and the split is redrawn (the next image in
    hash order joins the held-out set). ``(train, held, unreadable, decoded)``.
    """
    readable: set[Path] = set()
    unreadable: list[Path] = []
    remaining = images
    decoded = 0
    while True:
        train, held = holdout_split(remaining, count, root)
        bad_now = []
        for path in held:
            if path in readable or decoded >= limit:
                continue
            decoded += 1
            if _readable(path):
                readable.add(path)
            else:
                bad_now.append(path)
        if not bad_now:
            return train, held, unreadable, decoded
        unreadable.extend(bad_now)
        bad_set = set(bad_now)
        remaining = [p for p in remaining if p not in bad_set]


# --------------------------------------------------------------------------- augmentation


def sample_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of step ``step``: a pure function of the three."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(index)]))


def random_crop_box(width: int, height: int, rng: np.random.Generator, scale: Sequence[float] = (0.25, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3), attempts: int = 10) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(left, top, right, bottom)`` (torchvision's algorithm)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    return (0, 0, width, height)  # torchvision falls back to (about) the whole image too


def center_crop_box(width: int, height: int, aspect_hw: Sequence[int] | None = None) -> tuple[int, int, int, int]:
    """The largest centred box with the aspect of ``aspect_hw`` (h, w); the whole image if None."""
    if aspect_hw is None:
        return (0, 0, width, height)
    target = aspect_hw[1] / aspect_hw[0]  # width / height
    if width / height > target:
        w, h = int(round(height * target)), height
    else:
        w, h = width, int(round(width / target))
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def load_crop(path: Path, box_fn, size_hw: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """Decode ``path``, crop ``box_fn(width, height)``, resize to ``size_hw``: float [3, h, w] in [0, 1]."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        box = box_fn(*image.size)
        view = image.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    if flip:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(view, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class CropDataset(Dataset):
    """Item ``(step, slot)`` -> the augmented crop of sample ``slot`` of global batch ``step``.

    Which image a slot shows and its crop box/flip are functions of
    ``(seed, step, slot)`` only, so any process computes the same batch.
    """

    def __init__(self, paths: Sequence[Path], size_hw: tuple[int, int], seed: int, batch_size: int,
                 scale: Sequence[float] = (0.25, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: bool = False) -> None:
        self.paths = list(paths)
        self.size_hw = tuple(size_hw)
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), bool(hflip)
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:  # items are addressed by (step, slot), not by index
        return len(self.paths)

    def image_index(self, step: int, slot: int) -> int:
        """Epoch-wise sampling without replacement: epoch ``e`` is a permutation seeded by ``(seed, e)``."""
        epoch, offset = divmod(step * self.batch_size + slot, len(self.paths))
        return int(self.epoch_order(epoch)[offset])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The image indices of epoch ``epoch`` in the order they are shown."""
        if self._order is None or self._order[0] != epoch:  # one permutation per epoch (millions of images)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1_000_003, int(epoch)]))
            self._order = (int(epoch), rng.permutation(len(self.paths)))
        return self._order[1]

    def epoch_slots(self, epoch: int) -> list[tuple[int, int]]:
        """``(step, slot)`` where each image (by index) appears in epoch ``epoch``: the inverse of the order."""
        order, n = self.epoch_order(epoch), len(self.paths)
        slots: list[tuple[int, int]] = [(0, 0)] * n
        for offset, image in enumerate(order):
            slots[int(image)] = divmod(int(epoch) * n + offset, self.batch_size)
        return slots

    def crop_box(self, step: int, slot: int, width: int, height: int) -> tuple[int, int, int, int]:
        return random_crop_box(width, height, sample_rng(self.seed, step, slot), self.scale, self.ratio)

    def flip(self, step: int, slot: int) -> bool:
        # A separate stream so toggling hflip leaves every crop box unchanged.
        return self.hflip and bool(sample_rng(self.seed + 7919, step, slot).random() < 0.5)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        step, slot = key
        index = self.image_index(step, slot)
        for attempt in range(len(self.paths)):
            path = self.paths[(index + attempt) % len(self.paths)]
            try:
                return load_crop(path, lambda w, h: self.crop_box(step, slot, w, h), self.size_hw,
                                 self.flip(step, slot))
            except Exception as err:  # noqa: BLE001 - a bad file found late: use the next one
                warnings.warn(f"skipped unreadable image {path}: {err.__class__.__name__}", DataWarning, stacklevel=2)
        raise ZooError("no readable image left in the data source")


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps ``start..steps-1``, this rank's slots of the global batch."""

    def __init__(self, start: int, steps: int, global_batch: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ConfigError(f"recipe key 'train.batch_size' ({global_batch}) must be divisible by the "
                              f"number of processes ({world_size})")
        self.start, self.steps = int(start), int(steps)
        self.per_rank = global_batch // world_size
        self.first = rank * self.per_rank

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield [(step, self.first + i) for i in range(self.per_rank)]


def default_workers(device: torch.device) -> int:
    """Loader workers: 0-2 on CPU (the cores train the model), up to 8 on a GPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        return 0 if cpus <= 2 else min(2, cpus // 4)
    return max(1, min(8, cpus - 1))


def train_loader(dataset: CropDataset, start: int, steps: int, global_batch: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches ``[B_rank, 3, H, W]`` for steps ``start..steps-1`` (the order never depends on workers)."""
    sampler = StepBatchSampler(start, steps, global_batch, rank, world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(dataset.seed))  # never draw from the global RNG


def eval_batches(paths: Sequence[Path], size_hw: tuple[int, int], crop_hw: tuple[int, int],
                 batch_size: int) -> Iterator[torch.Tensor]:
    """Held-out images: the centred crop with the student's aspect, no augmentation."""
    for i in range(0, len(paths), batch_size):
        yield torch.stack([load_crop(p, lambda w, h: center_crop_box(w, h, crop_hw), size_hw)
                           for p in paths[i:i + batch_size]])


# --------------------------------------------------------------------------- student view


def shared_resolution(*resolutions: Sequence[int]) -> tuple[int, int]:
    """The largest height and width among the student's and teachers' resolutions."""
    return (max(int(r[0]) for r in resolutions), max(int(r[1]) for r in resolutions))


def student_view(images: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """Shared-resolution [0, 1] images -> the student's size, ImageNet-normalised (timm's constants)."""
    if tuple(images.shape[-2:]) != tuple(resolution):
        images = F.interpolate(images, size=tuple(resolution), mode="bilinear", align_corners=False, antialias=True)
    mean = images.new_tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (images - mean) / std
