"""ViT students with a CLS token and cropped position embeddings (CPE).

AM-RADIO (Section 4) gives its ViT students a 128×128 grid of learned
position embeddings. In training, each sample gets a random crop of that grid
(random scale and aspect), resized to the input's patch grid; at inference
the whole grid is resized to ``max(h, w)`` per side and the top-left ``h×w``
window is used. So a ViT trained at 224 px runs at any size, non-square
included. The transformer itself is timm's ``VisionTransformer``.

:class:`VitCpeConfig` is the architecture as data (width, depth, heads, MLP
ratio, patch size, CPE grid): the registry's ViT-CPE entries, backbone files
(:mod:`zoo.backbones.files`) and the ViT-CPE search space all build through
:func:`build_vit_cpe_backbone`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from zoo.backbone import Backbone, BackboneOutput, SizeRule, as_hw
from zoo.errors import ConfigError


@dataclass(frozen=True)
class VitCpeConfig:
    """A ViT-CPE architecture.

    Args:
        embed_dim: token width (a multiple of ``num_heads``).
        depth: transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / token width.
        patch_size: pixels per patch side (the feature stride).
        cpe_grid: side of the learned position table (128 in the paper).
    """

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 16
    cpe_grid: int = 128

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "cpe_grid"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ViT-CPE config: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) or not self.mlp_ratio > 0:
            raise ConfigError(f"ViT-CPE config: mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        object.__setattr__(self, "mlp_ratio", float(self.mlp_ratio))
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"ViT-CPE config: embed_dim {self.embed_dim} is not a multiple of num_heads "
                              f"{self.num_heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VitCpeConfig":
        """A config from a mapping of its fields; an unknown field is a ConfigError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"ViT-CPE config: unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(known))}")
        return cls(**dict(data))


def build_vit_cpe_backbone(config: VitCpeConfig | Mapping[str, Any], resolution: int | tuple[int, int] = 224,
                           name: str | None = None, **kwargs: Any) -> "VitCpeBackbone":
    """Build a ViT-CPE from its config; ``resolution`` is checked against the patch size.

    ``kwargs``: ``drop_path_rate``, ``pretrained_file``.
    """
    if not isinstance(config, VitCpeConfig):
        config = VitCpeConfig.from_dict(config)
    return VitCpeBackbone(name=name or f"vit-cpe-{config.embed_dim}x{config.depth}-p{config.patch_size}",
                          resolution=resolution, **config.to_dict(), **kwargs)


class CroppedPositionEmbedding(nn.Module):
    """A ``grid×grid`` table of learned positions, cropped and resized per input.

    Args:
        dim: embedding width.
        grid: positions per side (128 in the paper).
        min_area: smallest crop area (fraction of the table) in training.
        max_aspect: largest aspect-ratio jitter of the crop in training.
    """

    def __init__(self, dim: int, grid: int = 128, min_area: float = 0.1, max_aspect: float = 4 / 3) -> None:
        super().__init__()
        self.grid = grid
        self.min_area = min_area
        self.max_aspect = max_aspect
        self.table = nn.Parameter(torch.zeros(1, dim, grid, grid))
        trunc_normal_(self.table, std=0.02)

    def forward(self, batch_size: int, height: int, width: int) -> torch.Tensor:
        """Position embeddings ``[B or 1, h, w, dim]`` for a ``h×w`` patch grid."""
        if self.training:
            return self._random_crops(batch_size, height, width)
        return self._inference_window(height, width)

    def _inference_window(self, height: int, width: int) -> torch.Tensor:
        side = max(height, width)
        table = self.table
        if side != self.grid:
            table = F.interpolate(table.float(), size=(side, side), mode="bilinear", align_corners=True).to(table.dtype)
        return table[:, :, :height, :width].permute(0, 2, 3, 1)

    def _random_crops(self, batch_size: int, height: int, width: int) -> torch.Tensor:
        device = self.table.device
        # The crop keeps the input's aspect (as inference does), jittered, at a random area.
        area = torch.empty(batch_size, device=device).uniform_(self.min_area, 1.0)
        log_aspect = torch.empty(batch_size, device=device).uniform_(-math.log(self.max_aspect), math.log(self.max_aspect))
        side = max(height, width)
        base_w, base_h = width / side, height / side
        scale_w = (area.sqrt() * base_w * log_aspect.exp().sqrt()).clamp(max=1.0)
        scale_h = (area.sqrt() * base_h / log_aspect.exp().sqrt()).clamp(max=1.0)
        # Window centre so that the crop stays inside the table ([-1, 1] coordinates).
        centre_x = (torch.rand(batch_size, device=device) * 2 - 1) * (1 - scale_w)
        centre_y = (torch.rand(batch_size, device=device) * 2 - 1) * (1 - scale_h)
        lin_x = torch.linspace(-1, 1, width, device=device)
        lin_y = torch.linspace(-1, 1, height, device=device)
        grid_x = centre_x[:, None, None] + scale_w[:, None, None] * lin_x[None, None, :]
        grid_y = centre_y[:, None, None] + scale_h[:, None, None] * lin_y[None, :, None]
        grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)  # [B, h, w, 2]
        table = self.table.float().expand(batch_size, -1, -1, -1)
        crops = F.grid_sample(table, grid.float(), mode="bilinear", align_corners=True)
        return crops.to(self.table.dtype).permute(0, 2, 3, 1)


class VitCpeBackbone(Backbone):
    """timm ViT blocks + CLS token + cropped position embeddings.

    ``summary`` is the final CLS token, ``features`` the patch tokens as an
    NCHW map at stride ``patch_size``.
    """

    def __init__(
        self,
        name: str,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        cpe_grid: int = 128,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        resolution: int | tuple[int, int] = 224,  # accepted for a uniform builder signature
        pretrained_file: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.vit = VisionTransformer(
            img_size=224,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=0,
            class_token=True,
            global_pool="token",
            pos_embed="none",
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
        )
        self.cpe = CroppedPositionEmbedding(embed_dim, grid=cpe_grid)
        self.summary_dim = self.feature_dim = embed_dim
        self.stride = patch_size
        self.size_rule = SizeRule(multiple=patch_size, minimum=patch_size, maximum=patch_size * cpe_grid)
        self.check_resolution(*as_hw(resolution))  # a size the patches cannot tile fails here, not mid-run
        self.config = VitCpeConfig(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                   patch_size=patch_size, cpe_grid=cpe_grid)
        if pretrained_file:
            from zoo.checkpoints import load_state_dict_file

            self.load_state_dict(load_state_dict_file(pretrained_file))

    def first_layer_parameters(self) -> list[nn.Parameter]:
        return list(self.vit.patch_embed.parameters())

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        batch = x.shape[0]
        if not torch.compiler.is_compiling():
            self.check_resolution(int(x.shape[-2]), int(x.shape[-1]))
        tokens = self.vit.patch_embed(x)  # [B, h, w, C] (dynamic_img_size keeps NHWC)
        _, grid_h, grid_w, dim = tokens.shape
        tokens = tokens + self.cpe(batch, grid_h, grid_w)
        tokens = tokens.reshape(batch, grid_h * grid_w, dim)
        tokens = torch.cat([self.vit.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = self.vit.norm_pre(self.vit.pos_drop(tokens))
        tokens = self.vit.norm(self.vit.blocks(tokens))
        summary = tokens[:, 0]
        features = tokens[:, 1:].transpose(1, 2).reshape(batch, dim, grid_h, grid_w)
        return BackboneOutput(summary, features)
