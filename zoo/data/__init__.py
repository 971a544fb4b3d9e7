"""Images for distillation: sources, a deterministic held-out split, and augmented batches that are a
pure function of ``(seed, step)``.

Modules: :mod:`~zoo.data.sources` (folder, file list, bundled images, WebDataset shards; the
:class:`ImageSet` with its held-out split and skipped-image accounting), :mod:`~zoo.data.listing`
(compact listings and their cache), :mod:`~zoo.data.shards` (the shard index and order),
:mod:`~zoo.data.crops` (crop boxes, draft-mode JPEG decoding), :mod:`~zoo.data.loader` (the
``(step, slot)`` dataset, the batch sampler, the loader).

For the engines: :func:`load_recipe_images` reads a recipe's ``data`` and ``eval`` sections;
``ImageSet.train`` and ``.holdout`` are sequences of paths or shard samples that :func:`load_crop`,
:func:`image_size` and :func:`open_image` accept; ``ImageSet.train_names()`` gives their stable names;
``describe()`` is the record's data block (read after training: it counts images found bad while training).
"""

from __future__ import annotations

from typing import Any

from zoo.data.crops import (center_crop_box, image_size, load_crop, open_image, random_crop_box, readable,
                            sample_rng, set_draft)
from zoo.data.listing import BadLog, Catalog, ImageList, list_folder, user_cache_dir
from zoo.data.loader import (CropDataset, PermutationOrder, StepBatchSampler, default_workers, eval_batches,
                             sample_order, shared_resolution, student_view, train_loader)
from zoo.data.shards import ShardSample, ShardStreamOrder, expand_braces, labelled_shards, load_shards
from zoo.data.sources import (BUNDLED_IMAGES, DATA_SOURCES, DEFAULT_SHUFFLE_BUFFER, EVAL_SOURCES, IMAGE_EXTENSIONS,
                              RECORD_FIRST, REPORT_FIRST, DataWarning, ImageSet, bundled_images, check_source,
                              folder_images, holdout_split, list_file_images, load_images, resolve_source,
                              unique_by_resolved_path, walk_images)


def load_recipe_images(recipe: Any, warn: bool = True) -> ImageSet:
    """The :class:`ImageSet` of a recipe: ``data.*`` (source, path, verify_limit, shuffle_buffer) and ``eval.*``
    (images, source, path)."""
    data, evaluation = recipe.data, recipe.eval
    return load_images(data.source, data.path, evaluation.images, data.verify_limit, warn=warn,
                       shuffle_buffer=getattr(data, "shuffle_buffer", DEFAULT_SHUFFLE_BUFFER),
                       eval_source=_eval_source(getattr(evaluation, "source", "split"), getattr(evaluation, "path", None)),
                       eval_path=getattr(evaluation, "path", None))


def _eval_source(source: str, path: str | None) -> str:
    if source == "auto":
        return "auto" if path else "split"
    return source


__all__ = [
    "BUNDLED_IMAGES", "BadLog", "Catalog", "CropDataset", "DATA_SOURCES", "DEFAULT_SHUFFLE_BUFFER", "DataWarning",
    "EVAL_SOURCES", "IMAGE_EXTENSIONS", "ImageList", "ImageSet", "PermutationOrder", "RECORD_FIRST", "REPORT_FIRST",
    "ShardSample", "ShardStreamOrder", "StepBatchSampler", "bundled_images", "center_crop_box", "check_source",
    "default_workers", "eval_batches", "expand_braces", "folder_images", "holdout_split", "image_size",
    "labelled_shards", "list_file_images", "list_folder", "load_crop", "load_images", "load_recipe_images", "load_shards",
    "open_image", "random_crop_box", "readable", "resolve_source", "sample_order", "sample_rng", "set_draft",
    "shared_resolution", "student_view", "train_loader", "unique_by_resolved_path", "user_cache_dir", "walk_images",
]
