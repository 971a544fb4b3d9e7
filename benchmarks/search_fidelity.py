"""Multi-fidelity search with predicted throughput against random sampling, at equal cost.

Budget unit: one proxy-distillation step. A random-sampling trial costs a
full-length proxy (``--final`` steps) plus one throughput measurement
(``--bench-cost`` step-equivalents). A multi-fidelity trial costs the steps of
the rungs it reaches (``--rungs``, each rung resumed, not restarted) and no
measurement: its throughput is *predicted*, with a relative error drawn from
N(0, ``--prediction-error``) (the latency table's accuracy; see
``benchmarks/latency_table.py``); the final front is then measured for real
(``--bench-cost`` per front trial, charged to the budget). Each method runs
until the budget (``--budget-trials`` random-sampling trials' worth) is spent.

The objective is a *surrogate* (no training, no timing):

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

    python benchmarks/search_fidelity.py                        # 40 trials' budget x 3 seeds, 224 px
    python benchmarks/search_fidelity.py --seeds 5 --samplers nsga2,tpe,random --promotion hypervolume
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import warnings

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
    sampler = runner.make_sampler(sampler_name, "multi", completes, seed=seed)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-trials", type=int, default=40,
                        help="budget = this many random-sampling trials (full proxy + measurement each)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rungs", default="10,30,90")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--promotion", default="crowding", choices=("crowding", "hypervolume"))
    parser.add_argument("--samplers", default="nsga2,tpe,random", help="samplers of the multi-fidelity runs")
    parser.add_argument("--bench-cost", type=float, default=10.0,
                        help="one throughput measurement, in proxy-step equivalents")
    parser.add_argument("--prediction-error", type=float, default=0.15,
                        help="relative error (std) of the predicted latency")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=V1,V2")
    args = parser.parse_args()
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
    for seed in range(args.seeds):
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
