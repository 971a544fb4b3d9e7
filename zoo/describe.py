"""Static facts about registered backbones (params, stride, dims), read off a
model built on the meta device: no memory, no weights, no compute."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from zoo.registry import BackboneEntry


@dataclass
class BackboneFacts:
    name: str
    family: str
    timm_name: str | None
    params_m: float  # without classifier (students carry none)
    paper_params_m: float | None  # Table 7, with a 1000-class head
    default_resolution: list[int]
    stride: int
    summary_dim: int
    feature_dim: int
    in_table7: bool
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


def describe(entry: BackboneEntry) -> BackboneFacts:
    with torch.device("meta"):
        model = entry.build()
    return BackboneFacts(
        name=entry.name,
        family=entry.family,
        timm_name=entry.timm_name,
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        paper_params_m=entry.paper_params_m,
        default_resolution=list(entry.default_resolution),
        stride=model.stride,
        summary_dim=model.summary_dim,
        feature_dim=model.feature_dim,
        in_table7=entry.in_table7,
        description=entry.description,
    )
