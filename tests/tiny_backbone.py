"""A conv + BatchNorm backbone at stride 4 that builds, benches and exports in seconds, and a helper that
registers it under a name for one test module (other tests list every registry entry)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from zoo.backbone import Backbone, BackboneOutput, SizeRule
from zoo.registry import BackboneEntry, register


class TinyNet(Backbone):
    size_rule = SizeRule(multiple=4, minimum=8)

    def __init__(self, name: str = "tiny", resolution=16, **_) -> None:
        super().__init__()
        self.name = name
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.summary_dim = self.feature_dim = 8
        self.stride = 4

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        features = torch.relu(self.bn(self.conv(x)))
        return BackboneOutput(features.mean((2, 3)), features)


def registered(entry_name: str) -> Iterator[None]:
    """Yield with :class:`TinyNet` registered as ``entry_name`` (a module-scoped fixture's body)."""
    from zoo.registry import _REGISTRY

    def build(name: str, resolution: object, **_: object) -> TinyNet:  # the registry passes ``name=``
        return TinyNet(name, resolution)

    register(BackboneEntry(entry_name, "tiny", build, default_resolution=(16, 16)), overwrite=True)
    yield
    _REGISTRY.pop(entry_name, None)
