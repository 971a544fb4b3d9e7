"""Distillation recipes: nested dataclasses loaded from YAML.

Every default lives in the dataclasses below (one place); a YAML file only
says what differs. ``load_recipe("smoke")`` reads a recipe shipped in the
:mod:`zoo.recipes` package; ``load_recipe("my.yaml", ["optim.lr=5e-4"])`` reads a
file and applies ``--set`` overrides (values parsed as YAML). An unknown key
or a wrongly typed value raises :class:`~zoo.errors.ConfigError` naming its
dotted path and the valid keys at that level.

Recipe text is untrusted: files larger than :data:`MAX_RECIPE_BYTES`, text that
is not UTF-8, nesting deeper than :data:`MAX_DEPTH`, aliases that refer to
themselves, and documents whose aliases would expand to more than
:data:`MAX_EXPANDED_NODES` nodes (a "billion laughs") are refused with one line
before anything is built; ``--set`` values go through the same loader.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from zoo.backbone import as_hw
from zoo.errors import ConfigError, ResolutionError, unknown_name

RECIPE_PACKAGE = "zoo.recipes"
DATA_SOURCES = ("auto", "bundled", "folder", "list", "webdataset")
EVAL_SOURCES = ("auto", "split", "bundled", "folder", "list", "webdataset")
AMP_MODES = ("auto", "bf16", "fp16", "off")
STANDARDIZE_METHODS = ("none", "phi-s")
MAX_RECIPE_BYTES = 1_000_000  # a recipe is a few hundred bytes; anything this large is not one
MAX_EXPANDED_NODES = 100_000  # YAML nodes after expanding every alias (a recipe has about a hundred)
MAX_DEPTH = 64  # nesting of mappings/sequences


@dataclass
class DataConfig:
    """Where the images come from.

    ``source``: ``bundled`` (sample images shipped with installed packages),
    ``folder`` (``path`` searched recursively), ``list`` (``path`` is a text
    file with one image path per line, relative to the file's folder),
    ``webdataset`` (``path`` is a brace pattern such as ``/data/{00000..01023}.tar``,
    a folder of ``.tar`` shards or a text file listing shards) or ``auto``
    (``bundled`` without a path, else webdataset, folder or list by what ``path`` is).
    ``shuffle_buffer``: shards are read in a seeded order and samples shuffled
    within a window of this many (webdataset only; see :mod:`zoo.data.shards`).
    """

    source: str = "auto"
    path: str | None = None
    shuffle_buffer: int = 10000  # webdataset: samples move at most this far from their place in the shard stream
    workers: int | None = None  # DataLoader workers; None: 0-2 on CPU, up to 8 on GPU
    verify_limit: int = 20000  # decode every image up front when there are at most this many, else the held-out ones only
    teacher_cache: str | None = None  # a `zoo cache build` folder: teacher outputs read from it, not computed


@dataclass
class AugmentConfig:
    """Random scale + crop, one box per image shared by the student and every teacher."""

    scale: tuple[float, float] = (0.25, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio range (width / height)
    hflip: bool = False
    views: int = 4  # augmented views per image stored by `zoo cache build` (training cycles through them)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr``.

    ``schedule_steps``: the step the cosine reaches ``min_lr`` at (0: ``train.steps``). Multi-fidelity search
    rungs stop a run early on the schedule of the last rung, so resuming a run is training it straight.
    """

    lr: float = 1e-3
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr: float = 0.0
    schedule_steps: int = 0


@dataclass
class LossConfig:
    """Paper eq. 3: feature loss ``alpha·cos + beta·smooth-L1``; λ/γ per teacher name (default 1).

    ``fd_teacher``: the teacher (by name, e.g. ``dinov2``) whose feature loss is
    recorded as the FD loss. ``standardize``: ``none``, or ``phi-s`` (PHI-S,
    arXiv 2410.01680: targets standardised per teacher with statistics estimated
    over ``standardize_batches`` batches before training; see :mod:`zoo.standardize`).
    """

    alpha: float = 0.9
    beta: float = 0.1
    summary_weights: dict[str, float] = field(default_factory=dict)
    feature_weights: dict[str, float] = field(default_factory=dict)
    balancing: str = "naive"  # naive | uncertainty | adaloss
    fd_teacher: str = "dinov2"  # teacher name whose feature term is the FD loss
    standardize: str = "none"  # none | phi-s
    standardize_batches: int = 8  # batches in the PHI-S statistics pass


@dataclass
class TrainConfig:
    """Loop settings. ``batch_size`` is global (split over the processes)."""

    steps: int = 100
    batch_size: int = 8
    resolution: int | list[int] = 224  # student resolution (int or [h, w])
    grad_clip: float | None = 1.0  # max gradient norm; null turns clipping off
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | off
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)


@dataclass
class EvalConfig:
    """Held-out evaluation: ``images`` held out of training, centre crop, no augmentation.

    The held-out images are the deterministic split of the training source, or
    with ``path`` the first ``images`` of a named source (``source``: auto,
    folder, list, webdataset or bundled; ``split`` is the training split).
    """

    images: int = 2
    source: str = "auto"  # auto: split without a path, else the kind of `path`
    path: str | None = None  # a validation folder, list file or shard set for the held-out images
    every: int = 0  # steps between evaluations; 0: only at the end
    batch_size: int = 8
    fd_loss_train_steps: int = 20  # fd_loss_train: mean FD-teacher feature term over the last N training steps


@dataclass
class BenchConfig:
    """Throughput measurement written to the run record (after training, eval mode).

    ``None`` means zoo bench's own default (:class:`zoo.bench.BenchSettings`, the one source of them).
    """

    enabled: bool = True
    batch_size: int | None = None
    warmup: int | None = None
    repeats: int | None = None
    steps_per_repeat: int | None = None


@dataclass
class Recipe:
    """One distillation recipe (see the module docstring)."""

    name: str = "custom"
    description: str = ""
    teachers: list[str] = field(default_factory=lambda: ["clip:tiny", "dinov2:tiny"])
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    @property
    def resolution(self) -> tuple[int, int]:
        """The student resolution as ``(h, w)``."""
        return as_hw(self.train.resolution)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for YAML/JSON and checkpoints."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> "Recipe":
        """Check values that the types alone cannot; returns ``self``."""
        checks = [
            ("train.steps", self.train.steps >= 1, "must be at least 1"),
            ("train.batch_size", self.train.batch_size >= 1, "must be at least 1"),
            ("train.log_every", self.train.log_every >= 1, "must be at least 1"),
            ("train.checkpoint_every", self.train.checkpoint_every >= 1, "must be at least 1"),
            ("train.amp", self.train.amp in AMP_MODES, f"must be one of {', '.join(AMP_MODES)}"),
            ("bench.batch_size", self.bench.batch_size is None or self.bench.batch_size >= 1, "must be at least 1"),
            ("bench.warmup", self.bench.warmup is None or self.bench.warmup >= 0, "must be at least 0"),
            ("bench.repeats", self.bench.repeats is None or self.bench.repeats >= 1, "must be at least 1"),
            ("bench.steps_per_repeat", self.bench.steps_per_repeat is None or self.bench.steps_per_repeat >= 1,
             "must be at least 1"),
            ("data.source", self.data.source in DATA_SOURCES, f"must be one of {', '.join(DATA_SOURCES)}"),
            ("data.shuffle_buffer", self.data.shuffle_buffer >= 0, "must be 0 or more"),
            ("eval.source", self.eval.source in EVAL_SOURCES, f"must be one of {', '.join(EVAL_SOURCES)}"),
            ("eval.path", bool(self.eval.path) or self.eval.source in ("auto", "split", "bundled"),
             f"is required for eval.source '{self.eval.source}' (e.g. --set eval.path=/data/val)"),
            ("optim.lr", self.optim.lr > 0, "must be positive"),
            ("optim.min_lr", 0 <= self.optim.min_lr <= self.optim.lr, "must be between 0 and optim.lr"),
            ("optim.warmup_steps", self.optim.warmup_steps >= 0, "must be 0 or more"),
            ("optim.schedule_steps", self.optim.schedule_steps == 0 or self.optim.schedule_steps >= self.train.steps,
             "must be 0 (= train.steps) or at least train.steps"),
            ("augment.scale", 0 < self.augment.scale[0] <= self.augment.scale[1] <= 1, "must be 0 < min <= max <= 1"),
            ("augment.ratio", 0 < self.augment.ratio[0] <= self.augment.ratio[1], "must be 0 < min <= max"),
            ("augment.views", self.augment.views >= 1, "must be at least 1"),
            ("eval.images", self.eval.images >= 1, "must be at least 1"),
            ("eval.every", self.eval.every >= 0, "must be 0 or more"),
            ("eval.batch_size", self.eval.batch_size >= 1, "must be at least 1"),
            ("eval.fd_loss_train_steps", self.eval.fd_loss_train_steps >= 1, "must be at least 1"),
            ("loss.fd_teacher", bool(self.loss.fd_teacher.strip()), "must name a teacher (e.g. dinov2)"),
            ("loss.standardize", self.loss.standardize in STANDARDIZE_METHODS,
             f"must be one of {', '.join(STANDARDIZE_METHODS)}, got '{self.loss.standardize}'"),
            ("loss.standardize_batches", self.loss.standardize_batches >= 1, "must be at least 1"),
            ("teachers", len(self.teachers) >= 1, "must list at least one teacher"),
        ]
        for path, ok, message in checks:
            if not ok:
                raise ConfigError(f"recipe key '{path}' {message}")
        from zoo.data import check_source
        from zoo.losses import BALANCING_METHODS

        check_source(self.data.source, self.data.path)
        check_source(self.eval.source, self.eval.path, "eval")

        if self.loss.balancing not in BALANCING_METHODS:
            raise ConfigError(f"recipe key 'loss.balancing' must be one of {', '.join(BALANCING_METHODS)}, "
                              f"got '{self.loss.balancing}'")
        try:
            self.resolution
        except (ResolutionError, ValueError, TypeError):
            raise ConfigError(f"recipe key 'train.resolution' must be N or [h, w], "
                              f"got {self.train.resolution!r}") from None
        return self


# --------------------------------------------------------------------------- safe YAML


class _RecipeYAMLError(Exception):
    """A refused YAML document (the message is one line, without the source name)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that checks the composed node graph before constructing anything.

    PyYAML builds an alias as a second reference to the same node, so
    composing is linear in the text; the danger is what comes after (copying
    the data expands every reference). :meth:`get_single_node` therefore
    walks the graph once (memoised per node, so shared nodes cost one visit),
    computes the size it would have with every alias expanded, and refuses
    cycles (an alias inside its own anchor), too much nesting and too large
    an expansion.
    """

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        # Checked while composing: the parser reads lazily, so deep nesting stops here,
        # before PyYAML's scanner (quadratic in the nesting depth) reads the rest.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _RecipeYAMLError(f"nesting deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):  # noqa: ANN201 - PyYAML's signature
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> int:
    """Expanded node count of ``root``; raises :class:`_RecipeYAMLError` on a cycle, depth or size limit."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # iterative post-order walk: (node, depth, children visited?)
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_EXPANDED_NODES:
                raise _RecipeYAMLError(f"its aliases expand to more than {MAX_EXPANDED_NODES:,} values "
                                       "(a recursive or exponential anchor/alias structure?)")
            continue
        if key in sizes:
            continue
        if depth > MAX_DEPTH:  # aliases can nest what the text does not
            raise _RecipeYAMLError(f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded")
        on_path.add(key)
        stack.append((node, depth, True))
        for child in children:
            if id(child) in on_path:
                raise _RecipeYAMLError(f"an alias refers to itself (inside the anchored value that starts on "
                                       f"line {child.start_mark.line + 1})")
            stack.append((child, depth + 1, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _bracket_depth(text: str) -> int:
    """The deepest run of unclosed ``[``/``{`` (quotes ignored: an over-estimate, never an under-estimate).

    PyYAML's scanner is quadratic in the flow depth of one line (thousands of
    ``[`` take seconds before the composer sees a single node), so this is
    checked on the text first.
    """
    depth = deepest = 0
    for char in _NOT_BRACKETS.sub("", text):
        depth = depth + 1 if char in "[{" else max(0, depth - 1)
        deepest = max(deepest, depth)
    return deepest


_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the limits above; raises :class:`_RecipeYAMLError` (one line)."""
    if len(text) > MAX_RECIPE_BYTES:
        raise _RecipeYAMLError(f"larger than {MAX_RECIPE_BYTES:,} characters")
    if _bracket_depth(text) > MAX_DEPTH:
        raise _RecipeYAMLError(f"nesting deeper than {MAX_DEPTH} levels")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise _RecipeYAMLError(f"invalid YAML ({' '.join(str(err).split())})") from None
    except RecursionError:  # PyYAML's own composer recurses per nesting level
        raise _RecipeYAMLError(f"nesting deeper than {MAX_DEPTH} levels") from None


def _read_recipe_text(path: Path) -> str:
    """The text of a recipe file: size-capped, UTF-8, one-line errors naming the file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"recipe file {path}: cannot read it ({err.strerror or err.__class__.__name__})") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise ConfigError(f"recipe file {path}: larger than {MAX_RECIPE_BYTES:,} bytes; not a recipe")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"recipe file {path}: not UTF-8 text (invalid byte 0x{raw[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None


# --------------------------------------------------------------------------- loading


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against the type hint ``tp`` (ints accepted as floats, lists as tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"recipe key '{path}' expects {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"recipe key '{path}' expects a mapping of {_valid_keys(tp)}, got {_short(value)}")
        return _build(tp, value, path)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"recipe key '{path}' expects a list, got {_short(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"recipe key '{path}' expects {len(args)} values, got {_short(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"recipe key '{path}' expects a mapping, got {_short(value)}")
        return {_coerce(k, key_type, path): _coerce(v, value_type, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = _finite(float(value), path) if abs(value) < 1e308 else math.inf
    if tp is float and isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is str and value is False and path.endswith(".amp"):  # YAML 1.1 reads an unquoted `off` as false
        value = "off"
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"recipe key '{path}' expects {_type_name(tp)}, got {_short(value)}")
    if tp is float:
        return _finite(value, path)
    return value


def _finite(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"recipe key '{path}' expects a finite number, got {value!r}")
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` (``str`` for text) cut to one short line (a hostile value may be huge)."""
    text = " ".join((value if isinstance(value, str) else repr(value)).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _valid_keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _build(cls: type, data: Mapping[str, Any], path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        shown = key if isinstance(key, str) and len(key) <= 60 else _short(key, 60)
        dotted = f"{path}.{shown}" if path else str(shown)
        if key not in names:
            hint = _near_hint(unknown_name("key", key, names)) if isinstance(key, str) and len(key) <= 60 else ""
            raise ConfigError(f"unknown recipe key '{dotted}'; valid keys at "
                              f"{path or 'the top level'}: {_valid_keys(cls)}{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _near_hint(err: Exception) -> str:
    text = str(err)
    return f" (closest: {text.split('closest: ', 1)[1]})" if "closest: " in text else ""


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=5e-4"`` -> ``(["optim", "lr"], 0.0005)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{_short(text, 60)}' is not KEY=VALUE (e.g. optim.lr=5e-4)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override '{_short(text, 60)}' has an empty key")
    try:
        value = safe_yaml(raw) if raw.strip() else None
    except _RecipeYAMLError as err:
        raise ConfigError(f"override '{_short(key.strip(), 60)}': value refused: {err}") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each ``a.b.c=value`` in the nested dict ``data`` (in place; returned)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{_short(text, 60)}': '{'.'.join(parts[:i + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _recipe_files() -> Any:
    """The :mod:`zoo.recipes` package folder (or, in a source checkout not yet reinstalled, the folder beside ``zoo``)."""
    try:
        return importlib.resources.files(RECIPE_PACKAGE)
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parent.parent / "recipes"
        if folder.is_dir():
            return folder
        raise ConfigError("the shipped recipes are missing (package 'zoo.recipes' not installed); "
                          "give a recipe file path instead") from None


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in the :mod:`zoo.recipes` package."""
    files = _recipe_files()
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def _read_source(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """The raw mapping and the default recipe name."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in text:
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        content, default_name = _read_recipe_text(path), path.stem
    else:
        resource = _recipe_files() / f"{text}.yaml"
        if not resource.is_file():
            raise unknown_name("recipe", text, shipped_recipes())
        content, default_name = resource.read_text(encoding="utf-8"), text
    try:
        data = safe_yaml(content)
    except _RecipeYAMLError as err:
        raise ConfigError(f"recipe {text}: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {text}: the top level must be a mapping of {_valid_keys(Recipe)}, "
                          f"got {type(data).__name__}")
    return data, default_name


def recipe_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Recipe:
    """A validated :class:`Recipe` from plain data (e.g. a checkpoint's ``recipe``) plus overrides."""
    data = apply_overrides(_plain(dict(data)), overrides)
    return _build(Recipe, data).validate()


def load_recipe(name_or_path: str | Path | Recipe, overrides: Sequence[str] = ()) -> Recipe:
    """A shipped recipe by name (``smoke``, ``table7``, ``search-proxy``) or a YAML file, plus overrides."""
    if isinstance(name_or_path, Recipe):
        return recipe_from_dict(name_or_path.to_dict(), overrides)
    data, default_name = _read_source(name_or_path)
    data.setdefault("name", default_name)
    return recipe_from_dict(data, overrides)
