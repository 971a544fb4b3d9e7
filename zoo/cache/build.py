"""``zoo cache build``: run the teachers once over every stored view, shard by shard, resumable.

Every file goes through a temp file and a rename (:mod:`zoo.atomic`), shards are
recorded in the manifest one by one, and a full disk stops the build with one
line naming the file and the bytes needed: the recorded shards stay, the files
of the unfinished shard and every temp file are removed, and the same command
resumes from the first shard not recorded.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from zoo.atomic import atomic_write_bytes, atomic_write_json, remove_stale_temps, write_via_temp
from zoo.cache.format import (CACHE_DTYPES, CACHE_FORMAT, DEFAULT_BUILD_BATCH, DEFAULT_DTYPE, DEFAULT_SHARD_SIZE,
                              INDEX_FILE, MANIFEST_FILE, SHARD_DIR, STATS_FILE, CacheError, CacheMismatchError,
                              ViewTable, cache_fingerprint, encode, estimate_bytes, file_checksum,
                              fill_index, first_difference, human, image_names, read_index, read_json, shard_files,
                              shard_name, view_schedule)
from zoo.cache.reader import CacheWarning
from zoo.data import CropDataset, load_crop, load_recipe_images, shared_resolution
from zoo.errors import ConfigError, DiskFullError
from zoo.recipe import Recipe, load_recipe
from zoo.runs import now_utc


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

    Resumes a partial build in ``out_dir`` (kept shards are verified by checksum)
    and upgrades a complete one made by an older zoo (index checksum, PHI-S
    statistics) without running the teachers. ``on_estimate(rows, bytes)`` is
    called before any teacher runs; ``on_shard(i)`` after shard ``i`` is recorded
    (tests use it to interrupt a build).
    """
    from zoo.cache.stats import StatsPass, stats_ok
    from zoo.devices import resolve_device
    from zoo.progress import progress_bar
    from zoo.teachers import prepare_teachers
    from zoo.versions import versions

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if dtype not in CACHE_DTYPES:
        raise ConfigError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}, got '{dtype}'")
    views = int(views if views is not None else recipe.augment.views)
    if views < 1 or shard_size < 1 or batch_size < 1:
        raise ConfigError("views, shard size and batch size must be at least 1")
    out = Path(out_dir)
    torch_device = resolve_device(device)
    teacher_list = prepare_teachers(teachers, recipe.teachers, torch_device, offline)
    images = load_recipe_images(recipe)  # the images a run of this recipe trains on (folders, lists, shards)
    shared_hw = shared_resolution(recipe.resolution, *[t.resolution for t in teacher_list])
    fingerprint = cache_fingerprint(recipe, teacher_list, images, shared_hw)
    dataset = CropDataset(images.train, shared_hw, recipe.train.seed, recipe.train.batch_size,
                          recipe.augment.scale, recipe.augment.ratio, recipe.augment.hflip)
    table = ViewTable(image_names(images), views)
    rows = table.rows
    settings = {"views": views, "dtype": dtype, "shard_size": int(shard_size), "rows": rows}

    manifest = _existing_manifest(out, fingerprint, settings)
    shards_total = math.ceil(rows / shard_size)
    done: dict[int, dict[str, Any]] = {}
    for shard in (manifest or {}).get("shards", []):
        if _shard_ok(out / SHARD_DIR / shard["name"], shard):  # a bad kept shard is simply redone
            done[int(shard["index"])] = shard
    _remove_leftovers(out, done if manifest is not None else None)

    described = fingerprint["teachers"]
    size = estimate_bytes(described, rows, dtype)
    if on_estimate is not None:
        on_estimate(rows, size)
    todo = [i for i in range(shards_total) if i not in done]
    _check_free_space(out, sum(estimate_bytes(described, _rows_of(i, rows, shard_size), dtype) for i in todo))
    out.mkdir(parents=True, exist_ok=True)

    schedule = view_schedule(dataset, views)
    table, index_sha256 = _index(out, manifest, table, schedule, dataset)
    if manifest is not None and manifest.get("complete") and not todo and manifest.get("format") == CACHE_FORMAT \
            and manifest.get("index_sha256") == index_sha256 and stats_ok(out, manifest.get("standardize")):
        return manifest  # already built

    base = {"format": CACHE_FORMAT, "kind": "teacher-cache", **settings, "fingerprint": fingerprint,
            "teacher_details": [t.describe() for t in teacher_list], "recipe": _portable_recipe(recipe),
            "versions": versions(), "estimated_bytes": size, "index_sha256": index_sha256,
            "regenerate": "view v of image i = the zoo.data.CropDataset crop of (seed, step, slot) in index.json"}

    def write_manifest(complete: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        record = {**base, **(extra or {}), "complete": complete, "shards": [done[i] for i in sorted(done)],
                  "updated": now_utc()}
        atomic_write_json(out / MANIFEST_FILE, record)
        return record

    names = [t.name for t in teacher_list]
    stats = StatsPass()
    with _resume_hint(done, shards_total):
        write_manifest(False)
        bar = progress_bar(progress)
        task = bar.add_task("cache teachers", total=rows, completed=sum(s["rows"] for s in done.values()), info="")
        with bar:
            for index in todo:
                start, stop = index * shard_size, min(rows, (index + 1) * shard_size)
                arrays = _run_shard(teacher_list, dataset, table, schedule, start, stop, batch_size, torch_device,
                                    dtype, lambda n: bar.advance(task, n))
                folder = out / SHARD_DIR / shard_name(index)
                files = _write_shard(folder, names, arrays,
                                     sum(estimate_bytes(described, _rows_of(i, rows, shard_size), dtype)
                                         for i in todo if i > index))
                stats.update(index, arrays, names, dtype)  # the values as stored: what training reads
                done[index] = {"index": index, "name": shard_name(index), "start": start, "rows": stop - start,
                               "files": files}
                try:
                    write_manifest(False)
                except BaseException:
                    del done[index]  # not recorded: its files would only be redone, so free their space now
                    _remove_shard_files(folder, names)
                    raise
                if on_shard is not None:
                    on_shard(index)
        # Kept shards of a resumed (or upgraded) build were not seen by this process: read them back.
        stats.feed_stored(out, done, names, dtype)
        return write_manifest(True, {"standardize": stats.save(out)})


def _rows_of(index: int, rows: int, shard_size: int) -> int:
    return min(rows, (index + 1) * shard_size) - index * shard_size


def _existing_manifest(out: Path, fingerprint: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a build to resume or upgrade in ``out`` (None: a new build); another cache is refused."""
    if not (out / MANIFEST_FILE).is_file():
        return None
    manifest = read_json(out / MANIFEST_FILE)
    kept = {**manifest.get("fingerprint", {}), **{k: manifest.get(k) for k in settings}}
    difference = first_difference(kept, {**fingerprint, **settings})
    if difference:
        raise CacheMismatchError(f"{out} holds another cache ({difference}); choose another --out or delete it")
    return manifest


def _shard_ok(folder: Path, shard: dict[str, Any]) -> bool:
    files = shard.get("files", {})
    return bool(files) and all((folder / name).is_file() and file_checksum(folder / name) == digest
                               for name, digest in files.items())


def _remove_leftovers(out: Path, done: dict[int, dict[str, Any]] | None) -> None:
    """Temp files of writes killed mid-way, and (resuming) the files of shards the manifest does not record."""
    for name in (MANIFEST_FILE, INDEX_FILE, STATS_FILE):
        remove_stale_temps(out / name)
    shard_root = out / SHARD_DIR
    if not shard_root.is_dir():
        return
    recorded = {shard_name(i) for i in (done or {})}
    for folder in shard_root.iterdir():
        if not folder.is_dir():
            continue
        for file in folder.iterdir():
            stale_temp = file.name.startswith(".") and file.name.endswith(".tmp")
            unrecorded = done is not None and folder.name not in recorded and file.suffix == ".npy"
            if stale_temp or unrecorded:
                file.unlink(missing_ok=True)


def _check_free_space(out: Path, needed: int) -> None:
    """Refuse before any teacher runs when the shards still to write cannot fit on the disk."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if needed > free:
        raise DiskFullError(f"not enough disk for the cache in {out}: its shards need {needed:,} bytes "
                            f"({human(needed)}), {free:,} free; free some space or choose another --out")


def _index(out: Path, manifest: dict[str, Any] | None, table: ViewTable, schedule: Sequence[tuple[int, int]],
           dataset: CropDataset) -> tuple[ViewTable, str]:
    """The index of the build and its sha256, written when missing, changed or from an older build.

    Resuming with an intact index (checksum as recorded) only reads it; otherwise the
    index is regenerated (it is a pure function of the seed, batch size, augmentation
    and image headers). A changed index is restored from the regenerated one, which
    must match the checksum recorded when the kept shards were made.
    """
    if manifest is not None and manifest.get("index_sha256") and (out / INDEX_FILE).is_file():
        try:
            kept, digest = read_index(out)
        except CacheError:
            digest = None
        if digest == manifest["index_sha256"]:
            return kept, digest
    fill_index(table, schedule, dataset)
    data = table.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if manifest is not None and manifest.get("shards"):
        recorded = manifest.get("index_sha256")
        if recorded is None:  # a format-1 build: its index must equal the regenerated one
            try:
                kept, _ = read_index(out)
            except CacheError:
                kept = None
            if kept != table:
                raise CacheError(f"{out / INDEX_FILE} does not match the views regenerated from the cache's seed; "
                                 "delete the cache and build it again")
        elif recorded != digest:
            raise CacheError(f"the views this zoo generates differ from those {out} was built with "
                             f"({INDEX_FILE} sha256); delete the cache and build it again")
        elif (out / INDEX_FILE).is_file():
            warnings.warn(f"{out / INDEX_FILE} had been changed since the build; restored it", CacheWarning,
                          stacklevel=3)
    atomic_write_bytes(out / INDEX_FILE, data)
    return table, digest


def _portable_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe with an absolute data path, so `zoo cache verify` finds the images from any folder."""
    data = recipe.to_dict()
    for section in ("data", "eval"):  # a brace pattern resolves too (only its folder part is looked up)
        if data[section].get("path"):
            data[section]["path"] = str(Path(data[section]["path"]).expanduser().resolve())
    return data


# --------------------------------------------------------------------------- teachers


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
                parts.setdefault((teacher.name, "summary"), []).append(encode(out.summary, dtype))
                parts.setdefault((teacher.name, "features"), []).append(encode(out.features, dtype))
        advance(len(crops))
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


# --------------------------------------------------------------------------- shard files


class _HashingWriter:
    """A write-only file object that hashes what passes through: ``np.save`` streams into it in chunks, so a
    shard is neither copied into a second in-memory buffer nor read back to checksum it."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)


def npy_bytes(array: np.ndarray) -> int:
    """The size of ``array`` as an ``.npy`` file."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return len(header.getvalue()) + array.nbytes


def save_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` to ``path`` atomically; its sha256. A full disk raises :class:`DiskFullError` (temp removed)."""
    digests: list[str] = []

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            writer = _HashingWriter(handle)
            np.save(writer, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        digests.append(writer.digest.hexdigest())

    write_via_temp(path, write, size_hint=npy_bytes(array))
    return digests[-1]


def _write_shard(folder: Path, names: Sequence[str], arrays: dict[tuple[str, str], np.ndarray],
                 later_bytes: int) -> dict[str, str]:
    """Every file of one shard (``{file: sha256}``); on a full disk none of them stays and the error says how much
    this shard and the shards after it need."""
    files: dict[str, str] = {}
    try:
        for file, teacher, part in shard_files(names):
            files[file] = save_npy(folder / file, arrays[(teacher, part)])
    except BaseException as err:
        _remove_shard_files(folder, names)
        if isinstance(err, DiskFullError) or (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)):
            shard_bytes = sum(npy_bytes(a) for a in arrays.values())
            free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
            raise DiskFullError(f"disk full while writing {folder / file} ({npy_bytes(arrays[(teacher, part)]):,} "
                                f"bytes needed for it, {shard_bytes + later_bytes:,} for the rest of the cache, "
                                f"{free:,} free)") from None
        raise
    return files


def _remove_shard_files(folder: Path, names: Sequence[str]) -> None:
    for file, _, _ in shard_files(names):
        (folder / file).unlink(missing_ok=True)
        remove_stale_temps(folder / file)


class _resume_hint:
    """Adds to a disk-full error how many shards are kept and that the same command resumes."""

    def __init__(self, done: dict[int, Any], total: int) -> None:
        self.done, self.total = done, total

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> bool:
        if isinstance(err, DiskFullError):
            message = str(err).split("; the previous version")[0].split("; Free some space")[0]
            raise DiskFullError(f"{message}; {len(self.done)} of {self.total} shard(s) are kept: free some space "
                                "and run the same command again to resume") from None
        return False
