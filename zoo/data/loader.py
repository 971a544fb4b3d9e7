"""Augmented batches that are a pure function of ``(seed, step)``, and the loader that feeds them.

Augmentation is random scale + crop: ONE crop box per image, drawn from a generator keyed on
``(seed, step, sample index)``; the crop is resized to a single *shared* resolution (the max of the
student and teacher resolutions). The engine resizes that tensor for the student and each teacher
resizes it for itself, so every view shows exactly the same crop.

Which image slot ``s`` of global batch ``t`` shows is position ``t * batch + s`` of an epoch order: a
seeded permutation for folders, lists and bundled images, and for WebDataset shards a seeded shard order
with a bounded seeded shuffle (:class:`~zoo.data.shards.ShardStreamOrder`). Ranks take disjoint slots of
each global batch, so every image is shown once per epoch across ranks, and a run resumed at step ``k``
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.data.crops import center_crop_box, describe_item, load_crop, random_crop_box, sample_rng
from zoo.data.listing import BadLog, ImageList
from zoo.data.sources import DEFAULT_SHUFFLE_BUFFER, DataWarning
from zoo.errors import ConfigError, ZooError

PREFETCH_FACTOR = 4  # batches each worker keeps ready


class PermutationOrder:
    """Epoch ``e`` is a permutation of all images seeded by ``(seed, e)``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = int(n), int(seed)
        self._order: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:  # one permutation per epoch (millions of images)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1_000_003, int(epoch)]))
            self._order = (int(epoch), rng.permutation(self.n))
        return self._order[1]

    def at(self, epoch: int, position: int) -> int:
        return int(self.epoch_order(epoch)[position])


def sample_order(paths: Sequence[Any], seed: int) -> Any:
    """The epoch order of a training list: shard stream order for shards, else a permutation."""
    from zoo.data.shards import ShardCatalog, ShardStreamOrder

    if isinstance(paths, ImageList) and isinstance(paths.catalog, ShardCatalog):
        catalog = paths.catalog
        counts = catalog.counts.copy()
        if len(paths.excluded):  # held-out and bad samples leave their shards
            counts -= np.bincount(catalog.shard_of(paths.excluded), minlength=len(counts))
        buffer = paths.shuffle_buffer if paths.shuffle_buffer is not None else DEFAULT_SHUFFLE_BUFFER
        return ShardStreamOrder(counts, seed, buffer)
    return PermutationOrder(len(paths), seed)


class CropDataset(Dataset):
    """Item ``(step, slot)`` -> the augmented crop of sample ``slot`` of global batch ``step``.

    Which image a slot shows and its crop box/flip are functions of ``(seed, step, slot)`` only, so
    any process computes the same batch. ``paths`` is a list of paths or an
    :class:`~zoo.data.listing.ImageList` (kept as is: no per-image objects are made). An image that
    fails to decode is recorded in the list's ``bad_log`` (shared with the main process), warned
    about once, and a readable neighbour is shown in its place.
    """

    def __init__(self, paths: Sequence[Any], size_hw: tuple[int, int], seed: int, batch_size: int,
                 scale: Sequence[float] = (0.25, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: bool = False) -> None:
        self.paths = paths if isinstance(paths, ImageList) else list(paths)
        self.size_hw = tuple(size_hw)
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), bool(hflip)
        self.order = sample_order(self.paths, self.seed)
        log = getattr(self.paths, "bad_log", None)
        self.bad_log = log if log is not None else BadLog(len(self.paths))

    def __len__(self) -> int:  # items are addressed by (step, slot), not by index
        return len(self.paths)

    def image_index(self, step: int, slot: int) -> int:
        """Epoch-wise sampling without replacement: position ``step * batch + slot`` of the epoch orders."""
        epoch, offset = divmod(step * self.batch_size + slot, len(self.paths))
        return self.order.at(epoch, offset)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The image indices of epoch ``epoch`` in the order they are shown."""
        return self.order.epoch_order(epoch)

    def epoch_slots(self, epoch: int) -> list[tuple[int, int]]:
        """``(step, slot)`` where each image (by index) appears in epoch ``epoch``: the inverse of the order."""
        order, n = self.epoch_order(epoch), len(self.paths)
        offsets = np.empty(n, dtype=np.int64)
        offsets[np.asarray(order, dtype=np.int64)] = np.arange(n, dtype=np.int64)
        steps, slots = np.divmod(int(epoch) * n + offsets, self.batch_size)
        return list(zip(steps.tolist(), slots.tolist()))

    def crop_box(self, step: int, slot: int, width: int, height: int) -> tuple[int, int, int, int]:
        return random_crop_box(width, height, sample_rng(self.seed, step, slot), self.scale, self.ratio)

    def flip(self, step: int, slot: int) -> bool:
        # A separate stream so toggling hflip leaves every crop box unchanged.
        return self.hflip and bool(sample_rng(self.seed + 7919, step, slot).random() < 0.5)

    def _log_id(self, index: int) -> int:
        return self.paths.id(index) if isinstance(self.paths, ImageList) else index

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        step, slot = key
        index = self.image_index(step, slot)
        n = len(self.paths)
        for attempt in range(n):
            position = (index + attempt) % n
            log_id = self._log_id(position)
            if log_id in self.bad_log:
                continue
            item = self.paths[position]
            try:
                return load_crop(item, lambda w, h: self.crop_box(step, slot, w, h), self.size_hw,
                                 self.flip(step, slot))
            except Exception as err:  # noqa: BLE001 - a bad file found late: record it, use the next one
                self.bad_log.add(log_id)
                warnings.warn(f"skipped unreadable image {describe_item(item)}: {err.__class__.__name__}",
                              DataWarning, stacklevel=2)
        raise ZooError("no readable image left in the data source")


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps ``start..steps-1``, this rank's slots of the global batch."""

    def __init__(self, start: int, steps: int, global_batch: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ConfigError(f"recipe key 'train.batch_size' ({global_batch}) must be divisible by the "
                              f"number of processes ({world_size})")
        self.start, self.steps = int(start), int(steps)
        self.per_rank = global_batch // world_size
        self.first = rank * self.per_rank

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield [(step, self.first + i) for i in range(self.per_rank)]


def default_workers(device: torch.device) -> int:
    """Loader workers: 0-2 on CPU (the cores train the model), up to 8 on a GPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        return 0 if cpus <= 2 else min(2, cpus // 4)
    return max(1, min(8, cpus - 1))


def train_loader(dataset: Dataset, start: int, steps: int, global_batch: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int = PREFETCH_FACTOR) -> DataLoader:
    """Batches ``[B_rank, 3, H, W]`` for steps ``start..steps-1`` (the order never depends on workers).

    Workers stay alive between passes (``persistent_workers``) and each keeps ``prefetch_factor``
    batches ready; ``pin_memory`` (on CUDA) lets the copy to the GPU overlap the step.
    """
    sampler = StepBatchSampler(start, steps, global_batch, rank, world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=prefetch_factor if workers else None,
                      generator=torch.Generator().manual_seed(dataset.seed))  # never draw from the global RNG


def eval_batches(paths: Sequence[Any], size_hw: tuple[int, int], crop_hw: tuple[int, int],
                 batch_size: int) -> Iterator[torch.Tensor]:
    """Held-out images: the centred crop with the student's aspect, no augmentation."""
    paths = list(paths)
    for i in range(0, len(paths), batch_size):
        yield torch.stack([load_crop(p, lambda w, h: center_crop_box(w, h, crop_hw), size_hw)
                           for p in paths[i:i + batch_size]])


# --------------------------------------------------------------------------- student view


def shared_resolution(*resolutions: Sequence[int]) -> tuple[int, int]:
    """The largest height and width among the student's and teachers' resolutions."""
    return (max(int(r[0]) for r in resolutions), max(int(r[1]) for r in resolutions))


def student_view(images: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """Shared-resolution [0, 1] images -> the student's size, ImageNet-normalised (timm's constants)."""
    if tuple(images.shape[-2:]) != tuple(resolution):
        images = F.interpolate(images, size=tuple(resolution), mode="bilinear", align_corners=False, antialias=True)
    mean = images.new_tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (images - mean) / std
