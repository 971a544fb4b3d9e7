"""The run: one folder, one record, read and written the same way by every command.

A run folder ``<out>/<run-id>/`` holds

* ``recipe.yaml``     the recipe as run (``RECIPE_FILE``)
* ``metrics.jsonl``   one JSON line per logged step / evaluation (``METRICS_FILE``)
* ``checkpoint.pt``   the training state (``CHECKPOINT_FILE``; search trials delete it unless kept)
* ``summary.json``    the :class:`RunRecord` (``SUMMARY_FILE``)
* ``backbone.yaml``   a copy of the backbone file the run trained, when it trained one (``BACKBONE_FILE``)

``summary.json`` is the record every later command reads: ``zoo distill`` writes
it, a search trial writes it with its ``search`` block and measured throughput,
``zoo eval`` adds metrics and an entry to ``evaluations``, and ``zoo pareto``
reads any folder of them. The JSON stays flat (``fd_loss``, ``throughput.median``,
``knn_top1`` are top-level or dotted paths) so metric names are stable; the
``schema_version`` field says which layout wrote it, and records written before
it existed (no ``schema_version``, search trials with a ``trial.json``) still load.

This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from zoo.atomic import atomic_write_json
from zoo.errors import ZooError

SCHEMA_VERSION = 2

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
BACKBONE_FILE = "backbone.yaml"  # copy of a `--backbone my-net.yaml` file: resume and loading need no original
LEGACY_TRIAL_FILE = "trial.json"  # schema 1: a search trial's record beside the distill summary

KIND_DISTILL = "distill"
KIND_SEARCH_TRIAL = "search-trial"
RECORD_KINDS = (KIND_DISTILL, KIND_SEARCH_TRIAL)

STATUS_COMPLETE = "complete"
STATUS_INTERRUPTED = "interrupted"
STATUS_DIVERGED = "diverged"
STATUS_RUNNING = "running"

RANDOM_TEACHER_NOTE = "random teacher: not a real distillation result"

DEFAULT_OUT = "runs"


def now_utc() -> str:
    """The current UTC time as ISO-8601 seconds (the one timestamp format of records)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class RunPaths:
    """The files of one run folder."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def backbone_file(self) -> Path:
        return self.root / BACKBONE_FILE

    @property
    def legacy_trial(self) -> Path:
        return self.root / LEGACY_TRIAL_FILE

    def has_record(self) -> bool:
        return self.summary.is_file()

    def stale_temp_files(self) -> list[Path]:
        """Temp files of writes killed mid-way (``.<name>.*.tmp``, as :mod:`zoo.atomic` names them)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def safe_name(text: str) -> str:
    """``text`` as a file-name part: path separators and odd characters become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "run"


def new_run_id(backbone_name: str, recipe_name: str, out_dir: str | os.PathLike = DEFAULT_OUT) -> str:
    """``<backbone>-<recipe>-<UTC time>``, with ``-2``, ``-3``... when a folder of that name exists.

    ``backbone_name`` may be a path to a backbone file: its stem is used.
    """
    name = backbone_name
    if name.endswith((".yaml", ".yml")) or os.sep in name or "/" in name:
        name = Path(name).stem
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{safe_name(name)}-{safe_name(recipe_name)}-{stamp}"
    candidate, n = base, 2
    while (Path(out_dir) / candidate).exists():
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def find_run_dir(run: str | os.PathLike, out_dir: str | os.PathLike = DEFAULT_OUT, needs: str = SUMMARY_FILE) -> Path:
    """The run folder ``run`` names: a path, or a run id under ``out_dir``; it must hold ``needs``."""
    for candidate in (Path(run), Path(out_dir) / str(run)):
        if (candidate / needs).is_file():
            return candidate
    raise ZooError(f"no {needs} in '{run}' (looked in {Path(run)} and {Path(out_dir) / str(run)}); "
                   "give a run folder written by zoo distill")


# --------------------------------------------------------------------------- the record


@dataclass
class SearchInfo:
    """What a search trial adds to its run's record."""

    study_name: str
    trial_number: int
    space: str = "eradio"
    params: dict[str, Any] = field(default_factory=dict)
    objective: str | None = None
    constraints: dict[str, float] | None = None
    feasible: bool = True
    trial_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchInfo":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("study_name", "search")
        values.setdefault("trial_number", -1)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


# Schema-1 search-trial records kept these at the top level.
_LEGACY_SEARCH_KEYS = ("study_name", "trial_number", "params", "objective", "constraints", "feasible", "trial_seconds")


@dataclass
class RunRecord:
    """The typed ``summary.json``.

    Unknown top-level keys (evaluation metrics such as ``knn_top1``, fields a
    newer version added) are kept in :attr:`extra` and written back unchanged.
    """

    run_id: str
    backbone: str
    kind: str = KIND_DISTILL
    status: str = STATUS_COMPLETE
    run_dir: str | None = None
    family: str | None = None
    backbone_config: dict[str, Any] | None = None
    params_m: float | None = None
    gmacs: float | None = None
    resolution: list[int] | None = None
    throughput: dict[str, Any] | None = None
    fd_loss: float | None = None  # held-out FD loss (eval mode, centre crops) at the end of training
    fd_loss_train: float | None = None  # Table 7's FD loss: mean FD-teacher feature term, last N training steps
    losses: dict[str, float] = field(default_factory=dict)
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    steps: int | None = None
    wall_time_s: float | None = None
    teachers: list[dict[str, Any]] = field(default_factory=list)
    random_teacher: bool = False
    note: str | None = None
    recipe: str | None = None
    balancing: str | None = None
    device: str | None = None
    world_size: int = 1
    diverged_step: int | None = None  # status "diverged": the first step with a non-finite loss/gradient norm
    data_skipped: int = 0  # unreadable training images skipped
    data_skipped_examples: list[str] = field(default_factory=list)  # the first few of them
    standardize: dict[str, Any] | None = None  # PHI-S statistics used (method, batches, source, per teacher)
    versions: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_utc)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    search: SearchInfo | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- conversion

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` content (flat; ``search`` as a nested block)."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "search":
                value = value.to_dict() if value is not None else None
                if value is None:
                    continue
            data[f.name] = value
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunRecord":
        """A record from ``summary.json`` content of any schema version."""
        if not isinstance(data, Mapping):
            raise ZooError("a run record must be a JSON object")
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        search = data.get("search")
        if data.get("kind") == KIND_SEARCH_TRIAL and not isinstance(search, Mapping):
            legacy = {k: data.pop(k) for k in _LEGACY_SEARCH_KEYS if k in data}
            legacy.setdefault("space", data.get("family") or "eradio")
            search = legacy
        values = {k: v for k, v in data.items() if k in known and k != "search"}
        values.setdefault("run_id", str(data.get("run_id") or Path(str(data.get("run_dir") or "run")).name))
        values.setdefault("backbone", str(data.get("backbone") or "?"))
        values["schema_version"] = int(data.get("schema_version") or 1)
        record = cls(**values, extra={k: v for k, v in data.items() if k not in known})
        record.search = SearchInfo.from_dict(search) if isinstance(search, Mapping) else None
        return record

    # ----------------------------------------------------------------- helpers

    @property
    def is_random_teacher(self) -> bool:
        return bool(self.random_teacher)

    def metric(self, name: str) -> Any:
        """A top-level or dotted value of :meth:`to_dict` (``throughput.median``), or ``None``."""
        node: Any = self.to_dict()
        for part in name.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def add_evaluation(self, metrics: Mapping[str, float], evaluation: Mapping[str, Any]) -> None:
        """Set top-level numeric ``metrics`` and append ``evaluation`` (dated) to :attr:`evaluations`."""
        known = {f.name for f in dataclasses.fields(self)}
        for key, value in metrics.items():
            if key in known:
                setattr(self, key, float(value))
            else:
                self.extra[key] = float(value)
        self.evaluations.append({**evaluation, "date": now_utc()})


# --------------------------------------------------------------------------- reading and writing


def read_record(run_dir: str | os.PathLike) -> RunRecord:
    """The :class:`RunRecord` of a run folder (a schema-1 search trial's ``trial.json`` is merged in)."""
    paths = RunPaths(Path(run_dir))
    if not paths.summary.is_file():
        raise ZooError(f"no run record in {run_dir} (looked for {paths.summary}); give a run folder written by zoo distill")
    data = _read_json(paths.summary)
    if paths.legacy_trial.is_file() and data.get("kind") != KIND_SEARCH_TRIAL:
        trial = _read_json(paths.legacy_trial)
        data = {**data, **trial}
    return RunRecord.from_dict(data)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ZooError(f"run record {path} is not UTF-8 text") from None
    except ValueError as err:
        raise ZooError(f"run record {path} is not valid JSON: {err}") from None
    except OSError as err:
        raise ZooError(f"cannot read run record {path}: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise ZooError(f"run record {path} is not a JSON object")
    return data


def write_record(run_dir: str | os.PathLike, record: RunRecord) -> Path:
    """Write ``summary.json`` atomically (the old file stays whole if the write fails)."""
    record.schema_version = SCHEMA_VERSION
    return atomic_write_json(RunPaths(Path(run_dir)).summary, record.to_dict())


def update_record(run_dir: str | os.PathLike, metrics: Mapping[str, float] | None = None,
                  evaluation: Mapping[str, Any] | None = None, **fields_: Any) -> RunRecord:
    """Read, change and write back a run's record: ``metrics`` + one ``evaluation`` entry, or plain fields."""
    record = read_record(run_dir)
    for key, value in fields_.items():
        if not hasattr(record, key) or key == "extra":
            record.extra[key] = value
        else:
            setattr(record, key, value)
    if metrics is not None or evaluation is not None:
        record.add_evaluation(metrics or {}, evaluation or {})
    write_record(run_dir, record)
    return record


@dataclass
class Run:
    """An existing run folder and its record."""

    paths: RunPaths
    record: RunRecord

    @property
    def root(self) -> Path:
        return self.paths.root


def open_run(run: str | os.PathLike, out_dir: str | os.PathLike = DEFAULT_OUT) -> Run:
    """The run folder ``run`` names (a path or a run id under ``out_dir``) with its record."""
    root = find_run_dir(run, out_dir)
    return Run(RunPaths(root), read_record(root))


def iter_record_files(path: str | os.PathLike) -> Iterator[Path]:
    """Every ``summary.json`` at or under ``path`` (a run folder, a folder of runs, a search ``--out`` folder)."""
    path = Path(path)
    if path.is_file():
        yield path
        return
    if (path / SUMMARY_FILE).is_file():
        yield path / SUMMARY_FILE
        return
    seen: set[Path] = set()
    for root, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        real = Path(root).resolve()
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if SUMMARY_FILE in files:
            dirs[:] = []  # files below a run belong to it
            yield Path(root) / SUMMARY_FILE
