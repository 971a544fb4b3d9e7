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
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

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


def _open_rgb(path: Any):
    from zoo.data import open_image  # a file or a WebDataset shard member

    try:
        with open_image(path) as image:
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
            item = Path(item) if isinstance(item, str) else item  # a path or a shard sample
            return load_crop(item, lambda w, h: center_crop_box(w, h, self.size_hw), tuple(self.size_hw))
        except OSError as err:
            raise ZooError(f"cannot read image {item}: {err}") from None

    def describe(self) -> str:
        return "centre crop, bilinear resize (the student's training view)"


@dataclass(frozen=True)
class TeacherView:
    """A teacher's own evaluation transform (:class:`zoo.teachers.EvalTransform`, read from its library's config).

    Resize (``resize_mode``, ``interpolation``, ``crop_pct``) and centre crop
    here, by :func:`zoo.teachers.apply_eval_transform`; the teacher applies its
    mean/std itself, the same as the transform's.
    """

    transform: Any  # zoo.teachers.EvalTransform

    @property
    def size_hw(self) -> tuple[int, int]:
        return tuple(self.transform.size)

    def load(self, item: Any) -> torch.Tensor:
        from zoo.teachers import apply_eval_transform

        if isinstance(item, np.ndarray):  # a grey array: resampled as a float tensor, no 8-bit rounding
            grey = torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32))
            return apply_eval_transform(self.transform, grey.expand(3, -1, -1).contiguous()).clamp_(0.0, 1.0)
        return apply_eval_transform(self.transform, _open_rgb(Path(item) if isinstance(item, str) else item))

    def describe(self) -> str:
        t = self.transform
        return (f"{t.interpolation} resize ({t.resize_mode} side to {t.scale_size[0]}x{t.scale_size[1]}), "
                f"crop {t.size[0]}x{t.size[1]} (the teacher's evaluation transform)")


def teacher_view(teacher: Any) -> ImageView:
    """The teacher's evaluation view (its ``eval_transform``); without one, the student's view at its resolution."""
    transform = getattr(teacher, "eval_transform", None)
    if transform is None:
        return StudentView(tuple(int(v) for v in teacher.resolution))
    return TeacherView(transform)


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
