"""Reading a built cache: memory-mapped shards, the index (checksummed), the student's replayed views."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.cache.format import (INDEX_FILE, MANIFEST_FILE, READABLE_FORMATS, SHARD_DIR, TRAIN_CHECKSUM_LIMIT_BYTES,
                              CacheError, CacheMismatchError, cache_fingerprint, decode, file_checksum,
                              first_difference, np_dtype, read_index, read_json, regenerate_index, shapes,
                              shard_files, shard_name, view_crop)
from zoo.data import CropDataset, ImageSet
from zoo.recipe import Recipe


class CacheWarning(UserWarning):
    """A usable cache that should be rebuilt or upgraded."""


@dataclass
class ShardProblem:
    shard: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"shard {self.shard} {self.file}: {self.problem}"


def index_changed_error(path: Path) -> CacheError:
    return CacheError(f"teacher cache {path}: {INDEX_FILE} was changed after the build (its sha256 differs from the "
                      "manifest's), so its crops no longer match the stored features; run the same zoo cache build "
                      "command again to restore it, or delete the cache")


class TeacherCache:
    """A built cache, memory-mapped: ``targets(rows)`` -> ``{teacher: TeacherOutput}`` (float32).

    Opening refuses an incomplete or corrupt cache and an index that is not the one
    the features were computed for (sha256 in the manifest; format-1 caches, which
    have none, are checked against the index regenerated from their seed).
    ``standardizers``: the PHI-S statistics stored by the build, ``{teacher: state_dict}``.
    """

    def __init__(self, path: str | os.PathLike, checksums: bool = False, recipe: Recipe | None = None,
                 images: ImageSet | None = None, index: bool = True, shards: bool = True) -> None:
        self.path = Path(path)
        if not (self.path / MANIFEST_FILE).is_file():
            raise CacheError(f"no teacher cache in {self.path} (no {MANIFEST_FILE}); build one with zoo cache build")
        self.manifest = read_json(self.path / MANIFEST_FILE)
        if self.manifest.get("format") not in READABLE_FORMATS:
            raise CacheError(f"teacher cache {self.path} has format {self.manifest.get('format')}, "
                             f"this zoo reads formats {', '.join(map(str, READABLE_FORMATS))}; rebuild it")
        if not self.manifest.get("complete"):
            raise CacheError(f"teacher cache {self.path} is incomplete (an interrupted build); "
                             "run zoo cache build again with the same arguments to finish it")
        self.table, self.index_sha256 = read_index(self.path)
        self.views, self.rows, self.dtype = int(self.manifest["views"]), int(self.manifest["rows"]), \
            self.manifest["dtype"]
        self.shard_size = int(self.manifest["shard_size"])
        self.teachers = self.manifest["fingerprint"]["teachers"]
        self.names = [t["name"] for t in self.teachers]
        self._arrays: dict[tuple[int, str, str], np.ndarray] = {}
        self._stats: tuple[dict[str, torch.Tensor] | None] | None = None  # loaded on first use
        if self.table.rows != self.rows:
            raise CacheError(f"teacher cache {self.path}: the index has {self.table.rows} entries, the manifest "
                             f"{self.rows}; rebuild it")
        if index:
            self.check_index(recipe, images)
        problems = self.check(checksums=checksums) if shards else []
        if problems:
            raise CacheError(f"teacher cache {self.path} is corrupt: {problems[0]}"
                             + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                             + "; run zoo cache verify, then rebuild")

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    def check_index(self, recipe: Recipe | None = None, images: ImageSet | None = None) -> None:
        """Refuse an index that is not the one the stored features were computed for.

        With a checksum (format 2) the bytes must match it. A format-1 cache has none:
        its index is compared with the one regenerated from the build's recipe and
        images (one header read per image), accepted with a warning when equal.
        """
        expected = self.manifest.get("index_sha256")
        if expected is not None:
            if expected != self.index_sha256:
                raise index_changed_error(self.path)
            return
        recipe, images = self._build_inputs(recipe, images)
        regenerated = regenerate_index(recipe, images.train, self.table.names, self.views,
                                       tuple(self.fingerprint["shared_resolution"]))
        if regenerated != self.table:
            row = next((r for r in range(self.rows) if (regenerated.box[r], regenerated.flip[r], regenerated.step[r],
                                                        regenerated.slot[r]) != (self.table.box[r], self.table.flip[r],
                                                                                 self.table.step[r],
                                                                                 self.table.slot[r])), None)
            where = f" (first at entry {row})" if row is not None else ""
            raise CacheError(f"teacher cache {self.path}: {INDEX_FILE} does not match the views regenerated from its "
                             f"seed{where}, so its crops no longer match the stored features; run the same zoo cache "
                             "build command again to restore it, or delete the cache")
        warnings.warn(f"teacher cache {self.path} predates index checksums (format 1); its index matched the "
                      "regenerated views. Run zoo cache build again with the same arguments to add the checksum",
                      CacheWarning, stacklevel=3)

    def _build_inputs(self, recipe: Recipe | None, images: ImageSet | None) -> tuple[Recipe, ImageSet]:
        """The recipe and images the cache was built from (the manifest's, unless given)."""
        from zoo.data import load_recipe_images
        from zoo.recipe import recipe_from_dict

        built = recipe_from_dict(self.manifest["recipe"])
        recipe = recipe or built
        if images is None:
            images = load_recipe_images(built, warn=False)
        return recipe, images

    def check(self, checksums: bool = True) -> list[ShardProblem]:
        """Missing shards, wrong shapes/dtypes, checksum mismatches (``checksums``) and NaN/inf (with checksums)."""
        problems: list[ShardProblem] = []
        shards = {int(s["index"]): s for s in self.manifest.get("shards", [])}
        expected = math.ceil(self.rows / self.shard_size)
        for index in range(expected):
            name = shard_name(index)
            if index not in shards:
                problems.append(ShardProblem(name, "*", "missing from the manifest"))
                continue
            shard = shards[index]
            folder = self.path / SHARD_DIR / name
            for file, teacher, part in shard_files(self.names):
                problems.extend(self._check_file(folder / file, name, file, shard, teacher, part, checksums))
        return problems

    def _check_file(self, path: Path, shard: str, file: str, entry: dict[str, Any], teacher: str, part: str,
                    checksums: bool) -> list[ShardProblem]:
        if not path.is_file():
            return [ShardProblem(shard, file, "file missing")]
        if checksums and file_checksum(path) != entry["files"].get(file):
            return [ShardProblem(shard, file, "checksum mismatch (modified or truncated)")]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            return [ShardProblem(shard, file, f"unreadable ({err.__class__.__name__})")]
        shape = shapes(self.teachers[self.names.index(teacher)], int(entry["rows"]))[part]
        if tuple(array.shape) != shape or array.dtype != np_dtype(self.dtype):
            return [ShardProblem(shard, file, f"shape {tuple(array.shape)} {array.dtype}, expected {shape} "
                                 f"{np_dtype(self.dtype)}")]
        if checksums and not torch.isfinite(decode(array, self.dtype)).all():
            return [ShardProblem(shard, file, "NaN or inf values")]
        return []

    def check_compatible(self, fingerprint: dict[str, Any]) -> None:
        """Refuse (one line naming the difference) a cache made for other teachers, resolution, augmentation or data."""
        difference = first_difference(self.fingerprint, fingerprint)
        if difference:
            raise CacheMismatchError(f"teacher cache {self.path} does not fit this run: {difference}")

    @property
    def standardizer(self) -> Any:
        """The PHI-S transforms the build estimated over every stored entry: a
        :class:`zoo.standardize.TeacherStandardizer` (None: no statistics in this cache)."""
        from zoo.standardize import TeacherStandardizer

        state = self._stats_state()
        return None if state is None else TeacherStandardizer.from_state_dict(state)

    @property
    def standardizers(self) -> dict[str, dict[str, torch.Tensor]] | None:
        """The same statistics per teacher: ``{teacher: {"summary.<buffer>": tensor, "features.<buffer>": ...}}``
        (buffers of :class:`zoo.standardize.PhiS`); None when the cache has none (built by an older zoo, or
        too few entries): run zoo cache build again to add them without running the teachers."""
        from zoo.cache.stats import per_teacher

        state = self._stats_state()
        return None if state is None else per_teacher(state)

    def _stats_state(self) -> dict[str, torch.Tensor] | None:
        from zoo.cache.stats import load_state

        if self._stats is None:
            entry = self.manifest.get("standardize")
            self._stats = (load_state(self.path, entry) if entry else None,)
        return self._stats[0]

    def _array(self, shard: int, teacher: str, part: str) -> np.ndarray:
        key = (shard, teacher, part)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.path / SHARD_DIR / shard_name(shard) / f"{teacher}.{part}.npy",
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
                parts[part] = decode(np.stack(arrays), self.dtype).to(device)
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
    """Open a cache for a run, refusing (one line) a corrupt one (checksums up to TRAIN_CHECKSUM_LIMIT_BYTES,
    shapes always), a changed index, and one that does not fit the run (naming the difference).

    The returned cache's ``standardizers`` holds the PHI-S statistics the build stored (or None).
    """
    manifest = read_json(Path(path) / MANIFEST_FILE) if (Path(path) / MANIFEST_FILE).is_file() else {}
    cache = TeacherCache(path, checksums=int(manifest.get("estimated_bytes", 0)) <= TRAIN_CHECKSUM_LIMIT_BYTES,
                         index=False)
    # The fingerprint first: a cache of other data or augmentation is named as such, not as a changed index.
    cache.check_compatible(cache_fingerprint(recipe, teachers, images, shared_hw))
    cache.check_index(recipe, images)
    return cache
