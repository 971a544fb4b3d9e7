"""Score one candidate of a search space: measured throughput and proxy-distillation FD loss.

A trial (1) samples a :class:`~zoo.search.space.Candidate` from the space,
(2) refuses to evaluate a configuration some earlier trial already evaluated
or is evaluating (it is marked PRUNED with ``user_attrs["skipped"]``, see
:mod:`zoo.search.study`), (3) measures throughput, parameters and GMACs with
:mod:`zoo.bench` on the worker's device, (4) runs a short proxy distillation
(:func:`zoo.distill.distill` with the ``search-proxy`` recipe) and takes its
FD loss, and (5) writes ONE record: the run folder's ``summary.json``
(:class:`zoo.runs.RunRecord`, kind ``search-trial``, with a
:class:`zoo.runs.SearchInfo` block and the measured throughput), also kept as
``trial.user_attrs["record"]`` so a storage alone can be read.

The proxy run's checkpoint is deleted when the trial ends (complete, pruned,
failed or diverged; 0.35-2.4 GB each at 224 px) unless ``keep_checkpoints``;
a trial stopped by a signal keeps it, so its retry resumes. A proxy run whose
loss diverges (:class:`zoo.errors.DivergedError`) is recorded with status
``diverged`` and the trial is FAIL: it never becomes a point of the front.

Objectives: ``multi`` = (maximise throughput, minimise FD loss); ``fd_loss`` =
minimise FD loss alone, with the FD-loss curve reported to the study's pruner
at every evaluation of the proxy run (Optuna cannot prune multi-objective
studies). Constraints (``max_params_m``, ``min_throughput``) go through
:meth:`optuna.trial.Trial.set_constraint` (NSGA-II and TPE read them;
``study.best_trials`` keeps feasible trials only).

``dry_run`` replaces the distillation by the space's ``surrogate_fd_loss`` (a
cheap, deterministic stand-in, *not* a quality estimate) to test the machinery
and compare samplers; its records say so (``fd_loss_source: surrogate``).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from zoo.errors import ConfigError, DivergedError
from zoo.runs import (KIND_SEARCH_TRIAL, STATUS_COMPLETE, STATUS_DIVERGED, RunPaths, RunRecord, SearchInfo,
                      read_record, safe_name, write_record)
from zoo.search.space import Candidate, SearchSpace

MULTI = "multi"
FD_LOSS = "fd_loss"
OBJECTIVES = (MULTI, FD_LOSS)
DIRECTIONS: dict[str, list[str]] = {MULTI: ["maximize", "minimize"], FD_LOSS: ["minimize"]}
OBJECTIVE_NAMES: dict[str, list[str]] = {MULTI: ["throughput", "fd_loss"], FD_LOSS: ["fd_loss"]}
DEFAULT_RECIPE = "search-proxy"
SURROGATE = "surrogate"
PROXY = "proxy distillation"
# BenchSettings fields a search may change; their defaults are zoo.bench.BenchSettings' own.
BENCH_FIELDS = ("batch_size", "dtype", "warmup", "repeats", "steps_per_repeat", "threads", "channels_last")


class TrialDiverged(Exception):
    """The proxy run diverged: the trial is stored FAIL (``study.optimize(catch=...)``) and the worker goes on."""


@dataclass
class ObjectiveSettings:
    """How each trial is scored.

    Args:
        recipe: distillation recipe (name or YAML path) of the proxy run.
        recipe_overrides: ``key=value`` overrides applied to the recipe.
        teachers: teacher specs for the proxy run (None: the recipe's, the tiny ones in ``search-proxy``).
        out_dir: where the trial runs (one folder per trial) go.
        device: ``auto`` (the worker's GPU when it has one), ``cpu``, ``cuda:N``.
        objective: ``multi`` (throughput, FD loss) or ``fd_loss`` (single objective, prunable).
        max_params_m: constraint: at most this many million parameters.
        min_throughput: constraint: at least this many img/s.
        max_memory_gb: memory cap per candidate: a candidate whose training needs more
            (:func:`zoo.search.cost.train_memory_bytes`, on the meta device: nothing is built) is skipped
            before anything runs (``user_attrs["skipped"]``, not counted); None: no cap.
        bench: :class:`zoo.bench.BenchSettings` fields that differ from its defaults (``batch_size``,
            ``repeats``, ...); resolution, device and FLOP counting are the trial's.
        dry_run: FD loss from the space's surrogate instead of a distillation.
        keep_checkpoints: keep each proxy run's ``checkpoint.pt`` (deleted when the trial ends otherwise).
        progress: show the proxy runs' progress bars.
    """

    recipe: str = DEFAULT_RECIPE
    recipe_overrides: Sequence[str] = ()
    teachers: Sequence[str] | None = None
    out_dir: Path = Path("runs") / "search"
    device: str = "auto"
    objective: str = MULTI
    max_params_m: float | None = None
    min_throughput: float | None = None
    max_memory_gb: float | None = None
    bench: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    keep_checkpoints: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose {', '.join(OBJECTIVES)}")
        for name in ("max_params_m", "min_throughput", "max_memory_gb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        unknown = sorted(set(self.bench) - set(BENCH_FIELDS))
        if unknown:
            raise ConfigError(f"bench setting(s) {', '.join(unknown)} cannot be set here; "
                              f"choose from {', '.join(BENCH_FIELDS)}")
        self.bench = {k: v for k, v in self.bench.items() if v is not None}

    @property
    def constrained(self) -> bool:
        return self.max_params_m is not None or self.min_throughput is not None

    def bench_settings(self, resolution: int) -> Any:
        from zoo.bench import BenchSettings

        return BenchSettings(resolution=(resolution, resolution), device=self.device, flops=True,
                             **dict(self.bench)).resolved()


def constraint_values(settings: ObjectiveSettings, params_m: float, throughput: float) -> dict[str, float]:
    """Optuna constraint values (feasible when <= 0) of the configured constraints."""
    values = {}
    if settings.max_params_m is not None:
        values["max_params_m"] = params_m - settings.max_params_m
    if settings.min_throughput is not None:
        values["min_throughput"] = settings.min_throughput - throughput
    return values


def set_constraints(trial: Any, constraints: Mapping[str, float]) -> None:
    """Record the trial's constraint values; a retried trial (killed worker) keeps the ones it inherited
    (Optuna would warn and keep them anyway)."""
    stored = trial.storage.get_trial_system_attrs(trial._trial_id)
    for key, value in constraints.items():
        if f"constraints:{key}" not in stored:
            trial.set_constraint(key, value)


class SearchObjective:
    """The callable given to ``study.optimize``: one trial = one candidate scored.

    ``duplicate_check(trial, candidate)`` (from :mod:`zoo.search.study`) returns a
    reason to skip the trial, or None.
    """

    def __init__(self, space: SearchSpace, settings: ObjectiveSettings, study_name: str = "search",
                 duplicate_check: Any = None) -> None:
        self.space = space
        self.settings = settings
        self.study_name = study_name
        self.duplicate_check = duplicate_check
        self._recipes: dict[int | None, Any] = {}
        self._teachers: list[Any] | None = None
        self.current: tuple[int, dict[str, Any]] | None = None  # (trial number, params) being evaluated

    # ------------------------------------------------------------------ pieces

    def recipe(self, resolution: int | None = None) -> Any:
        """The proxy recipe (None for dry runs), trained at ``resolution``; loaded once per resolution.

        The recipe's own throughput measurement is turned off: the objective
        measures every candidate itself, before training, with its bench settings.
        """
        if self.settings.dry_run:
            return None
        if resolution not in self._recipes:
            from zoo.recipe import load_recipe

            overrides = [*self.settings.recipe_overrides, "bench.enabled=false"]
            if resolution is not None:
                overrides.append(f"train.resolution={resolution}")
            self._recipes[resolution] = load_recipe(self.settings.recipe, overrides=overrides)
        return self._recipes[resolution]

    def prepare(self) -> None:
        """Load the recipe and check the teacher specs before any trial (a typo fails once, not per trial)."""
        recipe = self.recipe()
        if recipe is not None:
            from zoo.teachers import parse_teacher_spec

            for spec in self.settings.teachers or recipe.teachers:
                parse_teacher_spec(spec)

    def teachers(self, recipe: Any) -> list[Any]:
        """The teachers, built once per worker and reused by every trial."""
        if self._teachers is None:
            from zoo.devices import resolve_device
            from zoo.teachers import build_teachers

            specs = list(self.settings.teachers or recipe.teachers)
            self._teachers = build_teachers(specs, resolve_device(self.settings.device))
        return self._teachers

    def run_name(self, candidate: Candidate) -> str:
        # Keyed by the candidate and the recipe, not the trial number: a trial retried after a
        # killed worker trains the same candidate and resumes that worker's checkpoint.
        recipe = self.recipe(candidate.resolution)
        suffix = "" if recipe is None else "-" + hashlib.sha1(recipe.to_yaml().encode()).hexdigest()[:6]
        return f"{safe_name(self.study_name)}-{candidate.key()}{suffix}"

    def run_paths(self, candidate: Candidate) -> RunPaths:
        return RunPaths(self.settings.out_dir / self.run_name(candidate))

    def measure(self, candidate: Candidate, name: str) -> Any:
        """Throughput, params and GMACs (:func:`zoo.bench.bench_model`) of a freshly built candidate."""
        from zoo.bench import bench_model

        model = candidate.build(name=name)
        return bench_model(model, self.settings.bench_settings(candidate.resolution), name=name,
                           family=candidate.family)

    def distill(self, trial: Any, candidate: Candidate, name: str) -> dict[str, Any]:
        """The proxy distillation of ``candidate`` at its resolution; its run record (with ``fd_loss``)."""
        import optuna

        from zoo.distill import distill

        on_eval = None
        if self.settings.objective == FD_LOSS:
            def on_eval(step: int, fd_loss: float) -> None:
                trial.report(float(fd_loss), int(step))
                if trial.should_prune():
                    trial.set_user_attr("pruned_at", {"step": int(step), "fd_loss": float(fd_loss)})
                    raise optuna.TrialPruned(f"FD loss {fd_loss:.4f} at step {step}")

        paths = self.run_paths(candidate)
        finished = _finished_run(paths)
        if finished is not None:  # a retried trial whose proxy run had ended before its worker died
            return finished
        if paths.summary.is_file() and not paths.checkpoint.is_file():
            paths.summary.unlink()  # the record of an attempt that failed and left nothing to resume: redone now
        recipe = self.recipe(candidate.resolution)
        return distill(seeded_build(candidate, name, recipe), recipe, out_dir=str(paths.root.parent),
                       run_name=paths.root.name, resume=paths.checkpoint.is_file(), device=self.settings.device,
                       progress=self.settings.progress, teachers=self.teachers(recipe),
                       on_eval=on_eval)

    def train_batch_size(self, resolution: int) -> int:
        """Images per training step of the proxy run (the bench batch for dry runs: nothing trains)."""
        recipe = self.recipe(resolution)
        if recipe is not None:
            return int(recipe.train.batch_size)
        return int(self.settings.bench_settings(resolution).batch_size)

    def memory_check(self, candidate: Candidate) -> str | None:
        """A reason to skip a candidate over the memory cap, or None (no cap, or under it)."""
        if self.settings.max_memory_gb is None:
            return None
        from zoo.search.cost import human_bytes, train_memory_bytes

        needed = train_memory_bytes(candidate, self.train_batch_size(candidate.resolution))
        if needed > self.settings.max_memory_gb * 1e9:
            return (f"over the memory cap: training needs ~{human_bytes(needed)} at batch "
                    f"{self.train_batch_size(candidate.resolution)}, cap {self.settings.max_memory_gb:g} GB")
        return None

    def start_trial(self, trial: Any) -> Candidate:
        """Sample the trial's candidate and record it; skip it (PRUNED, ``skipped``) when it is a duplicate,
        over the budget, or over the memory cap."""
        import optuna

        candidate = self.space.sample(trial)
        self.current = (trial.number, dict(trial.params))
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("key", candidate.key())
        reason = self.duplicate_check(trial, candidate) if self.duplicate_check is not None else None
        reason = reason or self.memory_check(candidate)
        if reason:
            trial.set_user_attr("skipped", reason)
            raise optuna.TrialPruned(reason)
        return candidate

    # ------------------------------------------------------------------ the trial

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        candidate = self.start_trial(trial)
        name = candidate.backbone_name()
        start = time.perf_counter()
        bench = self.measure(candidate, name)
        throughput = float(bench.throughput["median"])
        constraints = constraint_values(self.settings, bench.params_m, throughput)
        set_constraints(trial, constraints)
        paths = self.run_paths(candidate)
        info = SearchInfo(study_name=self.study_name, trial_number=trial.number, space=self.space.name,
                          params=dict(trial.params), objective=self.settings.objective,
                          constraints=constraints or None, feasible=all(v <= 0 for v in constraints.values()),
                          extra={"key": candidate.key()})
        if self.settings.dry_run:
            fd_loss = float(self.space.surrogate_fd_loss(candidate, bench.params_m))
            record = self._dry_record(paths, name, candidate, fd_loss)
        else:
            record = self._proxy_record(trial, paths, name, candidate, info, bench, start)
            fd_loss = record.fd_loss
        if not isinstance(fd_loss, (int, float)) or not math.isfinite(fd_loss):
            raise RuntimeError(f"the proxy run gave no finite FD loss ({fd_loss!r})")
        self._complete(record, info, candidate, bench, start)
        write_record(paths.root, record)
        trial.set_user_attr("record", record.to_dict())
        if self.settings.objective == FD_LOSS:
            return float(fd_loss)
        return throughput, float(fd_loss)

    def _proxy_record(self, trial: Any, paths: RunPaths, name: str, candidate: Candidate, info: SearchInfo,
                      bench: Any, start: float) -> RunRecord:
        """Run the proxy distillation; its checkpoint goes when the trial ends, unless kept or interrupted."""
        keep = self.settings.keep_checkpoints
        try:
            returned = self.distill(trial, candidate, name)
        except DivergedError as err:
            record = _record_or_new(paths, name, err.record)
            record.status = STATUS_DIVERGED
            info.extra["diverged"] = str(err)
            self._complete(record, info, candidate, bench, start)
            write_record(paths.root, record)
            trial.set_user_attr("diverged", _short(err))
            trial.set_user_attr("record", record.to_dict())
            raise TrialDiverged(f"trial {trial.number}: the proxy run diverged: {err}") from err
        except BaseException as err:
            keep = keep or _interrupted(err)  # a stopped run resumes from its checkpoint
            raise
        finally:
            if not keep:
                paths.checkpoint.unlink(missing_ok=True)
        # distill wrote summary.json and returned the same content; the file is the source when present
        record = read_record(paths.root) if paths.summary.is_file() else RunRecord.from_dict(returned)
        record.extra.setdefault("fd_loss_source", PROXY)
        return record

    def _dry_record(self, paths: RunPaths, name: str, candidate: Candidate, fd_loss: float) -> RunRecord:
        from zoo.versions import versions

        return RunRecord(run_id=paths.root.name, backbone=name, run_dir=str(paths.root), fd_loss=fd_loss,
                         note="dry run: fd_loss is a surrogate (search machinery test), not a distillation",
                         versions=versions(), extra={"fd_loss_source": SURROGATE})

    def _complete(self, record: RunRecord, info: SearchInfo, candidate: Candidate, bench: Any, start: float) -> None:
        """Make ``record`` the trial's: kind, search block, and the candidate's own measurements."""
        info.trial_seconds = round(time.perf_counter() - start, 3)
        record.kind = KIND_SEARCH_TRIAL
        record.search = info
        if record.backbone in (None, "", "?"):
            record.backbone = candidate.backbone_name()
        record.family = candidate.family
        record.backbone_config = candidate.config_dict()
        record.resolution = [candidate.resolution, candidate.resolution]
        record.throughput = bench.throughput
        record.params_m = bench.params_m
        record.gmacs = bench.gmacs
        record.run_dir = str(self.run_paths(candidate).root)
        if record.status not in (STATUS_DIVERGED,):
            record.status = STATUS_COMPLETE
        if self.settings.dry_run:
            record.device = str(bench.throughput.get("device", self.settings.device))
        else:
            record.recipe = self.recipe(candidate.resolution).name


def seeded_build(candidate: Candidate, name: str, recipe: Any) -> Any:
    """The candidate's network initialised from the recipe's ``train.seed``: the same candidate always starts
    from the same weights, so its FD loss differs between trials only by what it learns (unseeded, four
    90-step runs of one candidate spread about 5%, as much as candidates differ)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(recipe.train.seed))
        return candidate.build(name=name)


def _finished_run(paths: RunPaths) -> dict[str, Any] | None:
    """The record of a proxy run that already ended (no checkpoint left to resume), else None."""
    if paths.checkpoint.is_file() or not paths.summary.is_file():
        return None
    record = read_record(paths.root)
    if record.status != STATUS_COMPLETE or record.fd_loss is None:
        return None
    return record.to_dict()


def _record_or_new(paths: RunPaths, name: str, data: Mapping[str, Any] | None) -> RunRecord:
    """The record a diverged proxy run wrote (or the one its error carries)."""
    if paths.summary.is_file():
        return read_record(paths.root)
    if data:
        return RunRecord.from_dict({**data, "run_id": paths.root.name})
    return RunRecord(run_id=paths.root.name, backbone=name, run_dir=str(paths.root))


def _short(err: BaseException) -> str:
    """``diverged at step 2/6`` from the proxy run's message (which goes on to advise a zoo distill run)."""
    text = " ".join(str(err).split())
    return text.split(":")[0] if text else "diverged"


def _interrupted(err: BaseException) -> bool:
    return isinstance(err, KeyboardInterrupt) or type(err).__name__ == "DistillInterrupted"
