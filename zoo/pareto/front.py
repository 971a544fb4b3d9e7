"""The front: non-dominated sets, grouping records by measurement environment, the bench-throughput join.

Rules a user can rely on:

* **Environments are never mixed silently.** Throughput depends on the device,
  input resolution, dtype and batch size, so by default every distinct
  ``(device_name, resolution, dtype, batch_size, compile, threads)`` is its
  own group with its own front (``group_by="env"``); ``group_by="none"`` mixes
  them on request and says so in every title.
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
* **Kinds share a front.** Distillation runs and search trials measured in
  the same environment compete on one front; plots and tables tell them apart,
  and such a group also carries a :class:`~zoo.pareto.versus.KindComparison`
  (hypervolume of each kind's front and of both, the hand-picked backbones a
  trial dominates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from zoo.errors import ConfigError, ZooError
from zoo.pareto.metrics import THROUGHPUT, Objective
from zoo.pareto.records import KIND_BENCH, RECORD_KINDS, Env, Record, Warn, normalise_dtype, resolution_of
from zoo.pareto.versus import KindComparison, compare_kinds

GROUP_BY = ("env", "none")
THROUGHPUT_FROM = ("record", "bench")


def _quiet(message: str) -> None:
    """The default ``warn``: say nothing."""


# --------------------------------------------------------------------------- non-dominated sets


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


# --------------------------------------------------------------------------- groups


def _kind_order(kind: str) -> tuple[int, str]:
    """Legends and tables list kinds in one order: runs, search trials, bench records, anything else."""
    return (RECORD_KINDS.index(kind) if kind in RECORD_KINDS else len(RECORD_KINDS), kind)


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
    # Hand-picked runs against search trials; None unless the group ranks both kinds.
    versus: KindComparison | None = None

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
    def kinds(self) -> list[str]:
        """The record kinds among the ranked rows (runs, then search trials, then bench records)."""
        return sorted({row.record.kind for row in self.ranked}, key=_kind_order)

    @property
    def random_teacher(self) -> bool:
        return any(row.record.random_teacher for row in self.ranked)

    @property
    def surrogate_points(self) -> int:
        """Ranked rows whose FD loss is a dry-run search's surrogate, not a distillation."""
        return sum(row.record.fd_loss_surrogate for row in self.ranked)

    @property
    def predicted_points(self) -> int:
        """Ranked rows whose throughput is a latency-table prediction, not a measurement."""
        return sum(row.record.throughput_predicted for row in self.ranked)


@dataclass
class Analysis:
    objectives: list[Objective]
    groups: list[Group]
    notes: list[str] = field(default_factory=list)
    throughput_from: str = "record"

    @property
    def random_teacher(self) -> bool:
        return any(group.random_teacher for group in self.groups)

    @property
    def kinds(self) -> list[str]:
        return sorted({kind for group in self.groups for kind in group.kinds}, key=_kind_order)

    @property
    def surrogate_points(self) -> int:
        return sum(group.surrogate_points for group in self.groups)

    @property
    def predicted_points(self) -> int:
        return sum(group.predicted_points for group in self.groups)


def join_bench_throughput(records: Sequence[Record], warn: Warn | None = None) -> list[Record]:
    """Distill records with their throughput taken from bench records (see the module docs for the rule).

    For every distill record and every environment in which a bench record of
    the same backbone was measured at the run's resolution, one record with
    that bench's ``throughput.*`` metrics and environment (the latest bench of
    that environment by ``created``, then by load order). Search trials and
    other non-bench records pass through unchanged; bench records are consumed.
    """
    warn = warn or _quiet
    benches: dict[str, list[Record]] = {}
    for record in records:
        if record.kind == KIND_BENCH:
            benches.setdefault(record.backbone, []).append(record)
    if not benches:
        raise ZooError("--throughput-from bench: no bench records among the inputs "
                       "(add runs/bench.jsonl, written by `zoo bench`)")
    out: list[Record] = []
    used: set[int] = set()
    for record in records:
        if record.kind == KIND_BENCH:
            continue
        if record.kind != "distill":
            out.append(record)
            continue
        resolution = resolution_of(record.data.get("resolution")) or record.env.resolution
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
    if resolution is not None and env.resolution != tuple(resolution):
        return False
    if dtype is not None and env.dtype != normalise_dtype(dtype):
        return False
    if batch_size is not None and env.batch_size != batch_size:
        return False
    return True


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


def _group(index: int, members: list[Record], objectives: Sequence[Objective], throughput_from: str) -> Group:
    """One group: its rows (fastest first), its front, and notes on what could not be ranked."""
    points = np.array([[r.metric(o.name) for o in objectives] for r in members], dtype=float)
    mask = pareto_front(points, [o.maximize for o in objectives])
    rows = [Row(record=r, values=tuple(float(v) for v in p), on_front=bool(m),
                missing=tuple(o.name for o, v in zip(objectives, p) if math.isnan(v)), label=label)
            for r, p, m, label in zip(members, points, mask, _unique_labels(members))]
    rows.sort(key=lambda row: _sort_key(row, objectives))
    group = Group(index=index, envs=list({r.env.key: r.env for r in members}.values()), rows=rows,
                  versus=compare_kinds(rows, objectives))
    missing = [row for row in rows if row.missing]
    if missing:
        lacking = sorted({name for row in missing for name in row.missing})
        listed = ", ".join(f"{row.label} ({row.record.kind})" for row in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        note = f"not ranked, missing {'/'.join(lacking)}: {listed}{more}"
        if throughput_from == "record" and any(row.record.kind == KIND_BENCH for row in missing):
            note += " (--throughput-from bench pairs bench speeds with run losses)"
        group.notes.append(note)
    if group.mixed:
        group.notes.append("environments mixed on request (--group-by none): throughputs may not be comparable")
    return group


def analyse(records: Sequence[Record], objectives: Sequence[Objective], group_by: str = "env",
            env_index: int | None = None, device: str | None = None, resolution: tuple[int, int] | None = None,
            dtype: str | None = None, batch_size: int | None = None, throughput_from: str = "record",
            warn: Warn | None = None) -> Analysis:
    """Group the records by environment, apply the filters, and mark each group's front."""
    warn = warn or _quiet
    if not objectives:
        raise ConfigError("no objectives")
    if group_by not in GROUP_BY:
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

    # Keep the number the user picked with --env.
    groups = [_group(env_index or position, members, objectives, throughput_from)
              for position, members in enumerate(env_lists, start=1)]
    analysis = Analysis(objectives=list(objectives), groups=groups, throughput_from=throughput_from)
    if len(by_env) > 1 and group_by == "env" and env_index is None:
        analysis.notes.append(f"{len(by_env)} measurement environments: one front per environment "
                              "(pick one with --env N, --device, --resolution, --dtype, --batch-size)")
    return analysis
