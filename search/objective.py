"""Score one E-RADIO candidate: measured throughput and proxy-distillation FD loss.

A trial (1) samples a :class:`~zoo.search.space.Candidate`, (2) refuses to
evaluate a configuration some earlier trial already evaluated or is evaluating
(it is marked PRUNED with ``user_attrs["skipped"]``, see
:mod:`zoo.search.study`), (3) measures throughput, parameters and GMACs with
:mod:`zoo.bench` on the worker's device, (4) runs a short proxy distillation
(:func:`zoo.distill.distill` with the ``search-proxy`` recipe) and takes its
FD loss, and (5) stores everything as ``trial.user_attrs["record"]`` (the
format :func:`zoo.pareto.load_study_records` reads) and in the run folder.

Objectives: ``multi`` = (maximise throughput, minimise FD loss); ``fd_loss`` =
minimise FD loss alone, with the FD-loss curve reported to the study's pruner
at every evaluation of the proxy run (Optuna cannot prune multi-objective
studies).

Constraints (``max_params_m``, ``min_throughput``) go through
:meth:`optuna.trial.Trial.set_constraint` (Optuna 5 replaces samplers'
``constraints_func`` by it; NSGA-II and TPE read them, ``study.best_trials``
keeps feasible trials only) and are copied to ``user_attrs["constraints"]``.

``dry_run`` replaces the distillation by :func:`surrogate_fd_loss` (a cheap,
deterministic stand-in, *not* a quality estimate) to test the machinery and
compare samplers; its records say so (``"fd_loss_source": "surrogate"``).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from zoo.search.space import Candidate, SearchSpace
from zoo.checkpoints import atomic_write_json
from zoo.errors import ConfigError

MULTI = "multi"
FD_LOSS = "fd_loss"
OBJECTIVES = (MULTI, FD_LOSS)
DIRECTIONS: dict[str, list[str]] = {MULTI: ["maximize", "minimize"], FD_LOSS: ["minimize"]}
OBJECTIVE_NAMES: dict[str, list[str]] = {MULTI: ["throughput", "fd_loss"], FD_LOSS: ["fd_loss"]}
DEFAULT_RECIPE = "search-proxy"
RECORD_KIND = "search-trial"
TRIAL_FILE = "trial.json"  # the search record beside a distill run's summary.json
# Parameter counts (M) where the surrogate's gains level off; see surrogate_fd_loss.
_SURROGATE_SCALE_M = 30.0


@dataclass
class ObjectiveSettings:
    """How each trial is scored.

    Args:
        recipe: distillation recipe (name or YAML path) of the proxy run.
        recipe_overrides: ``key=value`` overrides applied to the recipe.
        teachers: teacher specs for the proxy run (None: the recipe's, the tiny ones in ``search-proxy``).
        out_dir: where the proxy runs (one folder per trial) go.
        device: ``auto`` (the worker's GPU when it has one), ``cpu``, ``cuda:N``.
        objective: ``multi`` (throughput, FD loss) or ``fd_loss`` (single objective, prunable).
        max_params_m: constraint: at most this many million parameters.
        min_throughput: constraint: at least this many img/s.
        bench_batch_size / bench_dtype / bench_warmup / bench_repeats / bench_steps / bench_threads: the
            throughput measurement (:class:`zoo.bench.BenchSettings`; None = the device's default).
        dry_run: FD loss from :func:`surrogate_fd_loss` instead of a distillation.
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
    bench_batch_size: int | None = None
    bench_dtype: str = "auto"
    bench_warmup: int = 3
    bench_repeats: int = 3
    bench_steps: int = 5
    bench_threads: int | None = None
    dry_run: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose {', '.join(OBJECTIVES)}")
        for name in ("max_params_m", "min_throughput"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")

    @property
    def constrained(self) -> bool:
        return self.max_params_m is not None or self.min_throughput is not None

    def bench_settings(self, resolution: int) -> Any:
        from zoo.bench import BenchSettings

        return BenchSettings(resolution=(resolution, resolution), batch_size=self.bench_batch_size,
                             dtype=self.bench_dtype, device=self.device, threads=self.bench_threads,
                             warmup=self.bench_warmup, repeats=self.bench_repeats, steps_per_repeat=self.bench_steps,
                             flops=True).resolved()


def constraint_values(settings: ObjectiveSettings, params_m: float, throughput: float) -> dict[str, float]:
    """Optuna constraint values (feasible when <= 0) of the configured constraints."""
    values = {}
    if settings.max_params_m is not None:
        values["max_params_m"] = params_m - settings.max_params_m
    if settings.min_throughput is not None:
        values["min_throughput"] = settings.min_throughput - throughput
    return values


def surrogate_fd_loss(candidate: Candidate, params_m: float) -> float:
    """A deterministic stand-in for the proxy FD loss (dry runs, sampler benchmarks).

    Falls with capacity (parameters, with diminishing returns), with depth in
    the attention stages, with a neck (denser features), and with attention
    windows that cover more of the map; rises for the pooling resampler. The
    numbers are invented for testing search machinery only.
    """
    cfg = candidate.config
    capacity = 0.6 / (1.0 + math.sqrt(params_m / _SURROGATE_SCALE_M))
    depth = 0.08 / (1.0 + 0.25 * (cfg.depths[2] + cfg.depths[3]))
    neck = 0.0 if cfg.neck_dim else 0.05
    cells3 = candidate.resolution // 16
    window = 0.04 * (1.0 - min(1.0, cfg.window_size[0] / cells3))
    resample = 0.02 if cfg.mra_resample == "pool" else 0.0
    mix = 0.015 * abs(len(cfg.mra_ratios) - 2)
    return 0.2 + capacity + depth + neck + window + resample + mix


def _set_attr(trial: Any, key: str, value: Any) -> None:
    trial.set_user_attr(key, value)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "study"


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
            from zoo.bench import resolve_device
            from zoo.teachers import build_teachers

            specs = list(self.settings.teachers or recipe.teachers)
            self._teachers = build_teachers(specs, resolve_device(self.settings.device))
        return self._teachers

    def run_name(self, candidate: Candidate) -> str:
        # Keyed by the candidate and the recipe, not the trial number: a trial retried after a
        # killed worker trains the same candidate and resumes that worker's checkpoint.
        recipe = self.recipe(candidate.resolution)
        suffix = "" if recipe is None else "-" + hashlib.sha1(recipe.to_yaml().encode()).hexdigest()[:6]
        return f"{_safe_name(self.study_name)}-{candidate.key()}{suffix}"

    def measure(self, candidate: Candidate, name: str) -> Any:
        """Throughput, params and GMACs (:func:`zoo.bench.bench_model`) of a freshly built candidate."""
        from zoo.bench import bench_model

        model = candidate.build(name=name)
        return bench_model(model, self.settings.bench_settings(candidate.resolution), name=name, family="eradio")

    def distill(self, trial: Any, candidate: Candidate, name: str) -> dict[str, Any]:
        """The proxy distillation of ``candidate`` at its resolution; its run record (with ``fd_loss``)."""
        import optuna

        from zoo.distill import distill

        on_eval = None
        if self.settings.objective == FD_LOSS:
            def on_eval(step: int, fd_loss: float) -> None:
                trial.report(float(fd_loss), int(step))
                if trial.should_prune():
                    _set_attr(trial, "pruned_at", {"step": int(step), "fd_loss": float(fd_loss)})
                    raise optuna.TrialPruned(f"FD loss {fd_loss:.4f} at step {step}")

        recipe = self.recipe(candidate.resolution)
        run_name = self.run_name(candidate)
        resume = (self.settings.out_dir / run_name / "checkpoint.pt").is_file()
        backbone = candidate.build(name=name)
        return distill(backbone, recipe, out_dir=str(self.settings.out_dir), run_name=run_name, resume=resume,
                       device=self.settings.device, progress=self.settings.progress,
                       teachers=self.teachers(recipe), on_eval=on_eval)

    # ------------------------------------------------------------------ the trial

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        candidate = self.space.sample(trial)
        self.current = (trial.number, dict(trial.params))
        _set_attr(trial, "candidate", candidate.to_dict())
        _set_attr(trial, "key", candidate.key())
        if self.duplicate_check is not None:
            reason = self.duplicate_check(trial, candidate)
            if reason:
                _set_attr(trial, "skipped", reason)
                raise optuna.TrialPruned(reason)
        name = f"eradio-search-{candidate.key()}"
        start = time.perf_counter()
        bench = self.measure(candidate, name)
        throughput = float(bench.throughput["median"])
        constraints = constraint_values(self.settings, bench.params_m, throughput)
        # A retried trial (killed worker) inherits its constraints; Optuna would warn and keep them.
        stored = trial.storage.get_trial_system_attrs(trial._trial_id)
        for key, value in constraints.items():
            if f"constraints:{key}" not in stored:
                trial.set_constraint(key, value)
        if constraints:
            _set_attr(trial, "constraints", constraints)
        if self.settings.dry_run:
            run = {"fd_loss": surrogate_fd_loss(candidate, bench.params_m), "fd_loss_source": "surrogate"}
        else:
            run = dict(self.distill(trial, candidate, name))
            run.setdefault("fd_loss_source", "proxy distillation")
        fd_loss = run.get("fd_loss")
        if not isinstance(fd_loss, (int, float)) or not math.isfinite(fd_loss):
            raise RuntimeError(f"the proxy run gave no finite FD loss ({fd_loss!r})")
        record = self._record(trial, candidate, name, bench, run, constraints, time.perf_counter() - start)
        _set_attr(trial, "record", record)
        self._write(record, run)
        if self.settings.objective == FD_LOSS:
            return float(fd_loss)
        return throughput, float(fd_loss)

    def _record(self, trial: Any, candidate: Candidate, name: str, bench: Any, run: dict[str, Any],
                constraints: dict[str, float], seconds: float) -> dict[str, Any]:
        """The ``search-trial`` record: the distill record's fields, our throughput/params/GMACs, the candidate."""
        record = {k: v for k, v in run.items() if _json_safe(v)}
        record.update(
            kind=RECORD_KIND,
            backbone=name,
            family="eradio",
            study_name=self.study_name,
            trial_number=trial.number,
            params=dict(trial.params),
            config=candidate.config.to_dict(),
            resolution=[candidate.resolution, candidate.resolution],
            throughput=bench.throughput,
            params_m=bench.params_m,
            gmacs=bench.gmacs,
            fd_loss=float(run["fd_loss"]),
            recipe=None if self.settings.dry_run else self.recipe(candidate.resolution).name,
            objective=self.settings.objective,
            constraints=constraints or None,
            feasible=all(v <= 0 for v in constraints.values()),
            trial_seconds=round(seconds, 3),
            run_dir=str(self.settings.out_dir / self.run_name(candidate)),
        )
        if self.settings.dry_run:
            record["random_teacher"] = False
        return record

    def _write(self, record: dict[str, Any], run: dict[str, Any]) -> None:
        """The record in the run folder: ``summary.json`` for dry runs, ``trial.json`` beside a distill run's."""
        folder = Path(record["run_dir"])
        atomic_write_json(folder / (TRIAL_FILE if not self.settings.dry_run else "summary.json"), record)


def _json_safe(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
