"""Compact listings of a million images, listed once and cached.

A :class:`Catalog` holds the names of a source in one joined ``uint8`` buffer plus an ``int64`` offsets
array (about 30 bytes per image, versus ~500 for a ``Path`` object), so a loader worker holds no
per-image Python objects and a forked worker shares the pages instead of copying them (reference
counts never touch them). :class:`ImageList` is a sequence view of a catalog with some entries left out
(the held-out split, files found unreadable up front): ``list[i]`` is the i-th kept entry, a ``Path``
for folders and lists, a :class:`~zoo.data.shards.ShardSample` for WebDataset shards.

A folder's listing is written to the user cache (:func:`user_cache_dir`) as ``.npy`` files (memory
mapped when read back) and reused while every directory it walked still has the modification time it
had (one ``stat`` per directory, no ``stat`` per file); adding, removing or renaming a file changes its
directory's time, so the listing is redone.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
LISTING_CACHE_MIN = 20_000  # folders with fewer images are listed every time (well under a second)
LISTING_FORMAT = 1
_SEP = "\0"  # sorts before every printable character: sorting "a\0b" == comparing path parts


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def user_cache_dir() -> Path:
    """``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get("ZOO_CACHE_DIR"):
        return Path(os.environ["ZOO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zoo"


def join_names(names: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(buffer, offsets)``: UTF-8 names joined, ``offsets[i]:offsets[i+1]`` is name ``i``."""
    encoded = [n.encode("utf-8", "surrogateescape") for n in names]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def path_sort_key(name: str) -> str:
    """Sort key that orders relative POSIX names as ``Path`` objects order (part by part)."""
    return name.replace("/", _SEP)


class Catalog:
    """Every entry of a source by index: ``name(i)`` (relative to ``root``, or absolute) and ``item(i)``."""

    kind = "files"

    def __init__(self, root: str | os.PathLike | None, buffer: np.ndarray, offsets: np.ndarray,
                 sorted_names: bool = False) -> None:
        self.root = None if root is None else Path(root)
        self.buffer, self.offsets = buffer, offsets
        self.sorted_names = sorted_names  # names in path order (a walked folder): found by binary search

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def name(self, index: int) -> str:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.buffer[start:stop].tobytes().decode("utf-8", "surrogateescape")

    def item(self, index: int) -> Any:
        name = self.name(index)
        return Path(name) if self.root is None else self.root / name

    def relative_name(self, index: int) -> str:
        """The name the held-out hash and the record use (relative to the root)."""
        return self.name(index)

    def holdout_keys(self) -> Sequence[str] | np.ndarray:
        """A key per entry; the held-out split takes the entries with the smallest keys."""
        return [hashlib.sha1(self.relative_name(i).encode("utf-8", "surrogateescape")).hexdigest()
                for i in range(len(self))]

    def resolved(self, index: int) -> str:
        """The entry's resolved path (one ``realpath``)."""
        return os.path.realpath(self.item(index))

    def nbytes(self) -> int:
        return int(self.buffer.nbytes + self.offsets.nbytes)

    @classmethod
    def from_names(cls, root: str | os.PathLike | None, names: Sequence[str]) -> "Catalog":
        return cls(root, *join_names(names))


class ImageList(Sequence):
    """The entries of a :class:`Catalog` minus a sorted set of excluded indices (no copy of the catalog).

    ``ids(i)`` maps position ``i`` to the catalog index; ``bad_log`` (shared with loader workers)
    records entries found unreadable while training.
    """

    def __init__(self, catalog: Catalog, excluded: Iterable[int] = (), bad_log: Any = None,
                 shuffle_buffer: int | None = None) -> None:
        self.catalog = catalog
        self.excluded = np.unique(np.asarray(list(excluded) if not isinstance(excluded, np.ndarray) else excluded,
                                             dtype=np.int64))
        # position i -> catalog index: i + (number of excluded indices <= that index)
        self._shifted = self.excluded - np.arange(len(self.excluded), dtype=np.int64)
        self.bad_log = bad_log
        self.shuffle_buffer = shuffle_buffer

    @classmethod
    def only(cls, catalog: Catalog, kept: Iterable[int], bad_log: Any = None) -> "ImageList":
        """The listed catalog indices only, in the order given (a short list: the held-out images)."""
        return _Picked(catalog, np.asarray(list(kept), dtype=np.int64), bad_log)

    def __len__(self) -> int:
        return len(self.catalog) - len(self.excluded)

    def id(self, position: int) -> int:
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(position)
        return int(position + np.searchsorted(self._shifted, position, side="right"))

    def __getitem__(self, position):  # noqa: ANN001, ANN204 - Sequence protocol
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        return self.catalog.item(self.id(position))

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def __add__(self, other: Sequence) -> list:
        return list(self) + list(other)

    def __radd__(self, other: Sequence) -> list:
        return list(other) + list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, ImageList)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def names(self) -> list[str]:
        """Stable names (relative to the source root) of every entry, in order."""
        return [self.catalog.relative_name(self.id(i)) for i in range(len(self))]

    def name(self, position: int) -> str:
        return self.catalog.relative_name(self.id(position))

    def ids(self) -> np.ndarray:
        """Catalog index of every position."""
        keep = np.ones(len(self.catalog), dtype=bool)
        keep[self.excluded] = False
        return np.flatnonzero(keep)

    def nbytes(self) -> int:
        """Bytes this list holds (catalog arrays, exclusions): what each loader worker sees."""
        return self.catalog.nbytes() + int(self.excluded.nbytes + self._shifted.nbytes)

    def __repr__(self) -> str:
        return f"ImageList({len(self)} of {len(self.catalog)} {self.catalog.kind} entries)"


class _Picked(ImageList):
    """An :class:`ImageList` of a few listed catalog indices (held-out images)."""

    def __init__(self, catalog: Catalog, kept: np.ndarray, bad_log: Any = None) -> None:
        self.catalog, self.kept, self.bad_log, self.shuffle_buffer = catalog, kept, bad_log, None
        self.excluded = np.zeros(0, dtype=np.int64)
        self._shifted = self.excluded

    def __len__(self) -> int:
        return len(self.kept)

    def id(self, position: int) -> int:
        return int(self.kept[position])

    def ids(self) -> np.ndarray:
        return self.kept.copy()

    def nbytes(self) -> int:
        return self.catalog.nbytes() + int(self.kept.nbytes)


class BadLog:
    """Catalog entries found unreadable while training, shared with loader workers (fork or spawn).

    One bit per catalog entry in shared memory (an entry found bad twice counts once; 125 MB for a
    billion samples), set under a lock. Created before the workers start; read by the main process
    for the run record.
    """

    def __init__(self, size: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context()
        self.size = int(size)
        self._bits = context.RawArray("B", max(1, (self.size + 7) // 8))
        self._lock = context.Lock()

    def _array(self) -> np.ndarray:
        return np.frombuffer(self._bits, dtype=np.uint8)

    def add(self, index: int) -> None:
        with self._lock:
            self._array()[index >> 3] |= np.uint8(1 << (index & 7))

    def __contains__(self, index: int) -> bool:
        return bool(self._array()[index >> 3] & (1 << (index & 7)))

    def ids(self) -> np.ndarray:
        """Every entry recorded, in index order."""
        bits = np.unpackbits(self._array(), bitorder="little")[:self.size]
        return np.flatnonzero(bits)

    def __len__(self) -> int:
        return int(np.unpackbits(self._array()).sum())


# --------------------------------------------------------------------------- folder listing + its cache


def walk_folder(folder: Path) -> tuple[list[str], list[str], int, list[tuple[str, int]]]:
    """``(names, broken, duplicates, directories)``: each real directory walked once, names relative to ``folder``.

    Symlinks are followed, but a directory whose resolved path was already walked (a symlink loop, or
    a second link to one folder) is skipped, and a file whose resolved path was already listed counts
    as a duplicate. ``broken``: image names that are not files (e.g. dangling symlinks).
    ``directories``: ``(path, mtime_ns)`` of every directory walked (the listing cache's key).
    Names come back sorted as ``Path`` objects sort.
    """
    names: list[str] = []
    broken: list[str] = []
    duplicates = 0
    directories: list[tuple[str, int]] = []
    seen_dirs: set[str] = set()
    seen_links: set[str] = set()
    linked: list[tuple[int, str]] = []  # (position, resolved) of file symlinks, checked once the walk is done
    plain: set[str] = set()
    stack = [(str(folder), "")]
    while stack:
        directory, prefix = stack.pop()
        real = os.path.realpath(directory)
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        try:
            directories.append((directory, os.stat(directory).st_mtime_ns))
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:  # unreadable folder: nothing to list in it (os.walk's behaviour)
            continue
        subdirs = []
        for entry in entries:
            name = prefix + entry.name
            try:
                if entry.is_dir():
                    subdirs.append((entry.path, name + "/"))
                    continue
                if not is_image_name(entry.name):
                    continue
                if not entry.is_file():
                    broken.append(name)
                    continue
                # a plain entry's resolved path is its real folder + name: no syscall per file
                if entry.is_symlink():
                    linked.append((len(names), os.path.realpath(entry.path)))
                else:
                    resolved = os.path.join(real, entry.name)
                    if resolved in plain:
                        duplicates += 1
                        continue
                    plain.add(resolved)
            except OSError:
                broken.append(name)
                continue
            names.append(name)
        stack.extend(reversed(subdirs))
    # file symlinks: dropped when their target is listed under its own name (or by an earlier link)
    drop = set()
    for position, resolved in linked:
        if resolved in plain or resolved in seen_links:
            drop.add(position)
        seen_links.add(resolved)
    if drop:
        duplicates += len(drop)
        names = [n for i, n in enumerate(names) if i not in drop]
    names.sort(key=path_sort_key)
    broken.sort(key=path_sort_key)
    return names, broken, duplicates, directories


class FolderListing:
    """A folder's image names (a :class:`Catalog`), the broken entries and duplicates, and how long listing took."""

    def __init__(self, catalog: Catalog, broken: list[str], duplicates: int, seconds: float, cached: bool) -> None:
        self.catalog, self.broken, self.duplicates = catalog, broken, duplicates
        self.seconds, self.cached = seconds, cached


def _listing_dir(folder: Path) -> Path:
    key = hashlib.sha1(os.path.realpath(folder).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return user_cache_dir() / "listings" / key


def list_folder(folder: Path, use_cache: bool = True) -> FolderListing:
    """The images under ``folder``: from the listing cache when every walked directory is unchanged."""
    started = time.perf_counter()
    if use_cache:
        cached = _read_listing(folder)
        if cached is not None:
            catalog, broken, duplicates = cached
            return FolderListing(catalog, broken, duplicates, time.perf_counter() - started, True)
    names, broken, duplicates, directories = walk_folder(folder)
    catalog = Catalog(folder, *join_names(names), sorted_names=True)
    if use_cache and len(names) >= LISTING_CACHE_MIN:
        _write_listing(folder, catalog, broken, duplicates, directories)
    return FolderListing(catalog, broken, duplicates, time.perf_counter() - started, False)


def _read_listing(folder: Path) -> tuple[Catalog, list[str], int] | None:
    where = _listing_dir(folder)
    try:
        meta = json.loads((where / "listing.json").read_text(encoding="utf-8"))
        if meta.get("format") != LISTING_FORMAT or meta.get("folder") != os.path.realpath(folder):
            return None
        for directory, mtime in meta["directories"]:
            if os.stat(directory).st_mtime_ns != mtime:
                return None
        buffer = np.load(where / "names.npy", mmap_mode="r")
        offsets = np.load(where / "offsets.npy", mmap_mode="r")
        if len(offsets) != meta["count"] + 1 or (len(offsets) and int(offsets[-1]) != len(buffer)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Catalog(folder, buffer, offsets, sorted_names=True), list(meta.get("broken", [])), int(meta.get("duplicates", 0))


def _write_listing(folder: Path, catalog: Catalog, broken: list[str], duplicates: int,
                   directories: list[tuple[str, int]]) -> None:
    """Best effort: a listing that cannot be written (read-only home, full disk) is simply redone next time."""
    from zoo.atomic import atomic_write_json, write_via_temp

    where = _listing_dir(folder)
    try:
        where.mkdir(parents=True, exist_ok=True)
        (where / "listing.json").unlink(missing_ok=True)  # the marker goes last: never new arrays + old marker
        for name, array in (("names.npy", catalog.buffer), ("offsets.npy", catalog.offsets)):
            write_via_temp(where / name, lambda tmp, a=array: _save_npy(tmp, a), size_hint=int(array.nbytes))
        atomic_write_json(where / "listing.json", {
            "format": LISTING_FORMAT, "folder": os.path.realpath(folder), "count": len(catalog),
            "broken": broken, "duplicates": duplicates, "directories": directories})
    except Exception:  # noqa: BLE001 - the cache is an optimisation only
        return


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would add ".npy" to a temp file's name
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def find_name(catalog: Catalog, name: str) -> int | None:
    """Index of ``name`` in a path-sorted catalog (binary search), or None."""
    key = path_sort_key(name)

    class _Keys(Sequence):
        def __len__(self) -> int:
            return len(catalog)

        def __getitem__(self, i):  # noqa: ANN001, ANN204
            return path_sort_key(catalog.name(i))

    i = bisect.bisect_left(_Keys(), key)
    return i if i < len(catalog) and catalog.name(i) == name else None
