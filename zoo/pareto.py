"""The speed/quality Pareto front of distillation runs, benches and search trials.

Reads the records the other commands write (``runs/<id>/summary.json``,
``runs/bench.jsonl``, Optuna studies), flattens every numeric field to a dotted
metric name, groups records by the environment their speed was measured in,
and marks the non-dominated records of each group. Figures (PNG via
matplotlib, HTML via plotly) and tables are built from one :class:`Analysis`.

Rules a user can rely on:

* **Environments are never mixed silently.** Throughput depends on the device,
  input resolution, dtype and batch size, so by default every distinct
  ``(device_name, resolution, dtype, batch_size)`` is its own group with its
  own front (``group_by="env"``); ``group_by="none"`` mixes them on request
  and says so in every title.
* **Joining is explicit.** ``throughput_from="record"`` (default) uses each
  record's own throughput. ``throughput_from="bench"`` replaces the
  throughput of every *distill* record by the bench records of the same
  backbone measured at the run's resolution: one row per bench environment,
  the latest bench per environment winning. Runs without such a bench are
  left out with a note, the bench records themselves are consumed. Search
  trials keep their own throughput (their configurations differ from the
  registry's named backbones, so a bench by name would not describe them).
* **Missing values are reported.** A record without one of the objectives
  (``fd_loss: null``, a bench record with no FD loss, ...) is never on the
  front; it is listed in the group's notes and written to CSV/JSON with its
  ``missing`` objectives.

This module imports neither torch nor optuna at import time (plotting and
study libraries are imported only when used), so ``zoo pareto`` starts fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from zoo.errors import ConfigError, ZooError, unknown_name

# One source for names and defaults used by the library and the CLI.
RECORD_KINDS = ("distill", "bench", "search-trial")
RUN_KINDS = ("distill", "search-trial")  # records with a quality measurement
SUMMARY_FILE = "summary.json"
DEFAULT_X = "throughput"
DEFAULT_Y = "fd_loss"
THROUGHPUT = "throughput.median"
ENV_FIELDS = ("device_name", "resolution", "dtype", "batch_size")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "distill": ("backbone", "throughput", "fd_loss"),
    "search-trial": ("backbone", "throughput", "fd_loss"),
    "bench": ("backbone", "throughput"),
}
REQUIRED_THROUGHPUT_FIELDS = ("median",) + ENV_FIELDS
# Short names for metrics that live under a prefix.
METRIC_ALIASES = {"throughput": THROUGHPUT}
# Substrings deciding the default direction of a metric ("higher is better"?).
MAXIMIZE_HINTS = ("throughput", "top1", "top5", "knn", "zeroshot", "zero_shot", "accuracy", "acc", "miou", "map")
MINIMIZE_HINTS = ("loss", "params", "gmacs", "flops", "memory", "latency", "wall_time", "time_s")
METRIC_LABELS = {
    THROUGHPUT: "throughput (img/s, median)",
    "fd_loss": "FD loss (DINOv2 features)",
    "params_m": "params (M)",
    "gmacs": "GMACs",
    "knn_top1": "k-NN top-1",
    "zeroshot_top1": "zero-shot top-1",
    "peak_memory_mb": "peak memory (MB)",
}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
# Diagnostic fields whose numbers are not metrics (fvcore's per-op skip counts, version strings).
NOT_METRICS = ("flops_skipped", "versions")
FRONT_MARK = "★"
LABEL_ALL_UP_TO = 40  # points per panel; above this, only labels that fit are drawn (plus the front's)
RANDOM_TEACHER_MARK = "†"

Warn = Callable[[str], None]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Env:
    """Where a throughput figure was measured; records in different envs are not comparable."""

    device_name: str | None
    resolution: tuple[int, int] | None
    dtype: str | None
    batch_size: int | None
    # Also part of the key: a compiled model, or a CPU with another thread count,
    # runs at another speed. ``device`` ("cpu", "cuda:0") is implied by the name.
    compile: str | None = None
    threads: int | None = None  # CPU only
    device: str | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple:
        return (self.device_name, self.resolution, self.dtype, self.batch_size, self.compile, self.threads)

    def describe(self) -> str:
        if self.device_name is None and self.resolution is None:
            return "throughput not measured"
        res = "x".join(str(v) for v in self.resolution) if self.resolution else "?"
        device = self.device_name or self.device or "?"
        if self.device and self.device_name and self.device not in self.device_name.lower():
            device = f"{self.device} {self.device_name}"
        text = f"{device} · {res} · {self.dtype or '?'} · batch {self.batch_size if self.batch_size is not None else '?'}"
        if self.threads is not None:
            text += f" · {self.threads} threads"
        if self.compile:
            text += f" · compile {self.compile}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "device_name": self.device_name,
                "resolution": list(self.resolution) if self.resolution else None,
                "dtype": self.dtype, "batch_size": self.batch_size, "compile": self.compile, "threads": self.threads}


UNMEASURED = Env(None, None, None, None)


@dataclass(frozen=True)
class Record:
    """One loaded result: a distillation run, a bench measurement or a search trial."""

    kind: str
    backbone: str
    source: str  # file (and line / trial) it came from, for messages
    env: Env
    metrics: dict[str, float]  # flattened numeric fields, see flatten_metrics()
    data: dict[str, Any] = field(repr=False)
    family: str | None = None
    run_id: str | None = None
    random_teacher: bool = False
    status: str | None = None
    throughput_source: str = "record"  # or "bench <source>" after a join

    @property
    def label(self) -> str:
        """Short plot/table label: the backbone, or the trial number for search trials."""
        if self.kind == "search-trial" and self.data.get("trial_number") is not None:
            return f"trial {self.data['trial_number']}"
        return self.backbone

    def metric(self, name: str) -> float:
        return self.metrics.get(name, math.nan)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten_metrics(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of ``data`` under a dotted name (``throughput.median``, ``losses.dinov2/features``).

    Booleans, strings, lists and nulls are not metrics; ``None`` simply leaves
    the metric missing for that record.
    """
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, prefix=f"{name}."))
        elif _is_number(value):
            out[name] = float(value)
    return out


def _resolution(value: Any) -> tuple[int, int] | None:
    if _is_number(value):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _env_of(throughput: dict[str, Any] | None) -> Env:
    if throughput is None:
        return UNMEASURED
    device = throughput.get("device")
    compile_mode = throughput.get("compile")
    threads = throughput.get("threads")
    on_cpu = str(device or "").startswith("cpu")
    return Env(
        device_name=str(throughput["device_name"]) if throughput.get("device_name") is not None else None,
        resolution=_resolution(throughput.get("resolution")),
        dtype=normalise_dtype(throughput.get("dtype")),
        batch_size=int(throughput["batch_size"]) if _is_number(throughput.get("batch_size")) else None,
        compile=None if not compile_mode else ("default" if compile_mode is True else str(compile_mode)),
        threads=int(threads) if on_cpu and _is_number(threads) else None,
        device=str(device) if device is not None else None,
    )


def normalise_dtype(dtype: Any) -> str | None:
    """One spelling per dtype (``float16``/``half`` -> ``fp16``), so equal precisions group together."""
    if dtype is None:
        return None
    text = str(dtype).lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(text, text)


def _uses_random_teacher(data: dict[str, Any]) -> bool:
    if data.get("random_teacher"):
        return True
    teachers = data.get("teachers") or []
    return any(isinstance(t, dict) and t.get("random") for t in teachers)


def record_from_dict(data: Any, source: str) -> Record:
    """Validate one record dict and build a :class:`Record`; a bad record raises ZooError naming ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a record must be a JSON object, got {type(data).__name__}")
    if "kind" not in data:
        raise ConfigError(f"{source}: missing field 'kind'")
    kind = data["kind"]
    if kind not in RECORD_KINDS:
        raise ConfigError(f"{source}: unknown record kind {kind!r} (expected one of {', '.join(RECORD_KINDS)})")
    for name in REQUIRED_FIELDS[kind]:
        if name not in data:
            raise ConfigError(f"{source}: missing field '{name}' in {kind} record")
    if not isinstance(data["backbone"], str) or not data["backbone"]:
        raise ConfigError(f"{source}: field 'backbone' must be a non-empty string")
    throughput = data["throughput"]
    # A null throughput is allowed (a run distilled without measuring speed); any
    # other value must be a complete measurement, or its environment is unknown.
    if throughput is not None:
        if not isinstance(throughput, dict):
            raise ConfigError(f"{source}: field 'throughput' must be an object or null")
        for name in REQUIRED_THROUGHPUT_FIELDS:
            if name not in throughput:
                raise ConfigError(f"{source}: missing field 'throughput.{name}' in {kind} record")
        if not _is_number(throughput["median"]):
            raise ConfigError(f"{source}: field 'throughput.median' must be a number, got {throughput['median']!r}")
        if _resolution(throughput["resolution"]) is None:
            raise ConfigError(f"{source}: field 'throughput.resolution' must be [height, width], "
                              f"got {throughput['resolution']!r}")
    if kind in RUN_KINDS and data["fd_loss"] is not None and not _is_number(data["fd_loss"]):
        raise ConfigError(f"{source}: field 'fd_loss' must be a number or null, got {data['fd_loss']!r}")
    metrics = flatten_metrics({k: v for k, v in data.items() if k not in NOT_METRICS})
    return Record(kind=kind, backbone=data["backbone"], source=source, env=_env_of(throughput),
                  metrics=metrics, data=data, family=data.get("family"), run_id=data.get("run_id"),
                  random_teacher=_uses_random_teacher(data), status=data.get("status"))


def _read_json_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ZooError(f"{path}: cannot read ({err})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err


def _load_summary(path: Path, skip_invalid: bool, warn: Warn) -> list[Record]:
    try:
        return [record_from_dict(_read_json_file(path), str(path))]
    except ZooError as err:
        if not skip_invalid:
            raise
        warn(f"skipped {err}")
        return []


def _load_jsonl(path: Path, skip_invalid: bool, warn: Warn) -> list[Record]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ZooError(f"{path}: cannot read ({err})") from err
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        try:
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{source}: invalid JSON at column {err.colno}: {err.msg}") from err
            records.append(record_from_dict(data, source))
        except ZooError as err:
            if not skip_invalid:
                raise
            warn(f"skipped {err}")
    return records


def _is_record_jsonl(path: Path) -> bool:
    """Whether a ``.jsonl`` file found in a folder holds records (not, e.g., a run's metrics log)."""
    if (path.parent / SUMMARY_FILE).is_file():
        return False  # files beside a summary.json belong to that run (metrics.jsonl, ...)
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    first = json.loads(line)
                    return isinstance(first, dict) and first.get("kind") in RECORD_KINDS
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # let the loader report exactly what is wrong with it
    return False


def _record_files(path: Path) -> list[Path]:
    """The record files ``path`` stands for: itself, its summary.json, or all under it."""
    if path.is_file():
        return [path]
    if (path / SUMMARY_FILE).is_file():
        return [path / SUMMARY_FILE]
    found = [p for p in path.rglob(SUMMARY_FILE) if p.is_file()]
    found += [p for p in path.rglob("*.jsonl") if p.is_file() and _is_record_jsonl(p)]
    return sorted(set(found))


def load_records(paths: Sequence[str | Path], skip_invalid: bool = False, warn: Warn | None = None) -> list[Record]:
    """Load records from run folders, folders of run folders (recursively), summary.json or bench .jsonl files.

    A record that is not valid JSON or lacks a required field raises a
    :class:`ZooError` naming the file (and line) and the field, unless
    ``skip_invalid`` is set: then it is skipped and reported through ``warn``.
    """
    warn = warn or (lambda message: None)
    if not paths:
        raise ZooError("no input: give run folders, summary.json files or bench .jsonl files")
    records: list[Record] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ZooError(f"no such file or folder: {path}")
        files = _record_files(path)
        if not files:
            raise ZooError(f"no records in {path}: expected run folders with {SUMMARY_FILE} or bench .jsonl files")
        for file in files:
            if file.resolve() in seen:  # the same file reached through two arguments
                continue
            seen.add(file.resolve())
            if file.suffix == ".jsonl":
                records += _load_jsonl(file, skip_invalid, warn)
            elif file.suffix == ".json":
                records += _load_summary(file, skip_invalid, warn)
            else:
                raise ZooError(f"{file}: not a record file (expected {SUMMARY_FILE}, *.json or *.jsonl)")
    if not records:
        raise ZooError(f"no valid records in {', '.join(str(p) for p in paths)}")
    return records


def load_study_records(storage: str, study_name: str | None = None, skip_invalid: bool = False,
                       warn: Warn | None = None) -> list[Record]:
    """Records of the COMPLETE trials of an Optuna study (``user_attrs['record']`` of each trial).

    ``study_name`` may be omitted when the storage holds exactly one study.
    """
    import optuna  # imported here: optuna is slow to import and only this loader needs it

    from zoo.search.study import open_storage, require_existing  # one way to open every storage URL

    warn = warn or (lambda message: None)
    require_existing(storage)  # opening a missing SQLite file or journal would create an empty one
    try:
        opened = open_storage(storage, heartbeat_interval=None)
        names = optuna.get_all_study_names(storage=opened)
    except ZooError:
        raise
    except Exception as err:  # bad URL, missing driver, unreadable file: all user-fixable
        raise ZooError(f"cannot open Optuna storage {storage!r}: {str(err).splitlines()[0]}") from err
    if study_name is None:
        if len(names) != 1:
            raise ZooError(f"storage {storage!r} holds {len(names)} studies; pick one with --study-name "
                           f"({', '.join(names) or 'none'})")
        study_name = names[0]
    if study_name not in names:
        raise unknown_name("study", study_name, names)
    study = optuna.load_study(study_name=study_name, storage=opened)
    records = []
    infeasible = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        source = f"{study_name}#trial {trial.number}"
        try:
            if "record" not in trial.user_attrs:
                raise ConfigError(f"{source}: missing user attribute 'record'")
            data = dict(trial.user_attrs["record"])
            if data.get("feasible") is False:  # violates the sweep's constraints (max params, min speed)
                infeasible += 1
                continue
            data.setdefault("trial_number", trial.number)
            records.append(record_from_dict(data, source))
        except ZooError as err:
            if not skip_invalid:
                raise
            warn(f"skipped {err}")
    if infeasible:
        warn(f"left out {infeasible} trial(s) of {study_name!r} that violate the study's constraints")
    if not records:
        raise ZooError(f"study {study_name!r} has no complete feasible trials with records")
    return records


# --------------------------------------------------------------------------- metrics


def available_metrics(records: Iterable[Record]) -> list[str]:
    """Every metric name some record has (dotted names plus the ``throughput`` short name)."""
    names: set[str] = set()
    for record in records:
        names.update(record.metrics)
    names.update(alias for alias, target in METRIC_ALIASES.items() if target in names)
    return sorted(names)


def resolve_metric(name: str, records: Sequence[Record]) -> str:
    """The canonical metric name for ``name``; an unknown name raises with the closest names.

    Accepts the exact dotted name, an alias (``throughput``), or an unambiguous
    last part after a dot (``dinov2/features`` for ``losses.dinov2/features``).
    """
    names = available_metrics(records)
    name = name.strip()
    if name in METRIC_ALIASES and METRIC_ALIASES[name] in names:
        return METRIC_ALIASES[name]
    if name in names and name not in METRIC_ALIASES:
        return name
    suffix = [n for n in names if n.endswith(f".{name}")]
    if len(suffix) == 1:
        return suffix[0]
    if len(suffix) > 1:
        raise ConfigError(f"metric '{name}' is ambiguous: {', '.join(suffix)}")
    raise unknown_name("metric", name, names)


def default_direction(metric: str) -> str:
    """``'max'`` or ``'min'`` for a known kind of metric; raises for metrics with no obvious direction."""
    lower = metric.lower()
    # Losses first: "knn_loss" is a loss even though it mentions knn.
    if any(hint in lower for hint in MINIMIZE_HINTS):
        return "min"
    if any(hint in lower for hint in MAXIMIZE_HINTS):
        return "max"
    raise ConfigError(f"no default direction for metric '{metric}': say whether higher is better "
                      "(--x-dir/--y-dir max|min, or --objective NAME:max)")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


@dataclass(frozen=True)
class Objective:
    name: str  # canonical metric name
    direction: str  # "max" | "min"

    @property
    def maximize(self) -> bool:
        return self.direction == "max"

    @property
    def label(self) -> str:
        return metric_label(self.name)

    @property
    def arrow(self) -> str:
        return "↑" if self.maximize else "↓"


def parse_objective(spec: str, records: Sequence[Record], direction: str | None = None) -> Objective:
    """An :class:`Objective` from ``NAME`` or ``NAME:max|min`` (default direction per metric)."""
    name, sep, tail = spec.rpartition(":")
    if sep and tail.strip().lower() in ("max", "min"):
        direction = direction or tail.strip().lower()
    else:
        name = spec
    if not name.strip():
        raise ConfigError(f"empty metric name in objective {spec!r}")
    metric = resolve_metric(name, records)
    if direction is not None and direction not in ("max", "min"):
        raise ConfigError(f"direction must be 'max' or 'min', got {direction!r}")
    return Objective(metric, direction or default_direction(metric))


# --------------------------------------------------------------------------- the front


def _as_minimization(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"points must be [n, k], got shape {points.shape}")
    if len(maximize) != points.shape[1]:
        raise ValueError(f"{len(maximize)} directions for {points.shape[1]} objectives")
    sign = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return points * sign


def _front_nd(loss: np.ndarray) -> np.ndarray:
    """O(n² k): i is dominated when some j is no worse everywhere and better somewhere."""
    n = len(loss)
    on_front = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(loss <= loss[i], axis=1)
        better = np.any(loss < loss[i], axis=1)
        on_front[i] = not np.any(no_worse & better)
    return on_front


def _front_2d(loss: np.ndarray) -> np.ndarray:
    """O(n log n) sweep over points sorted by the first objective (both minimised).

    Within a run of equal first values only the smallest second value survives
    (duplicates of it all survive); it must also beat, strictly, the best second
    value seen at smaller first values.
    """
    n = len(loss)
    order = np.lexsort((loss[:, 1], loss[:, 0]))
    on_front = np.zeros(n, dtype=bool)
    best_before = math.inf  # min second objective over strictly smaller first objective
    start = 0
    while start < n:
        stop = start
        a = loss[order[start], 0]
        while stop < n and loss[order[stop], 0] == a:
            stop += 1
        group = order[start:stop]
        group_min = loss[group[0], 1]  # sorted by the second objective inside the run
        if group_min < best_before:
            on_front[group] = loss[group, 1] == group_min
        best_before = min(best_before, group_min)
        start = stop
    return on_front


def pareto_front(points: np.ndarray, maximize: Sequence[bool], method: str = "auto") -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` [n, k].

    ``maximize[j]`` says whether objective j is better when higher. A row with
    a NaN is never on the front and takes no part in dominance. Equal rows do
    not dominate each other, so duplicates of a front point are all kept.
    ``method`` is ``'auto'`` (a sweep for two objectives, pairwise otherwise),
    ``'2d'`` or ``'nd'``.
    """
    loss = _as_minimization(points, maximize)
    mask = np.zeros(len(loss), dtype=bool)
    valid = ~np.isnan(loss).any(axis=1)
    if not valid.any():
        return mask
    kept = loss[valid]
    if method == "auto":
        method = "2d" if loss.shape[1] == 2 else "nd"
    if method == "2d":
        if loss.shape[1] != 2:
            raise ValueError("the 2d sweep needs exactly two objectives")
        mask[valid] = _front_2d(kept)
    elif method == "nd":
        mask[valid] = _front_nd(kept)
    else:
        raise ValueError(f"unknown method {method!r}")
    return mask


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Row:
    record: Record
    values: tuple[float, ...]  # objective values, NaN where missing
    on_front: bool
    missing: tuple[str, ...]  # objectives this record lacks
    label: str  # unique within its group (run id added to repeated backbones)


@dataclass
class Group:
    """Records whose throughput is comparable, with their front."""

    index: int  # 1-based, as listed to the user (--env N)
    envs: list[Env]  # one env, or several with group_by="none"
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def mixed(self) -> bool:
        return len(self.envs) > 1

    def describe(self) -> str:
        if self.mixed:
            return "mixed environments: " + "; ".join(env.describe() for env in self.envs)
        return self.envs[0].describe()

    @property
    def ranked(self) -> list[Row]:
        return [row for row in self.rows if not row.missing]

    @property
    def front(self) -> list[Row]:
        return [row for row in self.rows if row.on_front]

    @property
    def random_teacher(self) -> bool:
        return any(row.record.random_teacher for row in self.ranked)


@dataclass
class Analysis:
    objectives: list[Objective]
    groups: list[Group]
    notes: list[str] = field(default_factory=list)
    throughput_from: str = "record"

    @property
    def random_teacher(self) -> bool:
        return any(group.random_teacher for group in self.groups)


def join_bench_throughput(records: Sequence[Record], warn: Warn | None = None) -> list[Record]:
    """Distill records with their throughput taken from bench records (see module docs for the rule).

    For every distill record and every environment in which a bench record of
    the same backbone was measured at the run's resolution, one record with
    that bench's ``throughput.*`` metrics and environment (the latest bench of
    that environment by ``created``, then by load order). Search trials and
    other non-bench records pass through unchanged; bench records are consumed.
    """
    warn = warn or (lambda message: None)
    benches: dict[str, list[Record]] = {}
    for record in records:
        if record.kind == "bench":
            benches.setdefault(record.backbone, []).append(record)
    if not benches:
        raise ZooError("--throughput-from bench: no bench records among the inputs "
                       "(add runs/bench.jsonl, written by `zoo bench`)")
    out: list[Record] = []
    used: set[int] = set()
    for record in records:
        if record.kind == "bench":
            continue
        if record.kind != "distill":
            out.append(record)
            continue
        resolution = _resolution(record.data.get("resolution")) or record.env.resolution
        latest: dict[tuple, tuple[tuple, Record]] = {}
        for position, bench in enumerate(benches.get(record.backbone, [])):
            if bench.env.resolution != resolution:
                continue
            rank = (str(bench.data.get("created") or ""), position)
            if bench.env.key not in latest or rank > latest[bench.env.key][0]:
                latest[bench.env.key] = (rank, bench)
        if not latest:
            res = "x".join(map(str, resolution)) if resolution else "its resolution"
            warn(f"left out {record.label} ({record.source}): no bench record of {record.backbone} at {res} "
                 f"(zoo bench --backbone {record.backbone} --resolution {resolution[0] if resolution else '?'})")
            continue
        for _, bench in latest.values():
            used.add(id(bench))
            metrics = {k: v for k, v in record.metrics.items() if not k.startswith("throughput")}
            metrics.update({k: v for k, v in bench.metrics.items() if k.startswith("throughput")})
            out.append(replace(record, env=bench.env, metrics=metrics, throughput_source=f"bench {bench.source}"))
    unused = sorted({b.backbone for group in benches.values() for b in group if id(b) not in used})
    if unused:
        warn(f"bench records with no matching run (not shown): {', '.join(unused)}")
    return out


def _matches(env: Env, device: str | None, resolution: tuple[int, int] | None, dtype: str | None,
             batch_size: int | None) -> bool:
    if device is not None:
        haystack = f"{env.device or ''} {env.device_name or ''}".lower()
        if device.lower() not in haystack:
            return False
    if resolution is not None and env.resolution != resolution:
        return False
    if dtype is not None and env.dtype != normalise_dtype(dtype):
        return False
    if batch_size is not None and env.batch_size != batch_size:
        return False
    return True


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    """``'224'`` -> (224, 224), ``'224x320'`` -> (224, 320)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*", text)
    if not match:
        raise ConfigError(f"resolution must look like 224 or 224x320, got {text!r}")
    h = int(match.group(1))
    return (h, int(match.group(2) or h))


def _unique_labels(records: Sequence[Record]) -> list[str]:
    """Each record's label, with its run id (or source) added where labels repeat within a group."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.label] = counts.get(record.label, 0) + 1
    labels = []
    for record in records:
        label = record.label
        if counts[label] > 1:
            label = f"{label} ({record.run_id or Path(record.source.split(':')[0]).parent.name or record.source})"
        labels.append(label)
    return labels


def _sort_key(row: Row, objectives: Sequence[Objective]) -> tuple:
    """Fastest first (the paper's Table 7 order); without throughput, best first objective first."""
    speed = row.record.metric(THROUGHPUT)
    if not math.isnan(speed):
        return (0, -speed)
    if row.values and not math.isnan(row.values[0]):
        return (1, -row.values[0] if objectives[0].maximize else row.values[0])
    return (2, 0.0)


def analyse(records: Sequence[Record], objectives: Sequence[Objective], group_by: str = "env",
            env_index: int | None = None, device: str | None = None, resolution: tuple[int, int] | None = None,
            dtype: str | None = None, batch_size: int | None = None, throughput_from: str = "record",
            warn: Warn | None = None) -> Analysis:
    """Group the records by environment, apply the filters, and mark each group's front."""
    warn = warn or (lambda message: None)
    if not objectives:
        raise ConfigError("no objectives")
    if group_by not in ("env", "none"):
        raise ConfigError(f"--group-by must be 'env' or 'none', got {group_by!r}")
    if throughput_from == "bench":
        records = join_bench_throughput(records, warn)
    elif throughput_from != "record":
        raise ConfigError(f"--throughput-from must be 'record' or 'bench', got {throughput_from!r}")
    selected = [r for r in records if _matches(r.env, device, resolution, dtype, batch_size)]
    if not selected:
        envs = sorted({r.env.describe() for r in records})
        raise ZooError(f"no record matches the environment filters; environments: {' | '.join(envs)}")

    by_env: dict[tuple, list[Record]] = {}
    for record in selected:
        by_env.setdefault(record.env.key, []).append(record)
    # Largest groups first, so "--env 1" is the main comparison.
    env_lists = sorted(by_env.values(), key=lambda rs: (-len(rs), rs[0].env.describe()))
    if env_index is not None:
        if not 1 <= env_index <= len(env_lists):
            listing = " | ".join(f"{i}: {rs[0].env.describe()}" for i, rs in enumerate(env_lists, 1))
            raise ConfigError(f"--env {env_index} is out of range; environments: {listing}")
        env_lists = [env_lists[env_index - 1]]
    if group_by == "none":
        env_lists = [[r for rs in env_lists for r in rs]]

    maximize = [o.maximize for o in objectives]
    groups = []
    for position, members in enumerate(env_lists, start=1):
        index = env_index or position  # keep the number the user picked with --env
        points = np.array([[r.metric(o.name) for o in objectives] for r in members], dtype=float)
        mask = pareto_front(points, maximize)
        labels = _unique_labels(members)
        rows = [Row(record=r, values=tuple(float(v) for v in p), on_front=bool(m),
                    missing=tuple(o.name for o, v in zip(objectives, p) if math.isnan(v)), label=label)
                for r, p, m, label in zip(members, points, mask, labels)]
        rows.sort(key=lambda row: _sort_key(row, objectives))
        envs = list({r.env.key: r.env for r in members}.values())
        group = Group(index=index, envs=envs, rows=rows)
        missing = [row for row in rows if row.missing]
        if missing:
            lacking = sorted({name for row in missing for name in row.missing})
            listed = ", ".join(f"{row.label} ({row.record.kind})" for row in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            note = f"not ranked, missing {'/'.join(lacking)}: {listed}{more}"
            if throughput_from == "record" and any(row.record.kind == "bench" for row in missing):
                note += " (--throughput-from bench pairs bench speeds with run losses)"
            group.notes.append(note)
        if group.mixed:
            group.notes.append("environments mixed on request (--group-by none): throughputs may not be comparable")
        groups.append(group)
    analysis = Analysis(objectives=list(objectives), groups=groups, throughput_from=throughput_from)
    if len(by_env) > 1 and group_by == "env" and env_index is None:
        analysis.notes.append(f"{len(by_env)} measurement environments: one front per environment "
                              "(pick one with --env N, --device, --resolution, --dtype, --batch-size)")
    return analysis


# --------------------------------------------------------------------------- exports


def rows_as_dicts(analysis: Analysis) -> list[dict[str, Any]]:
    """One flat dict per row: identity, group, environment, objectives, ``on_front`` and all metrics."""
    out = []
    for group in analysis.groups:
        for row in group.rows:
            r = row.record
            item: dict[str, Any] = {
                "group": group.index, "label": row.label, "backbone": r.backbone, "family": r.family,
                "kind": r.kind, "run_id": r.run_id, "source": r.source, "on_front": row.on_front,
                "missing": list(row.missing), "random_teacher": r.random_teacher, "status": r.status,
                "throughput_source": r.throughput_source, "env": r.env.to_dict(),
                "objectives": {o.name: _json_number(v) for o, v in zip(analysis.objectives, row.values)},
                "metrics": {k: _json_number(v) for k, v in sorted(r.metrics.items())},
            }
            out.append(item)
    return out


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def to_json(analysis: Analysis) -> str:
    payload = {
        "objectives": [{"name": o.name, "direction": o.direction} for o in analysis.objectives],
        "throughput_from": analysis.throughput_from,
        "groups": [{"group": g.index, "environment": g.describe(), "envs": [e.to_dict() for e in g.envs],
                    "front": [row.label for row in g.front], "notes": g.notes} for g in analysis.groups],
        "notes": analysis.notes,
        "rows": rows_as_dicts(analysis),
    }
    return json.dumps(payload, indent=2) + "\n"


def to_csv(analysis: Analysis) -> str:
    """CSV with one column per identity field, environment field, objective and metric."""
    rows = rows_as_dicts(analysis)
    metric_names = sorted({name for row in rows for name in row["metrics"]})
    head = ["group", "on_front", "label", "backbone", "family", "kind", "run_id", "random_teacher", "status",
            "device", "device_name", "resolution", "dtype", "batch_size", "compile", "threads",
            "throughput_source", "missing", "source"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head + metric_names)
    for row in rows:
        env = row["env"]
        identity = {**row, **env, "resolution": "x".join(map(str, env["resolution"])) if env["resolution"] else "",
                    "missing": " ".join(row["missing"])}
        writer.writerow([_csv_cell(identity[name]) for name in head]
                        + [_csv_cell(row["metrics"].get(name)) for name in metric_names])
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


# --------------------------------------------------------------------------- figures


def _front_line(rows: Sequence[Row], objectives: Sequence[Objective]) -> tuple[list[float], list[float], str]:
    """The front as a step line: x, y and matplotlib's ``where`` ('pre' when x is maximised).

    Sorted by x, the best y attainable on (x_{i-1}, x_i] is y_i when x is
    maximised (a point dominates everything slower), on [x_i, x_{i+1}) when
    it is minimised.
    """
    front = sorted((row for row in rows if row.on_front), key=lambda row: (row.values[0], row.values[1]))
    return [r.values[0] for r in front], [r.values[1] for r in front], "pre" if objectives[0].maximize else "post"


def _use_log(objective: Objective, values: Iterable[float]) -> bool:
    values = [v for v in values if not math.isnan(v)]
    return objective.name.startswith("throughput") and bool(values) and min(values) > 0


def figure_title(analysis: Analysis, title: str | None = None) -> str:
    x, y = analysis.objectives[:2]
    text = title or f"Pareto front: {_short_label(y.name)} vs {_short_label(x.name)}"
    if analysis.random_teacher:
        text += " (random teacher)"
    return text


def _short_label(metric: str) -> str:
    return metric_label(metric).split(" (")[0]


def _require_2d(analysis: Analysis, what: str) -> None:
    if len(analysis.objectives) != 2:
        raise ConfigError(f"{what} plots exactly two objectives; got {len(analysis.objectives)} "
                          "(use the table, --csv or --json for more)")
    if not any(group.ranked for group in analysis.groups):
        raise ZooError(f"nothing to plot: no record has both {analysis.objectives[0].name} "
                       f"and {analysis.objectives[1].name}")


def _log_axis(axis, set_scale) -> None:
    """Log scale with plain numbers at 1-2-5 steps (1000, 2000, 5000), as throughput tables read."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(NullFormatter())


def _place_labels(ax, rows: Sequence[Row], renderer) -> int:
    """Label the points, trying offsets around each so labels avoid each other, the markers and the legend.

    Every point is labelled up to ``LABEL_ALL_UP_TO`` points per panel; in a
    more crowded panel (a search study) a dominated point whose label cannot
    be placed without overlap stays unlabelled. Returns how many were left out.
    """
    candidates = [((6, 4), "left", "bottom"), ((6, -4), "left", "top"), ((-6, 4), "right", "bottom"),
                  ((-6, -4), "right", "top"), ((0, 8), "center", "bottom"), ((0, -8), "center", "top"),
                  ((10, 0), "left", "center"), ((-10, 0), "right", "center"), ((14, 14), "left", "bottom"),
                  ((-14, -14), "right", "top"), ((14, -14), "left", "top"), ((-14, 14), "right", "bottom")]
    axes_box = ax.get_window_extent(renderer)
    points = [ax.transData.transform((row.values[0], row.values[1])) for row in rows]
    taken = [_box_around(p, 4) for p in points]  # the markers themselves
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    crowded = len(rows) > LABEL_ALL_UP_TO
    omitted = 0
    # Front members first: their labels get the best spots.
    for row in sorted(rows, key=lambda row: not row.on_front):
        text = row.label + (RANDOM_TEACHER_MARK if row.record.random_teacher else "")
        best = None
        for offset, ha, va in candidates:
            ann = ax.annotate(text, (row.values[0], row.values[1]), xytext=offset, textcoords="offset points",
                              ha=ha, va=va, fontsize=8, fontweight="bold" if row.on_front else "normal",
                              color="black" if row.on_front else "0.35")
            ann.set_in_layout(False)
            box = ann.get_window_extent(renderer)
            cost = sum(_overlap(box, other) for other in taken)
            cost += box.width * box.height - _overlap(box, axes_box)  # outside the axes
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        if crowded and best[0] > 0 and not row.on_front:
            best[1].remove()
            omitted += 1
            continue
        taken.append(best[2])
    return omitted


def _box_around(point, radius: float):
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(point[0] - radius, point[1] - radius, point[0] + radius, point[1] + radius)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def plot_png(analysis: Analysis, title: str | None = None, dpi: int = 150) -> bytes:
    """A PNG of every group's points and front (one panel per environment), as bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    _require_2d(analysis, "--png")
    x, y = analysis.objectives
    groups = [g for g in analysis.groups if g.ranked]
    cols = min(len(groups), 2)
    nrows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(7.5 * cols, 5.5 * nrows), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for ax, group in zip(axes, groups):
        rows = group.ranked
        others = [r for r in rows if not r.on_front]
        front = [r for r in rows if r.on_front]
        if _use_log(x, (r.values[0] for r in rows)):
            _log_axis(ax.xaxis, ax.set_xscale)
        if _use_log(y, (r.values[1] for r in rows)):
            _log_axis(ax.yaxis, ax.set_yscale)
        ax.scatter([r.values[0] for r in others], [r.values[1] for r in others], s=28, color="0.6",
                   label="dominated", zorder=2)
        ax.scatter([r.values[0] for r in front], [r.values[1] for r in front], s=90, marker="*",
                   color="tab:red", edgecolor="black", linewidth=0.5, label="Pareto front", zorder=3)
        fx, fy, where = _front_line(rows, analysis.objectives)
        if len(fx) > 1:
            ax.step(fx, fy, where=where, color="tab:red", linewidth=1.2, alpha=0.7, zorder=1)
        ax.set_xlabel(f"{x.label} {x.arrow}")
        ax.set_ylabel(f"{y.label} {y.arrow}")
        ax.grid(True, which="both", alpha=0.25)
        ax.margins(0.12)
        panel = group.describe()
        if len(groups) > 1:
            panel = f"[{group.index}] {panel}"
        if group.random_teacher and len(groups) > 1:
            panel += f"  {RANDOM_TEACHER_MARK} random teacher"
        ax.set_title(panel, fontsize=9)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(figure_title(analysis, title), fontsize=11)
    canvas.draw()  # final layout before measuring label boxes
    fig.set_layout_engine("none")  # freeze it: labels must not move the axes they were placed on
    renderer = canvas.get_renderer()
    for ax, group in zip(axes, groups):
        omitted = _place_labels(ax, group.ranked, renderer)
        if omitted:
            ax.text(0.01, 0.01, f"{omitted} crowded labels omitted (see --html or the table)", fontsize=7,
                    color="0.4", transform=ax.transAxes, ha="left", va="bottom")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _hover_text(row: Row, analysis: Analysis, group: Group) -> str:
    r = row.record
    lines = [f"<b>{escape(row.label)}</b>{' ' + FRONT_MARK if row.on_front else ''}"]
    if row.label != r.backbone:
        lines.append(f"backbone: {escape(r.backbone)}")
    lines.append(f"kind: {r.kind}" + (f" · run {escape(r.run_id)}" if r.run_id else ""))
    for o, v in zip(analysis.objectives, row.values):
        lines.append(f"{o.label}: {_fmt(v)}")
    for name in (THROUGHPUT, "fd_loss", "params_m", "gmacs", "knn_top1", "zeroshot_top1"):
        if name in r.metrics and name not in (o.name for o in analysis.objectives):
            lines.append(f"{metric_label(name)}: {_fmt(r.metrics[name])}")
    lines.append(f"env: {escape(r.env.describe())}")
    if r.throughput_source != "record":
        lines.append(f"throughput from {escape(r.throughput_source)}")
    if r.random_teacher:
        lines.append("random teacher")
    return "<br>".join(lines)


def plot_html(analysis: Analysis, title: str | None = None) -> str:
    """A self-contained interactive plotly page (plotly.js inline, works offline)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _require_2d(analysis, "--html")
    x, y = analysis.objectives
    groups = [g for g in analysis.groups if g.ranked]
    titles = [f"[{g.index}] {g.describe()}" if len(groups) > 1 else g.describe() for g in groups]
    fig = make_subplots(rows=len(groups), cols=1, subplot_titles=titles, vertical_spacing=0.12 / max(1, len(groups)))
    for i, group in enumerate(groups, start=1):
        rows = group.ranked
        for on_front in (False, True):
            part = [r for r in rows if r.on_front == on_front]
            if not part:
                continue
            fig.add_trace(go.Scatter(
                x=[r.values[0] for r in part], y=[r.values[1] for r in part], mode="markers+text",
                text=[(r.label + (RANDOM_TEACHER_MARK if r.record.random_teacher else ""))
                      if on_front or len(rows) <= LABEL_ALL_UP_TO else "" for r in part],
                textposition="top center", hovertext=[_hover_text(r, analysis, group) for r in part],
                hoverinfo="text", name=("Pareto front" if on_front else "dominated") + f" [{group.index}]",
                marker=dict(size=14 if on_front else 8, symbol="star" if on_front else "circle",
                            color="crimson" if on_front else "gray", line=dict(width=0.5, color="black")),
            ), row=i, col=1)
        fx, fy, where = _front_line(rows, analysis.objectives)
        if len(fx) > 1:
            fig.add_trace(go.Scatter(x=fx, y=fy, mode="lines", line_shape="vh" if where == "pre" else "hv",
                                     line=dict(color="crimson", width=1.5), hoverinfo="skip",
                                     name=f"front line [{group.index}]", showlegend=False), row=i, col=1)
        fig.update_xaxes(title_text=f"{x.label} {x.arrow}", row=i, col=1,
                         type="log" if _use_log(x, (r.values[0] for r in rows)) else "linear")
        fig.update_yaxes(title_text=f"{y.label} {y.arrow}", row=i, col=1,
                         type="log" if _use_log(y, (r.values[1] for r in rows)) else "linear")
    fig.update_layout(title=figure_title(analysis, title), height=480 * len(groups) + 80, template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


format_value = _fmt
