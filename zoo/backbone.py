"""The one backbone contract every student follows.

``forward(x) -> BackboneOutput(summary [B, D], features [B, C, h, w])`` with
``summary_dim`` (D), ``feature_dim`` (C) and ``stride`` (input pixels per
feature cell) known before the first forward. No classifier lives in a
student: the adaptor heads of the distillation recipe sit on top.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from zoo.sizes import SizeRule, as_hw, as_hw_list, nearest_multiples  # noqa: F401 (re-exported)


class BackboneOutput(NamedTuple):
    """What every backbone returns: a pooled/CLS summary and an NCHW map."""

    summary: torch.Tensor  # [B, D]
    features: torch.Tensor  # [B, C, h, w]


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
