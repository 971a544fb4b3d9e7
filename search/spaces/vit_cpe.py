"""The ViT-CPE search space (``--space vit-cpe``): ViT students with cropped position embeddings.

Width, depth, heads, MLP ratio and patch size of :class:`zoo.backbones.vit_cpe.VitCpeConfig`
(the position table stays at the paper's 128x128). Widths are multiples of 96, so every head
count offered (up to 12) divides them; patch sizes are those that tile every searched
resolution. ViT-Ti/S/B-16 are points of the space (``--enqueue-variants all``).

This file is the whole space: it registers itself, builds through the ``vit-cpe`` backbone-file
family and exports as a backbone file like any other space.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from zoo.backbones.vit_cpe import VitCpeConfig
from zoo.errors import ConfigError, ResolutionError
from zoo.search.space import CATEGORICAL, INT, Candidate, DeclaredSpace, Param, register_space

WIDTH_RANGE = (96, 768, 96)
DEPTH_RANGE = (1, 12)
HEADS_CHOICES = (2, 3, 4, 6, 8, 12)  # all divide every multiple of 96
MLP_RATIO_CHOICES = (2.0, 3.0, 4.0)
PATCH_CHOICES = (8, 14, 16, 32)
VARIANTS = ("vit-t16-cpe", "vit-s16-cpe", "vit-b16-cpe")  # registry names inside the space


class VitCpeSpace(DeclaredSpace):
    name = "vit-cpe"
    family = "vit-cpe"

    def check_resolution(self, resolution: Any) -> int:
        super().check_resolution(resolution)
        if not any(resolution % p == 0 for p in PATCH_CHOICES):
            raise ResolutionError(f"search resolution {resolution} is not a multiple of any patch size "
                                  f"({', '.join(map(str, PATCH_CHOICES))}); try {16 * max(2, round(resolution / 16))}")
        return resolution

    def patch_choices(self) -> tuple[int, ...]:
        choices = tuple(p for p in PATCH_CHOICES if all(r % p == 0 and r // p >= 2 for r in self.resolutions))
        if not choices:
            raise ResolutionError(f"no patch size tiles every searched resolution {list(self.resolutions)}")
        return choices

    def declare(self) -> list[Param]:
        low, high, step = WIDTH_RANGE
        params = [
            Param("width", INT, "token width (embed_dim)", low=low, high=high, step=step),
            Param("depth", INT, "transformer blocks", low=DEPTH_RANGE[0], high=DEPTH_RANGE[1]),
            Param("heads", CATEGORICAL, "attention heads (divide the width)", choices=HEADS_CHOICES),
            Param("mlp_ratio", CATEGORICAL, "MLP hidden width / token width", choices=MLP_RATIO_CHOICES),
            Param("patch_size", CATEGORICAL, "pixels per patch side (the feature stride)",
                  choices=self.patch_choices()),
        ]
        if self.searches_resolution:
            params.append(Param("resolution", CATEGORICAL, "input resolution (square)", choices=self.resolutions))
        return params

    def params_to_candidate(self, values: Mapping[str, Any]) -> Candidate:
        resolution = self.check_values(values)
        config = VitCpeConfig(embed_dim=values["width"], depth=values["depth"], num_heads=values["heads"],
                              mlp_ratio=float(values["mlp_ratio"]), patch_size=values["patch_size"])
        return Candidate(family=self.family, config=config, resolution=resolution)

    def config_to_params(self, config: VitCpeConfig, resolution: int | None = None) -> dict[str, Any]:
        resolution = self.resolutions[0] if resolution is None else resolution
        if resolution not in self.resolutions:
            raise ConfigError(f"resolution {resolution} is not searched (space: {list(self.resolutions)})")
        if config.cpe_grid != VitCpeConfig.cpe_grid:
            raise ConfigError(f"cpe_grid={config.cpe_grid} is fixed to {VitCpeConfig.cpe_grid} in the search")
        values: dict[str, Any] = {"width": config.embed_dim, "depth": config.depth, "heads": config.num_heads,
                                  "mlp_ratio": float(config.mlp_ratio), "patch_size": config.patch_size}
        if self.searches_resolution:
            values["resolution"] = resolution
        for name, value in values.items():
            if not self.param(name).contains(value):
                raise ConfigError(f"{name}={value!r} is outside the search space ({self.param(name).describe_values()})")
        return values

    def variants(self) -> dict[str, Any]:
        from zoo.registry import get_entry

        fields = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")
        return {name: VitCpeConfig(**{k: v for k, v in get_entry(name).kwargs.items() if k in fields})
                for name in VARIANTS}

    def describe_candidate(self, candidate: Candidate) -> dict[str, str]:
        cfg = candidate.config
        return {"width": str(cfg.embed_dim), "depth": str(cfg.depth), "heads": str(cfg.num_heads),
                "mlp": str(cfg.mlp_ratio), "patch": str(cfg.patch_size)}

    def surrogate_fd_loss(self, candidate: Candidate, params_m: float) -> float:
        """Falls with capacity and depth, rises with the patch size (coarser features) and a narrow MLP.
        Invented numbers: they test search machinery only."""
        cfg = candidate.config
        capacity = 0.6 / (1.0 + math.sqrt(params_m / 20.0))
        depth = 0.06 / (1.0 + 0.25 * cfg.depth)
        patch = 0.05 * cfg.patch_size / 16
        mlp = 0.02 if cfg.mlp_ratio < 3 else 0.0
        return 0.2 + capacity + depth + patch + mlp


register_space("vit-cpe", VitCpeSpace, "ViT-CPE: width, depth, heads, MLP ratio, patch size", default_resolution=224)
