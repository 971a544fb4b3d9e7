"""Linear-probe semantic segmentation (the paper's Section 5.3): the dense-quality column of Table 7.

A linear head (BatchNorm + 1×1 convolution, the standard linear probe) is trained on the *frozen*
spatial features of a student or a teacher; its logits are upsampled bilinearly to the label map and
trained with cross-entropy (ignore index 255). Defaults follow the paper: AdamW, base LR 1e-3, batch 16,
160k steps for ADE20k / VOC (a short schedule for small folders), crop 512 (the backbone's valid size
nearest to it), "slide" evaluation with a stride of 2/3 of the crop, mIoU over classes.

Every training sample is a pure function of (seed, step, slot), so a resumed probe sees the batches an
uninterrupted one would. Without augmentation the training crops are fixed, so their features are
computed once and kept in memory (when they fit :attr:`SegSettings.feature_cache_bytes`); with
augmentation the backbone runs on every step.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError, ZooError
from zoo.evaluations.seg_data import IGNORE_INDEX, SegDataset, load_image, load_mask

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # [B, 3, H, W] in [0, 1] -> [B, C, h, w]

PAPER_CROP = 512
PAPER_STEPS = 160_000  # ADE20k / VOC schedule of the paper
SHORT_STEPS = 300  # small folders (the generated shapes set, quick checks)
PAPER_BATCH = 16
PAPER_LR = 1e-3
STRIDE_FRACTION = 2 / 3  # slide evaluation
SCALE_RANGE = (0.5, 2.0)  # mmseg's random resize for ADE20k / VOC
MAX_LONG_SIDE = 4  # test images are resized to short side = crop, long side <= 4 * crop (mmseg's 2048x512)
WARMUP_FRACTION = 0.1
WARMUP_MAX = 1500
CHECKPOINT_FILE = "head.pt"


@dataclass(frozen=True)
class SegSettings:
    """The probe's schedule and protocol; ``None`` fields get the data set's defaults (:func:`resolve_settings`)."""

    crop: int = PAPER_CROP
    steps: int | None = None
    batch_size: int = PAPER_BATCH
    lr: float = PAPER_LR
    weight_decay: float = 1e-2
    augment: bool | None = None
    stride_fraction: float = STRIDE_FRACTION
    seed: int = 0
    max_train: int | None = None
    max_val: int | None = None
    feature_cache_bytes: int = 2 << 30
    checkpoint_every: int | None = None

    def check(self) -> None:
        for name in ("crop", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"seg {name} must be positive, got {getattr(self, name)}")
        if self.steps is not None and self.steps <= 0:
            raise ConfigError(f"seg steps must be positive, got {self.steps}")
        if not 0 < self.stride_fraction <= 1:
            raise ConfigError(f"seg stride fraction must be in (0, 1], got {self.stride_fraction}")
        if not self.lr > 0:
            raise ConfigError(f"seg learning rate must be positive, got {self.lr}")


def resolve_settings(settings: SegSettings, data: SegDataset) -> SegSettings:
    """Defaults by data set: the paper's 160k-step schedule with augmentation for ADE20k / VOC, a short one
    without augmentation (features computed once) for a folder."""
    real = data.format in ("ade20k", "voc")
    steps = settings.steps if settings.steps is not None else (PAPER_STEPS if real else SHORT_STEPS)
    augment = settings.augment if settings.augment is not None else real
    every = settings.checkpoint_every or max(50, steps // 20)
    resolved = replace(settings, steps=steps, augment=augment, checkpoint_every=every)
    resolved.check()
    return resolved


def nearest_valid_crop(crop: int, multiple: int, minimum: int = 1, maximum: int | None = None) -> int:
    """The size nearest to ``crop`` that is a multiple of ``multiple`` (ties: the larger; 512 at /14 -> 518)."""
    below = max(minimum, (crop // multiple) * multiple)
    above = max(minimum, -(-crop // multiple) * multiple)
    if maximum is not None:
        below, above = min(below, maximum), min(above, maximum)
    return above if (above - crop) <= (crop - below) else below


class LinearProbeHead(nn.Module):
    """BatchNorm + 1×1 convolution on frozen features (the standard linear-probe head)."""

    def __init__(self, in_channels: int, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        # initialised from the probe's seed, so a probe is a function of its settings
        nn.init.normal_(self.classifier.weight, std=0.01, generator=torch.Generator().manual_seed(seed))
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        logits = self.classifier(self.norm(features.float()))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- samples


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0)


def _resize_pair(image: torch.Tensor, mask: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    mask = F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
    return image, mask


def _pad_to(image: torch.Tensor, mask: torch.Tensor, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    pad_h, pad_w = max(0, crop - image.shape[1]), max(0, crop - image.shape[2])
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    return image, mask


def fixed_sample(image: np.ndarray, mask: np.ndarray, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """No augmentation: short side resized to ``crop``, centre ``crop``×``crop`` window (padded if smaller)."""
    img, lab = _to_tensor(image), torch.from_numpy(mask)
    h, w = lab.shape
    scale = crop / min(h, w)
    img, lab = _resize_pair(img, lab, max(1, round(h * scale)), max(1, round(w * scale)))
    top, left = max(0, (img.shape[1] - crop) // 2), max(0, (img.shape[2] - crop) // 2)
    img, lab = img[:, top:top + crop, left:left + crop], lab[top:top + crop, left:left + crop]
    return _pad_to(img, lab, crop)


def augmented_sample(image: np.ndarray, mask: np.ndarray, crop: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg's training pipeline: random rescale (0.5–2× of short side = crop), random crop, flip, pad."""
    img, lab = _to_tensor(image), torch.from_numpy(mask)
    h, w = lab.shape
    scale = crop / min(h, w) * rng.uniform(*SCALE_RANGE)
    img, lab = _resize_pair(img, lab, max(1, round(h * scale)), max(1, round(w * scale)))
    top = int(rng.integers(0, max(0, img.shape[1] - crop) + 1))
    left = int(rng.integers(0, max(0, img.shape[2] - crop) + 1))
    img, lab = img[:, top:top + crop, left:left + crop], lab[top:top + crop, left:left + crop]
    if rng.random() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    return _pad_to(img, lab, crop)


def batch_indices(step: int, batch_size: int, count: int, seed: int) -> list[int]:
    """The training images of ``step``: consecutive slots of a per-epoch seeded permutation."""
    indices = []
    for slot in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(slot, count)
        order = np.random.default_rng((seed, epoch)).permutation(count)
        indices.append(int(order[position]))
    return indices


# --------------------------------------------------------------------------- metrics


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] counts, rows = true class, columns = predicted; ignore-index pixels are left out."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU (mean over classes present in labels or predictions), per-class IoU, pixel accuracy, mean accuracy."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    per_class_total = confusion.sum(1)
    acc = torch.where(per_class_total > 0, tp / per_class_total.clamp(min=1), torch.full_like(tp, float("nan")))
    total = confusion.sum()
    return {
        "miou": float(torch.nanmean(iou)) if bool((union > 0).any()) else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "macc": float(torch.nanmean(acc)) if bool((per_class_total > 0).any()) else float("nan"),
        "per_class_iou": {name: (None if math.isnan(v) else round(v, 6)) for name, v in zip(class_names, iou.tolist())},
    }


# --------------------------------------------------------------------------- the probe


@dataclass
class SegResult:
    """The outcome of one probe."""

    dataset: dict[str, Any]
    settings: dict[str, Any]
    miou: float
    pixel_acc: float
    macc: float
    per_class_iou: dict[str, float | None]
    steps: int
    feature_dim: int
    feature_cache: bool
    seconds: float
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SegProbe:
    """Train and evaluate a linear probe on ``features`` (a frozen backbone or teacher)."""

    def __init__(self, features: FeatureFn, feature_dim: int, data: SegDataset, settings: SegSettings,
                 device: torch.device, checkpoint_dir: Path | None = None,
                 progress: Callable[[str, int], Any] | None = None) -> None:
        self.features = features
        self.data = data
        self.settings = resolve_settings(settings, data)
        self.device = device
        self.checkpoint = checkpoint_dir / CHECKPOINT_FILE if checkpoint_dir is not None else None
        self.progress = progress
        self.head = LinearProbeHead(feature_dim, data.num_classes, self.settings.seed).to(device)
        self.feature_dim = feature_dim
        self.train_images = self._limit(data.train, self.settings.max_train)
        self.val_images = self._limit(data.val, self.settings.max_val)

    @staticmethod
    def _limit(split: Any, limit: int | None) -> list[tuple[Path, Path]]:
        pairs = list(zip(split.images, split.masks))
        return pairs[:limit] if limit else pairs

    # ----------------------------------------------------------------- data

    def _load(self, pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        image, mask = load_image(pair[0]), load_mask(pair[1], self.data.num_classes, self.data.reduce_zero_label)
        if image.shape[:2] != mask.shape:
            raise ZooError(f"mask {pair[1]} is {mask.shape[1]}x{mask.shape[0]} but image {pair[0]} is "
                           f"{image.shape[1]}x{image.shape[0]}")
        return image, mask

    def _sample(self, index: int, step: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._load(self.train_images[index])
        if not self.settings.augment:
            return fixed_sample(image, mask, self.settings.crop)
        rng = np.random.default_rng((self.settings.seed, step, slot))
        return augmented_sample(image, mask, self.settings.crop, rng)

    @torch.no_grad()
    def _extract(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images.to(self.device)).float()

    def _cached_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Features and labels of every fixed training crop, when augmentation is off and they fit."""
        if self.settings.augment:
            return None
        crop = self.settings.crop
        probe = self._extract(torch.zeros(1, 3, crop, crop))
        per_image = probe[0].numel() * 4 + crop * crop * 8
        if per_image * len(self.train_images) > self.settings.feature_cache_bytes:
            return None
        features, labels = [], []
        batch = self.settings.batch_size
        for start in range(0, len(self.train_images), batch):
            samples = [self._sample(i, 0, 0) for i in range(start, min(start + batch, len(self.train_images)))]
            features.append(self._extract(torch.stack([s[0] for s in samples])).cpu())
            labels.append(torch.stack([s[1] for s in samples]))
            if self.progress is not None:
                self.progress("features", len(samples))
        return torch.cat(features), torch.cat(labels)

    # ----------------------------------------------------------------- training

    def _optimizer(self) -> torch.optim.AdamW:
        return torch.optim.AdamW(self.head.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then poly (power 1) decay to 0: mmseg's linear-probe schedule."""
        steps = int(self.settings.steps)
        warmup = min(WARMUP_MAX, int(steps * WARMUP_FRACTION))
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, steps - warmup))

    def _restore(self, optimizer: torch.optim.Optimizer) -> int:
        if self.checkpoint is None or not self.checkpoint.is_file():
            return 0
        from zoo.checkpoints import load_checkpoint

        state = load_checkpoint(self.checkpoint)
        if not isinstance(state, dict) or "head" not in state:
            raise ZooError(f"{self.checkpoint} is not a segmentation-probe checkpoint; remove it or pass --restart")
        if state.get("protocol") != self._protocol():
            raise ZooError(f"{self.checkpoint} was trained with other settings ({state.get('protocol')}); "
                           "pass --restart to train a new head")
        try:
            self.head.load_state_dict(state["head"])
        except RuntimeError:
            raise ZooError(f"{self.checkpoint} does not fit this backbone's features; pass --restart") from None
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])

    def _protocol(self) -> dict[str, Any]:
        keys = ("crop", "steps", "batch_size", "lr", "weight_decay", "augment", "seed", "max_train")
        return {"dataset": self.data.name, "classes": self.data.num_classes, "feature_dim": self.feature_dim,
                **{k: getattr(self.settings, k) for k in keys}}

    def _save(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        if self.checkpoint is None:
            return
        from zoo.checkpoints import atomic_torch_save

        atomic_torch_save({"head": self.head.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                           "protocol": self._protocol()}, self.checkpoint)

    def train(self) -> tuple[int, bool]:
        """Train the head to ``settings.steps``; returns ``(resumed from step, features were cached)``."""
        optimizer = self._optimizer()
        start = self._restore(optimizer)
        cached = self._cached_features() if start < int(self.settings.steps) else None
        self.head.train()
        crop = self.settings.crop
        for step in range(start, int(self.settings.steps)):
            for group in optimizer.param_groups:
                group["lr"] = self.settings.lr * self.lr_factor(step)
            indices = batch_indices(step, self.settings.batch_size, len(self.train_images), self.settings.seed)
            if cached is not None:
                features = cached[0][indices].to(self.device)
                labels = cached[1][indices].to(self.device)
            else:
                samples = [self._sample(i, step, slot) for slot, i in enumerate(indices)]
                features = self._extract(torch.stack([s[0] for s in samples]))
                labels = torch.stack([s[1] for s in samples]).to(self.device)
            logits = self.head(features, (crop, crop))
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not torch.isfinite(loss):
                raise ZooError(f"the probe's loss became non-finite at step {step}; lower --lr")
            if self.progress is not None:
                self.progress("train", 1)
            if (step + 1) % int(self.settings.checkpoint_every) == 0 or step + 1 == int(self.settings.steps):
                self._save(optimizer, step + 1)
        return start, cached is not None

    # ----------------------------------------------------------------- evaluation

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> torch.Tensor:
        """Class indices at the image's own size: "slide" inference over crops with stride 2/3 of the crop."""
        self.head.eval()
        crop = self.settings.crop
        stride = max(1, int(round(crop * self.settings.stride_fraction)))
        img = _to_tensor(image)
        h, w = img.shape[1:]
        scale = min(crop / min(h, w), MAX_LONG_SIDE * crop / max(h, w))
        rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
        img = F.interpolate(img[None], size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)[0]
        logits = torch.zeros(self.data.num_classes, rh, rw)
        count = torch.zeros(1, rh, rw)
        rows = max(rh - crop + stride - 1, 0) // stride + 1
        cols = max(rw - crop + stride - 1, 0) // stride + 1
        for r in range(rows):
            for c in range(cols):
                top, left = min(r * stride, max(rh - crop, 0)), min(c * stride, max(rw - crop, 0))
                window = img[:, top:top + crop, left:left + crop]
                wh, ww = window.shape[1:]
                padded = F.pad(window, (0, crop - ww, 0, crop - wh))
                out = self.head(self._extract(padded[None]), (crop, crop))[0].cpu()
                logits[:, top:top + wh, left:left + ww] += out[:, :wh, :ww]
                count[:, top:top + wh, left:left + ww] += 1
        logits = logits / count
        logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return logits.argmax(0)

    def evaluate(self) -> dict[str, Any]:
        confusion = torch.zeros(self.data.num_classes, self.data.num_classes, dtype=torch.long)
        for pair in self.val_images:
            image, mask = self._load(pair)
            confusion += confusion_matrix(self.predict(image), torch.from_numpy(mask), self.data.num_classes)
            if self.progress is not None:
                self.progress("eval", 1)
        scores = segmentation_scores(confusion, self.data.classes)
        scores["confusion"] = confusion
        return scores

    def run(self) -> SegResult:
        begin = time.perf_counter()
        resumed_from, cached = self.train()
        scores = self.evaluate()
        return SegResult(dataset=self.data.describe(), settings=asdict(self.settings), miou=scores["miou"],
                         pixel_acc=scores["pixel_acc"], macc=scores["macc"], per_class_iou=scores["per_class_iou"],
                         steps=int(self.settings.steps), feature_dim=self.feature_dim, feature_cache=cached,
                         seconds=round(time.perf_counter() - begin, 3), resumed_from=resumed_from)


def metric_names(dataset_name: str) -> tuple[str, str]:
    """The record's metric names for a data set: ``miou_<name>``, ``pixel_acc_<name>``."""
    import re

    key = re.sub(r"[^a-z0-9]+", "_", dataset_name.lower()).strip("_") or "seg"
    return f"miou_{key}", f"pixel_acc_{key}"
