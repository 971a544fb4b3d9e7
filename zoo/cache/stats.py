"""PHI-S statistics of the stored teacher outputs, gathered while the cache is built.

The build feeds every teacher's summary and spatial features of every entry to
a :class:`zoo.standardize.StandardizerEstimator` in the same pass that writes
the shards, using the values as stored (after fp16/bf16 rounding: exactly what
training reads). Shards kept from an interrupted build are read back from disk,
so the statistics always cover the whole cache, whatever the interruptions.

They are always gathered, whatever the recipe's ``loss.standardize``: a cache
serves every student of a sweep and the loss settings are not part of its
fingerprint, so a cache built for plain training must serve a PHI-S run too;
and the pass is cheap (a ``C x C`` outer-product update per feature location,
well under 1% of a ViT teacher's forward; one eigendecomposition per teacher
and part at the end).

Stored as ``standardize.safetensors``: the finalized
:class:`~zoo.standardize.TeacherStandardizer` ``state_dict()`` (keys
``<part>.<teacher>.<buffer>``), its sha256 in the manifest's ``standardize``
entry with, per teacher and part, the number of vectors and the scale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.cache.format import SHARD_DIR, STATS_FILE, CacheError, decode, file_checksum, shard_files, shard_name

CHUNK_ROWS = 32  # entries per estimator update (a 16x16 map: 8192 vectors, 64 MiB of float64 at C=1024)


class StatsPass:
    """The statistics of every entry of a build, fed shard by shard (each shard exactly once)."""

    def __init__(self) -> None:
        from zoo.standardize import StandardizerEstimator

        self.estimator = StandardizerEstimator()
        self.fed: set[int] = set()

    def update(self, shard: int, arrays: dict[tuple[str, str], np.ndarray], names: list[str], dtype: str) -> None:
        """Feed shard ``shard`` once: ``arrays[(teacher, part)]`` as stored (in memory or memory-mapped)."""
        from zoo.teachers import TeacherOutput

        if shard in self.fed:
            return
        rows = int(arrays[(names[0], "summary")].shape[0])
        for first in range(0, rows, CHUNK_ROWS):  # bounded float32/float64 copies, even for large shards
            chunk = slice(first, first + CHUNK_ROWS)
            self.estimator.update({name: TeacherOutput(decode(arrays[(name, "summary")][chunk], dtype),
                                                       decode(arrays[(name, "features")][chunk], dtype))
                                   for name in names})
        self.fed.add(shard)

    def feed_stored(self, out: Path, done: dict[int, dict[str, Any]], names: list[str], dtype: str) -> None:
        """Read back the recorded shards this process did not compute (resumed or upgraded builds)."""
        for index in sorted(set(done) - self.fed):
            folder = out / SHARD_DIR / shard_name(index)
            self.update(index, {(teacher, part): np.load(folder / file, mmap_mode="r", allow_pickle=False)
                                for file, teacher, part in shard_files(names)}, names, dtype)

    def save(self, out: Path) -> dict[str, Any]:
        """Finalize, write the statistics file atomically; the manifest entry."""
        from safetensors.torch import save

        from zoo.atomic import atomic_write_bytes

        try:
            standardizer = self.estimator.finalize()
        except ValueError as err:  # e.g. a one-entry cache: no covariance from one vector
            return {"method": "phi-s", "file": None, "skipped": str(err)}
        state = {k: v.detach().cpu().contiguous() for k, v in standardizer.state_dict().items()}
        data = save(state)
        atomic_write_bytes(out / STATS_FILE, data)
        return {"method": "phi-s", "file": STATS_FILE, "sha256": hashlib.sha256(data).hexdigest(),
                "teachers": standardizer.describe()}


def load_state(path: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The stored ``TeacherStandardizer.state_dict()`` (None when the build skipped it); a changed or missing
    file is refused with one line."""
    from safetensors.torch import load

    if not entry.get("file"):
        return None
    file = path / entry["file"]
    data = file.read_bytes() if file.is_file() else None
    if data is None or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CacheError(f"teacher cache {path}: {entry['file']} is missing or changed since the build; run the "
                         "same zoo cache build command again to recompute it (no teacher runs)")
    return load(data)


def per_teacher(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{teacher: {"<part>.<buffer>": tensor}}`` from a ``TeacherStandardizer`` state (``<part>.<teacher>.<buffer>``)."""
    result: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        part, teacher, buffer = key.split(".")
        result.setdefault(teacher, {})[f"{part}.{buffer}"] = value
    return result


def stats_ok(path: Path, entry: dict[str, Any] | None) -> bool:
    """Whether a manifest's statistics entry is present and its file intact."""
    if not entry:
        return False
    if not entry.get("file"):
        return True  # skipped on purpose (too few entries): nothing to redo
    file = path / entry["file"]
    return file.is_file() and file_checksum(file) == entry.get("sha256")
