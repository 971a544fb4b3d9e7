"""PHI-S statistics of the stored teacher outputs, gathered while the cache is built.

The build feeds every teacher's summary and spatial features of every entry to
one :mod:`zoo.standardize` estimator per teacher (the values as stored, i.e.
after fp16/bf16 rounding: exactly what training reads). Shards kept from an
interrupted build are read back from disk, so the statistics always cover the
whole cache whatever the interruptions. They are always gathered, whatever the
recipe's ``loss.standardize``: a cache serves every student of a sweep and the
loss settings are not part of its fingerprint, and the pass costs a small
fraction of the teachers' forward (a ``D x D`` covariance update per location).

Stored as ``standardize.safetensors`` (tensors, key ``<teacher>/<state key>``),
its sha256 and the estimators' other state (numbers) in the manifest's
``standardize`` entry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from zoo.cache.format import SHARD_DIR, STATS_FILE, CacheError, decode, file_checksum, shard_files, shard_name


def available() -> bool:
    """Whether this zoo has the PHI-S estimator."""
    try:
        import zoo.standardize  # noqa: F401
    except ImportError:
        return False
    return True


class StatsPass:
    """One estimator per teacher, fed shard by shard (each shard once)."""

    def __init__(self, teachers: Sequence[dict[str, Any]]) -> None:
        self.enabled = available()
        self.fed: set[int] = set()
        self.estimators: dict[str, Any] = {}
        if self.enabled:
            from zoo.standardize import new_estimator

            self.estimators = {t["name"]: new_estimator(t) for t in teachers}

    def update(self, shard: int, teacher: str, part: str, values: torch.Tensor) -> None:
        if self.enabled:
            self.estimators[teacher].update(part, values)
            self.fed.add(shard)

    def feed_stored(self, out: Path, done: dict[int, dict[str, Any]], dtype: str) -> None:
        """Read back the recorded shards this process did not compute (resumed or upgraded builds)."""
        if not self.enabled:
            return
        for index in sorted(set(done) - self.fed):
            folder = out / SHARD_DIR / shard_name(index)
            for file, teacher, part in shard_files(list(self.estimators)):
                array = np.load(folder / file, mmap_mode="r", allow_pickle=False)
                for first in range(0, array.shape[0], 64):  # bounded memory on large shards
                    self.estimators[teacher].update(part, decode(array[first:first + 64], dtype))
            self.fed.add(index)

    def save(self, out: Path) -> dict[str, Any] | None:
        """Write the statistics file; the manifest entry (None when this zoo has no estimator)."""
        if not self.enabled:
            return None
        from safetensors.torch import save

        from zoo.atomic import atomic_write_bytes

        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, dict[str, Any]] = {}
        for name, estimator in self.estimators.items():
            for key, value in estimator.state_dict().items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
                else:
                    meta.setdefault(name, {})[key] = value
        data = save(tensors)
        atomic_write_bytes(out / STATS_FILE, data)
        return {"method": "phi-s", "file": STATS_FILE, "sha256": hashlib.sha256(data).hexdigest(),
                "teachers": list(self.estimators), "state": meta}


def load_stats(path: Path, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{teacher: state_dict}`` as stored by :meth:`StatsPass.save`; a changed or missing file is refused."""
    from safetensors.torch import load_file

    file = path / entry["file"]
    if not file.is_file() or file_checksum(file) != entry["sha256"]:
        raise CacheError(f"teacher cache {path}: {entry['file']} is missing or changed since the build; run the "
                         "same zoo cache build command again to recompute it (no teacher runs)")
    tensors = load_file(str(file))
    states: dict[str, dict[str, Any]] = {name: dict(entry.get("state", {}).get(name, {})) for name in entry["teachers"]}
    for key, value in tensors.items():
        name, _, state_key = key.partition("/")
        states[name][state_key] = value
    return states
