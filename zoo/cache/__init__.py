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

    manifest.json             teachers, resolutions, augmentation, data, versions, index sha256,
                              shards + sha256, PHI-S statistics (file + sha256)
    index.json                per entry: image, view, step, slot, box, flip
    standardize.safetensors   per teacher: mean/covariance of its summary and spatial features
    shards/00000/<teacher>.summary.npy    [rows, Ds]        (fp16 / bf16 bits / fp32)
    shards/00000/<teacher>.features.npy   [rows, Df, h, w]

Modules: :mod:`~zoo.cache.format` (names, fingerprint, index, encoding),
:mod:`~zoo.cache.build` (``zoo cache build``), :mod:`~zoo.cache.reader`
(training's memory-mapped view), :mod:`~zoo.cache.stats` (PHI-S statistics),
:mod:`~zoo.cache.verify` (``zoo cache verify``).
"""

from zoo.cache.build import build_cache
from zoo.cache.format import (CACHE_DTYPES, CACHE_FORMAT, DEFAULT_BUILD_BATCH, DEFAULT_DTYPE, DEFAULT_SHARD_SIZE,
                              INDEX_FILE, MANIFEST_FILE, SHARD_DIR, STATS_FILE, TARGET_COSINE,
                              TRAIN_CHECKSUM_LIMIT_BYTES, CacheError, CacheMismatchError, ViewTable, cache_fingerprint,
                              decode, encode, estimate_bytes, file_checksum, first_difference, human, image_names,
                              view_crop, view_schedule)
from zoo.cache.reader import CachedCropDataset, CacheWarning, ShardProblem, TeacherCache, open_for_training
from zoo.cache.verify import TeacherAgreement, VerifyReport, verify_cache

__all__ = [
    "CACHE_DTYPES", "CACHE_FORMAT", "DEFAULT_BUILD_BATCH", "DEFAULT_DTYPE", "DEFAULT_SHARD_SIZE", "INDEX_FILE",
    "MANIFEST_FILE", "SHARD_DIR", "STATS_FILE", "TARGET_COSINE", "TRAIN_CHECKSUM_LIMIT_BYTES", "CacheError",
    "CacheMismatchError", "CacheWarning", "CachedCropDataset", "ShardProblem", "TeacherAgreement", "TeacherCache",
    "VerifyReport", "ViewTable", "build_cache", "cache_fingerprint", "decode", "encode", "estimate_bytes",
    "file_checksum", "first_difference", "human", "image_names", "open_for_training", "verify_cache", "view_crop",
    "view_schedule",
]
