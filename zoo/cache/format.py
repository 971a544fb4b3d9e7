"""What a cache folder holds and how it is named, encoded and fingerprinted (no teacher runs here)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from zoo.data import CropDataset, ImageSet, load_crop
from zoo.errors import ZooError
from zoo.recipe import Recipe

# Format 2 adds the index checksum (``index_sha256``) and the PHI-S statistics; format 1 caches are still read
# (their index is checked against the views regenerated from its seed instead, see reader.check_index).
CACHE_FORMAT = 2
READABLE_FORMATS = (1, 2)
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.json"
SHARD_DIR = "shards"
STATS_FILE = "standardize.safetensors"
DEFAULT_SHARD_SIZE = 256  # entries (image views) per shard
DEFAULT_BUILD_BATCH = 16  # images per teacher forward while building
CACHE_DTYPES = ("fp16", "bf16", "fp32")
DEFAULT_DTYPE = "fp16"
TARGET_COSINE = 0.999  # `zoo cache verify` passes above this
# Training checks every shard's sha256 on open up to this size; above, sizes/shapes only
# (hashing a terabyte cache per student would cost more than it saves: `zoo cache verify` does that).
TRAIN_CHECKSUM_LIMIT_BYTES = 8 << 30
# The teacher fields that decide what a teacher outputs (the rest is presentation).
TEACHER_KEYS = ("spec", "name", "kind", "model", "pretrained_tag", "summary_dim", "feature_dim", "resolution",
                "patch_size", "mean", "std", "random", "weights_sha256")


class CacheError(ZooError):
    """A cache folder that is missing, incomplete, corrupt or stale."""


class CacheMismatchError(CacheError):
    """A cache built for other teachers, resolution, augmentation or data."""


# --------------------------------------------------------------------------- checksums and fingerprint


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_names(images: ImageSet) -> list[str]:
    """The training images as stable names (relative to the source root, else absolute paths; ``shard:key``)."""
    if hasattr(images, "train_names"):
        return images.train_names()
    names = []
    for path in images.train:
        if images.root is not None:
            try:
                names.append(path.relative_to(images.root).as_posix())
                continue
            except ValueError:
                pass
        names.append(str(path))
    return names


def cache_fingerprint(recipe: Recipe, teachers: Sequence[Any], images: ImageSet,
                      shared_hw: tuple[int, int]) -> dict[str, Any]:
    """What must match between a cache and a run: teachers, crop resolution, augmentation, data."""
    described = [{k: t.describe().get(k) for k in TEACHER_KEYS} for t in teachers]
    return {
        "teachers": described,
        "shared_resolution": list(shared_hw),
        "augment": {"scale": list(recipe.augment.scale), "ratio": list(recipe.augment.ratio),
                    "hflip": recipe.augment.hflip, "seed": recipe.train.seed,
                    # (step, slot) of an image's view depends on the batch size, so its box does too
                    "batch_size": recipe.train.batch_size},
        "data": {"source": images.source, "root": str(images.root.resolve()) if images.root else None,
                 "holdout_images": len(images.holdout), "train_images": len(images.train),
                 "image_list_sha256": sha256_text("\n".join(image_names(images)))},
    }


def first_difference(cached: Any, current: Any, path: str = "") -> str | None:
    """The first differing key as ``'path: cache X, this run Y'`` (None when equal)."""
    if isinstance(cached, dict) and isinstance(current, dict):
        for key in list(cached) + [k for k in current if k not in cached]:
            found = first_difference(cached.get(key), current.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(cached, list) and isinstance(current, list) and len(cached) == len(current) and \
            any(isinstance(v, (dict, list)) for v in cached):
        for i, (a, b) in enumerate(zip(cached, current)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if cached != current:
        return f"{path}: cache {_short(cached)}, this run {_short(current)}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheError(f"cannot read {path} ({err.__class__.__name__}); the cache is damaged: rebuild it") from None


# --------------------------------------------------------------------------- views


@dataclass
class ViewTable:
    """The index: entry ``row = image * views + view`` -> where its crop comes from."""

    names: list[str]
    views: int
    step: list[int] = field(default_factory=list)
    slot: list[int] = field(default_factory=list)
    box: list[list[int]] = field(default_factory=list)
    flip: list[bool] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.names) * self.views

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.names, "views": self.views, "step": self.step, "slot": self.slot, "box": self.box,
                "flip": self.flip}

    def to_bytes(self) -> bytes:
        """The bytes of ``index.json`` (deterministic: a regenerated index has the checksum of the original)."""
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViewTable":
        return cls(list(data["images"]), int(data["views"]), list(data["step"]), list(data["slot"]),
                   [list(b) for b in data["box"]], [bool(f) for f in data["flip"]])


def read_index(path: Path) -> tuple[ViewTable, str]:
    """``index.json`` of cache folder ``path`` and the sha256 of its bytes (one read)."""
    file = path / INDEX_FILE
    try:
        data = file.read_bytes()
        return ViewTable.from_dict(json.loads(data.decode("utf-8"))), hashlib.sha256(data).hexdigest()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CacheError(f"cannot read {file} ({err.__class__.__name__}); the cache is damaged: rebuild it") from None


def view_schedule(dataset: CropDataset, views: int) -> list[tuple[int, int]]:
    """``(step, slot)`` of every entry ``row = image * views + view``: view ``v`` = the image's crop in epoch ``v``."""
    per_epoch = [dataset.epoch_slots(v) for v in range(views)]
    return [per_epoch[v][i] for i in range(len(dataset.paths)) for v in range(views)]


def fill_index(table: ViewTable, schedule: Sequence[tuple[int, int]], dataset: CropDataset) -> None:
    """Box, flip and ``(step, slot)`` of every entry (one image header read per entry, no decoding)."""
    from zoo.data import image_size

    table.step, table.slot, table.box, table.flip = [], [], [], []
    sizes: dict[int, tuple[int, int]] = {}
    for row, (step, slot) in enumerate(schedule):
        image = row // table.views
        if image not in sizes:
            sizes[image] = image_size(dataset.paths[image])  # a file or a shard member
        width, height = sizes[image]
        table.step.append(int(step))
        table.slot.append(int(slot))
        table.box.append([int(v) for v in dataset.crop_box(step, slot, width, height)])
        table.flip.append(bool(dataset.flip(step, slot)))


def regenerate_index(recipe: Recipe, paths: Sequence[Path], names: list[str], views: int,
                     shared_hw: tuple[int, int]) -> ViewTable:
    """The index a build of ``recipe`` writes: a pure function of the seed, batch size, augmentation and images."""
    dataset = CropDataset(list(paths), shared_hw, recipe.train.seed, recipe.train.batch_size, recipe.augment.scale,
                          recipe.augment.ratio, recipe.augment.hflip)
    table = ViewTable(list(names), views)
    fill_index(table, view_schedule(dataset, views), dataset)
    return table


def view_crop(path: Path, box: Sequence[int], flip: bool, size_hw: tuple[int, int]) -> torch.Tensor:
    """The crop of a stored view, rebuilt from its box and flip flag (never from cached features)."""
    return load_crop(path, lambda w, h: tuple(int(v) for v in box), size_hw, bool(flip))


# --------------------------------------------------------------------------- shards


def np_dtype(dtype: str) -> np.dtype:
    # numpy has no bfloat16: bf16 is stored as its raw 16 bits
    return {"fp16": np.dtype(np.float16), "bf16": np.dtype(np.uint16), "fp32": np.dtype(np.float32)}[dtype]


def encode(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if dtype == "bf16":
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return tensor.to(torch.float16 if dtype == "fp16" else torch.float32).numpy()


def decode(array: np.ndarray, dtype: str) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # a memory-mapped shard: torch wants memory it may own
        array = array.copy()
    if dtype == "bf16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(array).float()


def shard_name(index: int) -> str:
    return f"{index:05d}"


def shard_files(teacher_names: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(file name, teacher, part)`` of one shard's arrays."""
    return [(f"{name}.{part}.npy", name, part) for name in teacher_names for part in ("summary", "features")]


def shapes(teacher: dict[str, Any], rows: int) -> dict[str, tuple[int, ...]]:
    grid = [r // teacher["patch_size"] for r in teacher["resolution"]]
    return {"summary": (rows, teacher["summary_dim"]), "features": (rows, teacher["feature_dim"], *grid)}


def estimate_bytes(teachers: Sequence[dict[str, Any]], rows: int, dtype: str) -> int:
    """Bytes of the feature shards of a cache with ``rows`` entries."""
    item = np_dtype(dtype).itemsize
    return sum(math.prod(shape) * item for t in teachers for shape in shapes(t, rows).values())


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
