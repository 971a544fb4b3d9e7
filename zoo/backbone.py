"""The one backbone contract every student follows.

``forward(x) -> BackboneOutput(summary [B, D], features [B, C, h, w])`` with
``summary_dim`` (D), ``feature_dim`` (C) and ``stride`` (input pixels per
feature cell) known before the first forward. No classifier lives in a
student: the adaptor heads of the distillation recipe sit on top.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from zoo.errors import ResolutionError


class BackboneOutput(NamedTuple):
    """What every backbone returns: a pooled/CLS summary and an NCHW map."""

    summary: torch.Tensor  # [B, D]
    features: torch.Tensor  # [B, C, h, w]


def as_hw(resolution: int | Sequence[int]) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(320, 480)`` stays; ``"320x480"`` is parsed."""
    if isinstance(resolution, str):
        parts = resolution.lower().replace("×", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ResolutionError(f"resolution '{resolution}' is not N or HxW (e.g. 224 or 320x480)") from None
        resolution = values[0] if len(values) == 1 else values
    if isinstance(resolution, int):
        return (resolution, resolution)
    h, w = (int(v) for v in resolution)
    return (h, w)


def nearest_multiples(size: int, multiple: int, minimum: int | None = None) -> list[int]:
    """The multiples of ``multiple`` just below and above ``size`` (for error hints)."""
    minimum = minimum or multiple
    below = max(minimum, (size // multiple) * multiple)
    above = max(minimum, -(-size // multiple) * multiple)
    return sorted({below, above})


class SizeRule(NamedTuple):
    """Which input sizes an architecture accepts.

    ``multiple``: each side must be a multiple of it; ``minimum``/``maximum``
    bound each side; ``square``: height must equal width.
    """

    multiple: int = 1
    minimum: int = 32
    maximum: int | None = None
    square: bool = False

    def describe(self) -> str:
        parts = []
        if self.multiple > 1:
            parts.append(f"multiples of {self.multiple}")
        parts.append(f"at least {self.minimum}")
        if self.maximum:
            parts.append(f"at most {self.maximum}")
        text = "sides " + ", ".join(parts)
        return text + (", square only" if self.square else "")

    def check(self, height: int, width: int, model_name: str = "this backbone") -> None:
        """Raise a :class:`ResolutionError` naming valid sizes if ``height×width`` is refused."""
        problems = []
        for side_name, side in (("height", height), ("width", width)):
            if side < self.minimum:
                problems.append(f"{side_name} {side} < {self.minimum}")
            elif self.maximum and side > self.maximum:
                problems.append(f"{side_name} {side} > {self.maximum}")
            elif side % self.multiple:
                near = " or ".join(str(v) for v in nearest_multiples(side, self.multiple, self.minimum))
                problems.append(f"{side_name} {side} is not a multiple of {self.multiple} (try {near})")
        if self.square and height != width:
            problems.append(f"{height}x{width} is not square (try {max(height, width)}x{max(height, width)})")
        if problems:
            raise ResolutionError(
                f"{model_name} cannot take {height}x{width}: {'; '.join(problems)} ({self.describe()})"
            )


class Backbone(nn.Module):
    """Base class of every student backbone.

    Subclasses set ``summary_dim``, ``feature_dim``, ``stride``, ``size_rule``
    and implement :meth:`forward`. ``name`` is the registry name.
    """

    name: str = "backbone"
    summary_dim: int
    feature_dim: int
    stride: int
    size_rule: SizeRule = SizeRule()

    def check_resolution(self, height: int, width: int) -> None:
        self.size_rule.check(height, width, self.name)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of ``features`` for an input of ``height×width``."""
        return (-(-height // self.stride), -(-width // self.stride))

    def first_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the first layer (the tests check gradients reach them)."""
        return [next(self.parameters())]

    def fuse(self) -> "Backbone":
        """Switch to deploy mode (e.g. fold BatchNorm into convolutions) where the
        family supports it; a no-op otherwise. Returns ``self``."""
        return self

    @property
    def supports_fuse(self) -> bool:
        return type(self).fuse is not Backbone.fuse

    def forward(self, x: torch.Tensor) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError
