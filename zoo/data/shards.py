"""WebDataset shards: ``.tar`` files whose consecutive members ``<key>.<ext>`` form one sample.

``data.path`` names the shards as a brace pattern (``/data/shards/{00000..01023}.tar``, also
``{a,b}`` lists), a folder of ``.tar`` files, or a text file listing shards (patterns allowed), one a
line, relative to the file's folder. Shards are local (or mounted) files: a URL is refused.

The shards are indexed once (tar headers only: no member is read or decoded) into per-sample arrays:
the byte offset and size of the sample's image member, of its ``cls`` member when there is one, its key,
and a 64-bit hash of ``<shard name>/<key>`` (the held-out split). The index is cached in the user cache
(:func:`zoo.data.listing.user_cache_dir`) under a key made of every shard's resolved path, size and
modification time, and memory-mapped when read back, so loader workers share its pages.

With the index, any sample is one ``pread`` of its bytes: the loader addresses samples by
``(step, slot)`` exactly as for folders, and the order (:class:`ShardStreamOrder`) is a seeded shard
order followed by a seeded shuffle with a bounded window, so a resumed run reads the batches an
uninterrupted one would without reading anything before its step.

Members that cannot be used are skipped and counted: a member cut off by a truncated shard, a sample
without an image member, and (found by the verify pass or while training) an image that does not decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.data.listing import Catalog, is_image_name, join_names, user_cache_dir
from zoo.errors import ConfigError, ZooError

INDEX_FORMAT = 1
SHARD_SUFFIXES = (".tar",)
# member extensions that hold the image, in order of preference (WebDataset's usual names)
IMAGE_MEMBER_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif", "img")
LABEL_MEMBER_EXTENSIONS = ("cls", "cls.txt", "label")
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's rule: key = name up to the first dot of the basename
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


# --------------------------------------------------------------------------- naming the shards


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b{x,y}`` -> ``a00bx a00by a01bx ...`` (numeric ranges keep the zero padding of their first end)."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for stop in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[stop], 0)
        if depth == 0:
            break
    else:
        raise ConfigError(f"unbalanced '{{' in shard pattern {pattern}")
    body, head, tail = pattern[start + 1:stop], pattern[:start], pattern[stop + 1:]
    match = _RANGE.match(body)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.lstrip("-").startswith("0") and len(first) > 1 else 0
        a, b = int(first), int(last)
        step = 1 if b >= a else -1
        choices = [f"{v:0{width}d}" for v in range(a, b + step, step)]
    else:
        choices, depth, part = [], 0, ""
        for char in body:  # split on top-level commas only
            if char == "," and depth == 0:
                choices.append(part)
                part = ""
                continue
            depth += {"{": 1, "}": -1}.get(char, 0)
            part += char
        choices.append(part)
        choices = [c for choice in choices for c in expand_braces(choice)]
    return [head + c + rest for c in choices for rest in expand_braces(tail)]


def looks_like_shards(path: str) -> bool:
    """A pattern or file ending in ``.tar`` (after brace expansion), or a shard-list file whose first entry is one."""
    if "://" in path or path.startswith("pipe:"):
        return True
    if path.rstrip("}").endswith(SHARD_SUFFIXES) or any(p.endswith(SHARD_SUFFIXES) for p in expand_braces(path)[:1]):
        return True
    where = Path(path).expanduser()
    if where.is_dir():
        return not _has_images(where) and any(p.suffix in SHARD_SUFFIXES for p in where.iterdir())
    if where.is_file():
        return any(line.endswith(SHARD_SUFFIXES) for line in _list_lines(where)[:1])
    return False


def _has_images(folder: Path) -> bool:
    return any(is_image_name(p.name) for p in folder.iterdir())


def _list_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def shard_paths(path: str) -> tuple[list[Path], Path]:
    """The shard files of ``data.path`` and the folder their names are relative to (one-line errors)."""
    if "://" in path or path.startswith("pipe:"):
        raise ConfigError(f"data.path {path}: webdataset shards must be local or mounted files (an index of their "
                          "members is built once); copy or mount them, e.g. with s3fs or rclone mount")
    where = Path(path).expanduser()
    if where.is_dir():
        shards = sorted(p for p in where.iterdir() if p.suffix in SHARD_SUFFIXES)
        base = where
    elif where.is_file() and where.suffix not in SHARD_SUFFIXES:
        base = where.parent
        shards = [Path(p) if Path(p).is_absolute() else base / p
                  for line in _list_lines(where) for p in expand_braces(os.path.expanduser(line))]
    else:
        shards = [Path(p) for p in expand_braces(os.path.expanduser(path))]
        base = Path(os.path.commonpath([str(p.parent) for p in shards])) if shards else where.parent
    if not shards:
        raise ZooError(f"no .tar shards in {where}")
    missing = [p for p in shards if not p.is_file()]
    if missing:
        raise ZooError(f"{len(missing)} of {len(shards)} shard(s) not found, first: {missing[0]}")
    seen: set[str] = set()
    unique = []
    for shard in shards:  # one file listed twice (a repeated line, overlapping patterns) is read once
        real = os.path.realpath(shard)
        if real not in seen:
            seen.add(real)
            unique.append(shard)
    return unique, base


# --------------------------------------------------------------------------- reading members


_handles: dict[str, int] = {}
_handles_pid = os.getpid()
MAX_OPEN_SHARDS = 32


def _fd(path: str) -> int:
    """An open descriptor per shard and process (``pread`` needs no shared file position)."""
    global _handles_pid
    if _handles_pid != os.getpid():  # a forked worker: its own descriptors (the parent's may be closed under it)
        _handles.clear()
        _handles_pid = os.getpid()
    fd = _handles.get(path)
    if fd is None:
        if len(_handles) >= MAX_OPEN_SHARDS:
            os.close(_handles.pop(next(iter(_handles))))
        fd = _handles[path] = os.open(path, os.O_RDONLY)
    return fd


def read_member(path: str, offset: int, size: int) -> bytes:
    data = os.pread(_fd(path), size, offset)
    if len(data) != size:
        raise OSError(f"{path}: member at byte {offset} is cut off ({len(data)} of {size} bytes)")
    return data


@dataclass(frozen=True)
class ShardSample:
    """One sample of a shard: where its image member's bytes are (and its ``cls`` member's, if any)."""

    shard: str
    offset: int
    size: int
    label: str  # "<shard name>:<key>" for messages and the record
    cls_offset: int = -1
    cls_size: int = 0

    def read_bytes(self) -> bytes:
        return read_member(self.shard, self.offset, self.size)

    def cls(self) -> int | None:
        """The integer of the sample's ``cls`` member (None without one)."""
        if self.cls_offset < 0:
            return None
        text = read_member(self.shard, self.cls_offset, self.cls_size).decode("utf-8", "replace").strip()
        try:
            return int(text.split()[0])
        except (ValueError, IndexError):
            raise ZooError(f"{self.label}: cls member is not an integer ({text[:20]!r})") from None

    def __str__(self) -> str:
        return self.label


# --------------------------------------------------------------------------- the index


@dataclass
class _ShardIndex:
    keys: list[str]
    offset: list[int]
    size: list[int]
    cls_offset: list[int]
    cls_size: list[int]
    skipped: list[str]  # "key (reason)"


def index_shard(path: Path) -> _ShardIndex:
    """Group a shard's members into samples from the tar headers alone (no member is read)."""
    out = _ShardIndex([], [], [], [], [], [])
    file_size = os.path.getsize(path)
    current: str | None = None
    members: dict[str, tuple[int, int]] = {}
    cut_off = False  # the current sample lost a member to truncation (reported once, as that member)

    def close_sample() -> None:
        if current is None or cut_off:
            return
        image = next((members[e] for e in IMAGE_MEMBER_EXTENSIONS if e in members), None)
        if image is None:
            image = next((v for e, v in members.items() if e.rsplit(".", 1)[-1] in IMAGE_MEMBER_EXTENSIONS), None)
        if image is None:
            out.skipped.append(f"{current} (no image member)")
            return
        label = next((members[e] for e in LABEL_MEMBER_EXTENSIONS if e in members), (-1, 0))
        out.keys.append(current)
        out.offset.append(image[0])
        out.size.append(image[1])
        out.cls_offset.append(label[0])
        out.cls_size.append(label[1])

    try:
        with tarfile.open(path, mode="r:") as archive:
            while True:
                try:
                    info = archive.next()
                except tarfile.ReadError:  # a damaged header mid-shard: the members before it stay
                    if not cut_off:  # (after a cut-off member this is the same truncation)
                        out.skipped.append(f"(damaged tar header at byte {archive.offset}: the rest is unread)")
                    break
                if info is None:
                    break
                if not info.isfile():
                    continue
                match = _KEY.match(info.name)
                if match is None:
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if key != current:
                    close_sample()
                    current, members, cut_off = key, {}, False
                if info.offset_data + info.size > file_size:
                    out.skipped.append(f"{key}.{ext} (cut off: the shard is truncated)")
                    cut_off = True
                    continue
                members.setdefault(ext, (info.offset_data, info.size))
    except (tarfile.TarError, OSError) as err:
        if not out.keys and not out.skipped:
            out.skipped.append(f"(not a tar file: {err.__class__.__name__})")
    close_sample()
    return out


def _shard_stamp(shards: Sequence[Path]) -> list[list[Any]]:
    stamps = []
    for shard in shards:
        st = os.stat(shard)
        stamps.append([os.path.realpath(shard), st.st_size, st.st_mtime_ns])
    return stamps


def _sample_hashes(shard_name: str, keys: Sequence[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.sha1(f"{shard_name}/{k}".encode()).digest()[:8], "big") for k in keys],
                    dtype=np.uint64)


class ShardCatalog(Catalog):
    """Every sample of a shard set (see the module docstring); ``name(i)`` is ``<shard>:<key>``."""

    kind = "shard samples"

    def __init__(self, shards: Sequence[Path], base: Path, arrays: dict[str, np.ndarray], skipped: list[str],
                 seconds: float = 0.0, cached: bool = False) -> None:
        super().__init__(None, arrays["keys"], arrays["key_offsets"])
        self.root = base
        self.shards = [str(s) for s in shards]
        self.shard_names = [_relative_name(s, base) for s in shards]
        self.counts = np.asarray(arrays["counts"], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.offset, self.size = arrays["offset"], arrays["size"]
        self.cls_offset, self.cls_size = arrays["cls_offset"], arrays["cls_size"]
        self.hashes = arrays["hash"]
        self.skipped = skipped
        self.seconds, self.cached = seconds, cached

    def shard_of(self, index: int | np.ndarray) -> Any:
        return np.searchsorted(self.starts, index, side="right") - 1

    def name(self, index: int) -> str:
        return f"{self.shard_names[int(self.shard_of(index))]}:{super().name(index)}"

    def item(self, index: int) -> ShardSample:
        shard = int(self.shard_of(index))
        return ShardSample(self.shards[shard], int(self.offset[index]), int(self.size[index]),
                           f"{self.shard_names[shard]}:{super().name(index)}", int(self.cls_offset[index]),
                           int(self.cls_size[index]))

    def holdout_keys(self) -> np.ndarray:
        return self.hashes

    def resolved(self, index: int) -> str:
        return self.name(index)

    def nbytes(self) -> int:
        arrays = (self.buffer, self.offsets, self.offset, self.size, self.cls_offset, self.cls_size, self.hashes)
        return int(sum(a.nbytes for a in arrays))


def _relative_name(path: Path, base: Path) -> str:
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return str(path)


def load_shards(path: str, use_cache: bool = True) -> ShardCatalog:
    """The index of the shards ``path`` names: from the user cache when no shard changed, else built and cached."""
    shards, base = shard_paths(path)
    started = time.perf_counter()
    stamps = _shard_stamp(shards)
    key = hashlib.sha1(json.dumps(stamps).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    where = user_cache_dir() / "shard-index" / key
    if use_cache:
        cached = _read_index(where, stamps)
        if cached is not None:
            arrays, skipped = cached
            return ShardCatalog(shards, base, arrays, skipped, time.perf_counter() - started, True)
    arrays, skipped = _build_index(shards, base)
    if use_cache:
        _write_index(where, stamps, arrays, skipped)
    return ShardCatalog(shards, base, arrays, skipped, time.perf_counter() - started, False)


_ARRAYS = ("keys", "key_offsets", "counts", "offset", "size", "cls_offset", "cls_size", "hash")


def _build_index(shards: Sequence[Path], base: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    keys: list[str] = []
    offset: list[int] = []
    size: list[int] = []
    cls_offset: list[int] = []
    cls_size: list[int] = []
    counts: list[int] = []
    hashes: list[np.ndarray] = []
    skipped: list[str] = []
    for shard in shards:
        found = index_shard(shard)
        name = _relative_name(shard, base)
        keys += found.keys
        offset += found.offset
        size += found.size
        cls_offset += found.cls_offset
        cls_size += found.cls_size
        counts.append(len(found.keys))
        hashes.append(_sample_hashes(name, found.keys))
        skipped += [f"{name}:{s}" for s in found.skipped]
    buffer, key_offsets = join_names(keys)
    arrays = {"keys": buffer, "key_offsets": key_offsets, "counts": np.array(counts, dtype=np.int64),
              "offset": np.array(offset, dtype=np.int64), "size": np.array(size, dtype=np.int64),
              "cls_offset": np.array(cls_offset, dtype=np.int64), "cls_size": np.array(cls_size, dtype=np.int64),
              "hash": np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)}
    return arrays, skipped


def _read_index(where: Path, stamps: list[list[Any]]) -> tuple[dict[str, np.ndarray], list[str]] | None:
    try:
        meta = json.loads((where / "index.json").read_text(encoding="utf-8"))
        if meta.get("format") != INDEX_FORMAT or meta.get("shards") != stamps:
            return None
        arrays = {name: np.load(where / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(arrays["counts"]) != len(stamps) or int(np.sum(arrays["counts"])) != len(arrays["offset"]):
        return None
    return arrays, list(meta.get("skipped", []))


def _write_index(where: Path, stamps: list[list[Any]], arrays: dict[str, np.ndarray], skipped: list[str]) -> None:
    """Best effort (a read-only or full cache folder only costs the next run another indexing pass)."""
    from zoo.atomic import atomic_write_json, write_via_temp
    from zoo.data.listing import _save_npy

    try:
        where.mkdir(parents=True, exist_ok=True)
        (where / "index.json").unlink(missing_ok=True)
        for name in _ARRAYS:
            write_via_temp(where / f"{name}.npy", lambda tmp, a=arrays[name]: _save_npy(tmp, a),
                           size_hint=int(arrays[name].nbytes))
        atomic_write_json(where / "index.json", {"format": INDEX_FORMAT, "shards": stamps, "skipped": skipped,
                                                 "samples": int(len(arrays["offset"]))})
    except Exception:  # noqa: BLE001 - an optimisation only
        return


# --------------------------------------------------------------------------- the order


class ShardStreamOrder:
    """The order of an epoch over shard samples: shards in a seeded order, then a seeded bounded shuffle.

    Stream position ``p`` (samples of the shards in the epoch's shard order, each shard's in tar
    order) gets the key ``p + u_p * buffer`` with ``u_p`` uniform in [0, 1) from a generator keyed on
    ``(seed, epoch, p // BLOCK)``; the epoch shows samples by increasing key (ties by position). A
    sample moves at most ``buffer`` places from its stream position, as with a shuffle buffer of that
    size, and position ``g`` of the epoch is found from the keys of stream positions within
    ``2 * buffer`` of it: no pass over the epoch, so any step is as cheap to reach as the next.
    """

    BLOCK = 8192
    CHUNK = 4096

    def __init__(self, counts: Sequence[int], seed: int, buffer: int) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.n = int(self.counts.sum())
        self.seed, self.buffer = int(seed), max(0, int(buffer))
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None
        self._chunks: dict[tuple[int, int], np.ndarray] = {}

    def _shards(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2_000_003, int(epoch)]))
            perm = rng.permutation(len(self.counts))
            bounds = np.concatenate([[0], np.cumsum(self.counts[perm])]).astype(np.int64)
            self._epoch = (int(epoch), perm, bounds)
        return self._epoch[1], self._epoch[2]

    def stream_to_sample(self, epoch: int, stream: np.ndarray) -> np.ndarray:
        """Sample index (in listing order) at each stream position of ``epoch``."""
        perm, bounds = self._shards(epoch)
        k = np.searchsorted(bounds, stream, side="right") - 1
        return self.starts[perm[k]] + (stream - bounds[k])

    def _keys(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        positions = np.arange(lo, hi, dtype=np.int64)
        if not self.buffer:
            return positions.astype(np.float64)
        first, last = lo // self.BLOCK, (hi - 1) // self.BLOCK
        noise = np.concatenate([
            np.random.default_rng(np.random.SeedSequence([self.seed, 3_000_017, int(epoch), b])).random(self.BLOCK)
            for b in range(first, last + 1)])
        return positions + noise[lo - first * self.BLOCK:hi - first * self.BLOCK] * self.buffer

    def _window(self, epoch: int, lo: int, hi: int) -> np.ndarray:
        """Stream positions shown at epoch positions ``lo..hi-1``."""
        if not self.buffer:
            return np.arange(lo, hi, dtype=np.int64)
        a = max(0, lo - 2 * self.buffer - 1)
        b = min(self.n, hi + 2 * self.buffer + 1)
        order = np.argsort(self._keys(epoch, a, b), kind="stable") + a
        return order[lo - a:hi - a]

    def at(self, epoch: int, position: int) -> int:
        chunk = position // self.CHUNK
        key = (int(epoch), chunk)
        if key not in self._chunks:
            if len(self._chunks) >= 4:
                self._chunks.pop(next(iter(self._chunks)))
            lo, hi = chunk * self.CHUNK, min(self.n, (chunk + 1) * self.CHUNK)
            self._chunks[key] = self.stream_to_sample(epoch, self._window(epoch, lo, hi))
        return int(self._chunks[key][position - chunk * self.CHUNK])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Every sample of ``epoch`` in the order shown (one pass: for the teacher cache's schedule)."""
        stream = np.argsort(self._keys(epoch, 0, self.n), kind="stable") if self.buffer else np.arange(self.n)
        return self.stream_to_sample(epoch, stream)


def labelled_shards(path: str) -> tuple[list[ShardSample], np.ndarray]:
    """The samples of a labelled shard set and their integer ``cls`` labels (``zoo eval``'s ``--data``).

    Samples whose image member is cut off or missing are left out (as in training); a sample without a
    ``cls`` member is a one-line :class:`ZooError` naming it.
    """
    catalog = load_shards(path)
    items = [catalog.item(i) for i in range(len(catalog))]
    missing = [item.label for item in items if item.cls_offset < 0]
    if missing:
        raise ZooError(f"{len(missing)} of {len(items)} samples in {path} have no cls member (first: {missing[0]}); "
                       "classification needs a labelled shard set (<key>.cls holding the class index)")
    return items, np.array([item.cls() for item in items], dtype=np.int64)
