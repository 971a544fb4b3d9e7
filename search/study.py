"""The study runner: storage, sampler, trial budget shared by workers, results.

Several ``zoo search`` processes pointed at one storage and study name are
workers of one sweep. Semantics of ``n_trials`` (the study's TOTAL, not per
worker):

* a trial *counts* when it is COMPLETE (feasible or not), PRUNED by the
  pruner, or RUNNING (in flight in some worker);
* it does *not* count when it FAILED (an exception, or a killed worker whose
  heartbeat went stale) or was *skipped*: PRUNED at once, before any work,
  with ``user_attrs["skipped"]`` saying why (a duplicate of an evaluated or
  in-flight configuration, or a surplus trial over the budget);
* a worker starts a trial only while fewer than ``n_trials`` trials count, and
  a trial that finds ``n_trials`` counting trials numbered before it skips
  itself: two workers asking at the same moment cannot overshoot (Optuna's
  ``MaxTrialsCallback`` counts only finished trials, so ``k`` workers may
  overshoot by ``k - 1``);
* when the budget is taken but other workers still run trials, a worker waits
  for them (a killed one's trial turns FAIL after the grace period and is
  retried by this worker), so every worker returns when the study is finished;
* N failures in a row stop a worker with an error (a broken setup must not
  loop forever); a run of skipped duplicates stops it with a note (the space,
  or what the sampler still proposes, is exhausted);
* a trial whose proxy run diverges is FAIL (never a point of the front) and
  the worker goes on;
* a worker stopped by SIGINT/SIGTERM (the proxy run saves its checkpoint)
  fails its trial and queues the same candidate again: the next worker
  resumes that proxy run from its checkpoint.

Stale trials: heartbeats work with ``study.optimize`` only (not ask/tell), so
each trial is one ``study.optimize(n_trials=1)`` call. RDB storages get
``heartbeat_interval``/``grace_period`` and
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback` (the stale trial
becomes FAIL, a WAITING copy of it runs next and resumes its proxy run).
Optuna 5.0's :class:`~optuna.storages.JournalStorage` has no heartbeats (it
does not implement :class:`optuna.storages._heartbeat.BaseHeartbeat`), so
journal files get :class:`JournalLeaseStorage`: the same protocol as a lease
in the journal itself (each running trial's worker renews a
``zoo_lease`` system attribute every interval; a RUNNING trial whose lease is
older than the grace period is failed and retried by any worker), with the
same callback. The lease uses wall-clock time: workers on several machines
need clocks that agree to well within the grace period.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from zoo.errors import ConfigError, UnknownNameError, ZooError, unknown_name
from zoo.search.objective import (DIRECTIONS, FD_LOSS, MULTI, OBJECTIVE_NAMES, PROXY, SURROGATE, SearchObjective,
                                  TrialDiverged)
from zoo.search.space import DEFAULT_SPACE, Candidate, SearchSpace

DEFAULT_STORAGE = "sqlite:///runs/search.db"
DEFAULT_STUDY = f"{DEFAULT_SPACE}-search"  # a study's default name is "<space>-search"
LEGACY_SPACE = "eradio"  # studies and records written before spaces were plug-ins searched E-RADIO
LEASE_ATTR = "zoo_lease"
SQLITE_TIMEOUT_S = 60  # seconds a writer waits for SQLite's lock ("database is locked" otherwise)
HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120  # a RUNNING trial without a heartbeat for this long is marked FAIL
MAX_RETRY = 2  # times a trial of a killed worker is re-run
MAX_FAILURES_IN_ROW = 3
MAX_SKIPS_IN_ROW = 50
SAMPLERS = ("guided", "nsga2", "nsga3", "tpe", "gp", "random")
DEFAULT_MULTI_SAMPLER = "guided"  # the README's sampler figures
SPACE_ATTR = "zoo_search_space"
OBJECTIVE_ATTR = "zoo_search_objective"
SKIPPED_ATTR = "skipped"


# --------------------------------------------------------------------------- storage


def journal_path(url: str) -> Path | None:
    """The log file of a journal storage URL (``journal:///abs/file.log``, a plain ``*.log`` path), else None."""
    if url.startswith("journal://"):
        return Path(url[len("journal://"):])  # journal:///abs/file.log -> /abs/file.log
    if "://" not in url and url.endswith(".log"):
        return Path(url)
    return None


def default_study(space_name: str) -> str:
    return f"{space_name}-search"


def _lease_storage_class() -> type:
    """:class:`JournalLeaseStorage`, defined on first use (keeps ``import zoo.search.study`` free of Optuna)."""
    global JournalLeaseStorage
    if JournalLeaseStorage is not None:
        return JournalLeaseStorage
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalStorage
    from optuna.trial import TrialState

    class _JournalLeaseStorage(JournalStorage, BaseHeartbeat):
        """A journal storage whose running trials hold a lease their worker renews (Optuna's heartbeat API).

        ``record_heartbeat`` appends the current time as the trial's ``zoo_lease`` system attribute;
        ``_get_stale_trial_ids`` lists RUNNING trials whose lease (or start, before the first renewal)
        is older than ``grace_period``. :func:`optuna.storages.fail_stale_trials`, the heartbeat thread
        of ``study.optimize`` and the stale-trial callback then work as with an RDB storage.
        """

        def __init__(self, backend: Any, heartbeat_interval: int | None = None, grace_period: int | None = None,
                     heartbeat_stale_trial_callback: Callable[..., None] | None = None) -> None:
            super().__init__(backend)
            if heartbeat_interval is not None and heartbeat_interval < 1:
                raise ConfigError(f"heartbeat interval must be at least 1 s, got {heartbeat_interval}")
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
            self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_system_attr(trial_id, LEASE_ATTR, time.time())
            except UpdateFinishedTrialError:
                pass  # another worker failed the trial as stale meanwhile: nothing left to renew

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                renewed = trial.system_attrs.get(LEASE_ATTR)
                if renewed is None and trial.datetime_start is not None:
                    renewed = trial.datetime_start.timestamp()  # local naive time, as the journal stores it
                if renewed is not None and now - float(renewed) > self.grace_period:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
            return self.heartbeat_stale_trial_callback

        def __getstate__(self) -> dict[str, Any]:  # JournalStorage pickles without its replay state
            return super().__getstate__()

    _JournalLeaseStorage.__name__ = _JournalLeaseStorage.__qualname__ = "JournalLeaseStorage"
    JournalLeaseStorage = _JournalLeaseStorage
    return JournalLeaseStorage


JournalLeaseStorage: type | None = None


def open_journal(path: Path, heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
                 grace_period: int | None = GRACE_PERIOD_S, max_retry: int | None = MAX_RETRY) -> Any:
    """A journal-file storage (safe on NFS) with leases for stale-trial recovery (none if ``heartbeat_interval``
    is None: read-only uses)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval else None
    return _lease_storage_class()(JournalFileBackend(str(path)), heartbeat_interval=heartbeat_interval,
                                  grace_period=grace_period if heartbeat_interval else None,
                                  heartbeat_stale_trial_callback=callback)


def open_storage(url: str, heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
                 grace_period: int | None = GRACE_PERIOD_S, max_retry: int | None = MAX_RETRY) -> Any:
    """An Optuna storage for ``url``: RDB (SQLite, PostgreSQL, MySQL) with heartbeats, or a journal file
    with leases (see the module docstring); ``heartbeat_interval=None`` turns both off (read-only uses).

    SQLite files get a 60 s lock timeout and their folder is created.
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    journal = journal_path(url)
    if journal is not None:
        return open_journal(journal, heartbeat_interval, grace_period, max_retry)
    if "://" not in url:
        raise ConfigError(f"storage {url!r} is neither a database URL (sqlite:///file.db, postgresql://...) "
                          "nor a journal file (*.log, journal:///path/file.log)")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat: dict[str, Any] = {}
            if heartbeat_interval:
                heartbeat = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
            return _create_rdb(RDBStorage, url, engine_kwargs, heartbeat)
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as err:
        raise ZooError(f"cannot open Optuna storage {url!r}: {str(err).splitlines()[0]}") from err
    except Exception as err:  # sqlalchemy errors: bad host, bad credentials, unreadable file
        if type(err).__module__.startswith("sqlalchemy"):
            raise ZooError(f"cannot open Optuna storage {url!r}: {str(err).splitlines()[0]}") from err
        raise


def _create_rdb(cls: Any, url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any],
                attempts: int = 5) -> Any:
    """``RDBStorage(...)``, retried when another worker is creating the same schema at that moment
    (SQLite then answers "table ... already exists", "database is locked" or a UNIQUE constraint
    failure on the schema version row)."""
    for attempt in range(attempts):
        try:
            return cls(url, engine_kwargs=engine_kwargs, **heartbeat)
        except Exception as err:  # noqa: BLE001 - sqlalchemy's OperationalError, re-raised unless a race
            racing = any(text in str(err) for text in ("already exists", "database is locked", "UNIQUE constraint failed"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def require_existing(url: str) -> None:
    """Refuse a missing SQLite file or journal (opening one would silently create an empty storage)."""
    journal = journal_path(url)
    path = journal if journal is not None else (Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None)
    if path is not None and str(path) != ":memory:" and not path.is_file():
        raise ZooError(f"no such Optuna storage: {path} (from {url})")


def heartbeat_enabled(study: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def fail_stale_trials(study: Any) -> None:
    """Mark trials of dead workers FAIL (and queue their retries), where heartbeats are on."""
    import optuna

    if heartbeat_enabled(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


# --------------------------------------------------------------------------- sampler / study


def default_population(n_trials: int) -> int:
    """NSGA-II population: about five generations within the budget, between 8 and 50."""
    return max(8, min(50, n_trials // 5))


def make_sampler(name: str | None, objective: str, n_trials: int, seed: int | None = None,
                 population_size: int | None = None, space: SearchSpace | None = None) -> Any:
    """The sampler ``name`` of :data:`SAMPLERS`; ``None`` picks the default of the objective.

    ``guided`` (multi-objective default; needs ``space``): :mod:`zoo.search.guided`, models of both
    objectives on the space's cheap descriptors. ``nsga2``/``nsga3`` (population ``population_size``,
    default :func:`default_population`), ``tpe`` (single-objective default; constant liar for parallel
    workers), ``gp`` (Optuna's Gaussian-process sampler), ``random``. The README has the figures behind
    the defaults (``benchmarks/search_efficiency.py``).
    """
    import optuna

    name = name or (DEFAULT_MULTI_SAMPLER if objective == MULTI else "tpe")
    if name not in SAMPLERS:
        raise unknown_name("sampler", name, SAMPLERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "guided":
            if space is None:
                raise ValueError("the guided sampler needs the search space (make_sampler(..., space=...))")
            from zoo.search.guided import GuidedSampler

            return GuidedSampler(space, seed=seed)
        if name in ("nsga2", "nsga3"):
            kind = optuna.samplers.NSGAIISampler if name == "nsga2" else optuna.samplers.NSGAIIISampler
            return kind(population_size=population_size or default_population(n_trials), seed=seed)
        if name == "tpe":
            # constant_liar: RUNNING trials count as bad guesses, so parallel workers spread out.
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(objective: str, n_startup_trials: int = 3) -> Any:
    """Median pruning of the FD-loss curve for the single objective; none for multi-objective studies."""
    import optuna

    if objective == FD_LOSS:
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _same_space(stored: dict[str, Any], described: dict[str, Any]) -> bool:
    """Studies created before spaces were plug-ins stored the E-RADIO description without its name."""
    if "space" not in stored and described.get("space") == LEGACY_SPACE:
        described = {k: v for k, v in described.items() if k not in ("space", "family")}
    return stored == described


def open_study(storage: Any, study_name: str, space: SearchSpace | None = None, objective: str = MULTI,
               sampler: Any = None, pruner: Any = None, create: bool = True) -> Any:
    """Create or join study ``study_name``; a worker whose space or objective differs is refused."""
    import optuna

    if not create:
        names = optuna.get_all_study_names(storage)
        if study_name not in names:
            raise unknown_name("study", study_name, names)
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    study = optuna.create_study(storage=storage, study_name=study_name, directions=DIRECTIONS[objective],
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    wanted = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
              for d in DIRECTIONS[objective]]
    if list(study.directions) != wanted:
        raise ConfigError(f"study {study_name!r} exists with another objective "
                          f"({study.user_attrs.get(OBJECTIVE_ATTR, len(study.directions))}); use another --study-name")
    if space is not None:
        described = json.loads(json.dumps(space.describe()))  # the form it takes in storage
        stored = study.user_attrs.get(SPACE_ATTR)
        if stored is None:
            study.set_user_attr(SPACE_ATTR, described)
            study.set_user_attr(OBJECTIVE_ATTR, objective)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(OBJECTIVE_NAMES[objective])
        elif not _same_space(stored, described):
            raise ConfigError(f"study {study_name!r} was created with another search space "
                              f"({stored.get('space', 'eradio')} at resolutions {stored.get('resolutions')}, or other "
                              "--limit values); use the same options or another --study-name")
    return study


# --------------------------------------------------------------------------- budget


def is_skipped(trial: Any) -> bool:
    return SKIPPED_ATTR in trial.user_attrs


def counts_toward_budget(trial: Any) -> bool:
    """COMPLETE, RUNNING and pruner-PRUNED trials count; FAIL, WAITING and skipped ones do not."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.RUNNING):
        return True
    return trial.state == TrialState.PRUNED and not is_skipped(trial)


@dataclass
class Counts:
    counted: int = 0
    complete: int = 0
    running: int = 0
    pruned: int = 0
    failed: int = 0
    skipped: int = 0
    waiting: int = 0


def trial_counts(study: Any) -> Counts:
    from optuna.trial import TrialState

    counts = Counts()
    for trial in study.get_trials(deepcopy=False):
        counts.counted += counts_toward_budget(trial)
        if trial.state == TrialState.COMPLETE:
            counts.complete += 1
        elif trial.state == TrialState.RUNNING:
            counts.running += 1
        elif trial.state == TrialState.FAIL:
            counts.failed += 1
        elif trial.state == TrialState.WAITING:
            counts.waiting += 1
        elif is_skipped(trial):
            counts.skipped += 1
        else:
            counts.pruned += 1
    return counts


def make_trial_check(study: Any, n_trials: int) -> Callable[[Any, Candidate], str | None]:
    """The check a trial runs right after sampling: a reason to skip it (surplus, duplicate) or None."""
    from optuna.trial import TrialState

    def check(trial: Any, candidate: Candidate) -> str | None:
        key = candidate.key()
        others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        before = [t for t in others if t.number < trial.number]
        counted = sum(counts_toward_budget(t) for t in before)
        if counted >= n_trials:
            return f"surplus: {counted} trials before it already take the budget of {n_trials}"
        for other in others:
            if other.user_attrs.get("key") != key or is_skipped(other):
                continue
            # An in-flight trial numbered after this one skips itself when it sees this one.
            if other.state == TrialState.RUNNING and other.number > trial.number:
                continue
            if other.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
                return f"duplicate of trial {other.number} ({other.state.name.lower()})"
            if other.state == TrialState.FAIL and "diverged" in other.user_attrs:
                return f"duplicate of trial {other.number} (diverged: the same proxy run would diverge again)"
        return None

    return check


@dataclass
class VariantPlan:
    """The reference points a worker queues (parameters by backbone name), those queued with other windows
    than the paper's (``adapted``: name -> (paper windows, queued windows)) and those left out (name -> why)."""

    params: dict[str, dict[str, Any]]
    resolution: int
    adapted: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
    left_out: dict[str, str]

    def lines(self) -> list[str]:
        """What to tell the user: the queued names, then one line per change of windows and per left-out variant."""
        lines = [f"queued variants: {', '.join(self.params) or 'none'}"]
        groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
        for name, change in self.adapted.items():
            groups.setdefault(change, []).append(name)
        for (paper, fitted), names in groups.items():
            lines.append(f"  {', '.join(names)}: windows {'/'.join(map(str, fitted))} instead of the paper's "
                         f"{'/'.join(map(str, paper))} (the nearest that tile the {self.resolution} px maps)")
        for name, reason in self.left_out.items():
            lines.append(f"  {name} left out: {reason}")
        return lines


def plan_variants(space: SearchSpace, names: Sequence[str], resolution: int | None = None) -> VariantPlan:
    """The parameters of the named reference points (``all`` = every one) at ``resolution`` (the space's first).

    An unknown name is refused (:class:`UnknownNameError`, before any study exists). A variant whose
    attention windows do not tile the maps at the searched resolution (the paper's 2x2 windows at 64 px,
    where stage 3's only choice is 4) is queued with the nearest windows the space offers; one that still
    is not a point of the space (e.g. narrowed away by ``--limit``) is left out, with the reason.
    """
    names = list(names)
    resolution = space.resolutions[0] if resolution is None else resolution
    wanted = space.variant_names() if names == ["all"] else names
    plan = VariantPlan({}, resolution, {}, {})
    for name in wanted:
        try:
            plan.params.update(space.variant_params([name], resolution))
            continue
        except ConfigError as err:
            reason = str(err)
        fitted = _fit_windows(space, name, resolution)
        if fitted is None:
            plan.left_out[_full_name(space, name) or name] = reason
            continue
        full, values, change = fitted
        plan.params[full] = values
        plan.adapted[full] = change
    return plan


def _full_name(space: Any, name: str) -> str | None:
    """A variant's backbone name from its short form (``xt`` -> ``eradio-xt``), as ``variant_params`` reads it."""
    known = space.variant_names()
    words = set(space.family.split("-"))
    short = {"-".join(w for w in full.split("-") if w not in words): full for full in known}
    return name if name in known else short.get(name)


def _fit_windows(space: Any, name: str, resolution: int) -> tuple[str, dict[str, Any], tuple] | None:
    """``(backbone name, params, (paper windows, fitted windows))`` of a variant with its windows moved to
    the nearest ones the space offers at ``resolution``; None for a space without windows, or when some
    other field is outside the space."""
    if not all(hasattr(space, attr) for attr in ("variants", "variant_at", "config_to_params", "window_param_names")):
        return None
    full = _full_name(space, name)
    if full is None:
        return None
    config = space.variant_at(space.variants()[full], resolution)
    windows = tuple(config.window_size)
    fitted = tuple(_nearest(w, space.param(param).values())
                   for w, param in zip(windows, space.window_param_names(resolution)))
    try:
        values = space.config_to_params(config.replace(window_size=list(fitted)), resolution)
    except ConfigError:
        return None
    return full, values, (windows, fitted)


def _nearest(value: int, choices: Sequence[int]) -> int:
    """The choice closest to ``value`` in ratio (a window of 4 is as far from 2 as 1 is); ties: the larger."""
    import math

    return min(choices, key=lambda c: (abs(math.log(c / value)), -c))


def enqueue_variants(study: Any, space: SearchSpace, names: Sequence[str], resolution: int | None = None,
                     plan: VariantPlan | None = None) -> list[str]:
    """Queue the space's reference points (the paper's variants; ``all`` = every one) as the study's
    first trials (see :func:`plan_variants`); returns their backbone names. Already queued or run ones are
    not queued again."""
    plan = plan or plan_variants(space, names, resolution)
    for name, values in plan.params.items():
        study.enqueue_trial(values, user_attrs={"variant": name}, skip_if_exists=True)
    return list(plan.params)


# --------------------------------------------------------------------------- worker


@dataclass
class WorkerReport:
    """What one worker did."""

    ran: int = 0
    complete: int = 0
    pruned: int = 0
    skipped: int = 0
    failed: int = 0
    diverged: int = 0
    stopped_because: str = ""
    counts: Counts | None = None


def run_worker(study: Any, objective: SearchObjective, n_trials: int, timeout: float | None = None,
               wait_for_others: bool = True, poll_s: float | None = None,
               on_trial: Callable[[Any], None] | None = None,
               max_failures_in_row: int = MAX_FAILURES_IN_ROW,
               max_skips_in_row: int = MAX_SKIPS_IN_ROW) -> WorkerReport:
    """Run trials of ``study`` until it holds ``n_trials`` counting trials (see the module docstring)."""
    import optuna
    from optuna.trial import TrialState

    if n_trials < 1:
        raise ConfigError(f"--n-trials must be at least 1, got {n_trials}")
    objective.duplicate_check = make_trial_check(study, n_trials)
    objective.prepare()  # a missing recipe or a bad teacher spec fails here, before any trial
    report = WorkerReport()
    start = time.monotonic()
    failures = skips = 0
    heartbeat = heartbeat_enabled(study)
    poll_s = poll_s or (min(5.0, float(study._storage.get_heartbeat_interval())) if heartbeat else 1.0)
    finished: list[Any] = []

    def remember(study_: Any, trial: Any) -> None:
        finished.append(trial)

    while True:
        if timeout is not None and time.monotonic() - start > timeout:
            report.stopped_because = f"timeout ({timeout:g} s)"
            break
        fail_stale_trials(study)
        counts = trial_counts(study)
        if counts.counted >= n_trials:
            if counts.running and heartbeat and wait_for_others:
                time.sleep(poll_s)  # in-flight trials of other workers: they finish, or go stale and get retried
                continue
            report.stopped_because = f"budget reached ({counts.counted}/{n_trials} trials)"
            break
        finished.clear()
        objective.current = None
        error: Exception | None = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, n_trials=1, callbacks=[remember], gc_after_trial=True,
                               catch=(TrialDiverged,))
        except (ZooError, KeyboardInterrupt) as err:
            # A user-fixable problem (every trial would fail alike) or a stop request: end this worker.
            # A proxy run stopped by a signal saved its checkpoint: queue its candidate again, so the
            # next worker resumes it instead of losing the trial.
            if _interrupted(err) and objective.current is not None:
                number, params = objective.current
                study.enqueue_trial(params, user_attrs={"resumes": number})
                raise ZooError(f"stopped during trial {number}; its proxy run is checkpointed and queued again: "
                               "run the same zoo search command to resume it") from err
            raise
        except Exception as err:  # noqa: BLE001 - the trial is stored as FAIL; decide whether to go on
            error = err
        report.ran += 1
        trial = finished[-1] if finished else None
        if error is not None or (trial is not None and trial.state == TrialState.FAIL):
            report.failed += 1
            if trial is not None and "diverged" in trial.user_attrs:
                report.diverged += 1
            failures += 1
            if on_trial and trial is not None:
                on_trial(trial)
            if failures >= max_failures_in_row:
                last = _failure_reason(error, trial)
                raise ZooError(f"{failures} trials in a row failed; last error: {last}")
            continue
        failures = 0
        if trial is not None and is_skipped(trial):
            report.skipped += 1
            skips += 1
            report.ran -= 1
            if skips >= max_skips_in_row:
                last = trial.user_attrs.get(SKIPPED_ATTR, "")
                why = ("over the memory cap: --max-memory, or --limit the widths" if "memory cap" in last
                       else "duplicates (space exhausted?)")
                report.stopped_because = f"{skips} proposals in a row were {why}"
                break
            continue
        skips = 0
        if trial is not None:
            if trial.state == TrialState.COMPLETE:
                report.complete += 1
            elif trial.state == TrialState.PRUNED:
                report.pruned += 1
            if on_trial:
                on_trial(trial)
    report.counts = trial_counts(study)
    return report


def _failure_reason(error: Exception | None, trial: Any) -> str:
    if error is not None:
        return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    if trial is not None and "diverged" in trial.user_attrs:
        return (f"the proxy run {trial.user_attrs['diverged']}; lower the proxy recipe's learning rate "
                "(--set optim.lr=...)")
    return "see the log"


def _interrupted(err: BaseException) -> bool:
    return isinstance(err, KeyboardInterrupt) or type(err).__name__ == "DistillInterrupted"


# --------------------------------------------------------------------------- results


def feasible(trial: Any) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_trials(study: Any) -> list[Any]:
    """The non-dominated COMPLETE feasible trials (single objective: the best), best FD loss first."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if feasible(t) and t.values is not None]
    signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    losses = {t.number: [s * v for s, v in zip(signs, t.values)] for t in trials}
    front = [t for t in trials if not any(_dominates(losses[o.number], losses[t.number]) for o in trials)]
    if len(study.directions) == 1 and front:
        best = min(losses[t.number][0] for t in front)
        front = [t for t in front if losses[t.number][0] == best]
    return sorted(front, key=lambda t: (t.user_attrs.get("record", {}).get("fd_loss", 0.0), t.number))


def pick_study(storage: Any, study_name: str | None) -> str:
    """``study_name``, or the storage's only study, or :data:`DEFAULT_STUDY`; an unknown one names the closest."""
    import optuna

    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if len(names) == 1:
            return names[0]
        study_name = DEFAULT_STUDY
    if study_name not in names:
        raise unknown_name("study", study_name, names)
    return study_name


def study_space(study: Any) -> SearchSpace | None:
    """The space a study was created with (its stored name and resolutions; limits only narrow it), or None."""
    from zoo.search.space import make_space

    stored = study.user_attrs.get(SPACE_ATTR)
    if not isinstance(stored, dict):
        return None
    return make_space(stored.get("space", LEGACY_SPACE), tuple(stored.get("resolutions") or ()) or None)


def trial_candidate(space: SearchSpace, trial: Any) -> Candidate:
    """The candidate a trial evaluated, rebuilt from its parameters."""
    return space.params_to_candidate(trial.params)


def trial_record(trial: Any, measured: Any = None) -> dict[str, Any]:
    """The trial's run record (``summary.json`` content; records of older versions in today's layout).

    ``measured``: the study's ``zoo_measured`` attribute (:func:`zoo.search.fidelity.remeasure_front`):
    a trial whose predicted throughput was measured afterwards gets the measurement as ``throughput``
    (the prediction stays in ``search.predicted_throughput``), as its run folder's summary.json says.
    """
    from zoo.runs import RunRecord

    raw = trial.user_attrs.get("record")
    if not isinstance(raw, dict):
        raise ConfigError(f"trial {trial.number} has no search record")
    record = RunRecord.from_dict(raw)
    if record.backbone_config is None and isinstance(record.extra.get("config"), dict):
        record.backbone_config = record.extra.pop("config")  # schema 1 kept the config as "config"
    later = (measured or {}).get(str(trial.number)) if isinstance(measured, dict) else None
    if isinstance(later, dict) and isinstance(later.get("throughput"), dict):
        record.throughput = later["throughput"]
        record.gmacs = later.get("gmacs", record.gmacs)
        if record.search is not None:
            record.search.extra.update(measured_throughput=float(later["throughput"]["median"]),
                                       predicted_throughput=later.get("predicted_throughput"),
                                       throughput_source="measured")
    # Say where both objectives came from, also for records written before these keys existed.
    if "fd_loss_source" not in record.extra:
        record.extra["fd_loss_source"] = SURROGATE if str(record.note or "").startswith("dry run") else PROXY
    if record.search is not None:
        record.search.extra.setdefault("throughput_source", "measured")
    return record.to_dict()


def study_exists(storage: Any, study_name: str) -> bool:
    import optuna

    return study_name in optuna.get_all_study_names(storage)


def discard_new_study(storage: Any, study_name: str) -> bool:
    """Delete a study this worker has just created when its start is refused, so that the same command
    with a corrected argument starts afresh; kept when any trial has left the queue (another worker
    already runs it). True when deleted."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        if any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)):
            return False
        optuna.delete_study(study_name=study_name, storage=storage)
        return True
    except KeyError:  # already gone
        return False


def find_trial(study: Any, number: int) -> Any:
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial
    raise UnknownNameError(f"study {study.study_name!r} has no trial {number}")
