"""Search spaces: the :class:`SearchSpace` protocol, its parameters, and the space registry.

A space declares its parameters as data (:class:`Param`: a categorical choice
or an integer range, with what it means), turns an Optuna trial into a
:class:`Candidate` that always builds (invalid combinations are excluded by
construction, never by failing trials), names reference points of the space
(the paper's variants, enqueued as first trials), and says which backbone
family its candidates belong to: a candidate is built, and exported as a
backbone file, through that family's builder in :mod:`zoo.backbones.files`.

A new space is ONE new file in ``search/spaces/`` (``zoo.search.spaces``):
it subclasses :class:`DeclaredSpace` (or implements :class:`SearchSpace`
itself) and calls :func:`register_space`; every module of that package is
imported when a space is looked up, so ``zoo search run --space NAME`` finds it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from zoo.errors import ConfigError, unknown_name

CATEGORICAL = "categorical"
INT = "int"
KINDS = (CATEGORICAL, INT)
DEFAULT_SPACE = "eradio"


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

    def distribution(self) -> Any:
        """The Optuna distribution :meth:`suggest` draws from (for samplers that propose whole configurations)."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        if self.kind == CATEGORICAL:
            return CategoricalDistribution(list(self.choices))
        return IntDistribution(self.low, self.high, step=self.step)

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


@dataclass(frozen=True)
class Candidate:
    """One point of a space: a backbone family, its config object (with ``to_dict``) and the resolution.

    It builds through the family's backbone-file builder, so an exported file
    rebuilds exactly the model the trial measured.
    """

    family: str
    config: Any
    resolution: int

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict() if hasattr(self.config, "to_dict") else dict(self.config)

    def build(self, name: str | None = None, device: Any = None) -> Any:
        """The backbone (behind :class:`zoo.backbone.Backbone`) at the candidate's resolution."""
        from zoo.backbones.files import build_from_config

        name = name or f"{self.family}-search-{self.key()}"
        if device is None:
            return build_from_config(self.family, self.config_dict(), self.resolution, name, self.resolution)
        import torch

        with torch.device(device):
            return build_from_config(self.family, self.config_dict(), self.resolution, name, self.resolution)

    def key(self) -> str:
        """A short stable hash of the candidate (duplicate detection, run names)."""
        text = json.dumps({"config": self.config_dict(), "resolution": self.resolution}, sort_keys=True)
        if self.family != DEFAULT_SPACE:  # E-RADIO keys stay those of earlier versions (resumable studies)
            text = f"{self.family}:{text}"
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def backbone_name(self) -> str:
        """The name its network is built, benchmarked and recorded under (``eradio-search-<key>``)."""
        return f"{self.family}-search-{self.key()}"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "config": self.config_dict(), "resolution": self.resolution}


@runtime_checkable
class SearchSpace(Protocol):
    """What ``zoo search`` needs from a space.

    Attributes:
        name: the space's registry name (``--space NAME``; stored in studies and trial records).
        family: the backbone family of its candidates (a :data:`zoo.backbones.files.FILE_FAMILIES` key).
        resolutions: the searched resolutions (square); more than one makes ``resolution`` a parameter.
        params: the declared parameters.

    Optional: ``descriptors(candidate) -> dict[str, float]``, cheap analytic features (no model
    build) the guided sampler (:mod:`zoo.search.guided`) learns from besides the parameters.
    """

    name: str
    family: str
    resolutions: tuple[int, ...]
    params: tuple[Param, ...]

    def sample(self, trial: Any) -> Candidate:
        """Suggest the parameters on an Optuna trial; the candidate they describe."""

    def params_to_candidate(self, values: Mapping[str, Any]) -> Candidate:
        """The candidate of a complete set of parameter values (ConfigError naming a bad one)."""

    def random_params(self, rng: random.Random) -> dict[str, Any]:
        """Uniformly random parameter values (tests, the random baseline)."""

    def variant_names(self) -> list[str]:
        """Backbone names of the space's reference points (e.g. the paper's variants)."""

    def variant_params(self, names: Iterable[str] | None = None, resolution: int | None = None) -> dict[str, dict]:
        """Parameter values of named reference points, by backbone name (``enqueue_trial``-able)."""

    def describe(self) -> dict[str, Any]:
        """A JSON description (stored in the study: a worker with another space is refused)."""

    def describe_candidate(self, candidate: Candidate) -> dict[str, str]:
        """Short table cells describing a candidate (``zoo search best``)."""

    def backbone_file(self, candidate: Candidate, name: str, source: Mapping[str, Any] | None = None) -> Any:
        """The :class:`zoo.backbones.files.BackboneFile` that rebuilds ``candidate``."""

    def surrogate_fd_loss(self, candidate: Candidate, params_m: float) -> float:
        """A cheap deterministic stand-in for the proxy FD loss (dry runs, sampler benchmarks)."""

    def size(self) -> int:
        """How many distinct candidates the space holds."""


class DeclaredSpace:
    """Shared machinery of spaces declared as a list of :class:`Param`: limits, sampling, sizes.

    A subclass sets ``name`` and ``family`` and implements :meth:`declare`,
    :meth:`params_to_candidate`, :meth:`config_to_params`, :meth:`variants`
    and :meth:`surrogate_fd_loss`. Parameters whose value depends on the
    resolution (E-RADIO's windows) are declared once per resolution with a
    ``_<resolution>`` suffix and listed by :meth:`resolution_params`.
    """

    name = ""
    family = ""

    def __init__(self, resolutions: Sequence[int] = (224,), limits: Mapping[str, Sequence[Any]] | None = None) -> None:
        resolutions = tuple(dict.fromkeys(resolutions))  # unique, in order
        if not resolutions:
            raise ConfigError("the search space needs at least one resolution")
        for resolution in resolutions:
            self.check_resolution(resolution)
        self.resolutions: tuple[int, ...] = resolutions
        self.limits = {k: list(v) for k, v in (limits or {}).items()}
        self.params: tuple[Param, ...] = tuple(self._apply_limits(self.declare()))

    # ------------------------------------------------------------------ to implement

    def check_resolution(self, resolution: Any) -> int:
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
            raise ConfigError(f"search resolution must be a positive integer (square images), got {resolution!r}")
        return resolution

    def declare(self) -> list[Param]:
        raise NotImplementedError

    def resolution_params(self, resolution: int) -> tuple[str, ...]:
        """Names of the parameters that exist for ``resolution`` only (none by default)."""
        return ()

    def params_to_candidate(self, values: Mapping[str, Any]) -> Candidate:
        raise NotImplementedError

    def config_to_params(self, config: Any, resolution: int | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def variants(self) -> dict[str, Any]:
        """Backbone name -> config of the space's reference points."""
        return {}

    def variant_at(self, config: Any, resolution: int) -> Any:
        """A reference config as it runs at ``resolution`` (resolution-dependent fields); as is by default."""
        return config

    def describe_candidate(self, candidate: Candidate) -> dict[str, str]:
        return {k: str(v) for k, v in candidate.config_dict().items()}

    def surrogate_fd_loss(self, candidate: Candidate, params_m: float) -> float:
        raise NotImplementedError

    def descriptors(self, candidate: Candidate) -> dict[str, float]:
        """Cheap analytic numbers that explain cost and capacity (e.g. log parameters, log MACs), for the
        guided sampler's models (:mod:`zoo.search.guided`); optional, none by default."""
        return {}

    # ------------------------------------------------------------------ shared

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resolutions={self.resolutions}, limits={self.limits or None})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeclaredSpace) and self.describe() == other.describe()

    @property
    def searches_resolution(self) -> bool:
        return len(self.resolutions) > 1

    def _per_resolution(self) -> set[str]:
        return {n for r in self.resolutions for n in self.resolution_params(r)}

    def _apply_limits(self, params: list[Param]) -> list[Param]:
        """Each limited parameter becomes a categorical over the given subset of its values."""
        by_name = {p.name: p for p in params}
        for name in self.limits:
            if name not in by_name:
                raise unknown_name("search parameter", name, by_name)
        out = []
        for param in params:
            if param.name not in self.limits:
                out.append(param)
                continue
            chosen = tuple(dict.fromkeys(_coerce(param, v) for v in self.limits[param.name]))
            if not chosen:
                raise ConfigError(f"--limit {param.name}: no values given")
            out.append(Param(param.name, CATEGORICAL, f"{param.description} (limited)", choices=chosen))
        return out

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise ConfigError(f"no search parameter named {name!r}")

    def _resolution_of(self, values: Mapping[str, Any]) -> int:
        return values.get("resolution", self.resolutions[0]) if self.searches_resolution else self.resolutions[0]

    def needed(self, resolution: int) -> list[str]:
        """The parameters a candidate at ``resolution`` has values for."""
        per = self._per_resolution()
        return [p.name for p in self.params if p.name not in per] + list(self.resolution_params(resolution))

    def check_values(self, values: Mapping[str, Any]) -> int:
        """Check a complete set of values against the space; returns the resolution."""
        resolution = self._resolution_of(values)
        needed = self.needed(resolution)
        missing = [name for name in needed if name not in values]
        if missing:
            raise ConfigError(f"search parameters missing: {', '.join(missing)}")
        for name in needed:
            if not self.param(name).contains(values[name]):
                raise ConfigError(f"search parameter {name}={values[name]!r} is not in the space "
                                  f"({self.param(name).describe_values()})")
        return resolution

    def sample(self, trial: Any) -> Candidate:
        """Suggest every parameter on ``trial``; per-resolution ones only for the chosen resolution."""
        per = self._per_resolution()
        values = {p.name: p.suggest(trial) for p in self.params if p.name not in per}
        for name in self.resolution_params(self._resolution_of(values)):
            values[name] = self.param(name).suggest(trial)
        return self.params_to_candidate(values)

    def random_params(self, rng: random.Random) -> dict[str, Any]:
        per = self._per_resolution()
        values = {p.name: rng.choice(p.values()) for p in self.params if p.name not in per}
        for name in self.resolution_params(self._resolution_of(values)):
            values[name] = rng.choice(self.param(name).values())
        return values

    def variant_names(self) -> list[str]:
        return list(self.variants())

    def variant_params(self, names: Iterable[str] | None = None, resolution: int | None = None) -> dict[str, dict]:
        """Parameter values of reference points; a name may omit the family's words (``b``, ``s16``)."""
        resolution = self.resolutions[0] if resolution is None else resolution
        known = self.variants()
        out = {}
        family_words = set(self.family.split("-"))
        short = {"-".join(w for w in full.split("-") if w not in family_words): full for full in known}
        for name in list(names or known):
            full = name if name in known else short.get(name)  # "b" for eradio-b, "s16" for vit-s16-cpe
            if full is None:
                raise unknown_name(f"{self.name} variant", name, known)
            out[full] = self.config_to_params(self.variant_at(known[full], resolution), resolution)
        return out

    def describe(self) -> dict[str, Any]:
        return {"space": self.name, "family": self.family, "resolutions": list(self.resolutions),
                "params": [p.to_dict() for p in self.params]}

    def backbone_file(self, candidate: Candidate, name: str, source: Mapping[str, Any] | None = None) -> Any:
        from zoo.backbones.files import BackboneFile

        return BackboneFile(name=name, family=self.family, resolution=candidate.resolution,
                            config=candidate.config_dict(), source=dict(source or {}))

    def size(self) -> int:
        per = self._per_resolution()
        common = 1
        for param in self.params:
            if param.name not in per and param.name != "resolution":
                common *= len(param.values())
        per_resolution = 0
        for resolution in self.resolutions:
            count = 1
            for name in self.resolution_params(resolution):
                count *= len(self.param(name).values())
            per_resolution += count
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
    """``["dim=32,48", "depth3=1"]`` -> ``{"dim": ["32", "48"], "depth3": ["1"]}``; values are checked by the space.

    A value that itself holds commas (E-RADIO's ``mra_pattern`` ``2,1``) is separated by ``;`` or ``|``.
    """
    limits: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise ConfigError(f"--limit takes NAME=V1,V2,... (e.g. dim=32,48), got {item!r}")
        separator = ";" if (";" in values or "|" in values or name.strip() in COMMA_VALUED) else ","
        values = values.replace("|", ";")
        limits[name.strip()] = [v.strip() for v in values.split(separator) if v.strip()]
    return limits


COMMA_VALUED = {"mra_pattern"}  # parameters whose values contain commas


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class SpaceEntry:
    """A registered space: its name, a factory ``(resolutions, limits) -> SearchSpace``, one line about it."""

    name: str
    factory: Callable[..., SearchSpace]
    description: str = ""
    default_resolution: int = 224


_SPACES: dict[str, SpaceEntry] = {}
_SPACES_PACKAGE = "zoo.search.spaces"
_loaded = False


def register_space(name: str, factory: Callable[..., SearchSpace], description: str = "",
                   default_resolution: int = 224, overwrite: bool = True) -> SpaceEntry:
    """Make ``--space NAME`` build ``factory(resolutions, limits)`` (re-registering replaces: reloads)."""
    if name in _SPACES and not overwrite:
        raise ValueError(f"search space '{name}' is already registered")
    entry = SpaceEntry(name, factory, description, default_resolution)
    _SPACES[name] = entry
    return entry


def _load_spaces() -> None:
    """Import every module of ``zoo.search.spaces`` once (each registers its space)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module(_SPACES_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{_SPACES_PACKAGE}.{module.name}")


def list_spaces() -> list[SpaceEntry]:
    _load_spaces()
    return list(_SPACES.values())


def space_entry(name: str) -> SpaceEntry:
    _load_spaces()
    if name not in _SPACES:
        raise unknown_name("search space", name, _SPACES)
    return _SPACES[name]


def make_space(name: str = DEFAULT_SPACE, resolutions: Sequence[int] | None = None,
               limits: Mapping[str, Sequence[Any]] | None = None) -> SearchSpace:
    """The space ``name`` at ``resolutions`` (default: the space's), narrowed by ``limits``."""
    entry = space_entry(name)
    return entry.factory(tuple(resolutions or (entry.default_resolution,)), limits=limits or None)
