"""What every teacher kind shares: the output, the parsed spec, the frozen module, the kind registry.

A teacher *kind* (``clip``, ``dinov2``, ``sam``...) is one module of this
package that registers a :class:`TeacherKind` when imported; the registry
imports every module of the package on the first lookup, so a new kind is
one new file (see README, "A teacher kind"). Kinds from elsewhere (a test, a
user's own code) call :func:`register_teacher_kind` themselves.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ResolutionError, WeightsNotFoundError, unknown_name
from zoo.sizes import SizeRule, as_hw
from zoo.teachers.hub import RemoteWeights, file_sha256
from zoo.teachers.transforms import EvalTransform

TINY = "tiny"
# Seed of the random tiny teachers: the same weights in every process and run.
TINY_SEED = 20231211
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt", ".npz")


class TeacherOutput(NamedTuple):
    """What a teacher (or a student's adaptor heads for it) produces.

    ``summary`` is ``None`` for a teacher without one (SAM: ``has_summary`` False).
    """

    summary: Optional[torch.Tensor]  # [B, Ds], or None
    features: torch.Tensor  # [B, Df, h, w]


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher spec string."""

    spec: str
    kind: str  # a registered kind: "clip", "dinov2", "sam", ...
    model: str  # the kind's model name (open_clip name, timm name optionally .tag), or "tiny"
    tag: str | None = None  # pretrained tag (open_clip)
    weights_file: str | None = None  # explicit local weights file
    resolution: tuple[int, int] | None = None  # the @HxW suffix

    @property
    def is_tiny(self) -> bool:
        return self.model == TINY


def looks_like_path(text: str) -> bool:
    """Whether the third field of a spec is a file rather than a tag."""
    return (
        "/" in text
        or os.sep in text
        or text.startswith(("~", "."))
        or text.lower().endswith(WEIGHT_SUFFIXES)
        or os.path.exists(text)
    )


def weights_path(text: str, source: str) -> str:
    """The resolved path of the spec's weights file, which must exist."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"teacher spec '{text}': weights file not found: {path}")
    return str(path.resolve())


def check_resolution(text: str, resolution: tuple[int, int], patch_size: int) -> None:
    """``@HxW`` must be a positive multiple of the teacher's patch size."""
    SizeRule(multiple=patch_size, minimum=patch_size).check(*resolution, f"teacher '{text}'")


def split_resolution(spec: str) -> tuple[str, tuple[int, int] | None]:
    """``"dinov2:x@448"`` -> ``("dinov2:x", (448, 448))``; other ``@`` (paths) stay."""
    match = re.fullmatch(r"(.*)@(\d+(?:[xX]\d+)?)", spec)
    if not match:
        return spec, None
    return match.group(1), as_hw(match.group(2))


def fixed_seed_build(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a constructor under :data:`TINY_SEED` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return fn(*args, **kwargs)


# -------------------------------------------------------------------- the teacher


class Teacher(nn.Module):
    """A frozen teacher: resize + normalise + forward without grad, float32 outputs.

    Always in eval mode (``train()`` is a no-op) with ``requires_grad=False``;
    on CUDA it runs under bf16 autocast. ``summary_dim`` 0 means the teacher
    has no summary (``has_summary`` False, ``TeacherOutput.summary`` None).
    ``eval_transform`` is the teacher's own evaluation preprocessing (as
    open_clip / timm evaluate it), for scoring the teacher itself.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: TeacherSpec,
        *,
        summary_dim: int,
        feature_dim: int,
        resolution: tuple[int, int],
        patch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        is_random: bool,
        weights_file: str | None,
        model_name: str,
        pretrained_tag: str | None = None,
        name: str | None = None,
        eval_transform: EvalTransform | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec.spec
        self.kind = spec.kind
        self.name = name or spec.kind
        self.summary_dim = int(summary_dim)
        self.feature_dim = int(feature_dim)
        self.resolution = as_hw(resolution)
        self.patch_size = int(patch_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.is_random = bool(is_random)
        self.weights_file = weights_file
        self.model_name = model_name
        self.pretrained_tag = pretrained_tag
        self.eval_transform = eval_transform or EvalTransform(self.resolution, mean=self.mean, std=self.std)
        if self.eval_transform.mean != self.mean or self.eval_transform.std != self.std:
            raise ValueError(f"teacher '{self.name}': eval_transform normalises differently from the teacher")
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Teacher":
        """Teachers stay in eval mode whatever the surrounding module does."""
        return super().train(False)

    @property
    def has_summary(self) -> bool:
        """False for features-only teachers (SAM): no summary head, no summary loss term."""
        return self.summary_dim > 0

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def grid_size(self) -> tuple[int, int]:
        """``features``' spatial size at the teacher's resolution."""
        return (self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size -> the teacher's resolution and normalisation."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ResolutionError(f"teacher '{self.name}' expects images [B, 3, H, W], got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        if tuple(images.shape[-2:]) != self.resolution:
            images = F.interpolate(images, size=self.resolution, mode="bilinear", align_corners=False, antialias=True)
        return (images - self._mean) / self._std

    def _forward_model(self, x: torch.Tensor) -> TeacherOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TeacherOutput:
        x = self.preprocess(images)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = self._forward_model(x)
        summary = out.summary.float() if out.summary is not None else None
        return TeacherOutput(summary, out.features.float().contiguous())

    def describe(self) -> dict[str, Any]:
        """The teacher as recorded in ``summary.json`` and cache manifests (keys fixed: caches compare them)."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "name": self.name,
            "model": self.model_name,
            "pretrained_tag": self.pretrained_tag,
            "summary_dim": self.summary_dim,
            "feature_dim": self.feature_dim,
            "resolution": list(self.resolution),
            "patch_size": self.patch_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "random": self.is_random,
            "weights": "random teacher (fixed-seed random weights, not pretrained)" if self.is_random else "pretrained",
            "weights_file": self.weights_file,
            "weights_sha256": file_sha256(self.weights_file) if self.weights_file else None,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, spec={self.spec!r}, resolution={self.resolution}, random={self.is_random}"


# ------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class TeacherKind:
    """Everything zoo needs to know about one kind of teacher.

    ``parse(text, model, source, resolution)`` validates the rest of a spec
    ``kind:model[:source][@res]`` (``source``: a tag or a file, or None) and
    returns a :class:`TeacherSpec`; ``build(spec, weights_file)`` loads the
    teacher from a local file; ``remote(spec)`` says where pretrained weights
    live (None: the kind only takes local files); ``build_tiny(spec)`` makes
    the fixed-seed random ``kind:tiny`` (None: no tiny variant), whose
    ``@RES`` must be a multiple of ``tiny_patch_size``.
    """

    name: str
    parse: Callable[[str, str, Optional[str], Optional[tuple[int, int]]], TeacherSpec]
    build: Callable[[TeacherSpec, str], Teacher]
    remote: Optional[Callable[[TeacherSpec], RemoteWeights]] = None
    build_tiny: Optional[Callable[[TeacherSpec], Teacher]] = None
    tiny_patch_size: int = 16
    examples: tuple[str, ...] = ()
    description: str = ""

    def examples_text(self) -> str:
        """``"a, b or c"``: for messages."""
        items = list(self.examples) + ([f"{self.name}:tiny"] if self.build_tiny else [])
        if len(items) <= 1:
            return "".join(items) or f"{self.name}:MODEL"
        return ", ".join(items[:-1]) + " or " + items[-1]


_KINDS: dict[str, TeacherKind] = {}
_kinds_loaded = False


def register_teacher_kind(kind: TeacherKind, overwrite: bool = False) -> TeacherKind:
    """Add a kind to the registry (a module of this package does it at import)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", kind.name):
        raise ValueError(f"teacher kind name '{kind.name}': lower-case letters, digits and '_' only")
    if kind.name in _KINDS and not overwrite and _KINDS[kind.name] is not kind:
        raise ValueError(f"teacher kind '{kind.name}' is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_teacher_kind(name: str) -> None:
    """Remove a kind (tests that register their own)."""
    _KINDS.pop(name, None)


def _load_kinds() -> None:
    """Import every module of this package once: each kind module registers itself."""
    global _kinds_loaded
    if _kinds_loaded:
        return
    _kinds_loaded = True
    package = importlib.import_module("zoo.teachers")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"zoo.teachers.{info.name}")


def teacher_kinds() -> tuple[str, ...]:
    """The registered kind names, sorted."""
    _load_kinds()
    return tuple(sorted(_KINDS))


def get_teacher_kind(name: str) -> TeacherKind:
    """The registered kind ``name``; an unknown one names the closest kinds."""
    _load_kinds()
    if name not in _KINDS:
        raise unknown_name("teacher kind", name, sorted(_KINDS))
    return _KINDS[name]
