"""Loading records: run folders (``summary.json`` via :mod:`zoo.runs`), bench ``.jsonl`` files, Optuna studies.

Every loader returns :class:`Record` objects: the record's kind, backbone,
the environment its throughput was measured in (:class:`Env`) and every
numeric field flattened to a dotted metric name. Distillation runs and search
trials are normalised through :class:`zoo.runs.RunRecord`, so a schema-1
search trial (a ``trial.json`` beside a distill ``summary.json``, merged the
way :func:`zoo.runs.read_record` merges it), a schema-2 one (a ``search``
block) and a trial stored in an Optuna study all read the same.

Search trials that violate their search's constraints (``feasible: false``)
are left out with a warning, wherever they are read from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from zoo.errors import ConfigError, ZooError, unknown_name
from zoo.pareto.metrics import NOT_METRICS, flatten_metrics
from zoo.runs import (KIND_SEARCH_TRIAL, LEGACY_TRIAL_FILE, SUMMARY_FILE, RunRecord, iter_record_files,
                      read_record)

KIND_BENCH = "bench"
RECORD_KINDS = ("distill", KIND_SEARCH_TRIAL, KIND_BENCH)
RUN_KINDS = ("distill", KIND_SEARCH_TRIAL)  # records with a quality measurement
ENV_FIELDS = ("device_name", "resolution", "dtype", "batch_size")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "distill": ("backbone", "throughput", "fd_loss"),
    KIND_SEARCH_TRIAL: ("backbone", "throughput", "fd_loss"),
    KIND_BENCH: ("backbone", "throughput"),
}
REQUIRED_THROUGHPUT_FIELDS = ("median",) + ENV_FIELDS
SURROGATE = "surrogate"  # fd_loss_source of a dry-run search trial (zoo.search.objective.SURROGATE)
PREDICTED = "predicted"  # throughput.source of a latency-table prediction (zoo.search.latency)
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}

Warn = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default ``warn``: say nothing."""


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
    runtime: str = "eager"  # eager PyTorch, compile, onnxruntime, tensorrt: never on one front
    device: str | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple:
        return (self.device_name, self.resolution, self.dtype, self.batch_size, self.compile, self.threads,
                self.runtime)

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
        if self.runtime != "eager":
            text += f" · {self.runtime}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "device_name": self.device_name,
                "resolution": list(self.resolution) if self.resolution else None,
                "dtype": self.dtype, "batch_size": self.batch_size, "compile": self.compile, "threads": self.threads,
                "runtime": self.runtime}


UNMEASURED = Env(None, None, None, None)


def short_config(params: Mapping[str, Any]) -> str:
    """A few words for a search trial's architecture: ``d64 2-3-6-2 @256`` (width, depths, searched resolution).

    Parameters of other search spaces fall back to the first two ``name=value`` pairs.
    """
    parts = []
    if "dim" in params:
        parts.append(f"d{params['dim']}")
    depths = [str(params[f"depth{i}"]) for i in range(1, 10) if f"depth{i}" in params]
    if depths:
        parts.append("-".join(depths))
    if "resolution" in params:
        parts.append(f"@{params['resolution']}")
    if not parts:
        parts = [f"{k}={v}" for k, v in list(params.items())[:2]]
    return " ".join(parts)


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
    # Figures that are not measurements of this model: a dry-run search's stand-in FD loss, and a throughput
    # predicted from a latency table and not measured since (search.measured_throughput).
    fd_loss_surrogate: bool = False
    throughput_predicted: bool = False

    @property
    def search(self) -> dict[str, Any]:
        """The ``search`` block of a search trial (empty for other kinds)."""
        block = self.data.get("search")
        return block if isinstance(block, dict) else {}

    @property
    def trial_number(self) -> int | None:
        number = self.search.get("trial_number", self.data.get("trial_number"))
        return number if isinstance(number, int) and number >= 0 else None

    @property
    def feasible(self) -> bool:
        return self.search.get("feasible", self.data.get("feasible")) is not False

    @property
    def label(self) -> str:
        """Short plot/table label: the backbone, or ``trial N (config)`` for search trials."""
        if self.kind == KIND_SEARCH_TRIAL and self.trial_number is not None:
            params = self.search.get("params") or {}
            config = short_config(params) if isinstance(params, dict) and params else ""
            return f"trial {self.trial_number}" + (f" ({config})" if config else "")
        return self.backbone

    def metric(self, name: str) -> float:
        return self.metrics.get(name, float("nan"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def resolution_of(value: Any) -> tuple[int, int] | None:
    """A stored resolution (``224`` or ``[224, 320]``) as ``(h, w)``; None when it is neither."""
    if _is_number(value):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def normalise_dtype(dtype: Any) -> str | None:
    """One spelling per dtype (``float16``/``half`` -> ``fp16``), so equal precisions group together."""
    if dtype is None:
        return None
    text = str(dtype).lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(text, text)


def _env_of(throughput: dict[str, Any] | None) -> Env:
    if throughput is None:
        return UNMEASURED
    device = throughput.get("device")
    compile_mode = throughput.get("compile")
    threads = throughput.get("threads")
    on_cpu = str(device or "").startswith("cpu")
    return Env(
        device_name=str(throughput["device_name"]) if throughput.get("device_name") is not None else None,
        resolution=resolution_of(throughput.get("resolution")),
        dtype=normalise_dtype(throughput.get("dtype")),
        batch_size=int(throughput["batch_size"]) if _is_number(throughput.get("batch_size")) else None,
        compile=None if not compile_mode else ("default" if compile_mode is True else str(compile_mode)),
        threads=int(threads) if on_cpu and _is_number(threads) else None,
        runtime=str(throughput.get("runtime") or "eager"),
        device=str(device) if device is not None else None,
    )


def _uses_random_teacher(data: dict[str, Any]) -> bool:
    if data.get("random_teacher"):
        return True
    teachers = data.get("teachers") or []
    return any(isinstance(t, dict) and t.get("random") for t in teachers)


def _fd_loss_is_surrogate(data: dict[str, Any]) -> bool:
    """A ``zoo search run --dry-run`` trial: its FD loss is the space's surrogate (``fd_loss_source: surrogate``)."""
    search = data.get("search") if isinstance(data.get("search"), dict) else {}
    return SURROGATE in (data.get("fd_loss_source"), search.get("fd_loss_source"))


def _throughput_is_predicted(data: dict[str, Any]) -> bool:
    """A throughput predicted from a latency table (``throughput.source: predicted``) and not measured since.

    A measurement replaces the throughput block (``source: measured``) and sets ``search.measured_throughput``.
    """
    throughput = data.get("throughput")
    if not isinstance(throughput, dict):
        return False
    search = data.get("search") if isinstance(data.get("search"), dict) else {}
    source = throughput.get("source")
    if source is None:
        source = search.get("throughput_source")
    return source == PREDICTED and not _is_number(search.get("measured_throughput"))


def _check_present(data: Any, source: str) -> str:
    """The record's kind, after checking it is an object with a known kind and its required fields."""
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
    return kind


def _check_values(data: dict[str, Any], kind: str, source: str) -> None:
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
        if resolution_of(throughput["resolution"]) is None:
            raise ConfigError(f"{source}: field 'throughput.resolution' must be [height, width], "
                              f"got {throughput['resolution']!r}")
    if kind in RUN_KINDS and data["fd_loss"] is not None and not _is_number(data["fd_loss"]):
        raise ConfigError(f"{source}: field 'fd_loss' must be a number or null, got {data['fd_loss']!r}")


def record_from_dict(data: Any, source: str) -> Record:
    """Validate one record dict and build a :class:`Record`; a bad record raises ZooError naming ``source``.

    Runs and search trials of any schema version are normalised through
    :class:`zoo.runs.RunRecord` first (a search trial's fields end up in its ``search`` block).
    """
    kind = _check_present(data, source)
    if kind in RUN_KINDS:
        try:
            data = RunRecord.from_dict(data).to_dict()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: not a valid run record ({err})") from None
    _check_values(data, kind, source)
    metrics = flatten_metrics({k: v for k, v in data.items() if k not in NOT_METRICS})
    return Record(kind=kind, backbone=data["backbone"], source=source, env=_env_of(data["throughput"]),
                  metrics=metrics, data=data, family=data.get("family"), run_id=data.get("run_id"),
                  random_teacher=_uses_random_teacher(data), status=data.get("status"),
                  fd_loss_surrogate=kind in RUN_KINDS and _fd_loss_is_surrogate(data),
                  throughput_predicted=_throughput_is_predicted(data))


# --------------------------------------------------------------------------- files


def _read_json_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ZooError(f"{path}: cannot read ({err})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err


def _load_json_record(path: Path) -> Record:
    """One ``summary.json`` (or other ``.json`` record); a schema-1 search trial's ``trial.json`` merged in."""
    data = _read_json_file(path)
    if path.name == SUMMARY_FILE and (path.parent / LEGACY_TRIAL_FILE).is_file():
        _check_present(data, str(path))  # the distill summary itself must be whole
        merged = read_record(path.parent).to_dict()  # the merge rule of zoo.runs, in one place
        return record_from_dict(merged, f"{path} + {LEGACY_TRIAL_FILE}")
    return record_from_dict(data, str(path))


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
    """Whether a ``.jsonl`` file holds records (not a run's metrics log or an Optuna journal)."""
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    first = json.loads(line)
                    return isinstance(first, dict) and first.get("kind") in RECORD_KINDS
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # let the loader report exactly what is wrong with it
    return False


def _jsonl_files(root: Path) -> list[Path]:
    """Record ``.jsonl`` files under ``root``; folders holding a ``summary.json`` (and below) belong to a run."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        real = Path(folder).resolve()
        if real in seen or SUMMARY_FILE in files:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(folder) / name for name in sorted(files)
                  if name.endswith(".jsonl") and _is_record_jsonl(Path(folder) / name)]
    return found


def record_files(path: Path) -> list[Path]:
    """The record files ``path`` stands for: itself, its summary.json, or every one under it."""
    if path.is_file():
        return [path]
    found = list(iter_record_files(path))
    if not (path / SUMMARY_FILE).is_file():
        found += _jsonl_files(path)
    return sorted(set(found))


def _drop_infeasible(records: list[Record], where: str, warn: Warn) -> list[Record]:
    """Trials that break the search's constraints, or that a multi-fidelity search stopped at a lower rung
    (their figures are from a shorter proxy than the others'), are not points of a front."""
    trials = [r for r in records if r.kind == KIND_SEARCH_TRIAL]
    infeasible = [r for r in trials if not r.feasible]
    pruned = [r for r in trials if r.feasible and r.search.get("pruned")]
    if infeasible:
        warn(f"left out {len(infeasible)} trial(s) in {where} that violate the search's constraints")
    if pruned:
        warn(f"left out {len(pruned)} trial(s) in {where} stopped at a lower rung (a shorter proxy)")
    dropped = {id(r) for r in infeasible + pruned}
    return [r for r in records if id(r) not in dropped]


def load_records(paths: Sequence[str | Path], skip_invalid: bool = False, warn: Warn | None = None) -> list[Record]:
    """Load records from run folders, folders of runs or search ``--out`` folders (recursively),
    summary.json files or bench .jsonl files.

    A record that is not valid JSON or lacks a required field raises a
    :class:`ZooError` naming the file (and line) and the field, unless
    ``skip_invalid`` is set: then it is skipped and reported through ``warn``.
    """
    warn = warn or _quiet
    if not paths:
        raise ZooError("no input: give run folders, search --out folders, summary.json files or bench .jsonl files")
    records: list[Record] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ZooError(f"no such file or folder: {path}")
        files = record_files(path)
        if not files:
            raise ZooError(f"no records in {path}: expected run folders with {SUMMARY_FILE} or bench .jsonl files")
        found: list[Record] = []
        for file in files:
            if file.resolve() in seen:  # the same file reached through two arguments
                continue
            seen.add(file.resolve())
            if file.suffix == ".jsonl":
                found += _load_jsonl(file, skip_invalid, warn)
            elif file.suffix == ".json":
                try:
                    found.append(_load_json_record(file))
                except ZooError as err:
                    if not skip_invalid:
                        raise
                    warn(f"skipped {err}")
            else:
                raise ZooError(f"{file}: not a record file (expected {SUMMARY_FILE}, *.json or *.jsonl)")
        records += _drop_infeasible(found, str(path), warn)
    if not records:
        raise ZooError(f"no valid records in {', '.join(str(p) for p in paths)}")
    return records


# --------------------------------------------------------------------------- Optuna studies


def _trial_record(data: dict[str, Any], number: int) -> dict[str, Any]:
    """A study trial's stored record with its trial number filled in (schema 1 flat, schema 2 ``search`` block)."""
    data = dict(data)
    if isinstance(data.get("search"), dict):
        data["search"] = {**data["search"]}
        data["search"].setdefault("trial_number", number)
    else:
        data.setdefault("trial_number", number)
    return data


def load_study_records(storage: str, study_name: str | None = None, skip_invalid: bool = False,
                       warn: Warn | None = None) -> list[Record]:
    """Records of the COMPLETE trials of an Optuna study (``user_attrs['record']`` of each trial).

    ``study_name`` may be omitted when the storage holds exactly one study.
    """
    import optuna  # imported here: optuna is slow to import and only this loader needs it

    from zoo.search.study import open_storage, require_existing, trial_record  # one way to open every storage URL

    warn = warn or _quiet
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
    # Front trials whose predicted throughput was measured after the search (zoo.search.fidelity.MEASURED_ATTR):
    # their measurement replaces the prediction, as in their run folders' summary.json.
    measured = study.user_attrs.get("zoo_measured")
    records = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        source = f"{study_name}#trial {trial.number}"
        try:
            if not isinstance(trial.user_attrs.get("record"), dict):
                raise ConfigError(f"{source}: missing user attribute 'record'")
            _check_present(trial.user_attrs["record"], source)
            try:
                data = trial_record(trial, measured)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{source}: not a valid run record ({err})") from None
            records.append(record_from_dict(_trial_record(data, trial.number), source))
        except ZooError as err:
            if not skip_invalid:
                raise
            warn(f"skipped {err}")
    records = _drop_infeasible(records, repr(study_name), warn)
    if not records:
        raise ZooError(f"study {study_name!r} has no complete feasible trials with records")
    return records
