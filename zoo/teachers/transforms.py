"""A teacher's own evaluation preprocessing, as data read from its library's config.

Distillation feeds teachers bilinear, antialiased resizes of the student's
crops (``Teacher.preprocess``). Scoring a *teacher* (``zoo eval``) must use the
transform its library evaluates it with, or the numbers are not comparable
with published ones: open_clip's ``preprocess_cfg`` (size, interpolation,
``resize_mode``, mean/std) and timm's ``pretrained_cfg`` (interpolation,
``crop_pct``, ``crop_mode``, mean/std). :class:`EvalTransform` holds those
values (read from the configs, never copied by hand) and
:func:`apply_eval_transform` applies them with torchvision's resize and crop,
the calls open_clip and timm make themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash", "longest")
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EvalTransform:
    """How a teacher's library evaluates it: resize, centre crop, normalise.

    ``resize_mode``: ``"shortest"`` resizes the shorter side to
    ``size / crop_pct`` (keeping the aspect ratio) and centre-crops ``size``;
    ``"squash"`` resizes both sides to ``size / crop_pct`` and centre-crops;
    ``"longest"`` fits the longer side to ``size / crop_pct`` and pads the
    centre crop with ``fill`` (0-255 per channel).
    """

    size: tuple[int, int]  # (h, w): the teacher's input resolution
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    resize_mode: str = "shortest"
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    fill: tuple[int, ...] = (0, 0, 0)

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(int(v) for v in self.size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        fill = (self.fill,) * 3 if isinstance(self.fill, (int, float)) else self.fill
        object.__setattr__(self, "fill", tuple(int(v) for v in fill))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation '{self.interpolation}': expected one of {', '.join(INTERPOLATIONS)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode '{self.resize_mode}': expected one of {', '.join(RESIZE_MODES)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct {self.crop_pct}: expected 0 < crop_pct <= 1")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size {self.size}: expected (h, w) >= 1")

    @property
    def scale_size(self) -> tuple[int, int]:
        """The size the resize step aims at before the crop (timm's ``floor(size / crop_pct)``)."""
        return (math.floor(self.size[0] / self.crop_pct), math.floor(self.size[1] / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size), "interpolation": self.interpolation, "crop_pct": self.crop_pct,
            "resize_mode": self.resize_mode, "mean": list(self.mean), "std": list(self.std), "fill": list(self.fill),
        }

    def __call__(self, image: Any, normalize: bool = False) -> torch.Tensor:
        return apply_eval_transform(self, image, normalize=normalize)

    # ---------------------------------------------------------- from the libraries

    @classmethod
    def from_open_clip(cls, preprocess_cfg: Mapping[str, Any], size: Sequence[int] | int | None = None) -> "EvalTransform":
        """From an open_clip ``preprocess_cfg`` (``open_clip.get_model_preprocess_cfg(model)``).

        ``size`` overrides the config's (a teacher run at ``@RES``). Missing
        keys take open_clip's :class:`PreprocessCfg` defaults.
        """
        from dataclasses import asdict

        from open_clip.transform import PreprocessCfg

        cfg = {**asdict(PreprocessCfg()), **{k: v for k, v in preprocess_cfg.items() if v is not None}}
        interpolation = cfg["interpolation"]
        # open_clip evaluates "random" (a training setting) as bicubic
        interpolation = "bilinear" if interpolation == "bilinear" else "bicubic"
        return cls(
            size=_hw(size if size is not None else cfg["size"]),
            interpolation=interpolation,
            crop_pct=1.0,  # open_clip never crops inside the resized image
            resize_mode=cfg["resize_mode"],
            mean=_triple(cfg["mean"]),
            std=_triple(cfg["std"]),
            fill=_triple(cfg.get("fill_color", 0)),
        )

    @classmethod
    def from_timm(cls, pretrained_cfg: Mapping[str, Any], size: Sequence[int] | int | None = None) -> "EvalTransform":
        """From a timm ``pretrained_cfg`` (``model.pretrained_cfg``), as ``resolve_data_config`` reads it.

        ``size`` overrides the config's ``input_size`` (a teacher run at its own resolution).
        """
        from timm.data import resolve_data_config

        data = resolve_data_config(pretrained_cfg=dict(pretrained_cfg), use_test_size=True)
        crop_mode = data.get("crop_mode") or "center"
        resize_mode = {"center": "shortest", "squash": "squash", "border": "longest"}[crop_mode]
        mean = _triple(data["mean"])
        return cls(
            size=_hw(size if size is not None else data["input_size"][-2:]),
            interpolation=data.get("interpolation") or "bilinear",
            crop_pct=float(data.get("crop_pct") or 0.875),
            resize_mode=resize_mode,
            mean=mean,
            std=_triple(data["std"]),
            # timm's "border" mode pads with the mean colour
            fill=tuple(round(255 * v) for v in mean) if resize_mode == "longest" else (0, 0, 0),
        )


def _hw(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(v) for v in size)
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _triple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3


def _interpolation_mode(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}[name]


def _dimensions(image: Any) -> tuple[int, int]:
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    width, height = image.size
    return height, width


def apply_eval_transform(transform: EvalTransform, image: Any, normalize: bool = False) -> torch.Tensor:
    """One image (PIL, or a [3, H, W] uint8/float tensor) -> float [3, h, w] at ``transform.size``.

    Without ``normalize`` the result is in [0, 1], what a :class:`~zoo.teachers.Teacher`
    takes (it normalises with the same mean/std); with it, what open_clip's /
    timm's eval transform returns. PIL input gives their results exactly;
    tensor input goes through torchvision's antialiased tensor resize (close to PIL).
    """
    import torchvision.transforms.functional as TF
    from PIL import Image

    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor [3, H, W], got {tuple(image.shape)}")
    else:
        raise TypeError(f"expected a PIL image or a [3, H, W] tensor, got {type(image).__name__}")
    mode = _interpolation_mode(transform.interpolation)
    height, width = _dimensions(image)
    scale_h, scale_w = transform.scale_size
    if transform.resize_mode == "squash":
        image = TF.resize(image, [scale_h, scale_w], interpolation=mode, antialias=True)
    elif transform.resize_mode == "shortest" and scale_h == scale_w:
        image = TF.resize(image, scale_h, interpolation=mode, antialias=True)  # shorter side, as torchvision's Resize(int)
    else:
        # keep the aspect ratio: the shorter (shortest) or longer (longest) side fits its target
        ratios = (height / scale_h, width / scale_w)
        ratio = max(ratios) if transform.resize_mode == "longest" else min(ratios)
        image = TF.resize(image, [round(height / ratio), round(width / ratio)], interpolation=mode, antialias=True)
    if transform.resize_mode == "longest":
        image = _center_crop_or_pad(image, transform.size, transform.fill)
    else:
        image = TF.center_crop(image, list(transform.size))
    tensor = TF.pil_to_tensor(image) if not isinstance(image, torch.Tensor) else image
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if normalize:
        mean = torch.tensor(transform.mean).view(3, 1, 1)
        std = torch.tensor(transform.std).view(3, 1, 1)
        tensor = (tensor - mean) / std
    return tensor


def _center_crop_or_pad(image: Any, size: tuple[int, int], fill: tuple[int, ...]) -> Any:
    """Pad to at least ``size`` with ``fill`` (centred), then centre-crop: open_clip's CenterCropOrPad."""
    import torchvision.transforms.functional as TF

    height, width = _dimensions(image)
    pad_h, pad_w = max(size[0] - height, 0), max(size[1] - width, 0)
    if pad_h and not isinstance(image, torch.Tensor) or pad_w and not isinstance(image, torch.Tensor):
        image = TF.pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=tuple(fill))
    elif pad_h or pad_w:  # torchvision's tensor pad takes one fill value: paste onto a filled canvas
        scale = 1 if image.dtype == torch.uint8 else 255.0
        canvas = torch.tensor(fill, dtype=torch.float32).div(scale).to(image.dtype).view(3, 1, 1)
        canvas = canvas.expand(3, height + pad_h, width + pad_w).clone()
        canvas[:, pad_h // 2: pad_h // 2 + height, pad_w // 2: pad_w // 2 + width] = image
        image = canvas
    return TF.center_crop(image, list(size))


def eval_batch(transform: EvalTransform, images: Sequence[Any], normalize: bool = False) -> torch.Tensor:
    """Several images -> a [B, 3, h, w] batch through :func:`apply_eval_transform`."""
    return torch.stack([apply_eval_transform(transform, image, normalize=normalize) for image in images])
