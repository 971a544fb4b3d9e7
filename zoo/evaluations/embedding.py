"""Images to embeddings: how each side sees an image, and the batched loop.

* A **student** sees the view it was trained at (:class:`StudentView`): the
  centre crop at its input aspect, resized bilinearly to its resolution, then
  ImageNet-normalised by :func:`zoo.data.student_view`.
* A **teacher** sees its own evaluation transform (:class:`TeacherView`): as
  open_clip and timm evaluate, the shorter side resized (bicubic) to
  ``size / crop_pct``, a centre crop of ``size``, then the teacher's mean/std.
  So a teacher's k-NN / zero-shot score is comparable with published ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zoo.errors import ZooError

EMBED_BATCH_SIZE = 64

Embedder = Callable[[torch.Tensor], torch.Tensor]  # [B, 3, H, W] in [0, 1] -> [B, D]


class ImageView(Protocol):
    """How an evaluation turns one item (an image path or a grey array in [0, 1]) into [3, h, w] in [0, 1]."""

    size_hw: tuple[int, int]

    def load(self, item: Any) -> torch.Tensor: ...

    def describe(self) -> str: ...


def _open_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise ZooError(f"cannot read image {path}: {err}") from None


@dataclass(frozen=True)
class StudentView:
    """The student's view: the centre crop at ``size_hw``'s aspect, resized bilinearly to ``size_hw``."""

    size_hw: tuple[int, int]

    def load(self, item: Any) -> torch.Tensor:
        if isinstance(item, np.ndarray):
            grey = torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32))[None, None]
            image = F.interpolate(grey, size=tuple(self.size_hw), mode="bilinear", align_corners=False)[0]
            return image.clamp_(0.0, 1.0).expand(3, -1, -1).contiguous()
        from zoo.data import center_crop_box, load_crop

        try:
            return load_crop(Path(item), lambda w, h: center_crop_box(w, h, self.size_hw), tuple(self.size_hw))
        except OSError as err:
            raise ZooError(f"cannot read image {item}: {err}") from None

    def describe(self) -> str:
        return "centre crop, bilinear resize (the student's training view)"


@dataclass(frozen=True)
class TeacherView:
    """A teacher's evaluation transform: shorter side to ``size / crop_pct`` (``interpolation``), centre crop.

    Built on timm's ``transforms_imagenet_eval`` (open_clip's eval transform is
    the same with ``crop_pct = 1``); the teacher applies its mean/std itself.
    """

    size_hw: tuple[int, int]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def load(self, item: Any) -> torch.Tensor:
        from PIL import Image

        transform = _eval_transform(tuple(self.size_hw), self.interpolation, self.crop_pct, self.crop_mode)
        if isinstance(item, np.ndarray):  # a grey array: resampled in float ('F' mode), no 8-bit rounding
            grey = transform(Image.fromarray(np.ascontiguousarray(item, dtype=np.float32), "F"))
            return grey.clamp_(0.0, 1.0).expand(3, -1, -1).contiguous()
        return transform(_open_rgb(Path(item)))

    def describe(self) -> str:
        return (f"{self.interpolation} resize to {self.size_hw[0]}x{self.size_hw[1]}/{self.crop_pct:g}, "
                f"{self.crop_mode} crop (the teacher's evaluation transform)")


@lru_cache(maxsize=8)
def _eval_transform(size_hw: tuple[int, int], interpolation: str, crop_pct: float, crop_mode: str) -> Callable:
    from timm.data.transforms_factory import transforms_imagenet_eval

    # mean 0 / std 1 (one value: grey and RGB alike): the tensor stays in [0, 1]; the teacher normalises.
    return transforms_imagenet_eval(size_hw, crop_pct=crop_pct, crop_mode=crop_mode, interpolation=interpolation,
                                    mean=(0.0,), std=(1.0,))


def _field(source: Any, *names: str) -> Any:
    for name in names:
        value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
        if value is not None:
            return value
    return None


def teacher_view(teacher: Any) -> ImageView:
    """The teacher's evaluation view, from its ``eval_transform`` description.

    A teacher without one keeps the view of the student (centre crop,
    bilinear) at the teacher's resolution.
    """
    description = getattr(teacher, "eval_transform", None)
    size_hw = tuple(int(v) for v in teacher.resolution)
    if description is None:
        return StudentView(size_hw)
    size = _field(description, "size_hw", "resolution", "input_size", "size")
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in list(size)[-2:])
    return TeacherView(size or size_hw, str(_field(description, "interpolation") or "bicubic"),
                       float(_field(description, "crop_pct") or 1.0), str(_field(description, "crop_mode") or "center"))


def image_batches(items: Sequence[Any], view: ImageView, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(items), batch_size):
        yield torch.stack([view.load(item) for item in items[start:start + batch_size]])


@torch.no_grad()
def embed(items: Sequence[Any], embedder: Embedder, view: ImageView, batch_size: int = EMBED_BATCH_SIZE,
          progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """``embedder`` over every item seen through ``view``, float32 on the CPU: ``[N, D]``."""
    chunks = []
    for images in image_batches(items, view, batch_size):
        chunks.append(embedder(images).float().cpu())
        if progress is not None:
            progress(images.shape[0])
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def student_embedder(run: Any, head: str | None, size_hw: tuple[int, int]) -> Embedder:
    """A loaded run's summary: the backbone's own (``head=None``) or a teacher head's, in that teacher's space.

    ``run`` is a :class:`zoo.loading.LoadedRun`.
    """
    def summary(images: torch.Tensor) -> torch.Tensor:
        return run.summary(images, head, size_hw)

    return summary


def teacher_embedder(teacher: Any) -> Embedder:
    """A teacher's own summary (it normalises [0, 1] images itself)."""
    return lambda images: teacher(images)[0]
