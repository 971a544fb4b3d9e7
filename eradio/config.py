"""One configuration object for every E-RADIO knob, and the named variants.

``ERadioConfig`` is validated when it is created: any value the network
cannot be built with raises :class:`eradio.errors.ERadioConfigError` naming the field,
so an architecture search can sample configs freely and get a clear reason
for every refusal. Change a field with :func:`dataclasses.replace` (the
result is validated again).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from eradio.errors import ERadioConfigError as ConfigError
from eradio.errors import UnknownVariantError, closest

NUM_STAGES = 4
RESAMPLE_MODES = ("conv", "pool")  # see ERadioConfig.mra_resample
CPB_NORM_MODES = ("current", "build")  # see ERadioConfig.cpb_norm_window
LARGE_WINDOW_MODES = ("clamp", "pad")  # see ERadioConfig.large_window


def _as_int_tuple(name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * (length or 1)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"ERadioConfig.{name} must be a list of integers, got {value!r}")
    items = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"ERadioConfig.{name} must hold integers, got {list(items)!r}")
    if length is not None and len(items) != length:
        raise ConfigError(f"ERadioConfig.{name} needs {length} values (one per stage), got {len(items)}: {list(items)}")
    return items


@dataclass(frozen=True)
class ERadioConfig:
    """Every knob of an E-RADIO network (paper Appendix A; ``/work/shared/ERADIO.md``).

    Args:
        dim: width ``d`` of stage 1; stage ``i`` has ``d * 2**i`` channels.
        in_dim: width of the stem's first 3x3 stride-2 convolution.
        depths: C2f bottlenecks in stages 1-2, MRA layers in stage 3,
            attention blocks in stage 4.
        num_heads: attention heads per stage (stages 1-2 do not use theirs).
        window_size: attention window of stage 3 and of stage 4 at build time
            (an int sets both); :meth:`eradio.ERadio.set_window_size` changes
            the window used at run time.
        cpb_norm_window: which window the position-bias offsets are divided by
            before the log-spacing. ``"current"`` (default, as the reference
            implementation): the window in use, so offsets always span [-1, 1]
            of the window. ``"build"``: ``window_size`` above (SwinV2's
            ``pretrained_window_size``), so the same offset gets the same bias
            at any run-time window; pick it for models trained that way.
        large_window: what a window larger than the feature map it runs on
            does. ``"clamp"`` (default): it shrinks to the map (one window,
            global attention, no padding tokens). ``"pad"`` (the reference
            implementation): the map is zero-padded up to the full window.
            Windows smaller than the map that do not divide it are zero-padded
            either way.
        mra_ratios: sub-sampling ratio of each attention block of an MRA layer
            (stage 3), in the order they run; ``[2, 1]`` = a block at half
            resolution, then one at full resolution (``[1, 2]``: E-RADIO-S).
        mra_resample: how a ratio-r block changes resolution: ``"conv"``
            (r x r stride-r conv down, transposed conv up; E-RADIO B and L) or
            ``"pool"`` (average pool + 1x1 ConvBN down, 1x1 ConvBN + nearest
            up; the reference XT, T and S, whose parameter counts need it).
        mlp_ratio: MLP hidden width / block width.
        neck_dim: width of the stride-16 "upsample" neck; ``None`` = no neck
            (features are stage 4 at stride 32).
        drop_path_rate: stochastic depth, rising linearly over all layers.
        cpb_hidden: hidden width of the continuous position-bias MLP.
        in_chans: input image channels.
    """

    dim: int = 128
    in_dim: int = 64
    depths: tuple[int, ...] = (3, 3, 5, 5)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    window_size: tuple[int, ...] = (7, 7)
    cpb_norm_window: str = "current"
    large_window: str = "clamp"
    mra_ratios: tuple[int, ...] = (2, 1)
    mra_resample: str = "conv"
    mlp_ratio: float = 4.0
    neck_dim: int | None = None
    drop_path_rate: float = 0.0
    cpb_hidden: int = 512
    in_chans: int = 3

    def __post_init__(self) -> None:
        # Normalise lists (YAML/JSON/Optuna give lists) to tuples so configs hash and compare.
        object.__setattr__(self, "depths", _as_int_tuple("depths", self.depths, NUM_STAGES))
        object.__setattr__(self, "num_heads", _as_int_tuple("num_heads", self.num_heads, NUM_STAGES))
        object.__setattr__(self, "window_size", _as_int_tuple("window_size", self.window_size, 2))
        object.__setattr__(self, "mra_ratios", _as_int_tuple("mra_ratios", self.mra_ratios))
        self.validate()

    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.dim * 2**i for i in range(NUM_STAGES))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field the network cannot be built with."""

        def fail(name: str, why: str) -> None:
            raise ConfigError(f"ERadioConfig.{name}={getattr(self, name)!r}: {why}")

        for name, low in (("dim", 2), ("in_dim", 1), ("cpb_hidden", 1), ("in_chans", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                fail(name, f"must be an integer >= {low}")
        if any(d < 0 for d in self.depths):
            fail("depths", "depths cannot be negative")
        if any(h < 1 for h in self.num_heads):
            fail("num_heads", "every stage needs at least one head")
        dims = self.stage_dims()
        for stage in (2, 3):  # only the attention stages use their heads
            if dims[stage] % self.num_heads[stage]:
                fail("num_heads", f"stage {stage + 1} width {dims[stage]} is not divisible by {self.num_heads[stage]} heads")
        if any(w < 1 for w in self.window_size):
            fail("window_size", "windows must be at least 1")
        if not self.mra_ratios or any(r < 1 for r in self.mra_ratios):
            fail("mra_ratios", "needs at least one sub-sampling ratio, each >= 1")
        if self.mra_resample not in RESAMPLE_MODES:
            fail("mra_resample", f"must be one of {', '.join(RESAMPLE_MODES)}")
        if self.cpb_norm_window not in CPB_NORM_MODES:
            fail("cpb_norm_window", f"must be one of {', '.join(CPB_NORM_MODES)}")
        if self.large_window not in LARGE_WINDOW_MODES:
            fail("large_window", f"must be one of {', '.join(LARGE_WINDOW_MODES)}")
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) or not math.isfinite(self.mlp_ratio):
            fail("mlp_ratio", "must be a number")
        if int(dims[2] * self.mlp_ratio) < 1:
            fail("mlp_ratio", "must give an MLP hidden width of at least 1")
        if self.neck_dim is not None and (
            not isinstance(self.neck_dim, int) or isinstance(self.neck_dim, bool) or self.neck_dim < 1
        ):
            fail("neck_dim", "must be a positive integer or None (no neck)")
        if not isinstance(self.drop_path_rate, (int, float)) or not 0.0 <= self.drop_path_rate < 1.0:
            fail("drop_path_rate", "must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (lists, not tuples)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ERadioConfig":
        """Build from a dict; unknown keys fail with the closest field names."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                near = closest(str(key), names)
                hint = f"; closest: {', '.join(near)}" if near else f"; fields: {', '.join(names)}"
                raise ConfigError(f"unknown ERadioConfig field '{key}'{hint}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "ERadioConfig":
        """A copy with ``changes`` applied (unknown names fail like :meth:`from_dict`)."""
        return self.from_dict({**self.to_dict(), **changes})


def as_config(config: "ERadioConfig | Mapping[str, Any] | None" = None, **overrides: Any) -> ERadioConfig:
    """``ERadioConfig``, dict or None (defaults), with ``overrides`` applied."""
    if config is None:
        config = ERadioConfig()
    elif isinstance(config, Mapping):
        config = ERadioConfig.from_dict(config)
    elif not isinstance(config, ERadioConfig):
        raise ConfigError(f"expected an ERadioConfig or a dict, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


_SMALL_DEPTHS = (1, 3, 4, 5)
_DEPTHS = (3, 3, 5, 5)

# Appendix A / ERADIO.md. XT, T and S resample by pooling in their MRA blocks (the
# reference implementation's default; their parameter counts only match that way),
# B and L by strided convolutions. S runs its MRA blocks full resolution first
# ([1, 2]), as the reference builds it (same parameters, a different function:
# reference weights only match in that order). The neck versions of XT/T/S ("-up") use neck_dim = 8d,
# the rule eradio-b (1024 = 8*128) and eradio-l (1536 = 8*192) follow: the
# dense features then have the summary's width, as in the paper's models.
ERADIO_VARIANTS: dict[str, ERadioConfig] = {
    "xt": ERadioConfig(dim=64, depths=_SMALL_DEPTHS, mra_resample="pool"),
    "t": ERadioConfig(dim=80, depths=_SMALL_DEPTHS, mra_resample="pool"),
    "s": ERadioConfig(dim=96, depths=_DEPTHS, mra_ratios=(1, 2), mra_resample="pool"),
    "b-noup": ERadioConfig(dim=128, depths=_DEPTHS),
    "b": ERadioConfig(dim=128, depths=_DEPTHS, neck_dim=1024),
    "l": ERadioConfig(dim=192, depths=_DEPTHS, neck_dim=1536),
    "xt-up": ERadioConfig(dim=64, depths=_SMALL_DEPTHS, mra_resample="pool", neck_dim=512),
    "t-up": ERadioConfig(dim=80, depths=_SMALL_DEPTHS, mra_resample="pool", neck_dim=640),
    "s-up": ERadioConfig(dim=96, depths=_DEPTHS, mra_ratios=(1, 2), mra_resample="pool", neck_dim=768),
}


def variant_config(name: str, **overrides: Any) -> ERadioConfig:
    """The config of variant ``name`` (``"b"``, ``"eradio-b"`` or ``"eradio_b"``), with overrides."""
    key = name.lower().replace("_", "-")
    key = key[len("eradio-"):] if key.startswith("eradio-") else key
    if key not in ERADIO_VARIANTS:
        near = closest(str(name), [f"eradio-{v}" for v in ERADIO_VARIANTS])
        hint = f"; closest: {', '.join(near)}" if near else f"; valid: {', '.join(ERADIO_VARIANTS)}"
        raise UnknownVariantError(f"unknown E-RADIO variant '{name}'{hint}")
    return as_config(ERADIO_VARIANTS[key], **overrides)
