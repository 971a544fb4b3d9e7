"""Crop boxes and decoding: every view is a pure function of ``(seed, step, sample index)``.

:func:`load_crop` decodes an image (a file path or a :class:`~zoo.data.shards.ShardSample`), crops the
box, resizes it to the requested size and returns a float tensor. For JPEG it asks the decoder for a
1/2, 1/4 or 1/8 scale (Pillow's ``draft``: libjpeg scales in the DCT domain, several times faster than a
full decode) whenever the crop box, mapped onto the smaller image, still has at least
:data:`DRAFT_MARGIN` times the output's pixels in each direction (the last resize never upsamples); the box is mapped exactly (fractional
coordinates), so the view shows the same region either way and only the last resampling step differs.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

BoxFn = Callable[[int, int], Sequence[float]]
# A draft scale is used when the box, once the decoder has downscaled, keeps at least this many times the
# output size in each direction: the last resize never upsamples. Measured on 500x375 and 1024x768 JPEGs
# at 64-224 px crops: mean |draft - full decode| = 0.002 (half a grey level), p99 of the max 0.02.
DRAFT_MARGIN = 1.0
_draft_enabled = os.environ.get("ZOO_JPEG_DRAFT", "1") != "0"


def set_draft(enabled: bool) -> bool:
    """Turn draft-mode JPEG decoding on or off for this process (benchmarks compare both); the old value."""
    global _draft_enabled
    old, _draft_enabled = _draft_enabled, bool(enabled)
    return old


def sample_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of step ``step``: a pure function of the three."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(index)]))


def random_crop_box(width: int, height: int, rng: np.random.Generator, scale: Sequence[float] = (0.25, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3), attempts: int = 10) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(left, top, right, bottom)`` (torchvision's algorithm)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    return (0, 0, width, height)  # torchvision falls back to (about) the whole image too


def center_crop_box(width: int, height: int, aspect_hw: Sequence[int] | None = None) -> tuple[int, int, int, int]:
    """The largest centred box with the aspect of ``aspect_hw`` (h, w); the whole image if None."""
    if aspect_hw is None:
        return (0, 0, width, height)
    target = aspect_hw[1] / aspect_hw[0]  # width / height
    if width / height > target:
        w, h = int(round(height * target)), height
    else:
        w, h = width, int(round(width / target))
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def open_image(item: Any) -> Image.Image:
    """A lazily decoding PIL image of a path or of anything with ``read_bytes()`` (a shard member)."""
    if isinstance(item, (str, os.PathLike)):
        return Image.open(item)
    return Image.open(io.BytesIO(item.read_bytes()))


def image_size(item: Any) -> tuple[int, int]:
    """``(width, height)`` from the image header (no decoding)."""
    with open_image(item) as image:
        return image.size


def _draft_scale(image: Image.Image, box: Sequence[float], size_hw: tuple[int, int]) -> int:
    """Ask a JPEG decoder for the largest 1/2^k scale that keeps the box at >= DRAFT_MARGIN x the output; the scale."""
    if not _draft_enabled or image.format != "JPEG":
        return 1
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    factor = min(box_w / (size_hw[1] * DRAFT_MARGIN), box_h / (size_hw[0] * DRAFT_MARGIN))
    if factor < 2:
        return 1
    width, height = image.size
    # draft() picks the largest scale whose image is at least this size
    wanted = (max(1, math.ceil(width / factor)), max(1, math.ceil(height / factor)))
    result = image.draft("RGB", wanted)
    if result is None:
        return 1
    scaled_box = result[1]  # (0, 0, width / scale, height / scale)
    return max(1, int(round(width / scaled_box[2])))


def load_crop(item: Any, box_fn: BoxFn, size_hw: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """Decode ``item``, crop ``box_fn(width, height)``, resize to ``size_hw``: float [3, h, w] in [0, 1].

    ``box_fn`` gets the full image size (from the header), so the box never depends on draft decoding.
    """
    with open_image(item) as image:
        box = tuple(box_fn(*image.size))
        scale = _draft_scale(image, box, size_hw)
        image = image.convert("RGB")
        if scale > 1:
            box = tuple(v / scale for v in box)
        view = image.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    if flip:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(view, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def readable(item: Any) -> bool:
    """True when PIL can fully decode the image (catches corrupt and truncated files)."""
    try:
        with open_image(item) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "skip this file"
        return False


def describe_item(item: Any) -> str:
    """A path as text, a shard member as ``shard.tar:key``."""
    return str(item) if isinstance(item, (str, Path)) else getattr(item, "label", str(item))
