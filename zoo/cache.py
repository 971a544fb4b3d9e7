"""Teacher feature cache: run the frozen teachers once, reuse their outputs for every student.

A cache holds, for every training image, ``K`` augmented *views*. View ``v`` of
image ``i`` is exactly the crop that online training shows for image ``i`` in
epoch ``v`` (:meth:`zoo.data.CropDataset.epoch_slots`): its box, flip flag and
the ``(seed, step, slot)`` that regenerate them are stored in the index, and
every teacher's summary and spatial features of that crop are stored in shards.
Features are never transformed (a flipped feature map is not the teacher's
output for the flipped image): a student always sees a crop rebuilt from the
stored box/flip, which is the crop the teachers saw.

Layout of a cache folder::

    manifest.json             teachers, resolutions, augmentation, data, versions, shards + sha256
    index.json                per entry: image, view, step, slot, box, flip
    shards/00000/<teacher>.summary.npy    [rows, Ds]        (fp16 / bf16 bits / fp32)
    shards/00000/<teacher>.features.npy   [rows, Df, h, w]

Shards are written atomically and recorded in the manifest (with checksums) one
by one, so an interrupted build resumes from the first shard not verified.
Training memory-maps the shards (:class:`TeacherCache`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.atomic import atomic_write_bytes, atomic_write_json
from zoo.data import CropDataset, ImageSet, load_crop, load_images, shared_resolution
from zoo.errors import ConfigError, ZooError
from zoo.recipe import Recipe, load_recipe

CACHE_FORMAT = 1
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.json"
SHARD_DIR = "shards"
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


# --------------------------------------------------------------------------- fingerprint


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_names(images: ImageSet) -> list[str]:
    """The training images as stable names (relative to the source root, else absolute paths)."""
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
                 "image_list_sha256": _sha256_text("\n".join(image_names(images)))},
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViewTable":
        return cls(list(data["images"]), int(data["views"]), list(data["step"]), list(data["slot"]),
                   [list(b) for b in data["box"]], [bool(f) for f in data["flip"]])


def view_schedule(dataset: CropDataset, views: int) -> list[tuple[int, int]]:
    """``(step, slot)`` of every entry ``row = image * views + view``: view ``v`` = the image's crop in epoch ``v``."""
    per_epoch = [dataset.epoch_slots(v) for v in range(views)]
    return [per_epoch[v][i] for i in range(len(dataset.paths)) for v in range(views)]


def view_crop(path: Path, box: Sequence[int], flip: bool, size_hw: tuple[int, int]) -> torch.Tensor:
    """The crop of a stored view, rebuilt from its box and flip flag (never from cached features)."""
    return load_crop(path, lambda w, h: tuple(int(v) for v in box), size_hw, bool(flip))


def _draw_view(dataset: CropDataset, path: Path, step: int, slot: int) -> tuple[torch.Tensor, list[int], bool]:
    """The view of ``(step, slot)`` and its box/flip, exactly as :class:`CropDataset` makes it."""
    box: list[int] = []

    def box_fn(w: int, h: int) -> tuple[int, int, int, int]:
        box[:] = dataset.crop_box(step, slot, w, h)
        return tuple(box)

    flip = dataset.flip(step, slot)
    try:
        crop = load_crop(path, box_fn, dataset.size_hw, flip)
    except Exception as err:  # noqa: BLE001 - a cache must not silently substitute another image
        raise CacheError(f"cannot read image {path} ({err.__class__.__name__}); remove it and rebuild") from None
    return crop, box, flip


# --------------------------------------------------------------------------- shards


def _np_dtype(dtype: str) -> np.dtype:
    # numpy has no bfloat16: bf16 is stored as its raw 16 bits
    return {"fp16": np.dtype(np.float16), "bf16": np.dtype(np.uint16), "fp32": np.dtype(np.float32)}[dtype]


def _encode(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if dtype == "bf16":
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return tensor.to(torch.float16 if dtype == "fp16" else torch.float32).numpy()


def _decode(array: np.ndarray, dtype: str) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # a memory-mapped shard: torch wants memory it may own
        array = array.copy()
    if dtype == "bf16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(array).float()


def _shard_name(index: int) -> str:
    return f"{index:05d}"


def _shard_files(teacher_names: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(file name, teacher, part)`` of one shard's arrays."""
    return [(f"{name}.{part}.npy", name, part) for name in teacher_names for part in ("summary", "features")]


def _shapes(teacher: dict[str, Any], rows: int) -> dict[str, tuple[int, ...]]:
    grid = [r // teacher["patch_size"] for r in teacher["resolution"]]
    return {"summary": (rows, teacher["summary_dim"]), "features": (rows, teacher["feature_dim"], *grid)}


def estimate_bytes(teachers: Sequence[dict[str, Any]], rows: int, dtype: str) -> int:
    """Bytes of the feature shards of a cache with ``rows`` entries."""
    item = _np_dtype(dtype).itemsize
    return sum(math.prod(shape) * item for t in teachers for shape in _shapes(t, rows).values())


def _save_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` atomically; its sha256."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


# --------------------------------------------------------------------------- build


def _versions() -> dict[str, Any]:
    from zoo.distill import _versions as distill_versions

    info = distill_versions()
    info["numpy"] = np.__version__
    return info


def _shard_ok(folder: Path, shard: dict[str, Any]) -> bool:
    files = shard.get("files", {})
    return bool(files) and all((folder / name).is_file() and file_checksum(folder / name) == digest
                               for name, digest in files.items())


def build_cache(
    recipe: Recipe | str,
    out_dir: str | os.PathLike,
    views: int | None = None,
    teachers: Sequence[Any] | None = None,
    device: str = "auto",
    dtype: str = DEFAULT_DTYPE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = DEFAULT_BUILD_BATCH,
    progress: bool = True,
    offline: bool | None = None,
    on_shard: Callable[[int], None] | None = None,
    on_estimate: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the recipe's teachers over its training images (``views`` views each) into ``out_dir``; the manifest.

    Resumes a partial build in ``out_dir`` (kept shards are verified by checksum).
    ``on_estimate(rows, bytes)`` is called before any teacher runs; ``on_shard(i)``
    after shard ``i`` is recorded (tests use it to interrupt a build).
    """
    from zoo.bench import resolve_device
    from zoo.distill import _prepare_teachers

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if dtype not in CACHE_DTYPES:
        raise ConfigError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}, got '{dtype}'")
    views = int(views if views is not None else recipe.augment.views)
    if views < 1 or shard_size < 1 or batch_size < 1:
        raise ConfigError("views, shard size and batch size must be at least 1")
    out = Path(out_dir)
    torch_device = resolve_device(device)
    teacher_list = _prepare_teachers(teachers, recipe, torch_device, offline)
    images = load_images(recipe.data.source, recipe.data.path, recipe.eval.images, recipe.data.verify_limit)
    shared_hw = shared_resolution(recipe.resolution, *[t.resolution for t in teacher_list])
    fingerprint = cache_fingerprint(recipe, teacher_list, images, shared_hw)
    dataset = CropDataset(images.train, shared_hw, recipe.train.seed, recipe.train.batch_size,
                          recipe.augment.scale, recipe.augment.ratio, recipe.augment.hflip)
    table = ViewTable(image_names(images), views)
    schedule = view_schedule(dataset, views)
    rows = table.rows
    settings = {"views": views, "dtype": dtype, "shard_size": int(shard_size), "rows": rows}

    manifest_path = out / MANIFEST_FILE
    manifest: dict[str, Any] | None = None
    if manifest_path.is_file():
        manifest = _read_json(manifest_path)
        if manifest.get("complete") and manifest.get("fingerprint") == fingerprint and \
                {k: manifest.get(k) for k in settings} == settings and all(
                    _shard_ok(out / SHARD_DIR / s["name"], s) for s in manifest["shards"]):
            return manifest  # already built
        if manifest.get("fingerprint") != fingerprint or {k: manifest.get(k) for k in settings} != settings:
            difference = first_difference({**manifest.get("fingerprint", {}), **{k: manifest.get(k) for k in settings}},
                                          {**fingerprint, **settings})
            raise CacheMismatchError(f"{out} holds another cache ({difference}); choose another --out or delete it")
    shards_total = math.ceil(rows / shard_size)
    done: dict[int, dict[str, Any]] = {}
    for shard in (manifest or {}).get("shards", []):
        if _shard_ok(out / SHARD_DIR / shard["name"], shard):  # a bad kept shard is simply redone
            done[int(shard["index"])] = shard

    names = [t.name for t in teacher_list]
    described = fingerprint["teachers"]
    size = estimate_bytes(described, rows, dtype)
    if on_estimate is not None:
        on_estimate(rows, size)
    out.mkdir(parents=True, exist_ok=True)
    # The index first: box/flip/seed are cheap (one image header read per entry would be the only cost)
    if not (out / INDEX_FILE).is_file() or manifest is None:
        _fill_index(table, schedule, dataset)
        atomic_write_json(out / INDEX_FILE, table.to_dict())
    else:
        table = ViewTable.from_dict(_read_json(out / INDEX_FILE))

    base = {"format": CACHE_FORMAT, "kind": "teacher-cache", **settings, "fingerprint": fingerprint,
            "teacher_details": [t.describe() for t in teacher_list], "recipe": _portable_recipe(recipe),
            "versions": _versions(), "estimated_bytes": size,
            "regenerate": "view v of image i = the zoo.data.CropDataset crop of (seed, step, slot) in index.json"}

    def write_manifest(complete: bool) -> dict[str, Any]:
        record = {**base, "complete": complete, "shards": [done[i] for i in sorted(done)],
                  "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(manifest_path, record)
        return record

    write_manifest(False)
    from zoo.distill import _progress_bar

    bar = _progress_bar(progress)
    task = bar.add_task("cache teachers", total=rows, completed=sum(s["rows"] for s in done.values()), info="")
    with bar:
        for index in range(shards_total):
            if index in done:
                continue
            start, stop = index * shard_size, min(rows, (index + 1) * shard_size)
            arrays = _run_shard(teacher_list, dataset, table, schedule, start, stop, batch_size, torch_device, dtype,
                                lambda n: bar.advance(task, n))
            folder = out / SHARD_DIR / _shard_name(index)
            files = {f: _save_npy(folder / f, arrays[(teacher, part)]) for f, teacher, part in _shard_files(names)}
            done[index] = {"index": index, "name": _shard_name(index), "start": start, "rows": stop - start,
                           "files": files}
            write_manifest(False)
            if on_shard is not None:
                on_shard(index)
    return write_manifest(True)


def _portable_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe with an absolute data path, so `zoo cache verify` finds the images from any folder."""
    data = recipe.to_dict()
    if data["data"].get("path"):
        data["data"]["path"] = str(Path(data["data"]["path"]).expanduser().resolve())
    return data


def _fill_index(table: ViewTable, schedule: Sequence[tuple[int, int]], dataset: CropDataset) -> None:
    from PIL import Image

    table.step, table.slot, table.box, table.flip = [], [], [], []
    for row, (step, slot) in enumerate(schedule):
        path = dataset.paths[row // table.views]
        with Image.open(path) as image:
            width, height = image.size
        table.step.append(int(step))
        table.slot.append(int(slot))
        table.box.append([int(v) for v in dataset.crop_box(step, slot, width, height)])
        table.flip.append(bool(dataset.flip(step, slot)))


def _run_shard(teachers: Sequence[Any], dataset: CropDataset, table: ViewTable, schedule: Sequence[tuple[int, int]],
               start: int, stop: int, batch_size: int, device: torch.device, dtype: str,
               advance: Callable[[int], None]) -> dict[tuple[str, str], np.ndarray]:
    parts: dict[tuple[str, str], list[np.ndarray]] = {}
    for first in range(start, stop, batch_size):
        crops = []
        for row in range(first, min(stop, first + batch_size)):
            step, slot = schedule[row]
            crop, box, flip = _draw_view(dataset, dataset.paths[row // table.views], step, slot)
            if box != table.box[row] or flip != table.flip[row]:  # the index and the generator disagree
                raise CacheError(f"index entry {row} does not match its regenerated view; delete the cache and rebuild")
            crops.append(crop)
        batch = torch.stack(crops).to(device)
        with torch.no_grad():
            for teacher in teachers:
                out = teacher(batch)
                parts.setdefault((teacher.name, "summary"), []).append(_encode(out.summary, dtype))
                parts.setdefault((teacher.name, "features"), []).append(_encode(out.features, dtype))
        advance(len(crops))
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"cannot read {path} ({err.__class__.__name__}); the cache is damaged: rebuild it") from None


# --------------------------------------------------------------------------- reading


@dataclass
class ShardProblem:
    shard: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"shard {self.shard} {self.file}: {self.problem}"


class TeacherCache:
    """A built cache, memory-mapped: ``targets(rows)`` -> ``{teacher: TeacherOutput}`` (float32)."""

    def __init__(self, path: str | os.PathLike, checksums: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / MANIFEST_FILE).is_file():
            raise CacheError(f"no teacher cache in {self.path} (no {MANIFEST_FILE}); build one with zoo cache build")
        self.manifest = _read_json(self.path / MANIFEST_FILE)
        if self.manifest.get("format") != CACHE_FORMAT:
            raise CacheError(f"teacher cache {self.path} has format {self.manifest.get('format')}, "
                             f"this zoo reads format {CACHE_FORMAT}; rebuild it")
        if not self.manifest.get("complete"):
            raise CacheError(f"teacher cache {self.path} is incomplete (an interrupted build); "
                             "run zoo cache build again with the same arguments to finish it")
        self.table = ViewTable.from_dict(_read_json(self.path / INDEX_FILE))
        self.views, self.rows, self.dtype = int(self.manifest["views"]), int(self.manifest["rows"]), \
            self.manifest["dtype"]
        self.shard_size = int(self.manifest["shard_size"])
        self.teachers = self.manifest["fingerprint"]["teachers"]
        self.names = [t["name"] for t in self.teachers]
        if self.table.rows != self.rows:
            raise CacheError(f"teacher cache {self.path}: the index has {self.table.rows} entries, the manifest "
                             f"{self.rows}; rebuild it")
        problems = self.check(checksums=checksums)
        if problems:
            raise CacheError(f"teacher cache {self.path} is corrupt: {problems[0]}"
                             + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                             + "; run zoo cache verify, then rebuild")
        self._arrays: dict[tuple[int, str, str], np.ndarray] = {}

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    def check(self, checksums: bool = True) -> list[ShardProblem]:
        """Missing shards, wrong shapes/dtypes, checksum mismatches (``checksums``) and NaN/inf (with checksums)."""
        problems: list[ShardProblem] = []
        shards = {int(s["index"]): s for s in self.manifest.get("shards", [])}
        expected = math.ceil(self.rows / self.shard_size)
        for index in range(expected):
            name = _shard_name(index)
            if index not in shards:
                problems.append(ShardProblem(name, "*", "missing from the manifest"))
                continue
            shard = shards[index]
            folder = self.path / SHARD_DIR / name
            for file, teacher, part in _shard_files(self.names):
                problems.extend(self._check_file(folder / file, name, file, shard, teacher, part, checksums))
        return problems

    def _check_file(self, path: Path, shard_name: str, file: str, shard: dict[str, Any], teacher: str, part: str,
                    checksums: bool) -> list[ShardProblem]:
        if not path.is_file():
            return [ShardProblem(shard_name, file, "file missing")]
        if checksums and file_checksum(path) != shard["files"].get(file):
            return [ShardProblem(shard_name, file, "checksum mismatch (modified or truncated)")]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            return [ShardProblem(shard_name, file, f"unreadable ({err.__class__.__name__})")]
        shape = _shapes(self.teachers[self.names.index(teacher)], int(shard["rows"]))[part]
        if tuple(array.shape) != shape or array.dtype != _np_dtype(self.dtype):
            return [ShardProblem(shard_name, file, f"shape {tuple(array.shape)} {array.dtype}, expected {shape} "
                                 f"{_np_dtype(self.dtype)}")]
        if checksums and not torch.isfinite(_decode(array, self.dtype)).all():
            return [ShardProblem(shard_name, file, "NaN or inf values")]
        return []

    def check_compatible(self, fingerprint: dict[str, Any]) -> None:
        """Refuse (one line naming the difference) a cache made for other teachers, resolution, augmentation or data."""
        difference = first_difference(self.fingerprint, fingerprint)
        if difference:
            raise CacheMismatchError(f"teacher cache {self.path} does not fit this run: {difference}")

    def _array(self, shard: int, teacher: str, part: str) -> np.ndarray:
        key = (shard, teacher, part)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.path / SHARD_DIR / _shard_name(shard) / f"{teacher}.{part}.npy",
                                        mmap_mode="r", allow_pickle=False)
        return self._arrays[key]

    def targets(self, rows: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu") -> dict[str, Any]:
        """The stored teacher outputs of entries ``rows`` (float32 on ``device``)."""
        from zoo.teachers import TeacherOutput

        rows = [int(r) for r in (rows.tolist() if isinstance(rows, torch.Tensor) else rows)]
        result = {}
        for name in self.names:
            parts = {}
            for part in ("summary", "features"):
                arrays = [self._array(r // self.shard_size, name, part)[r % self.shard_size] for r in rows]
                parts[part] = _decode(np.stack(arrays), self.dtype).to(device)
            result[name] = TeacherOutput(parts["summary"], parts["features"])
        return result

    def entry(self, row: int) -> dict[str, Any]:
        """Where entry ``row`` comes from: image name, view, (step, slot) seed, box, flip."""
        t = self.table
        return {"row": row, "image": t.names[row // t.views], "view": row % t.views, "step": t.step[row],
                "slot": t.slot[row], "box": t.box[row], "flip": t.flip[row]}


class CachedCropDataset(Dataset):
    """Item ``(step, slot)`` -> ``(crop, row)``: the image online training would show, in view ``epoch mod K``.

    The crop is rebuilt from the stored box/flip, so the student sees exactly
    the view whose teacher outputs are entry ``row`` of the cache.
    """

    def __init__(self, order: CropDataset, cache: TeacherCache) -> None:
        self.order, self.views, self.table = order, cache.views, cache.table
        self.size_hw, self.seed = order.size_hw, order.seed  # train_loader seeds its generator from .seed

    def __len__(self) -> int:
        return len(self.order)

    def row(self, step: int, slot: int) -> int:
        epoch = (step * self.order.batch_size + slot) // len(self.order.paths)
        return self.order.image_index(step, slot) * self.views + epoch % self.views

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        row = self.row(*key)
        path = self.order.paths[row // self.views]
        try:
            crop = view_crop(path, self.table.box[row], self.table.flip[row], self.size_hw)
        except Exception as err:  # noqa: BLE001 - the cached targets belong to this image: no substitute
            raise CacheError(f"cannot read image {path} of the teacher cache ({err.__class__.__name__})") from None
        return crop, row


def open_for_training(path: str | os.PathLike, recipe: Recipe, teachers: Sequence[Any], images: ImageSet,
                      shared_hw: tuple[int, int]) -> TeacherCache:
    """Open a cache for a run, refusing a corrupt one (checksums up to TRAIN_CHECKSUM_LIMIT_BYTES, shapes always)
    and one that does not fit the run (one line naming the difference)."""
    manifest = _read_json(Path(path) / MANIFEST_FILE) if (Path(path) / MANIFEST_FILE).is_file() else {}
    cache = TeacherCache(path, checksums=int(manifest.get("estimated_bytes", 0)) <= TRAIN_CHECKSUM_LIMIT_BYTES)
    cache.check_compatible(cache_fingerprint(recipe, teachers, images, shared_hw))
    return cache


# --------------------------------------------------------------------------- verify


@dataclass
class TeacherAgreement:
    name: str
    cosine_mean: float
    cosine_min: float
    max_abs_error: float

    @property
    def ok(self) -> bool:
        return self.cosine_min >= TARGET_COSINE


@dataclass
class VerifyReport:
    path: Path
    samples: list[int]
    teachers: list[TeacherAgreement]
    problems: list[ShardProblem]

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.teachers)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def verify_cache(path: str | os.PathLike, samples: int = 8, device: str = "auto", seed: int = 0,
                 teachers: Sequence[Any] | None = None, offline: bool | None = None) -> VerifyReport:
    """Check every shard (checksum, shape, NaN), then recompute ``samples`` random entries with the live teachers.

    Per teacher: cosine similarity (summary and every feature location, per
    entry) mean/min and the max absolute error. Entries in bad shards are skipped.
    """
    from zoo.bench import resolve_device
    from zoo.teachers import build_teachers

    path = Path(path)
    if not (path / MANIFEST_FILE).is_file():
        raise CacheError(f"no teacher cache in {path} (no {MANIFEST_FILE})")
    manifest = _read_json(path / MANIFEST_FILE)
    if not manifest.get("complete"):
        raise CacheError(f"teacher cache {path} is incomplete; finish it with zoo cache build")
    # Shapes only here; the full check (checksums, NaN) goes into the report instead of raising.
    cache = TeacherCache.__new__(TeacherCache)
    cache.path, cache.manifest = path, manifest
    cache.table = ViewTable.from_dict(_read_json(path / INDEX_FILE))
    cache.views, cache.rows, cache.dtype = int(manifest["views"]), int(manifest["rows"]), manifest["dtype"]
    cache.shard_size, cache.teachers = int(manifest["shard_size"]), manifest["fingerprint"]["teachers"]
    cache.names, cache._arrays = [t["name"] for t in cache.teachers], {}
    problems = cache.check(checksums=True)
    bad_shards = {p.shard for p in problems}

    torch_device = resolve_device(device)
    from zoo.recipe import recipe_from_dict

    recipe = recipe_from_dict(manifest["recipe"])  # the data settings the cache was built with
    if teachers is None:
        teacher_list = build_teachers([t["spec"] for t in cache.teachers], torch_device, offline)
    else:
        from zoo.distill import _prepare_teachers

        teacher_list = _prepare_teachers(teachers, recipe, torch_device, offline)
    live = [{k: t.describe().get(k) for k in TEACHER_KEYS} for t in teacher_list]
    difference = first_difference(cache.teachers, live)
    if difference:
        raise CacheMismatchError(f"the live teachers differ from the cache's: {difference}")
    images = load_images(recipe.data.source, recipe.data.path, recipe.eval.images, recipe.data.verify_limit)
    if image_names(images) != cache.table.names:
        raise CacheMismatchError(f"the images of {path} changed since the build (data.image_list_sha256)")
    shared_hw = tuple(manifest["fingerprint"]["shared_resolution"])
    usable = [r for r in range(cache.rows) if _shard_name(r // cache.shard_size) not in bad_shards]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(usable, size=min(samples, len(usable)), replace=False).tolist()) if usable else []
    stats: dict[str, dict[str, list[float]]] = {t.name: {"cos": [], "err": []} for t in teacher_list}
    for row in picked:
        crop = view_crop(images.train[row // cache.views], cache.table.box[row], cache.table.flip[row], shared_hw)
        stored = cache.targets([row])
        for teacher in teacher_list:
            out = teacher(crop.unsqueeze(0).to(torch_device))
            target = stored[teacher.name]
            cos_summary = _cosines(out.summary.cpu(), target.summary)
            f_live = out.features.cpu().flatten(2).transpose(1, 2).flatten(0, 1)  # [h*w, C]
            f_cached = target.features.flatten(2).transpose(1, 2).flatten(0, 1)
            cos_features = _cosines(f_live, f_cached)
            stats[teacher.name]["cos"].extend(cos_summary.tolist() + cos_features.tolist())
            stats[teacher.name]["err"].append(max(float((out.summary.cpu() - target.summary).abs().max()),
                                                  float((out.features.cpu() - target.features).abs().max())))
    agreements = [TeacherAgreement(name, float(np.mean(s["cos"])) if s["cos"] else float("nan"),
                                   float(np.min(s["cos"])) if s["cos"] else float("nan"),
                                   float(np.max(s["err"])) if s["err"] else float("nan"))
                  for name, s in stats.items()]
    return VerifyReport(path, picked, agreements, problems)
