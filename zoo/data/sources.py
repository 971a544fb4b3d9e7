"""Sources of training images and the held-out split: folders, file lists, bundled images, WebDataset shards.

A folder is walked once per real directory (a directory symlink loop, or two links to one folder, is
listed once) and every source is de-duplicated by resolved file path, so a file reached twice trains
once and can never be both held out and trained on. ``data.path`` with ``data.source: bundled`` is a
:class:`~zoo.errors.ConfigError` (the path would be ignored).

Nothing is opened or decoded per image before the first step of a large source: listing reads
directory entries only (and is cached, :mod:`zoo.data.listing`), shards are indexed from their tar
headers (:mod:`zoo.data.shards`). Up to ``data.verify_limit`` images every one is decoded up front;
above it only the held-out images are, and the rest are checked while training (a bad one is skipped,
a readable neighbour shown instead, and it is counted in :attr:`ImageSet.skipped`).

Held-out images (the FD loss) come from the deterministic split of the training source (the images
with the smallest hash of their name) or, with ``eval.path``, from a named source (a validation folder,
list or shard set); training then leaves out any of its images that are those files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.data.crops import describe_item, readable
from zoo.data.listing import (IMAGE_EXTENSIONS, BadLog, Catalog, ImageList, find_name, is_image_name, list_folder,
                              walk_folder)
from zoo.errors import ConfigError, ZooError

DATA_SOURCES = ("auto", "bundled", "folder", "list", "webdataset")
EVAL_SOURCES = ("auto", "split", "bundled", "folder", "list", "webdataset")
DEFAULT_SHUFFLE_BUFFER = 10_000
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


def _is_image(path: Path) -> bool:
    return is_image_name(path.name)


_readable = readable  # module-level so tests can count the decodes


# --------------------------------------------------------------------------- listing sources


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
    """``(images, broken, duplicates)`` under ``folder`` as paths (see :func:`zoo.data.listing.walk_folder`)."""
    names, broken, duplicates, _ = walk_folder(Path(folder))
    return [Path(folder) / n for n in names], [Path(folder) / n for n in broken], duplicates


def folder_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursive, symlinks followed, each file once), sorted."""
    return walk_images(folder)[0]


def unique_by_resolved_path(paths: Sequence[Path]) -> tuple[list[Path], list[Path], int]:
    """``(files, not_files, dropped)``: the first of the paths that resolve to one file is kept, in order.

    One ``lstat`` per path and one ``realpath`` per distinct folder (not per file).
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


def check_source(source: str, path: str | None, key: str = "data") -> None:
    """Refuse a ``<key>.path`` that ``<key>.source`` would ignore (one-line :class:`ConfigError`)."""
    if source in ("bundled", "split") and path:
        fix = "auto (or folder/list/webdataset)"
        raise ConfigError(f"recipe key '{key}.path' ({path}) is ignored by {key}.source '{source}'; "
                          f"set {key}.source={fix} to read it, or drop {key}.path")


def detect_source(path: str) -> str:
    """``auto``: webdataset for ``.tar`` patterns/shard lists/folders of shards, folder for a folder, else list."""
    from zoo.data.shards import looks_like_shards

    if looks_like_shards(path):
        return "webdataset"
    return "folder" if Path(path).expanduser().is_dir() else "list"


class _Listed:
    """What listing a source found: its catalog, entries that are not images, duplicates and the cost."""

    def __init__(self, kind: str, catalog: Catalog, root: Path | None, bad: list[Any], duplicates: int,
                 seconds: float, cached: bool) -> None:
        self.kind, self.catalog, self.root, self.bad = kind, catalog, root, bad
        self.duplicates, self.seconds, self.cached = duplicates, seconds, cached


def _relative_or_absolute(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def list_source(source: str, path: str | None, key: str = "data") -> _Listed:
    """List a source without opening any image (one-line errors for a missing or unknown source)."""
    check_source(source, path, key)
    if source == "auto":
        source = "bundled" if not path else detect_source(path)
    started = time.perf_counter()
    if source == "bundled":
        images = bundled_images()
        if not images:
            raise ZooError("no bundled sample images found (scikit-learn, matplotlib or ultralytics provide them); "
                           "give a folder with --set data.path=/path/to/images")
        images, missing, duplicates = unique_by_resolved_path(images)
        catalog = Catalog.from_names(None, [str(p) for p in images])
        return _Listed(source, catalog, None, missing, duplicates, time.perf_counter() - started, False)
    if not path:
        raise ConfigError(f"recipe key '{key}.path' is required for {key}.source '{source}' "
                          f"(e.g. --set {key}.path=/path/to/images)")
    where = Path(path).expanduser()
    if source == "folder":
        if not where.is_dir():
            raise ZooError(f"image folder not found: {where}")
        listing = list_folder(where)
        bad = [where / n for n in listing.broken]
        return _Listed(source, listing.catalog, where, bad, listing.duplicates, listing.seconds, listing.cached)
    if source == "list":
        if not where.is_file():
            raise ZooError(f"image list file not found: {where}")
        images, missing, duplicates = unique_by_resolved_path(list_file_images(where))
        catalog = Catalog.from_names(where.parent, [_relative_or_absolute(p, where.parent) for p in images])
        return _Listed(source, catalog, where.parent, missing, duplicates, time.perf_counter() - started, False)
    if source == "webdataset":
        from zoo.data.shards import load_shards

        catalog = load_shards(path)
        return _Listed(source, catalog, catalog.root, list(catalog.skipped), 0, catalog.seconds, catalog.cached)
    raise ConfigError(f"recipe key '{key}.source' must be one of {', '.join(DATA_SOURCES)}, got '{source}'")


def resolve_source(source: str, path: str | None) -> tuple[str, list[Path], Path | None]:
    """``(source kind, image paths, root for relative names)`` of a recipe's ``data`` section (small sources)."""
    listed = list_source(source, path)
    return listed.kind, [listed.catalog.item(i) for i in range(len(listed.catalog))], listed.root


# --------------------------------------------------------------------------- the image set


class ImageSet:
    """The usable images of a source split into ``train`` and ``holdout`` (:class:`ImageList` each).

    ``skipped``: entries not used, found while listing or verifying (paths, or ``shard:key (reason)``
    texts) followed by those found unreadable while training (:attr:`bad_log`, shared with the
    loader's workers, read when the record is written). ``describe()`` gives the counts, the first
    names, duplicates, the verify pass and its cost, and how long listing took (and whether it came
    from the listing cache) as plain JSON values.
    """

    def __init__(self, source: str, train: Sequence[Any], holdout: Sequence[Any], skipped: list[Any],
                 root: Path | None, duplicates: int = 0, verified: int = 0, verify_seconds: float = 0.0,
                 listing_seconds: float = 0.0, listing_cached: bool = False, bad_log: BadLog | None = None,
                 holdout_source: str | None = None) -> None:
        self.source, self.train, self.holdout, self.root = source, train, holdout, root
        self.skipped_up_front = list(skipped)
        self.duplicates, self.verified, self.verify_seconds = duplicates, verified, verify_seconds
        self.listing_seconds, self.listing_cached, self.bad_log = listing_seconds, listing_cached, bad_log
        self.holdout_source = holdout_source

    @property
    def skipped_while_training(self) -> list[Any]:
        if self.bad_log is None or not isinstance(self.train, ImageList):
            return []
        return [self.train.catalog.item(int(i)) for i in self.bad_log.ids()]

    @property
    def skipped(self) -> list[Any]:
        return self.skipped_up_front + self.skipped_while_training

    @property
    def skipped_count(self) -> int:
        return len(self.skipped_up_front) + (len(self.bad_log) if self.bad_log is not None else 0)

    @property
    def skipped_names(self) -> list[str]:
        """The first :data:`RECORD_FIRST` skipped entries, relative to the source root."""
        return [_relative(p, self.root) for p in self.skipped[:RECORD_FIRST]]

    def train_names(self) -> list[str]:
        """Stable names of the training images (relative to the source root; ``shard:key`` for shards)."""
        if isinstance(self.train, ImageList):
            return self.train.names()
        return [_relative(p, self.root) for p in self.train]

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "root": str(self.root) if self.root else None, "train_images": len(self.train),
                "holdout_images": len(self.holdout), "holdout_source": self.holdout_source or "split",
                "skipped_images": self.skipped_count, "skipped_names": self.skipped_names,
                "skipped_while_training": len(self.bad_log) if self.bad_log is not None else 0,
                "duplicates": self.duplicates, "verified_images": self.verified,
                "verify_seconds": round(self.verify_seconds, 3), "listing_seconds": round(self.listing_seconds, 3),
                "listing_cached": self.listing_cached}


def _relative(path: Any, root: Path | None) -> str:
    if not isinstance(path, Path):
        return describe_item(path)
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name if root is None else path.as_posix()


def holdout_split(paths: Sequence[Path], count: int, root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """``(train, holdout)`` of a list of paths: the ``count`` images with the smallest SHA-1 of their relative path.

    Deterministic, independent of listing order, and stable when images are added elsewhere. At least
    one image is kept for training. Disjoint by resolved path: an entry that is the same file as a
    held-out one (a second link to it) is not trained on either.
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


def _holdout_keys(catalog: Catalog) -> np.ndarray:
    """A ``uint64`` per entry ordering as the SHA-1 of its name does (first 8 bytes, big-endian)."""
    keys = catalog.holdout_keys()
    if isinstance(keys, np.ndarray):
        return keys
    return np.array([int(k[:16], 16) for k in keys], dtype=np.uint64)


def _pick(catalog: Catalog, count: int, excluded: set[int], limit: int,
          decoded: list[int]) -> tuple[list[int], list[int]]:
    """The ``count`` readable entries with the smallest keys (decoded, at most ``limit`` decodes); ``(picked, bad)``."""
    keys = _holdout_keys(catalog)
    picked: list[int] = []
    bad: list[int] = []
    want = min(len(keys), count + len(excluded) + 16)
    while len(picked) < count:
        candidates = np.argpartition(keys, want - 1)[:want] if want < len(keys) else np.arange(len(keys))
        candidates = candidates[np.lexsort((candidates, keys[candidates]))]
        for index in candidates.tolist():
            if len(picked) == count:
                break
            if index in excluded or index in picked or index in bad:
                continue
            if decoded[0] < limit:
                decoded[0] += 1
                if not _readable(catalog.item(index)):
                    bad.append(index)
                    continue
            picked.append(index)
        if want >= len(keys):
            break
        want = min(len(keys), want * 2)
    return picked, bad


def load_images(source: str = "auto", path: str | None = None, holdout: int = 2, verify_limit: int = 20000,
                warn: bool = True, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, eval_source: str = "split",
                eval_path: str | None = None) -> ImageSet:
    """Find, check and split the images of a recipe's ``data`` (and ``eval``) section.

    At most ``verify_limit`` images are decoded up front: all of them when the source has no more than
    that, else only the held-out candidates (a bad one is replaced by the next in hash order); the rest
    are checked lazily (:class:`~zoo.data.loader.CropDataset` shows a readable neighbour for a bad file and
    counts it). Unreadable images are skipped and reported in one warning line; the count, the first
    names and the verify cost are on the returned :class:`ImageSet`. With ``eval_path`` (``eval_source``
    not ``split``) the ``holdout`` images come from that source instead of the training one.
    """
    listed = list_source(source, path)
    catalog = listed.catalog
    started = time.perf_counter()
    bad: list[Any] = list(listed.bad)
    excluded: set[int] = set()
    decoded = [0]
    n = len(catalog)
    if n <= verify_limit:
        for index in range(n):
            if not _readable(catalog.item(index)):
                excluded.add(index)
                bad.append(catalog.item(index))
        decoded[0] = n
    named = eval_source not in ("split",) and (eval_path or eval_source == "bundled")
    if named:
        held, held_catalog, overlap, held_bad = _named_holdout(eval_source, eval_path, holdout, verify_limit, catalog)
        excluded |= overlap
        holdout_list: Sequence[Any] = ImageList.only(held_catalog, held)
        bad += held_bad
    else:
        usable = n - len(excluded)
        count = max(0, min(holdout, usable - 1))
        limit = verify_limit if n > verify_limit else 0  # small sources were all decoded above
        held, held_bad_ids = _pick(catalog, count, excluded, limit, decoded)
        for index in held_bad_ids:
            excluded.add(index)
            bad.append(catalog.item(index))
        excluded |= set(held)
        holdout_list = ImageList.only(catalog, held)
    seconds = time.perf_counter() - started
    if bad and warn:
        first = ", ".join(describe_item(p) for p in bad[:REPORT_FIRST]) + (", ..." if len(bad) > REPORT_FIRST else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {first}", DataWarning, stacklevel=2)
    log = BadLog(n)
    train = ImageList(catalog, np.fromiter(sorted(excluded), dtype=np.int64, count=len(excluded)), log,
                      shuffle_buffer if listed.kind == "webdataset" else None)
    if len(train) == 0:
        where = listed.root or "the bundled sample images"
        raise ZooError(f"no usable images in {where} ({len(bad)} unreadable; extensions: {' '.join(IMAGE_EXTENSIONS)})")
    return ImageSet(listed.kind, train, holdout_list, bad, listed.root, listed.duplicates, decoded[0], seconds,
                    listed.seconds, listed.cached, log, eval_path if named else None)


def _named_holdout(source: str, path: str | None, count: int, verify_limit: int,
                   training: Catalog) -> tuple[list[int], Catalog, set[int], list[Any]]:
    """Held-out images from their own source: ``(picked, its catalog, training entries that are those files, bad)``."""
    listed = list_source(source, path, key="eval")
    catalog = listed.catalog
    picked, bad_ids = _pick(catalog, min(count, len(catalog)), set(), max(verify_limit, count * 4), [0])
    if not picked:
        raise ZooError(f"no usable held-out images in {listed.root or 'the bundled sample images'} "
                       f"(eval.path; {len(bad_ids)} unreadable)")
    overlap = _same_files(training, [catalog.item(i) for i in picked])
    return picked, catalog, overlap, [catalog.item(i) for i in bad_ids]


def _same_files(training: Catalog, items: Sequence[Any]) -> set[int]:
    """Training entries that are the held-out files (resolved paths; shard members by shard file and offset)."""
    from zoo.data.shards import ShardCatalog, ShardSample

    found: set[int] = set()
    if isinstance(training, ShardCatalog):
        shards = {os.path.realpath(s): i for i, s in enumerate(training.shards)}
        for item in items:
            if isinstance(item, ShardSample) and os.path.realpath(item.shard) in shards:
                shard = shards[os.path.realpath(item.shard)]
                lo, hi = int(training.starts[shard]), int(training.starts[shard + 1])
                at = lo + int(np.searchsorted(training.offset[lo:hi], item.offset))
                if at < hi and int(training.offset[at]) == item.offset:
                    found.add(at)
        return found
    targets = {os.path.realpath(item) for item in items if isinstance(item, Path)}
    if not targets:
        return found
    if training.root is not None and getattr(training, "kind", "") == "files" and _is_sorted_folder(training):
        roots = {str(training.root), os.path.realpath(training.root)}
        for target in targets:
            for root in roots:
                if target.startswith(root.rstrip("/") + "/"):
                    index = find_name(training, os.path.relpath(target, root))
                    if index is not None:
                        found.add(index)
        return found
    for index in range(len(training)):  # a file list: one realpath per entry (only with a named held-out source)
        if training.resolved(index) in targets:
            found.add(index)
    return found


def _is_sorted_folder(catalog: Catalog) -> bool:
    return bool(getattr(catalog, "sorted_names", False))
