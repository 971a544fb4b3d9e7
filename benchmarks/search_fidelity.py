"""Multi-fidelity search with predicted throughput against random sampling, at equal cost.

Two objectives (``--objective``):

**surrogate** (default; about a minute). Budget unit: one proxy-distillation step. A random-sampling trial
costs a full-length proxy (the last of ``--rungs``) plus one throughput measurement (``--bench-cost``
step-equivalents). A multi-fidelity trial costs the steps of the rungs it reaches (``--rungs``, each rung
resumed, not restarted) and no measurement: its throughput is *predicted*, with a relative error drawn from
N(0, ``--prediction-error``) (the latency table's accuracy; see ``benchmarks/latency_table.py``); the final
front is then measured for real (``--bench-cost`` per front trial, charged to the budget). Each method runs
until the budget (``--budget-trials`` random-sampling trials' worth) is spent.

The surrogate objective (no training, no timing):

* true throughput: exact FLOPs on the meta device and ``latency_ms = GMACs x
  1 ms + 0.05 ms per block`` (a notional accelerator with a per-layer cost);
* FD loss after ``s`` steps: :func:`zoo.search.fidelity.surrogate_at` (the
  space's surrogate at full length, a learning-curve gap wider for larger
  models, deterministic noise shrinking with ``s``): low rungs are an
  imperfect preview of the full proxy, as on the real objective.

Score: the hypervolume of the final front in (``-log10 throughput``, FD loss
at full length), both minimised, from the TRUE values (measured throughput,
full-length FD loss), against one reference point (worst of a random pool
+ 5 %). Printed: mean over seeds and the ratio to random sampling.

**real** (``--objective real``; minutes per seed and method): the real ``zoo search run`` objective on this
machine (CPU, ``--resolution`` 64 px, ``recipes/search-proxy.yaml`` and its tiny random teachers), built with
the machinery the CLI uses (:mod:`zoo.commands.search_cmd`: ``SpaceSettings``, ``FidelitySettings``; the
study of :func:`zoo.search.study.open_study` on a SQLite file, ``make_sampler``, ``run_worker``), at an
**equal clock budget** per method and seed (``--budget-seconds``):

* ``random``: ``zoo search run --sampler random --set train.steps=<last rung>``: every trial one
  full-length proxy distillation (:class:`zoo.search.objective.SearchObjective`) and one throughput
  measurement with the ``zoo bench`` harness;
* multi-fidelity, one method per ``--samplers`` entry (``default``: whatever
  ``make_sampler(None, "multi", ...)`` picks today) and per ``--rungs`` schedule (repeat ``--rungs`` to
  compare schedules in one run, e.g. ``--rungs 30,90 --rungs 10,30,90``): ``zoo search run --fidelity
  RUNGS --eta ETA --throughput predicted`` (:class:`zoo.search.fidelity.MultiFidelityObjective`). Its
  latency table is built from scratch in a fresh folder inside the method's budget (stage timings and the
  overhead fit count against its clock), and the final front is measured for real
  (:func:`zoo.search.fidelity.remeasure_front`, charged too: the method stops starting trials while
  ``spent + (unmeasured front trials) x (one measurement, as timed in the random runs) >= budget``).
  The sampler is told as many trials as random sampling ran for that seed x ``last rung / expected steps
  per trial`` (what a user would give ``--n-trials`` for the same time), as the CLI sizes it.

The clock is this process's CPU time (``time.process_time``, ``--clock cpu``, torch at one thread and
``data.workers=0``, so everything a method does is on it) so that other jobs on a shared machine do not
favour one method; ``--clock wall`` uses elapsed time. A trial that starts before the budget is spent
runs to its end: that overrun is charged and printed (``CPU s used``), it is not taken off the
budget of the method's next seed. Sampling, duplicate proposals and candidates over the memory cap
(``--max-memory``, as ``zoo search run``: ``auto`` = half the memory available) cost (almost) nothing
and are not trials. A failed or diverged trial is FAIL (counted, not scored); three failures in a row
stop the method (``run_worker``'s rule), which is printed.

Score: the hypervolume in (``-log10 throughput``, FD loss), both minimised, of every COMPLETE trial of
the method with true values: the full-length FD loss of the trial's proxy (for multi-fidelity trials,
the proxy resumed rung after rung up to the last rung) and the MEASURED throughput: after all budgets,
not charged, every COMPLETE trial of every method is measured again under one protocol, each candidate
once (:class:`TrueThroughput`: the full network timed on the comparison's clock; the in-search wall-clock
measurements depend on the machine's load at that moment). Reference point: the worst values over all
methods and seeds, + 5 %. Printed: per method the mean +- standard deviation over seeds, the per-seed
values, trials complete/pruned/failed per seed, the clock used, and the ratio of the means to random
sampling. Study files, run folders and latency tables go to a temporary folder (``--out`` keeps them).

    python benchmarks/search_fidelity.py                        # surrogate: 40 trials' budget x 3 seeds, 224 px
    python benchmarks/search_fidelity.py --seeds 5 --samplers nsga2,tpe,random --promotion hypervolume
    python benchmarks/search_fidelity.py --objective real --budget-seconds 60 --seeds 1 \
        --limit dim=32,48,64 --limit depth1=1,2 --limit depth2=1,2 --limit depth3=1,2 --limit depth4=1,2
    python benchmarks/search_fidelity.py --objective real --seeds 2 --budget-seconds 180 --rungs 30,90 \
        --limit dim=32,48,64 --limit depth1=1,2 --limit depth2=1,2 --limit depth3=1,2 --limit depth4=1,2
    python benchmarks/search_fidelity.py --objective real --seeds 3 --budget-seconds 480 --rungs 30,90 \
        --rungs 10,30,90 --samplers default,tpe --limit dim=32,48,64,80,96

The clock budget is per method and seed: the whole run takes about seeds x methods x budget of CPU time
(+ one trial's overrun each, + the score's measurements), more wall-clock time on a busy machine
(the second example: 13 CPU-minutes of methods, 22 wall-clock minutes on 2 cores shared with other jobs).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna
import torch
from optuna._hypervolume import compute_hypervolume
from optuna.trial import TrialState
from torch.utils.flop_counter import FlopCounterMode

from zoo.search import study as runner
from zoo.search.fidelity import Fidelity, decide_promotion, rung_attr, surrogate_at
from zoo.search.latency import build_stage, stage_entries
from zoo.search.space import Candidate, make_space, parse_limits

MS_PER_GMAC = 1.0
MS_PER_BLOCK = 0.05
POOL_SIZE = 200


class Truth:
    """True throughput and parameter count of a candidate (cached), from its exact FLOPs.

    FLOPs are counted per stage configuration (:func:`zoo.search.latency.stage_entries`, each counted once
    on the meta device and cached) and summed: the same total as counting the whole network, for a
    fraction of the time over hundreds of candidates.
    """

    def __init__(self) -> None:
        self.cache: dict[str, tuple[float, float]] = {}
        self.stages: dict[str, tuple[float, float]] = {}  # stage key -> (GMACs, M params)

    def gmacs_params(self, candidate: Candidate) -> tuple[float, float]:
        gmacs = params_m = 0.0
        for stage, count in stage_entries(candidate.config, candidate.resolution):
            if stage.key not in self.stages:
                with torch.device("meta"):
                    module, call = build_stage(stage, candidate.resolution, 1, torch.device("meta"))
                with FlopCounterMode(display=False) as counter, torch.no_grad():
                    call()
                self.stages[stage.key] = (counter.get_total_flops() / 2e9,
                                          sum(p.numel() for p in module.parameters()) / 1e6)
            gmacs += self.stages[stage.key][0] * count
            params_m += self.stages[stage.key][1] * count
        return gmacs, params_m

    def __call__(self, candidate: Candidate) -> tuple[float, float]:
        key = candidate.key()
        if key not in self.cache:
            gmacs, params_m = self.gmacs_params(candidate)
            blocks = sum(candidate.config.depths) * (1 + len(candidate.config.mra_ratios))
            self.cache[key] = (1000.0 / (gmacs * MS_PER_GMAC + blocks * MS_PER_BLOCK), params_m)
        return self.cache[key]


def losses(points: list[tuple[float, float]]) -> np.ndarray:
    return np.array([[-math.log10(t), f] for t, f in points])


def hypervolume(points: list[tuple[float, float]], reference: np.ndarray) -> float:
    if not points:
        return 0.0
    values = losses(points)
    values = values[np.all(values < reference, axis=1)]
    return float(compute_hypervolume(values, reference)) if len(values) else 0.0


def random_search(space, truth: Truth, fidelity: Fidelity, budget: float, bench_cost: float,
                  seed: int) -> tuple[list[tuple[float, float]], int]:
    """Random sampling with full-length proxies and a measurement per trial, until the budget is spent."""
    rng = random.Random(seed)
    spent, points = 0.0, []
    while spent + fidelity.final + bench_cost <= budget:
        candidate = space.params_to_candidate(space.random_params(rng))
        throughput, params_m = truth(candidate)
        points.append((throughput, surrogate_at(space, candidate, params_m, fidelity.final, fidelity.final)))
        spent += fidelity.final + bench_cost
    return points, len(points)


def multi_fidelity(space, truth: Truth, fidelity: Fidelity, budget: float, bench_cost: float, seed: int,
                   sampler_name: str, error: float, expected_trials: int) -> tuple[list[tuple[float, float]], int]:
    """Sampler + rungs decided by zoo.search.fidelity against the study, predicted throughput, front re-measured."""
    # NSGA-II's population grows from COMPLETE trials only: size it by those that reach the last rung
    completes = max(1, round(expected_trials / fidelity.eta ** (fidelity.rungs - 1)))
    sampler = runner.make_sampler(sampler_name, "multi", completes, seed=seed, space=space)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    noise = random.Random(1000 + seed)
    spent, trials, true_values = 0.0, 0, {}
    while True:
        trial = study.ask()
        candidate = space.sample(trial)
        throughput, params_m = truth(candidate)
        predicted = throughput / (1.0 + noise.gauss(0.0, error))  # latency off by the predictor's error
        previous, values, pruned = 0, None, False
        reserve = len(runner.pareto_trials(study)) * bench_cost  # measuring the front at the end
        for rung, steps in enumerate(fidelity.steps):
            if spent + steps - previous + reserve > budget:
                break
            spent += steps - previous
            previous = steps
            fd_loss = surrogate_at(space, candidate, params_m, steps, fidelity.final)
            values = [predicted, fd_loss]
            trial.set_user_attr(rung_attr(rung), {"rung": rung, "steps": steps, "values": values, "feasible": True})
            if rung < fidelity.rungs - 1 and not decide_promotion(study, trial.number, rung, fidelity):
                pruned = True
                break
        if values is None or (not pruned and previous < fidelity.final):
            study.tell(trial, state=TrialState.FAIL)  # the budget ran out inside this trial
            break
        trials += 1
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, values)
            true_values[trial.number] = (throughput, fd_loss)
    # the front by predicted throughput, measured for real (charged), scored with true values
    front = runner.pareto_trials(study)
    for _ in front:
        spent += bench_cost
    return [true_values[t.number] for t in front], trials


# --------------------------------------------------------------------------- the real objective


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
DEFAULT_REAL_RESOLUTION = 64
DEFAULT_SURROGATE_RESOLUTION = 224
HUGE = 10 ** 9  # run_worker's trial budget: the clock ends a method, not a trial count


class BudgetSpent(Exception):
    """Raised from ``run_worker``'s per-trial callback when the method's clock budget is spent."""


@dataclass
class RealSetup:
    """What every method of a real-objective comparison shares."""

    resolution: int
    limits: list[str]
    overrides: list[str]
    bench: dict[str, Any]
    max_memory_gb: float | None
    clock: str
    budget: float
    eta: int
    promotion: str
    root: Path
    quiet: bool = False
    device: str = "cpu"

    def tick(self) -> float:
        return CLOCKS[self.clock]()

    def space(self) -> Any:
        from zoo.commands.search_cmd import SpaceSettings

        return SpaceSettings("eradio", (self.resolution,), self.limits).build()

    def settings(self, name: str, overrides: list[str]) -> Any:
        from zoo.search.objective import ObjectiveSettings

        # data.workers=0: loader workers are other processes, whose CPU time the cpu clock would not see
        return ObjectiveSettings(recipe="search-proxy", recipe_overrides=("data.workers=0", *self.overrides,
                                                                          *overrides),
                                 out_dir=self.root / name / "runs", device=self.device, objective="multi",
                                 bench=dict(self.bench), max_memory_gb=self.max_memory_gb)

    def study(self, name: str, space: Any, sampler: Any) -> Any:
        storage = runner.open_storage(f"sqlite:///{self.root / name / 'study.db'}",
                                      heartbeat_interval=runner.HEARTBEAT_INTERVAL_S,
                                      grace_period=runner.GRACE_PERIOD_S)
        return runner.open_study(storage, name, space, "multi", sampler, runner.make_pruner("multi"))


@dataclass
class MethodRun:
    """One method x seed: its COMPLETE trials' true (throughput, FD loss), trial counts, clock used."""

    label: str
    seed: int
    trials: list[tuple[Any, float]] = field(default_factory=list)  # (candidate, FD loss) of COMPLETE trials
    points: list[tuple[float, float]] = field(default_factory=list)  # (true throughput, FD loss), when scored
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    note: str = ""
    n_trials_hint: int | None = None
    sampler: str = ""


def complete_trials(study: Any, space: Any) -> list[tuple[Any, float]]:
    """(candidate, FD loss at the last rung / full proxy) of the study's COMPLETE trials."""
    return [(runner.trial_candidate(space, t), float(t.values[1]))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


class TrueThroughput:
    """The score's throughput: every method's COMPLETE trials measured end to end after the budgets (not
    charged) under ONE protocol, each candidate once: the full network as the search builds it, timed on the
    comparison's clock (cpu: :meth:`zoo.search.latency.LatencyTable.measure_model_ms`, this process's CPU
    time at one thread, the minimum of the repeats; wall: the ``zoo bench`` harness), at the bench batch.
    Why not the in-search measurements: on a shared machine a wall-clock measurement depends on the load at
    that moment (measured here: the same model 75 img/s by zoo bench during a random run, 236 img/s
    predicted from CPU time), which would favour whichever method ran at a quieter time."""

    def __init__(self, setup: RealSetup, space: Any) -> None:
        from zoo.commands.search_cmd import FidelitySettings

        rungs = FidelitySettings(None, throughput="predicted", latency_folder=str(setup.root / "score"),
                                 latency_clock=setup.clock)
        self.table = rungs.tables(space, setup.settings("score", []))[setup.resolution]
        self.cache: dict[str, float] = {}

    def __call__(self, candidate: Any) -> float:
        key = candidate.key()
        if key not in self.cache:
            milliseconds = self.table.measure_model_ms(candidate.config, f"eradio-search-{key}")
            self.cache[key] = self.table.settings.batch_size * 1000.0 / milliseconds
        return self.cache[key]


def count_trials(study: Any, run: MethodRun) -> None:
    counts = runner.trial_counts(study)
    run.complete, run.pruned, run.failed, run.skipped = counts.complete, counts.pruned, counts.failed, counts.skipped


def run_until_spent(setup: RealSetup, study: Any, objective: Any, start: float, label: str,
                    reserve: Callable[[], float] = lambda: 0.0) -> str:
    """``run_worker`` until the clock budget (minus ``reserve()``) is spent; why it stopped."""
    from zoo.commands.search_cmd import _trial_line
    from zoo.errors import ZooError

    def on_trial(trial: Any) -> None:
        spent = setup.tick() - start
        if not setup.quiet:
            print(f"  [{label}] {_trial_line(trial)} ({spent:.0f}/{setup.budget:g} s)", file=sys.stderr, flush=True)
        if spent + reserve() >= setup.budget:
            raise BudgetSpent

    try:
        report = runner.run_worker(study, objective, HUGE, wait_for_others=False, on_trial=on_trial)
    except BudgetSpent:
        return "budget spent"
    except ZooError as err:  # three failures in a row: the method stops, its trials so far count
        return f"stopped early: {err}"
    return f"stopped early: {report.stopped_because}"


def run_random(setup: RealSetup, final_steps: int, seed: int, measure_costs: list[float]) -> MethodRun:
    """``zoo search run --sampler random --set train.steps=FINAL``, until the budget is spent."""
    from zoo.search.fidelity import check_study_fidelity
    from zoo.search.objective import SearchObjective

    name = f"random-seed{seed}"
    run = MethodRun(f"random, {final_steps}-step proxy + measured", seed, sampler="random")
    start = setup.tick()
    space = setup.space()
    settings = setup.settings(name, [f"train.steps={final_steps}"])
    study = setup.study(name, space, runner.make_sampler("random", "multi", HUGE, seed=seed, space=space))
    check_study_fidelity(study, None)
    objective = SearchObjective(space, settings, study_name=name)
    measure = objective.measure

    def timed_measure(*args: Any, **kwargs: Any) -> Any:  # what one measurement costs (the MF front reserve)
        began = setup.tick()
        try:
            return measure(*args, **kwargs)
        finally:
            measure_costs.append(setup.tick() - began)

    objective.measure = timed_measure
    run.note = run_until_spent(setup, study, objective, start, f"{name}")
    run.seconds = setup.tick() - start
    count_trials(study, run)
    run.trials = complete_trials(study, space)
    return run


def run_multi_fidelity(setup: RealSetup, sampler_name: str | None, steps: str, seed: int, n_trials_hint: int,
                       measure_cost: float) -> MethodRun:
    """``zoo search run --fidelity STEPS --throughput predicted [--sampler S]`` until the budget is spent;
    the latency table is built inside the budget, the front re-measured inside it."""
    from zoo.commands.search_cmd import FidelitySettings
    from zoo.search.fidelity import MEASURED_ATTR, MultiFidelityObjective, check_study_fidelity, remeasure_front

    name = f"{sampler_name or 'default'}-{steps.replace(',', '-')}-seed{seed}"
    start = setup.tick()
    space = setup.space()
    settings = setup.settings(name, [])
    rungs = FidelitySettings(steps, setup.eta, setup.promotion, "predicted", str(setup.root / name / "latency"),
                             setup.clock)
    completes = max(1, round(n_trials_hint / setup.eta ** (len(steps.split(",")) - 1)))  # as run_search sizes it
    sampler = runner.make_sampler(sampler_name, "multi", completes, seed=seed, space=space)
    study = setup.study(name, space, sampler)
    fidelity = rungs.fidelity(settings)
    check_study_fidelity(study, fidelity)
    objective = MultiFidelityObjective(space, settings, study_name=name, fidelity=fidelity,
                                       latency_table=rungs.tables(space, settings))
    label = f"{sampler_name or 'default'} ({type(sampler).__name__}) + rungs {steps} + predicted"
    run = MethodRun(label, seed, n_trials_hint=n_trials_hint, sampler=type(sampler).__name__)

    def reserve() -> float:  # measuring the front at the end is part of the method's budget
        measured = study.user_attrs.get(MEASURED_ATTR) or {}
        return measure_cost * sum(str(t.number) not in measured for t in runner.pareto_trials(study))

    run.note = run_until_spent(setup, study, objective, start, name, reserve)
    remeasure_front(study, space, settings)  # as zoo search run --throughput predicted ends: charged
    run.seconds = setup.tick() - start
    count_trials(study, run)
    run.trials = complete_trials(study, space)
    return run


def hint_for(fidelity: Fidelity, random_trials: int) -> int:
    """The --n-trials a user would give the multi-fidelity search for the time random sampling ran."""
    return max(1, round(max(1, random_trials) * fidelity.final / fidelity.expected_steps()))


@dataclass
class RealResults:
    setup: RealSetup
    schedules: list[str]
    runs: list[MethodRun]
    reference: np.ndarray
    hypervolumes: dict[str, list[float]]
    space_size: int
    wall_seconds: float


def run_real(args: argparse.Namespace, root: Path) -> RealResults:
    """Every method x seed of the real-objective comparison, scored."""
    from zoo.commands.search_cmd import _HIDE_DIVERGED, _memory_cap
    from zoo.errors import ConfigError

    if args.clock == "cpu" and args.threads != 1:
        raise ConfigError("--clock cpu times one thread: give --threads 1 (or --clock wall)")
    schedules = args.rungs or ["30,90"]
    fidelities = [Fidelity.parse(s, args.eta, args.promotion) for s in schedules]
    finals = {f.final for f in fidelities}
    if len(finals) != 1:
        raise ConfigError(f"every --rungs schedule must end at the same proxy length (random sampling's), got "
                          f"{', '.join(schedules)}")
    final = finals.pop()
    samplers = [None if s in ("default", "") else s for s in (args.samplers or "default").split(",")]
    bench = {"threads": args.threads, "batch_size": args.bench_batch, "repeats": args.bench_repeats,
             "steps_per_repeat": args.bench_steps, "warmup": args.bench_warmup}
    setup = RealSetup(resolution=args.resolution or DEFAULT_REAL_RESOLUTION, limits=list(args.limit),
                      overrides=list(args.set), bench={k: v for k, v in bench.items() if v is not None},
                      max_memory_gb=_memory_cap(args.max_memory, "cpu", False), clock=args.clock,
                      budget=float(args.budget_seconds), eta=args.eta, promotion=args.promotion, root=root,
                      quiet=args.quiet)
    for logger in ("optuna.study._optimize", "optuna.study._tell"):
        logging.getLogger(logger).addFilter(_HIDE_DIVERGED)
    wall = time.perf_counter()
    runs: list[MethodRun] = []
    measure_costs: list[float] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        random_run = run_random(setup, final, seed, measure_costs)
        runs.append(random_run)
        cost = statistics.median(measure_costs) if measure_costs else 0.0
        for schedule, fidelity in zip(schedules, fidelities):
            for sampler_name in samplers:
                runs.append(run_multi_fidelity(setup, sampler_name, schedule, seed,
                                               args.n_trials_hint or hint_for(fidelity, random_run.complete +
                                                                              random_run.failed), cost))
    truth = TrueThroughput(setup, setup.space())
    for run in runs:
        run.points = [(truth(candidate), fd_loss) for candidate, fd_loss in run.trials]
    points = [p for run in runs for p in run.points]
    if not points:
        raise RuntimeError("no method completed a trial within the budget: raise --budget-seconds")
    reference = losses(points).max(axis=0)
    reference = reference + 0.05 * np.abs(reference)
    hypervolumes: dict[str, list[float]] = {}
    for run in runs:
        hypervolumes.setdefault(run.label, []).append(hypervolume(run.points, reference))
    return RealResults(setup, schedules, runs, reference, hypervolumes, setup.space().size(),
                       time.perf_counter() - wall)


def print_real(results: RealResults) -> None:
    setup = results.setup
    clock = ("process CPU time, torch at 1 thread" if setup.clock == "cpu" else "wall-clock time")
    limits = f", limits {' '.join(setup.limits)}" if setup.limits else ""
    memory = f", memory cap {setup.max_memory_gb:g} GB" if setup.max_memory_gb else ""
    seeds = len({run.seed for run in results.runs})
    print(f"E-RADIO space at {setup.resolution} px ({results.space_size:,} candidates{limits}{memory}), REAL "
          f"objective (search-proxy on CPU); budget {setup.budget:g} s of {clock} per method and seed; eta "
          f"{setup.eta} ({setup.promotion}); {seeds} seed(s); reference {np.round(results.reference, 4).tolist()}")
    base_label = results.runs[0].label
    base = statistics.mean(results.hypervolumes[base_label])
    for label, values in results.hypervolumes.items():
        runs = [run for run in results.runs if run.label == label]
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        ratio = f"{mean / base:.3f}" if base > 0 else "n/a (random: 0)"
        print(f"{label}: hypervolume {mean:.4f} ± {spread:.4f}  ratio vs random {ratio}")
        print(f"    per seed {', '.join(f'{v:.4f}' for v in values)}; trials complete/pruned/failed per seed "
              f"{', '.join(f'{r.complete}/{r.pruned}/{r.failed}' for r in runs)}; clock used "
              f"{', '.join(f'{r.seconds:.0f}' for r in runs)} s"
              + (f"; n_trials given to the sampler {', '.join(str(r.n_trials_hint) for r in runs)}"
                 if runs[0].n_trials_hint is not None else ""))
        for run in runs:
            if run.note != "budget spent":
                print(f"    seed {run.seed}: {run.note}")
    print(f"{results.wall_seconds:.0f} s wall-clock in all")


def main_real(args: argparse.Namespace) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    if args.out:
        root = Path(args.out)
        root.mkdir(parents=True, exist_ok=True)
        print_real(run_real(args, root))
        return
    with tempfile.TemporaryDirectory(prefix="zoo-search-fidelity-") as folder:
        print_real(run_real(args, Path(folder)))


# --------------------------------------------------------------------------- the command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", choices=("surrogate", "real"), default="surrogate")
    parser.add_argument("--budget-trials", type=int, default=40,
                        help="surrogate: budget = this many random-sampling trials (full proxy + measurement each)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--resolution", type=int, default=None,
                        help=f"[surrogate {DEFAULT_SURROGATE_RESOLUTION}, real {DEFAULT_REAL_RESOLUTION}]")
    parser.add_argument("--rungs", action="append", default=None, metavar="S1,S2,...",
                        help="rung schedule [surrogate 10,30,90; real 30,90]; real: repeat to compare schedules "
                             "(all ending at the same length, random sampling's proxy)")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--promotion", default="crowding", choices=("crowding", "hypervolume"))
    parser.add_argument("--samplers", default=None,
                        help="samplers of the multi-fidelity runs [surrogate nsga2,tpe,random; real default = "
                             "make_sampler's default]")
    parser.add_argument("--bench-cost", type=float, default=10.0,
                        help="surrogate: one throughput measurement, in proxy-step equivalents")
    parser.add_argument("--prediction-error", type=float, default=0.15,
                        help="surrogate: relative error (std) of the predicted latency")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=V1,V2")
    real = parser.add_argument_group("real objective")
    real.add_argument("--budget-seconds", type=float, default=480.0, help="clock budget per method and seed")
    real.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                      help="cpu: this process's CPU time (needs --threads 1); wall: elapsed time")
    real.add_argument("--threads", type=int, default=1, help="torch threads (training and measurements)")
    real.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a search-proxy recipe value (both methods), as zoo search run --set")
    real.add_argument("--max-memory", default="auto", metavar="GB|auto|none", help="as zoo search run")
    real.add_argument("--bench-batch", type=int, default=None)
    real.add_argument("--bench-repeats", type=int, default=None)
    real.add_argument("--bench-steps", type=int, default=None)
    real.add_argument("--bench-warmup", type=int, default=None)
    real.add_argument("--n-trials-hint", type=int, default=None,
                      help="n_trials the multi-fidelity sampler is sized for [random's trial count x last rung / "
                           "expected steps per trial]")
    real.add_argument("--out", default=None, help="keep studies, runs and latency tables here [a temporary folder]")
    real.add_argument("--quiet", action="store_true", help="no line per trial")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.objective == "real":
        from zoo.errors import ZooError

        try:
            return main_real(args)
        except ZooError as err:
            sys.exit(f"search_fidelity.py: error: {err}")
    if args.rungs and len(args.rungs) > 1:
        sys.exit("search_fidelity.py: error: the surrogate objective takes one --rungs schedule")
    args.rungs = args.rungs[0] if args.rungs else "10,30,90"
    args.samplers = args.samplers or "nsga2,tpe,random"
    args.resolution = args.resolution or DEFAULT_SURROGATE_RESOLUTION
    main_surrogate(args)


def main_surrogate(args: argparse.Namespace) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)

    fidelity = Fidelity.parse(args.rungs, args.eta, args.promotion)
    space = make_space("eradio", (args.resolution,), parse_limits(args.limit) or None)
    truth = Truth()
    rng = random.Random(12345)
    pool = []
    for _ in range(POOL_SIZE):
        candidate = space.params_to_candidate(space.random_params(rng))
        throughput, params_m = truth(candidate)
        pool.append((throughput, surrogate_at(space, candidate, params_m, fidelity.final, fidelity.final)))
    reference = losses(pool).max(axis=0)
    reference = reference + 0.05 * np.abs(reference)
    budget = args.budget_trials * (fidelity.final + args.bench_cost)
    expected = int(budget / fidelity.expected_steps())

    start = time.perf_counter()
    results: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        points, n = random_search(space, truth, fidelity, budget, args.bench_cost, seed)
        results.setdefault("random, full proxy", []).append(hypervolume(points, reference))
        counts.setdefault("random, full proxy", []).append(n)
        for name in [s.strip() for s in args.samplers.split(",") if s.strip()]:
            label = f"{name} + rungs + predicted"
            points, n = multi_fidelity(space, truth, fidelity, budget, args.bench_cost, seed, name,
                                       args.prediction_error, expected)
            results.setdefault(label, []).append(hypervolume(points, reference))
            counts.setdefault(label, []).append(n)
    seconds = time.perf_counter() - start

    print(f"E-RADIO space at {args.resolution} px ({space.size():,} candidates), surrogate objective; budget "
          f"{budget:.0f} proxy steps (= {args.budget_trials} trials of {fidelity.final} steps + a measurement of "
          f"{args.bench_cost:g}); rungs {args.rungs} eta {args.eta} ({args.promotion}); predicted latency error "
          f"{100 * args.prediction_error:.0f}%; {args.seeds} seeds; reference {np.round(reference, 4).tolist()}")
    base = statistics.mean(results["random, full proxy"])
    for label, values in results.items():
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{label:>28}: hypervolume {mean:.4f} ± {spread:.4f} ({statistics.mean(counts[label]):.0f} trials; "
              f"per seed {', '.join(f'{v:.4f}' for v in values)})  ratio vs random {mean / base:.3f}")
    print(f"{len(truth.cache)} distinct candidates in {seconds:.0f} s")


if __name__ == "__main__":
    main()
