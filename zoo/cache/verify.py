"""``zoo cache verify``: every shard checked, a sample of entries recomputed with the live teachers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from zoo.cache.format import (MANIFEST_FILE, TARGET_COSINE, TEACHER_KEYS, CacheError, CacheMismatchError,
                              first_difference, image_names, read_json, shard_name, view_crop)
from zoo.cache.reader import ShardProblem, TeacherCache
from zoo.data import load_recipe_images


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
    """Check the index checksum (a changed index raises :class:`CacheError`), every shard (checksum, shape,
    NaN), then recompute ``samples`` random entries with the live teachers.

    Per teacher: cosine similarity (summary and every feature location, per
    entry) mean/min and the max absolute error. Entries in bad shards are skipped.
    """
    from zoo.devices import resolve_device
    from zoo.recipe import recipe_from_dict
    from zoo.teachers import prepare_teachers

    path = Path(path)
    if not (path / MANIFEST_FILE).is_file():
        raise CacheError(f"no teacher cache in {path} (no {MANIFEST_FILE})")
    if not read_json(path / MANIFEST_FILE).get("complete"):
        raise CacheError(f"teacher cache {path} is incomplete; finish it with zoo cache build")
    cache = TeacherCache(path, shards=False)  # a changed index raises; shard problems go into the report
    problems = cache.check(checksums=True)
    bad_shards = {p.shard for p in problems}

    torch_device = resolve_device(device)
    recipe = recipe_from_dict(cache.manifest["recipe"])  # the data settings the cache was built with
    teacher_list = prepare_teachers(teachers, [t["spec"] for t in cache.teachers], torch_device, offline)
    live = [{k: t.describe().get(k) for k in TEACHER_KEYS} for t in teacher_list]
    difference = first_difference(cache.teachers, live)
    if difference:
        raise CacheMismatchError(f"the live teachers differ from the cache's: {difference}")
    images = load_recipe_images(recipe)
    if image_names(images) != cache.table.names:
        raise CacheMismatchError(f"the images of {path} changed since the build (data.image_list_sha256)")
    shared_hw = tuple(cache.fingerprint["shared_resolution"])
    usable = [r for r in range(cache.rows) if shard_name(r // cache.shard_size) not in bad_shards]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(usable, size=min(samples, len(usable)), replace=False).tolist()) if usable else []
    stats: dict[str, dict[str, list[float]]] = {t.name: {"cos": [], "err": []} for t in teacher_list}
    for row in picked:
        crop = view_crop(images.train[row // cache.views], cache.table.box[row], cache.table.flip[row], shared_hw)
        stored = cache.targets([row])
        for teacher in teacher_list:
            with torch.no_grad():
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
