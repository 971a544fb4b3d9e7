"""The E-RADIO search space (``--space eradio``, the default).

* widths are multiples of 16, so stage 3 (``4d``) is a multiple of 64 and
  stage 4 (``8d``) of 128: every head-count choice (powers of two up to 16
  and 32) divides them;
* attention windows are chosen among the windows that tile the stage maps at
  the search resolution without padding (:func:`window_choices`), so the
  choices of ``window3``/``window4`` depend on the resolution: a searched
  resolution gets one window parameter per resolution (``window3_256``),
  because an Optuna distribution cannot change between trials;
* the heads of stages 1-2 (unused by the network, but part of the config) follow
  stage 3 (``h3 / 4``, ``h3 / 2``), the rule of every paper variant.

The paper's variants are points of the space (:meth:`ERadioSpace.config_to_params`),
so ``--enqueue-variants`` can evaluate them first.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from eradio import MIN_WINDOW, STRIDE, ERadioConfig
from eradio.config import ERADIO_VARIANTS
from zoo.backbones.eradio_entries import pick_window_size  # eradio's, raising zoo's ResolutionError
from zoo.errors import ConfigError, ResolutionError
from zoo.search.space import CATEGORICAL, INT, Candidate, DeclaredSpace, Param, register_space

FAMILY = "eradio"
DEFAULT_RESOLUTION = 224
WIDTH_RANGE = (32, 256, 16)  # low, high, step; the step keeps 4d % 64 == 0 and 8d % 128 == 0
IN_DIM_CHOICES = (32, 64)
DEPTH_RANGES = ((1, 4), (1, 4), (1, 6), (1, 6))  # C2f bottlenecks (1-2), MRA layers (3), blocks (4)
MRA_PATTERNS = ("2,1", "1,2", "2,1,1", "1,1", "2,2", "1", "2", "4,1")
RESAMPLE_CHOICES = ("conv", "pool")
HEADS3_CHOICES = (2, 4, 8, 16)  # all divide 4d (a multiple of 64)
HEADS4_CHOICES = (4, 8, 16, 32)  # all divide 8d (a multiple of 128)
MLP_RATIO_CHOICES = (2.0, 3.0, 4.0)
NECK_CHOICES = (0, 4, 8)  # neck width as a multiple of d; 0 = no neck (stride-32 features)
# Not searched: kept at the values every paper variant uses.
FIXED_FIELDS: dict[str, Any] = {"cpb_hidden": 512, "drop_path_rate": 0.0, "in_chans": 3}
# Parameter counts (M) where the surrogate's gains level off; see surrogate_fd_loss.
_SURROGATE_SCALE_M = 30.0


def window_choices(resolution: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(stage-3 windows, stage-4 windows)`` that tile the maps of ``resolution`` without padding.

    Stage 4 sees a ``c = resolution / 32`` map: its windows are the divisors of
    ``c`` of at least :data:`eradio.MIN_WINDOW` (smaller ones barely mix
    anything), or ``c`` itself (global attention). Stage 3 sees ``2c`` at full
    resolution and ``c`` in its 2x sub-sampled blocks: its windows divide
    ``2c`` and either divide ``c`` too or cover it whole.
    """
    cells = resolution // STRIDE
    stage4 = tuple(d for d in range(1, cells + 1) if cells % d == 0 and (d >= MIN_WINDOW or d == cells))
    stage3 = tuple(
        d for d in range(1, 2 * cells + 1)
        if (2 * cells) % d == 0 and (d >= MIN_WINDOW or d == 2 * cells) and (cells % d == 0 or d >= cells)
    )
    return stage3, stage4


def parse_pattern(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def format_pattern(ratios: Sequence[int]) -> str:
    return ",".join(str(int(r)) for r in ratios)


class ERadioSpace(DeclaredSpace):
    """The E-RADIO space at one resolution, or with the resolution searched among ``resolutions``."""

    name = "eradio"
    family = FAMILY

    def check_resolution(self, resolution: Any) -> int:
        """A square resolution E-RADIO accepts (multiple of 32, a usable window), else ResolutionError."""
        if not isinstance(resolution, int) or isinstance(resolution, bool):
            raise ResolutionError(f"search resolution must be an integer (square images), got {resolution!r}")
        pick_window_size(resolution)  # raises a ResolutionError naming sizes that work
        return resolution

    def window_param_names(self, resolution: int) -> tuple[str, str]:
        suffix = f"_{resolution}" if self.searches_resolution else ""
        return f"window3{suffix}", f"window4{suffix}"

    def resolution_params(self, resolution: int) -> tuple[str, ...]:
        return self.window_param_names(resolution)

    def declare(self) -> list[Param]:
        low, high, step = WIDTH_RANGE
        params = [
            Param("dim", INT, "base width d (stage i has d*2^(i-1) channels)", low=low, high=high, step=step),
            Param("in_dim", CATEGORICAL, "width of the stem's first stride-2 conv", choices=IN_DIM_CHOICES),
        ]
        what = ("C2f bottlenecks in stage 1", "C2f bottlenecks in stage 2", "MRA layers in stage 3",
                "attention blocks in stage 4")
        for index, ((d_low, d_high), text) in enumerate(zip(DEPTH_RANGES, what), start=1):
            params.append(Param(f"depth{index}", INT, text, low=d_low, high=d_high))
        params += [
            Param("mra_pattern", CATEGORICAL, "sub-sampling ratio of each attention block of a stage-3 MRA layer",
                  choices=MRA_PATTERNS),
            Param("mra_resample", CATEGORICAL, "how sub-sampled MRA blocks resample (strided conv or pooling)",
                  choices=RESAMPLE_CHOICES),
            Param("heads3", CATEGORICAL, "attention heads in stage 3 (divides 4d)", choices=HEADS3_CHOICES),
            Param("heads4", CATEGORICAL, "attention heads in stage 4 (divides 8d)", choices=HEADS4_CHOICES),
            Param("mlp_ratio", CATEGORICAL, "MLP hidden width / block width (stages 3-4)",
                  choices=MLP_RATIO_CHOICES),
            Param("neck", CATEGORICAL, "stride-16 neck width as a multiple of d (0 = no neck)",
                  choices=NECK_CHOICES),
        ]
        if self.searches_resolution:
            params.append(Param("resolution", CATEGORICAL, "input resolution (square)", choices=self.resolutions))
        for resolution in self.resolutions:
            stage3, stage4 = window_choices(resolution)
            name3, name4 = self.window_param_names(resolution)
            at = f" at {resolution} px"
            params.append(Param(name3, CATEGORICAL, f"stage-3 attention window{at} (tiles {resolution // 16} "
                                f"and {resolution // 32} cells)", choices=stage3))
            params.append(Param(name4, CATEGORICAL, f"stage-4 attention window{at} (tiles {resolution // 32} cells)",
                                choices=stage4))
        return params

    def params_to_candidate(self, values: Mapping[str, Any]) -> Candidate:
        resolution = self.check_values(values)
        dim, heads3, heads4 = values["dim"], values["heads3"], values["heads4"]
        name3, name4 = self.window_param_names(resolution)
        config = ERadioConfig(
            dim=dim,
            in_dim=values["in_dim"],
            depths=tuple(values[f"depth{i}"] for i in range(1, 5)),
            num_heads=(max(1, heads3 // 4), max(1, heads3 // 2), heads3, heads4),
            window_size=(values[name3], values[name4]),
            mra_ratios=parse_pattern(values["mra_pattern"]),
            mra_resample=values["mra_resample"],
            mlp_ratio=float(values["mlp_ratio"]),
            neck_dim=values["neck"] * dim if values["neck"] else None,
            **FIXED_FIELDS,
        )
        return Candidate(family=FAMILY, config=config, resolution=resolution)

    def config_to_params(self, config: ERadioConfig, resolution: int | None = None) -> dict[str, Any]:
        """Parameter values that rebuild ``config`` at ``resolution`` (``enqueue_trial``-able).

        Raises :class:`ConfigError` naming the first field the space cannot express.
        """
        resolution = self.resolutions[0] if resolution is None else resolution
        if resolution not in self.resolutions:
            raise ConfigError(f"resolution {resolution} is not searched (space: {list(self.resolutions)})")
        if config.neck_dim is not None and config.neck_dim % config.dim:
            raise ConfigError(f"neck_dim={config.neck_dim} is not a multiple of dim={config.dim}")
        name3, name4 = self.window_param_names(resolution)
        values: dict[str, Any] = {
            "dim": config.dim,
            "in_dim": config.in_dim,
            **{f"depth{i}": depth for i, depth in enumerate(config.depths, start=1)},
            "mra_pattern": format_pattern(config.mra_ratios),
            "mra_resample": config.mra_resample,
            "heads3": config.num_heads[2],
            "heads4": config.num_heads[3],
            "mlp_ratio": float(config.mlp_ratio),
            "neck": config.neck_dim // config.dim if config.neck_dim else 0,
            name3: config.window_size[0],
            name4: config.window_size[1],
        }
        if self.searches_resolution:
            values["resolution"] = resolution
        for name, value in values.items():
            if not self.param(name).contains(value):
                raise ConfigError(f"{name}={value!r} is outside the search space ({self.param(name).describe_values()})")
        for name, value in FIXED_FIELDS.items():
            if getattr(config, name) != value:
                raise ConfigError(f"ERadioConfig.{name}={getattr(config, name)!r} is fixed to {value!r} in the search")
        rebuilt = self.params_to_candidate(values).config
        if rebuilt != config:
            diff = [k for k, v in rebuilt.to_dict().items() if config.to_dict()[k] != v]
            raise ConfigError(f"config differs from the space's rule in: {', '.join(diff)}")
        return values

    def variants(self) -> dict[str, Any]:
        return {f"eradio-{name}": config for name, config in ERADIO_VARIANTS.items()}

    def variant_at(self, config: ERadioConfig, resolution: int) -> ERadioConfig:
        """A paper variant runs at ``resolution`` with the window :func:`eradio.pick_window_size` gives it."""
        window = pick_window_size(resolution)
        return config.replace(window_size=[window[0], window[1]])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fixed": dict(FIXED_FIELDS)}

    def describe_candidate(self, candidate: Candidate) -> dict[str, str]:
        cfg = candidate.config_dict()
        return {
            "d": str(cfg["dim"]), "depths": "-".join(str(d) for d in cfg["depths"]),
            "heads 3/4": "/".join(str(h) for h in cfg["num_heads"][2:]),
            "windows": "/".join(str(w) for w in cfg["window_size"]),
            "MRA": f"{format_pattern(cfg['mra_ratios'])} {cfg['mra_resample']}",
            "mlp": str(cfg["mlp_ratio"]), "neck": str(cfg["neck_dim"]) if cfg.get("neck_dim") else "—",
        }

    def descriptors(self, candidate: Candidate) -> dict[str, float]:
        """Weights and multiply-adds counted from the architecture's formulas (no build; biases, norms and the
        position-bias MLPs left out), the number of attention blocks, and the share of the stage-3 map a
        window covers: what the guided sampler learns speed and quality from."""
        cfg = candidate.config
        d, m = cfg.dim, cfg.mlp_ratio
        cells = candidate.resolution // 4  # stage-1 map side
        positions = [(cells // 2 ** i) ** 2 for i in range(4)]  # stages 1-4
        weights: list[float] = []
        macs: list[float] = []

        def add(count: float, at: float) -> None:
            weights.append(count)
            macs.append(count * at)

        add(27 * cfg.in_dim, positions[0] * 4)  # stem conv 1, at stride 2
        add(9 * cfg.in_dim * d, positions[0])
        for stage, depth in enumerate(cfg.depths[:2]):  # C2f: w^2 (2 + 5 n)
            add((d * 2 ** stage) ** 2 * (2 + 5 * depth), positions[stage])
        for stage in range(3):  # 3x3 stride-2 down-sampling into stages 2-4
            add(9 * (d * 2 ** stage) * (d * 2 ** (stage + 1)), positions[stage + 1])
        block = (4 + 2 * m)  # qkv + proj + MLP, per w^2
        w3, w4 = 4 * d, 8 * d
        windows = [min(window, cells // 4) ** 2 for window in cfg.window_size]
        for ratio in cfg.mra_ratios:
            tokens = positions[2] / ratio ** 2
            resample = 2 * ratio ** 2 if cfg.mra_resample == "conv" and ratio > 1 else (2 if ratio > 1 else 0)
            add(cfg.depths[2] * block * w3 ** 2, tokens)
            weights.append(cfg.depths[2] * resample * w3 ** 2)
            macs.append(cfg.depths[2] * (resample * w3 ** 2 * tokens + 2 * tokens * windows[0] * w3))
        add(cfg.depths[3] * block * w4 ** 2, positions[3])
        macs.append(cfg.depths[3] * 2 * positions[3] * windows[1] * w4)
        if cfg.neck_dim:
            add(w3 * cfg.neck_dim, positions[2])
            add(w4 * 4 * cfg.neck_dim, positions[3])
        blocks = cfg.depths[2] * len(cfg.mra_ratios) + cfg.depths[3]
        return {"log_weights": math.log(sum(weights)), "log_macs": math.log(sum(macs)), "attention_blocks": blocks,
                "c2f_blocks": cfg.depths[0] + cfg.depths[1],
                "window3_share": min(1.0, cfg.window_size[0] / (candidate.resolution // 16))}

    def surrogate_fd_loss(self, candidate: Candidate, params_m: float) -> float:
        """Falls with capacity (parameters, with diminishing returns), with depth in the attention
        stages, with a neck (denser features), and with attention windows that cover more of the map;
        rises for the pooling resampler. Invented numbers: they test search machinery only."""
        cfg = candidate.config
        capacity = 0.6 / (1.0 + math.sqrt(params_m / _SURROGATE_SCALE_M))
        depth = 0.08 / (1.0 + 0.25 * (cfg.depths[2] + cfg.depths[3]))
        neck = 0.0 if cfg.neck_dim else 0.05
        cells3 = candidate.resolution // 16
        window = 0.04 * (1.0 - min(1.0, cfg.window_size[0] / cells3))
        resample = 0.02 if cfg.mra_resample == "pool" else 0.0
        mix = 0.015 * abs(len(cfg.mra_ratios) - 2)
        return 0.2 + capacity + depth + neck + window + resample + mix


register_space("eradio", ERadioSpace, "E-RADIO: widths, depths, MRA pattern and resampling, heads, windows, neck",
               default_resolution=DEFAULT_RESOLUTION)
