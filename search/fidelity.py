"""Multi-fidelity multi-objective search: successive-halving rungs over the proxy length.

Optuna prunes single-objective studies only (its issue #3450); this module is
the missing piece for (throughput, FD loss).

A trial trains its candidate to the first rung (e.g. 10 proxy steps), writes
the rung's result, and asks whether it is *promotable*: among every trial of
the study that has reached that rung (read from the shared storage: COMPLETE,
PRUNED and RUNNING trials of all workers), it must be in the top ``1/eta`` by
non-dominated rank, ties broken by crowding distance (NSGA-II's order) or by
hypervolume contribution. A promoted trial RESUMES its proxy run from its
checkpoint to the next rung (30 steps, then 90); a trial that is not promoted
is PRUNED with the values of its highest rung as user attributes, and its
checkpoint is deleted (unless ``keep_checkpoints``). Completed trials' values
are those of the last rung. As in asynchronous successive halving (ASHA, and
Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner`), the decision is
made when the trial reaches the rung, against what the study holds then;
while fewer than ``eta`` trials have reached a rung, a trial is promoted when
it is non-dominated there (Optuna cannot pause a trial and promote it later).

Storage layout (any Optuna storage: SQLite, PostgreSQL/MySQL, journal file):

* trial user attribute ``rung_<k>`` = ``{"rung", "steps", "values", "fd_loss", "throughput", "feasible"}``
  and ``rung`` = the highest rung reached;
* study user attribute ``zoo_fidelity`` = the schedule (a worker with another one is refused).

A worker killed mid-rung: its RUNNING trial goes stale (heartbeat or journal
lease), is failed and retried as a WAITING copy (same parameters, and the
rung results it had, copied by Optuna's retry callback); the copy resumes the
same run folder's checkpoint and carries on from the rung it was in.

The resumed run continues under the rung's ``train.steps`` (a resumable recipe
key of :func:`zoo.distill.distill`), so its cosine schedule is stretched to
the new length at each rung (a warm restart); every trial gets the same
schedule, so trials stay comparable at every rung.

``dry_run`` uses :func:`surrogate_at`: the space's surrogate FD loss plus an
invented learning curve (larger models still improving at low fidelity) and
deterministic noise shrinking with the steps, to test the scheduling.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from zoo.errors import ConfigError, DivergedError
from zoo.runs import STATUS_COMPLETE, STATUS_DIVERGED, RunPaths, RunRecord, SearchInfo, read_record, write_record
from zoo.search.attrs import FIDELITY_ATTR, MEASURED_ATTR, RUNG_ATTR, rung_attr  # noqa: F401 (re-exported)
from zoo.search.objective import (FD_LOSS, PROXY, ObjectiveSettings, SearchObjective, TrialDiverged, seeded_build,
                                  constraint_values, set_constraints)
from zoo.search.space import Candidate, SearchSpace

CROWDING = "crowding"
HYPERVOLUME = "hypervolume"
PROMOTIONS = (CROWDING, HYPERVOLUME)
# 30,90: a 10-step rung ranks candidates like chance (Kendall tau 0.18 with 90 steps), a 30-step one does not
# (0.76); benchmarks/proxy_fidelity.py, figures in the README. `--fidelity default` picks it.
DEFAULT_STEPS = (30, 90)
DEFAULT_ETA = 3
FIT_MODELS = 6  # models profiled end to end to fit a latency table (benchmarks/latency_table.py uses 6)


# --------------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class Fidelity:
    """The rung schedule: proxy steps per rung (increasing), the reduction factor ``eta``, the promotion rule."""

    steps: tuple[int, ...] = DEFAULT_STEPS
    eta: int = DEFAULT_ETA
    promotion: str = CROWDING

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in steps):
            raise ConfigError(f"--fidelity needs positive integer step counts, got {list(steps)}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"--fidelity step counts must increase (e.g. 10,30,90), got {','.join(map(str, steps))}")
        if not isinstance(self.eta, int) or self.eta < 2:
            raise ConfigError(f"--eta must be an integer of at least 2, got {self.eta!r}")
        if self.promotion not in PROMOTIONS:
            raise ConfigError(f"--promotion must be one of {', '.join(PROMOTIONS)}, got {self.promotion!r}")
        object.__setattr__(self, "steps", steps)

    @classmethod
    def parse(cls, text: str, eta: int = DEFAULT_ETA, promotion: str = CROWDING) -> "Fidelity":
        """``"30,90"`` (or ``"default"``: :data:`DEFAULT_STEPS`) -> the schedule (one line ConfigError else)."""
        if str(text).strip().lower() == "default":
            return cls(DEFAULT_STEPS, eta, promotion)
        try:
            steps = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
        except ValueError:
            raise ConfigError(f"--fidelity takes step counts such as 30,90 (or default), got {text!r}") from None
        return cls(steps, eta, promotion)

    @property
    def final(self) -> int:
        return self.steps[-1]

    @property
    def rungs(self) -> int:
        return len(self.steps)

    def describe(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "eta": self.eta, "promotion": self.promotion}

    def expected_steps(self) -> float:
        """Proxy steps an average trial trains when a ``1/eta`` share passes each rung."""
        total, previous = 0.0, 0
        for rung, steps in enumerate(self.steps):
            total += (steps - previous) / self.eta ** rung
            previous = steps
        return total

    def expected_counts(self, n_trials: int) -> list[float]:
        """About how many of ``n_trials`` reach each rung."""
        return [n_trials / self.eta ** rung for rung in range(self.rungs)]


def check_study_fidelity(study: Any, fidelity: Fidelity | None) -> None:
    """Record the schedule in the study, or refuse a worker whose schedule differs from the stored one."""
    stored = study.user_attrs.get(FIDELITY_ATTR)
    wanted = fidelity.describe() if fidelity is not None else None
    if stored is None and wanted is not None:
        if any(t.user_attrs.get("record") for t in study.get_trials(deepcopy=False)):
            raise ConfigError(f"study {study.study_name!r} already ran single-fidelity trials; multi-fidelity "
                              "results would not be comparable: use another --study-name")
        study.set_user_attr(FIDELITY_ATTR, wanted)
    elif stored != wanted and not (stored is None and wanted is None):
        def show(value: Any) -> str:
            return "none" if value is None else (f"{','.join(map(str, value['steps']))} eta {value['eta']} "
                                                 f"{value['promotion']}")

        raise ConfigError(f"study {study.study_name!r} runs with fidelity {show(stored)}, this worker with "
                          f"{show(wanted)}; use the same --fidelity/--eta/--promotion or another --study-name")


# --------------------------------------------------------------------------- promotion (all minimised)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Front index of each point (0 = non-dominated), Deb's fast non-dominated sort; all objectives minimised."""
    n = len(points)
    dominated_by = [0] * n
    dominating: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominating[i].append(j)
                dominated_by[j] += 1
            elif dominates(points[j], points[i]):
                dominating[j].append(i)
                dominated_by[i] += 1
    ranks = [0] * n
    front = [i for i in range(n) if dominated_by[i] == 0]
    rank = 0
    while front:
        following = []
        for i in front:
            ranks[i] = rank
            for j in dominating[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    following.append(j)
        front, rank = following, rank + 1
    return ranks


def crowding_distances(points: Sequence[Sequence[float]], members: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each member within its front (boundary points: infinity)."""
    distance = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for axis in range(len(points[members[0]])):
        ordered = sorted(members, key=lambda i: (points[i][axis], i))
        low, high = points[ordered[0]][axis], points[ordered[-1]][axis]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[here] += (points[after][axis] - points[before][axis]) / (high - low)
    return distance


def hypervolume_contributions(points: Sequence[Sequence[float]], members: Sequence[int],
                              reference: Sequence[float]) -> dict[int, float]:
    """The hypervolume each member of one front adds (exact for 1 or 2 objectives; crowding beyond)."""
    if not members:
        return {}
    dims = len(points[members[0]])
    if dims == 1:
        ordered = sorted(members, key=lambda i: (points[i][0], i))
        values = [points[i][0] for i in ordered] + [reference[0]]
        return {i: values[k + 1] - values[k] for k, i in enumerate(ordered)}
    if dims > 2:
        return crowding_distances(points, members)
    ordered = sorted(members, key=lambda i: (points[i][0], points[i][1], i))
    out = {}
    for k, i in enumerate(ordered):
        right = points[ordered[k + 1]][0] if k + 1 < len(ordered) else reference[0]
        up = points[ordered[k - 1]][1] if k > 0 else reference[1]
        out[i] = max(0.0, right - points[i][0]) * max(0.0, up - points[i][1])
    return out


def promotion_order(points: Sequence[Sequence[float]], feasible: Sequence[bool] | None = None,
                    rule: str = CROWDING) -> list[int]:
    """Indices of ``points`` best first: feasible before infeasible, then non-dominated rank, then the
    larger crowding distance / hypervolume contribution, then the index (earlier trials first)."""
    n = len(points)
    if n == 0:
        return []
    feasible = list(feasible) if feasible is not None else [True] * n
    ranks = nondominated_ranks(points)
    reference = [max(p[a] for p in points) for a in range(len(points[0]))]
    reference = [r + 0.1 * (abs(r) or 1.0) for r in reference]  # every point adds some volume
    score: dict[int, float] = {}
    for rank in set(ranks):
        members = [i for i in range(n) if ranks[i] == rank]
        score.update(hypervolume_contributions(points, members, reference) if rule == HYPERVOLUME
                     else crowding_distances(points, members))
    return sorted(range(n), key=lambda i: (not feasible[i], ranks[i], -score[i], i))


def promotable(index: int, points: Sequence[Sequence[float]], eta: int, feasible: Sequence[bool] | None = None,
               rule: str = CROWDING) -> bool:
    """Whether point ``index`` is in the top ``len(points) // eta`` (a feasible non-dominated point while
    that is 0: the first ``eta - 1`` trials of a rung have nothing to be compared with)."""
    feasible = list(feasible) if feasible is not None else [True] * len(points)
    if not feasible[index]:
        return False
    quota = len(points) // eta
    if quota == 0:
        rivals = [p for p, ok in zip(points, feasible) if ok]
        return not any(dominates(p, points[index]) for p in rivals)
    return index in promotion_order(points, feasible, rule)[:quota]


# --------------------------------------------------------------------------- the shared storage


def minimised(values: Sequence[float], directions: Sequence[Any]) -> list[float]:
    """Objective values with maximised ones negated (so that all are minimised)."""
    from optuna.study import StudyDirection

    return [-float(v) if d == StudyDirection.MAXIMIZE else float(v) for v, d in zip(values, directions)]


def rung_competitors(study: Any, rung: int) -> list[tuple[int, list[float], bool]]:
    """``(trial number, minimised values, feasible)`` of every trial that reached ``rung`` (all workers):
    COMPLETE, PRUNED (not skipped) and RUNNING ones. FAIL trials are left out: a retried trial's copy
    carries its rung results."""
    from optuna.trial import TrialState

    out = []
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for trial in study.get_trials(deepcopy=False, states=states):
        entry = trial.user_attrs.get(rung_attr(rung))
        if "skipped" in trial.user_attrs or not isinstance(entry, dict):
            continue
        out.append((trial.number, minimised(entry["values"], study.directions), bool(entry.get("feasible", True))))
    return out


def decide_promotion(study: Any, trial_number: int, rung: int, fidelity: Fidelity) -> bool:
    """Whether trial ``trial_number`` (whose rung result is stored) goes on past ``rung``."""
    competitors = rung_competitors(study, rung)
    numbers = [number for number, _, _ in competitors]
    if trial_number not in numbers:
        raise RuntimeError(f"trial {trial_number}: its rung {rung} result is not in the storage")
    return promotable(numbers.index(trial_number), [v for _, v, _ in competitors], fidelity.eta,
                      [ok for _, _, ok in competitors], fidelity.promotion)


# --------------------------------------------------------------------------- surrogate learning curve


def _noise(key: str, steps: int) -> float:
    seed = int(hashlib.sha1(f"{key}:{steps}".encode()).hexdigest()[:12], 16)
    return random.Random(seed).gauss(0.0, 1.0)


def surrogate_at(space: SearchSpace, candidate: Candidate, params_m: float, steps: int, final_steps: int) -> float:
    """A stand-in FD loss after ``steps`` of a ``final_steps`` proxy: the space's surrogate (its value at
    ``final_steps``) plus a gap that shrinks as ``sqrt(final/steps) - 1`` and is wider for larger models
    (they are still learning), plus deterministic noise of 0.01 x sqrt(final/steps). Invented numbers:
    they make low rungs an imperfect preview of high ones, to test the scheduling, nothing more."""
    final = float(space.surrogate_fd_loss(candidate, params_m))
    ratio = final_steps / max(1, steps)
    gap = 0.05 * (math.sqrt(ratio) - 1.0) * (1.0 + 0.15 * math.log1p(max(0.0, params_m)))
    return final + gap + 0.01 * math.sqrt(ratio) * _noise(candidate.key(), steps)


# --------------------------------------------------------------------------- speed


@dataclass
class Speed:
    """What the objective's record needs from a speed figure (the fields of a :class:`zoo.bench.BenchResult`)."""

    throughput: dict[str, Any]
    params_m: float
    gmacs: float | None
    source: str  # "measured" or "predicted"


def count_params_m(candidate: Candidate) -> float:
    """Parameters in millions, counted on the meta device (no memory, no compute)."""
    model = candidate.build(device="meta")
    return sum(p.numel() for p in model.parameters()) / 1e6


# --------------------------------------------------------------------------- the objective


class MultiFidelityObjective(SearchObjective):
    """The trial of a multi-fidelity study: speed once, then the proxy run rung by rung (resumed).

    Args:
        space, settings, study_name, duplicate_check: as :class:`SearchObjective`.
        fidelity: the rung schedule.
        latency_table: a :class:`zoo.search.latency.LatencyTable`, or ``{resolution: table}`` when the
            resolution is searched: throughput is *predicted* from it (no measurement per candidate);
            None measures each candidate with :mod:`zoo.bench`.
        fit_models: full models measured end to end to fit the table's overhead (when it has no fit yet).
    """

    def __init__(self, space: SearchSpace, settings: ObjectiveSettings, study_name: str = "search",
                 duplicate_check: Any = None, fidelity: Fidelity | None = None, latency_table: Any = None,
                 fit_models: int = FIT_MODELS) -> None:
        super().__init__(space, settings, study_name, duplicate_check)
        self.fidelity = fidelity or Fidelity()
        self.latency_table = latency_table
        self.tables: dict[int, Any] = ({} if latency_table is None else dict(latency_table)
                                       if isinstance(latency_table, Mapping)
                                       else {latency_table.settings.resolution: latency_table})
        missing = [r for r in space.resolutions if self.tables and r not in self.tables]
        if missing:
            raise ConfigError(f"no latency table for resolution {missing[0]} (one table per searched resolution)")
        if latency_table is not None and space.family != "eradio":
            raise ConfigError(f"predicted throughput needs the eradio space (the latency table times E-RADIO "
                              f"stages); the {space.name} space is measured: drop --throughput predicted")
        self._rung_recipes: dict[tuple[int, int], Any] = {}
        self.fit_models = fit_models

    def prepare(self) -> None:
        """The base checks, then the latency table's fit: ``fit_models`` candidates spanning the space's
        widths (seed 0: every worker picks the same) profiled end to end, once per table."""
        super().prepare()
        if self.latency_table is None:
            return
        from zoo.search.latency import fit_candidates

        for resolution, table in self.tables.items():
            def configs(resolution: int = resolution) -> list[Any]:
                return [c.config for c in fit_candidates(self.space, self.fit_models, random.Random(0),
                                                         resolution=resolution)]

            table.ensure_fit(configs)

    # ------------------------------------------------------------------ recipes

    def recipe(self, resolution: int | None = None) -> Any:
        """The proxy recipe at full fidelity (its hash names the run folder: one per candidate and schedule)."""
        return self.rung_recipe(resolution, self.fidelity.final)

    def rung_recipe(self, resolution: int | None, steps: int) -> Any:
        """The proxy recipe trained to ``steps``; evaluation only at the end of each rung."""
        if self.settings.dry_run:
            return None
        if (resolution, steps) not in self._rung_recipes:
            from zoo.recipe import load_recipe

            # One learning-rate schedule for every rung (``optim.schedule_steps``: the last rung's length), so a
            # run resumed rung by rung to the end is the run trained straight to the end.
            overrides = [*self.settings.recipe_overrides, "bench.enabled=false", f"train.steps={steps}",
                         f"optim.schedule_steps={self.fidelity.final}", "eval.every=0"]
            if resolution is not None:
                overrides.append(f"train.resolution={resolution}")
            self._rung_recipes[(resolution, steps)] = load_recipe(self.settings.recipe, overrides=overrides)
        return self._rung_recipes[(resolution, steps)]

    # ------------------------------------------------------------------ speed

    def speed(self, candidate: Candidate, name: str) -> Speed:
        """Predicted (latency table) or measured (:mod:`zoo.bench`) throughput, and the parameter count."""
        if not self.tables:
            bench = self.measure(candidate, name)
            return Speed(bench.throughput, bench.params_m, bench.gmacs, "measured")
        from zoo.search.latency import predicted_throughput_record

        table = self.tables[candidate.resolution]
        return Speed(predicted_throughput_record(table, candidate.config), count_params_m(candidate), None,
                     "predicted")

    # ------------------------------------------------------------------ one rung

    def train_rung(self, candidate: Candidate, name: str, steps: int) -> RunRecord:
        """Train the candidate's proxy run to ``steps``, resuming its checkpoint; the run's record."""
        from zoo.distill import distill

        paths = self.run_paths(candidate)
        done = _rung_record(paths, steps)
        if done is not None:  # a retried trial whose worker died after this rung's run ended
            return done
        resume = paths.checkpoint.is_file()
        if not resume and paths.summary.is_file():
            paths.summary.unlink()  # an attempt that left nothing to resume: redone
        recipe = self.rung_recipe(candidate.resolution, steps)
        returned = distill(seeded_build(candidate, name, recipe), recipe, out_dir=str(paths.root.parent),
                           run_name=paths.root.name, resume=resume, device=self.settings.device,
                           progress=self.settings.progress, teachers=self.teachers(recipe))
        record = read_record(paths.root) if paths.summary.is_file() else RunRecord.from_dict(returned)
        record.extra.setdefault("fd_loss_source", PROXY)
        return record

    def rung_value(self, candidate: Candidate, name: str, steps: int, params_m: float) -> tuple[float, RunRecord]:
        if self.settings.dry_run:
            paths = self.run_paths(candidate)
            fd_loss = surrogate_at(self.space, candidate, params_m, steps, self.fidelity.final)
            return fd_loss, self._dry_record(paths, name, candidate, fd_loss)
        record = self.train_rung(candidate, name, steps)
        return record.fd_loss, record

    # ------------------------------------------------------------------ the trial

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        candidate = self.start_trial(trial)
        name = candidate.backbone_name()
        start = time.perf_counter()
        speed = self.speed(candidate, name)
        throughput = float(speed.throughput["median"])
        constraints = constraint_values(self.settings, speed.params_m, throughput)
        set_constraints(trial, constraints)
        feasible = all(v <= 0 for v in constraints.values())
        paths = self.run_paths(candidate)
        extra: dict[str, Any] = {"key": candidate.key(), "fidelity": self.fidelity.describe(),
                                 "throughput_source": speed.source}
        if speed.source == "predicted":
            extra.update(predicted_throughput=throughput, measured_throughput=None)
        info = SearchInfo(study_name=self.study_name, trial_number=trial.number, space=self.space.name,
                          params=dict(trial.params), objective=self.settings.objective,
                          constraints=constraints or None, feasible=feasible, extra=extra)
        keep = self.settings.keep_checkpoints
        try:
            for rung, steps in enumerate(self.fidelity.steps):
                record, fd_loss = self._run_rung(trial, candidate, name, rung, steps, speed, info, start)
                values = [throughput, fd_loss] if self.settings.objective != FD_LOSS else [fd_loss]
                trial.set_user_attr(rung_attr(rung), {"rung": rung, "steps": steps, "values": values,
                                                      "fd_loss": fd_loss, "throughput": throughput,
                                                      "feasible": feasible})
                trial.set_user_attr(RUNG_ATTR, rung)
                info.extra["rung"] = rung
                info.extra["rung_steps"] = steps
                if rung == self.fidelity.rungs - 1:
                    break
                if not decide_promotion(trial.study, trial.number, rung, self.fidelity):
                    info.extra["pruned"] = True
                    note = f"stopped at rung {rung} ({steps} proxy steps): not promoted"
                    record.note = f"{record.note}; {note}" if record.note else note
                    self._finish(trial, record, info, candidate, speed, start)
                    raise optuna.TrialPruned(f"not promoted past rung {rung} ({steps} steps)")
            self._finish(trial, record, info, candidate, speed, start)
        except BaseException as err:
            keep = keep or _interrupted(err)  # a stopped run resumes from its checkpoint
            raise
        finally:
            if not keep:
                paths.checkpoint.unlink(missing_ok=True)
        return tuple(values) if len(values) > 1 else values[0]

    def _run_rung(self, trial: Any, candidate: Candidate, name: str, rung: int, steps: int, speed: Speed,
                  info: SearchInfo, start: float) -> tuple[RunRecord, float]:
        """One rung's FD loss and run record; a retried trial reuses a rung result its first attempt stored."""
        stored = trial.user_attrs.get(rung_attr(rung))
        if isinstance(stored, dict) and stored.get("steps") == steps:
            # A retried trial (its worker died later on): this rung was done and its checkpoint went on from it.
            fd_loss = float(stored["fd_loss"])
            paths = self.run_paths(candidate)
            if self.settings.dry_run:
                return self._dry_record(paths, name, candidate, fd_loss), fd_loss
            if paths.summary.is_file():
                return read_record(paths.root), fd_loss
            return RunRecord(run_id=paths.root.name, backbone=name, run_dir=str(paths.root), fd_loss=fd_loss,
                             steps=steps), fd_loss
        try:
            fd_loss, record = self.rung_value(candidate, name, steps, speed.params_m)
        except DivergedError as err:
            paths = self.run_paths(candidate)
            record = _diverged_record(paths, name, err.record)
            info.extra["diverged"] = str(err)
            info.extra["rung"] = rung
            self._complete(record, info, candidate, speed, start)
            record.status = STATUS_DIVERGED
            write_record(paths.root, record)
            trial.set_user_attr("diverged", " ".join(str(err).split()).split(":")[0] or "diverged")
            trial.set_user_attr("record", record.to_dict())
            raise TrialDiverged(f"trial {trial.number}: the proxy run diverged at rung {rung}: {err}") from err
        if not isinstance(fd_loss, (int, float)) or not math.isfinite(fd_loss):
            raise RuntimeError(f"rung {rung} of the proxy run gave no finite FD loss ({fd_loss!r})")
        return record, float(fd_loss)

    def _finish(self, trial: Any, record: RunRecord, info: SearchInfo, candidate: Candidate, speed: Speed,
                start: float) -> None:
        """The trial's one record: written to its run folder and kept as ``user_attrs["record"]``."""
        self._complete(record, info, candidate, speed, start)
        write_record(self.run_paths(candidate).root, record)
        trial.set_user_attr("record", record.to_dict())


def _rung_record(paths: RunPaths, steps: int) -> RunRecord | None:
    """The record of the proxy run if it already ended at exactly ``steps`` with an FD loss, else None."""
    if not paths.summary.is_file():
        return None
    record = read_record(paths.root)
    if record.status == STATUS_COMPLETE and record.steps == steps and record.fd_loss is not None:
        return record
    return None


def _diverged_record(paths: RunPaths, name: str, data: Mapping[str, Any] | None) -> RunRecord:
    if paths.summary.is_file():
        return read_record(paths.root)
    if data:
        return RunRecord.from_dict({**data, "run_id": paths.root.name})
    return RunRecord(run_id=paths.root.name, backbone=name, run_dir=str(paths.root))


def _interrupted(err: BaseException) -> bool:
    return isinstance(err, KeyboardInterrupt) or type(err).__name__ == "DistillInterrupted"


# --------------------------------------------------------------------------- the front, measured for real


def remeasure_front(study: Any, space: SearchSpace, settings: ObjectiveSettings,
                    trials: Sequence[Any] | None = None,
                    on_trial: Callable[[Any, float, float], None] | None = None) -> dict[int, dict[str, Any]]:
    """Measure the front's candidates with :mod:`zoo.bench` when their throughput was predicted.

    Optuna forbids changing a finished trial, so the measured figures go into the study's user
    attribute ``zoo_measured`` (``{trial number: throughput block}``) and into each run folder's
    ``summary.json`` (``throughput`` becomes the measurement; ``search.predicted_throughput`` keeps the
    prediction, ``search.measured_throughput`` the measured median). Returns what was measured.
    """
    from zoo.search.study import pareto_trials

    trials = list(trials) if trials is not None else pareto_trials(study)
    stored = dict(study.user_attrs.get(MEASURED_ATTR) or {})
    objective = SearchObjective(space, settings)
    measured: dict[int, dict[str, Any]] = {}
    for trial in trials:
        record = trial.user_attrs.get("record") or {}
        search = record.get("search") or {}
        if search.get("throughput_source") != "predicted" or str(trial.number) in stored:
            continue
        candidate = space.params_to_candidate(trial.params)
        bench = objective.measure(candidate, candidate.backbone_name())
        block = {**bench.throughput, "source": "measured"}
        measured[trial.number] = block
        predicted = float(search.get("predicted_throughput") or record["throughput"]["median"])
        stored[str(trial.number)] = {"throughput": block, "predicted_throughput": predicted, "gmacs": bench.gmacs}
        run_dir = record.get("run_dir")
        if run_dir and RunPaths(Path(run_dir)).summary.is_file():
            data = read_record(run_dir)
            data.throughput = block
            data.gmacs = bench.gmacs if bench.gmacs is not None else data.gmacs
            data.search.extra.update(measured_throughput=float(block["median"]), predicted_throughput=predicted)
            write_record(run_dir, data)
        if on_trial:
            on_trial(trial, predicted, float(block["median"]))
    if measured:
        study.set_user_attr(MEASURED_ATTR, stored)
    return measured
