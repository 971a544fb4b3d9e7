"""The E-RADIO search space, declared as data.

Every parameter is a :class:`Param` (name, kind, choices or range, what it
means). :meth:`SearchSpace.sample` turns an Optuna trial into a
:class:`Candidate` (an :class:`eradio.ERadioConfig` plus the input resolution)
that always builds: invalid combinations are excluded by construction, never
by failing trials.

* widths are multiples of 16, so stage 3 (``4d``) is a multiple of 64 and
  stage 4 (``8d``) of 128: every head-count choice (powers of two up to 16
  and 32) divides them;
* attention windows are chosen among the windows that tile the stage maps at
  the search resolution without padding (:func:`window_choices`), so the
  choices of ``window3``/``window4`` depend on the resolution: a searched
  resolution (``--search-resolution``) gets one window parameter per
  resolution (``window3_256``), because an Optuna distribution cannot change
  between trials;
* the heads of stages 1-2 (unused by the network, but part of the config) follow
  stage 3 (``h3 / 4``, ``h3 / 2``), the rule of every paper variant.

The paper's variants are points of the space: :meth:`SearchSpace.config_to_params`
maps them back to parameter values (to ``study.enqueue_trial`` them).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from eradio import MIN_WINDOW, STRIDE, ERadioConfig, pick_window_size
from eradio.config import ERADIO_VARIANTS
from zoo.errors import ConfigError, ResolutionError, unknown_name

CATEGORICAL = "categorical"
INT = "int"
KINDS = (CATEGORICAL, INT)

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


@dataclass(frozen=True)
class Param:
    """One searched parameter: a categorical choice or an integer range (inclusive, with step)."""

    name: str
    kind: str
    description: str
    choices: tuple[Any, ...] = ()
    low: int | None = None
    high: int | None = None
    step: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"parameter {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == CATEGORICAL and not self.choices:
            raise ConfigError(f"parameter {self.name}: a categorical parameter needs choices")
        if self.kind == INT and (self.low is None or self.high is None or self.low > self.high or self.step < 1):
            raise ConfigError(f"parameter {self.name}: an int parameter needs low <= high and step >= 1")

    def values(self) -> list[Any]:
        """Every value the parameter can take."""
        if self.kind == CATEGORICAL:
            return list(self.choices)
        return list(range(self.low, self.high + 1, self.step))

    def contains(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values())

    def suggest(self, trial: Any) -> Any:
        if self.kind == CATEGORICAL:
            return trial.suggest_categorical(self.name, list(self.choices))
        return trial.suggest_int(self.name, self.low, self.high, step=self.step)

    def describe_values(self) -> str:
        if self.kind == CATEGORICAL:
            return ", ".join(str(v) for v in self.choices)
        return f"{self.low}..{self.high}" + (f" step {self.step}" if self.step != 1 else "")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == CATEGORICAL:
            data["choices"] = list(self.choices)
        else:
            data.update(low=self.low, high=self.high, step=self.step)
        return data


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


def check_resolution(resolution: Any) -> int:
    """A square search resolution E-RADIO accepts (multiple of 32, a usable window), else ResolutionError."""
    if not isinstance(resolution, int) or isinstance(resolution, bool):
        raise ResolutionError(f"search resolution must be an integer (square images), got {resolution!r}")
    pick_window_size(resolution)  # raises a ResolutionError naming sizes that work
    return resolution


def parse_pattern(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def format_pattern(ratios: Sequence[int]) -> str:
    return ",".join(str(int(r)) for r in ratios)


@dataclass(frozen=True)
class Candidate:
    """One point of the space: the architecture and the resolution it runs at.

    ``config.window_size`` holds the attention windows the candidate runs with
    (also the reference window of its position bias).
    """

    config: ERadioConfig
    resolution: int

    def build(self, name: str = "eradio-search", device: Any = None) -> Any:
        """The backbone (:class:`zoo.backbones.eradio_entries.ERadioBackbone`) with the searched windows fixed."""
        return build_candidate(self.config, self.resolution, name=name, device=device)

    def key(self) -> str:
        """A short stable hash of the candidate (duplicate detection, run names)."""
        text = json.dumps({"config": self.config.to_dict(), "resolution": self.resolution}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "resolution": self.resolution}


def build_candidate(config: ERadioConfig, resolution: int, name: str = "eradio-search", device: Any = None) -> Any:
    """Build an E-RADIO backbone for ``resolution`` that runs with ``config.window_size`` (no automatic window)."""
    import torch

    from zoo.backbones.eradio_entries import build_eradio_backbone

    if device is not None:
        with torch.device(device):
            backbone = build_eradio_backbone(config, resolution, name=name, auto_window=False)
    else:
        backbone = build_eradio_backbone(config, resolution, name=name, auto_window=False)
    # The wrapper picks a window from the resolution at build time; the searched one wins.
    backbone.set_window_size(*config.window_size)
    return backbone


@dataclass(frozen=True)
class SearchSpace:
    """The E-RADIO space at one resolution, or with the resolution searched among ``resolutions``."""

    resolutions: tuple[int, ...] = (DEFAULT_RESOLUTION,)
    limits: Mapping[str, Sequence[Any]] | None = None  # narrow parameters to some of their values (--limit)
    params: tuple[Param, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        resolutions = tuple(dict.fromkeys(self.resolutions))  # unique, in order
        if not resolutions:
            raise ConfigError("the search space needs at least one resolution")
        for resolution in resolutions:
            check_resolution(resolution)
        object.__setattr__(self, "resolutions", resolutions)
        object.__setattr__(self, "params", tuple(self._apply_limits(self._declare())))

    def _apply_limits(self, params: list[Param]) -> list[Param]:
        """Each limited parameter becomes a categorical over the given subset of its values."""
        limits = dict(self.limits or {})
        by_name = {p.name: p for p in params}
        for name in limits:
            if name not in by_name:
                raise unknown_name("search parameter", name, by_name)
        out = []
        for param in params:
            if param.name not in limits:
                out.append(param)
                continue
            chosen = tuple(dict.fromkeys(_coerce(param, v) for v in limits[param.name]))
            if not chosen:
                raise ConfigError(f"--limit {param.name}: no values given")
            out.append(Param(param.name, CATEGORICAL, f"{param.description} (limited)", choices=chosen))
        return out

    @property
    def searches_resolution(self) -> bool:
        return len(self.resolutions) > 1

    def window_param_names(self, resolution: int) -> tuple[str, str]:
        suffix = f"_{resolution}" if self.searches_resolution else ""
        return f"window3{suffix}", f"window4{suffix}"

    def _declare(self) -> list[Param]:
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

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise ConfigError(f"no search parameter named {name!r}")

    # ------------------------------------------------------------------ sampling

    def sample(self, trial: Any) -> Candidate:
        """Suggest every parameter on ``trial`` (an Optuna trial) and build the candidate's description."""
        values: dict[str, Any] = {}
        for param in self.params:
            if param.name.startswith(("window3", "window4")):
                continue  # only the windows of the chosen resolution are suggested (conditional)
            values[param.name] = param.suggest(trial)
        resolution = values.get("resolution", self.resolutions[0])
        for name in self.window_param_names(resolution):
            values[name] = self.param(name).suggest(trial)
        return self.params_to_candidate(values)

    def random_params(self, rng: random.Random) -> dict[str, Any]:
        """Uniformly random parameter values (tests, the random baseline without Optuna)."""
        values = {p.name: rng.choice(p.values()) for p in self.params if not p.name.startswith("window")}
        resolution = values.get("resolution", self.resolutions[0])
        for name in self.window_param_names(resolution):
            values[name] = rng.choice(self.param(name).values())
        return values

    def params_to_candidate(self, values: Mapping[str, Any]) -> Candidate:
        """The candidate of a complete set of parameter values (a trial's ``params``)."""
        resolution = values.get("resolution", self.resolutions[0]) if self.searches_resolution else self.resolutions[0]
        needed = [p.name for p in self.params if not p.name.startswith("window")] + list(
            self.window_param_names(resolution))
        missing = [name for name in needed if name not in values]
        if missing:
            raise ConfigError(f"search parameters missing: {', '.join(missing)}")
        for name in needed:
            if not self.param(name).contains(values[name]):
                raise ConfigError(f"search parameter {name}={values[name]!r} is not in the space "
                                  f"({self.param(name).describe_values()})")
        dim = values["dim"]
        heads3, heads4 = values["heads3"], values["heads4"]
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
        return Candidate(config=config, resolution=resolution)

    def config_to_params(self, config: ERadioConfig, resolution: int | None = None) -> dict[str, Any]:
        """Parameter values that rebuild ``config`` at ``resolution`` (``enqueue_trial``-able).

        Raises :class:`ConfigError` naming the first field the space cannot express.
        """
        resolution = self.resolutions[0] if resolution is None else resolution
        if resolution not in self.resolutions:
            raise ConfigError(f"resolution {resolution} is not searched (space: {list(self.resolutions)})")
        heads3, heads4 = config.num_heads[2], config.num_heads[3]
        if config.neck_dim is not None and config.neck_dim % config.dim:
            raise ConfigError(f"neck_dim={config.neck_dim} is not a multiple of dim={config.dim}")
        name3, name4 = self.window_param_names(resolution)
        values: dict[str, Any] = {
            "dim": config.dim,
            "in_dim": config.in_dim,
            **{f"depth{i}": depth for i, depth in enumerate(config.depths, start=1)},
            "mra_pattern": format_pattern(config.mra_ratios),
            "mra_resample": config.mra_resample,
            "heads3": heads3,
            "heads4": heads4,
            "mlp_ratio": float(config.mlp_ratio),
            "neck": config.neck_dim // config.dim if config.neck_dim else 0,
            name3: config.window_size[0],
            name4: config.window_size[1],
        }
        if self.searches_resolution:
            values["resolution"] = resolution
        for name, value in values.items():
            if not self.param(name).contains(value):
                allowed = self.param(name).describe_values()
                raise ConfigError(f"{name}={value!r} is outside the search space ({allowed})")
        for name, value in FIXED_FIELDS.items():
            if getattr(config, name) != value:
                raise ConfigError(f"ERadioConfig.{name}={getattr(config, name)!r} is fixed to {value!r} in the search")
        rebuilt = self.params_to_candidate(values).config
        if rebuilt != config:
            diff = [k for k, v in rebuilt.to_dict().items() if config.to_dict()[k] != v]
            raise ConfigError(f"config differs from the space's rule in: {', '.join(diff)}")
        return values

    def variant_params(self, names: Iterable[str] | None = None, resolution: int | None = None) -> dict[str, dict]:
        """Parameter values of the paper's variants at ``resolution`` (window: :func:`eradio.pick_window_size`)."""
        resolution = self.resolutions[0] if resolution is None else resolution
        window = pick_window_size(resolution)
        out = {}
        for name in names or ERADIO_VARIANTS:
            config = ERADIO_VARIANTS[name].replace(window_size=[window[0], window[1]])
            out[name] = self.config_to_params(config, resolution)
        return out

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (stored in the study, so workers with another space are refused)."""
        return {"resolutions": list(self.resolutions), "params": [p.to_dict() for p in self.params],
                "fixed": dict(FIXED_FIELDS)}

    def size(self) -> int:
        """How many distinct candidates the space holds."""
        common = 1
        for param in self.params:
            if not param.name.startswith(("window", "resolution")):
                common *= len(param.values())
        per_resolution = 0
        for resolution in self.resolutions:
            n3, n4 = (len(self.param(n).values()) for n in self.window_param_names(resolution))
            per_resolution += n3 * n4
        return common * per_resolution


def _coerce(param: Param, value: Any) -> Any:
    """``value`` (a CLI string or a number) as the parameter's own value, or ConfigError."""
    for allowed in param.values():
        if value == allowed and type(value) is type(allowed) or str(value) == str(allowed):
            return allowed
        if isinstance(allowed, float) and not isinstance(value, bool):
            try:
                if float(value) == allowed:
                    return allowed
            except (TypeError, ValueError):
                pass
    raise ConfigError(f"--limit {param.name}: {value!r} is not one of its values ({param.describe_values()})")


def parse_limits(items: Sequence[str]) -> dict[str, list[str]]:
    """``["dim=32,48", "depth3=1"]`` -> ``{"dim": ["32", "48"], "depth3": ["1"]}``; values are checked by the space."""
    limits: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise ConfigError(f"--limit takes NAME=V1,V2,... (e.g. dim=32,48), got {item!r}")
        # A pattern such as "2,1" contains commas: mra_pattern values are separated by ';' or '|'.
        separator = ";" if name.strip() == "mra_pattern" else ","
        values = values.replace("|", ";") if separator == ";" else values
        limits[name.strip()] = [v.strip() for v in values.split(separator) if v.strip()]
    return limits


def parse_resolutions(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"224,256"`` -> ``(224, 256)``; a bad value raises ConfigError."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError as err:
            raise ConfigError(f"resolutions must be integers separated by commas, got {text!r}") from err
    else:
        values = tuple(int(v) for v in text)
    if not values:
        raise ConfigError("no resolution given")
    return values
