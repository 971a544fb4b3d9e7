"""Does the sampler matter? Hypervolume of each sampler (guided, NSGA-II/III, TPE, GP) against random sampling
at the same budget.

Each sampler runs ``--trials`` trials of the real E-RADIO search space
(:class:`zoo.search.spaces.eradio.ERadioSpace`) on a *cheap surrogate objective*, for
several seeds; the score is the hypervolume of the trials' front
(``optuna._hypervolume.compute_hypervolume``) in the plane
(``-log10 throughput``, ``FD loss``), both minimised, against one reference
point for all runs (the worst values of a random pool, plus 5%).

The surrogate (no training, no timing, so the comparison is about the
samplers and runs in about a minute on a CPU):

* FLOPs are counted exactly on the meta device (``torch.utils.flop_counter``)
  and throughput is ``1000 / latency_ms`` with
  ``latency_ms = GMACs x 1 ms + 0.05 ms per block`` (a notional accelerator
  at 1 TMAC/s with a per-layer launch cost, so depth costs speed too);
* FD loss is the space's ``surrogate_fd_loss`` (falls with
  parameters, attention depth, a neck, larger windows), the stand-in
  ``zoo search run --dry-run`` uses.

With ``--objective real`` each trial is the real ``zoo search`` objective
instead: throughput measured with zoo.bench on this machine and FD loss from a
proxy distillation of ``--proxy-steps`` steps (``recipes/search-proxy.yaml``,
tiny random teachers) at ``--resolution``. The reference point is then the
worst value over all trials of all samplers (plus 5%), since a random pool
would cost as much as the comparison itself.

    python benchmarks/search_efficiency.py                     # 40 trials x 3 seeds, 224 px: guided,nsga2,tpe,random
    python benchmarks/search_efficiency.py --samplers guided,nsga2,nsga3,tpe,gp,random --variants
    python benchmarks/search_efficiency.py --objective real --resolution 64 --trials 6 --seeds 2 --limit dim=32,48,64
    python benchmarks/search_efficiency.py --trials 60 --seeds 5 --samplers nsga2,tpe,random

Multi-fidelity rungs with predicted throughput against random sampling with
full-length proxies, at equal cost (in proxy steps): ``--fidelity 10,30,90``
runs ``benchmarks/search_fidelity.py`` (its options pass through, e.g.
``--promotion hypervolume --prediction-error 0.1 --budget-trials 40``).
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
from torch.utils.flop_counter import FlopCounterMode

from zoo.search import study as runner
from zoo.search.space import Candidate, parse_limits
from zoo.search.spaces.eradio import ERadioSpace

MS_PER_GMAC = 1.0
MS_PER_BLOCK = 0.05
POOL_SIZE = 200  # random candidates that set the reference point


class SurrogateObjective:
    """(throughput, FD loss) of a candidate from its exact FLOPs/params; cached per candidate."""

    def __init__(self, space: ERadioSpace) -> None:
        self.space = space
        self.cache: dict[str, tuple[float, float]] = {}

    def evaluate(self, candidate: Candidate) -> tuple[float, float]:
        key = candidate.key()
        if key not in self.cache:
            backbone = candidate.build(device="meta").eval()
            params_m = sum(p.numel() for p in backbone.parameters()) / 1e6
            with FlopCounterMode(display=False) as counter:
                backbone(torch.zeros(1, 3, candidate.resolution, candidate.resolution, device="meta"))
            gmacs = counter.get_total_flops() / 2e9  # FlopCounterMode counts 2 FLOPs per multiply-add
            blocks = sum(candidate.config.depths) * (1 + len(candidate.config.mra_ratios))
            throughput = 1000.0 / (gmacs * MS_PER_GMAC + blocks * MS_PER_BLOCK)
            self.cache[key] = (throughput, self.space.surrogate_fd_loss(candidate, params_m))
        return self.cache[key]

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        return self.evaluate(self.space.sample(trial))


class RealObjective:
    """The real trial objective of ``zoo search``: measured throughput + proxy-distillation FD loss."""

    def __init__(self, space: ERadioSpace, out_dir: str, proxy_steps: int) -> None:
        from zoo.search.objective import ObjectiveSettings, SearchObjective

        settings = ObjectiveSettings(recipe="search-proxy", recipe_overrides=(f"train.steps={proxy_steps}",),
                                     out_dir=out_dir, device="auto",
                                     bench={"warmup": 1, "repeats": 2, "steps_per_repeat": 3})
        self.objective = SearchObjective(space, settings, study_name="efficiency")
        self.objective.prepare()
        self.evaluated = 0

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        self.evaluated += 1
        return self.objective(trial)


def losses(points: list[tuple[float, float]]) -> np.ndarray:
    return np.array([[-math.log10(t), f] for t, f in points])


def hypervolume(points: list[tuple[float, float]], reference: np.ndarray) -> float:
    values = losses(points)
    values = values[np.all(values < reference, axis=1)]
    return float(compute_hypervolume(values, reference)) if len(values) else 0.0


def print_hypervolumes(results: dict[str, list[float]]) -> None:
    """Mean ± spread of each sampler's hypervolume over seeds, and its ratio to random sampling."""
    base = statistics.mean(results["random"]) if "random" in results else None
    for name, values in results.items():
        mean = statistics.mean(values)
        ratio = f"  ratio vs random {mean / base:.3f}" if base else ""
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{name:>7}: hypervolume {mean:.4f} ± {spread:.4f} (per seed: "
              f"{', '.join(f'{v:.4f}' for v in values)}){ratio}")


def run(sampler_name: str, seed: int, trials: int, objective, variants: bool = False) -> list[tuple[float, float]]:
    """One sweep of ``trials`` trials (the paper's variants first with ``variants``); its (throughput, FD loss)."""
    space = objective.space if hasattr(objective, "space") else objective.objective.space
    sampler = runner.make_sampler(sampler_name, "multi", trials, seed=seed, space=space)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler,
                                study_name=f"{sampler_name}-{seed}")
    if variants:
        runner.enqueue_variants(study, space, ["all"])
    study.optimize(objective, n_trials=trials)
    return [tuple(t.values) for t in study.trials if t.values is not None]


def main_fidelity(argv: list[str]) -> None:
    """``--fidelity RUNGS``: the multi-fidelity comparison of ``search_fidelity.py`` beside this file."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).with_name("search_fidelity.py")
    spec = importlib.util.spec_from_file_location("search_fidelity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.argv = [str(path), *argv]
    module.main()


def main() -> None:
    import sys

    if any(a == "--fidelity" or a.startswith("--fidelity=") for a in sys.argv[1:]):
        renamed = {"--fidelity": "--rungs", "--trials": "--budget-trials"}  # this script's names for them
        argv = [next((a.replace(old, new, 1) for old, new in renamed.items() if a.startswith(old)), a)
                for a in sys.argv[1:]]
        return main_fidelity(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--samplers", default="guided,nsga2,tpe,random",
                        help="comma-separated, of: guided, nsga2, nsga3, tpe, gp, random")
    parser.add_argument("--variants", action="store_true",
                        help="enqueue the paper's variants as the first trials of every sampler (random too)")
    parser.add_argument("--objective", choices=("surrogate", "real"), default="surrogate")
    parser.add_argument("--proxy-steps", type=int, default=5, help="distillation steps per trial (real objective)")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=V1,V2",
                        help="restrict a search parameter, as `zoo search run --limit` (e.g. dim=32,48,64)")
    args = parser.parse_args()
    if args.objective == "real":
        return main_real(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)

    space = ERadioSpace((args.resolution,), limits=parse_limits(args.limit) or None)
    objective = SurrogateObjective(space)
    rng = random.Random(12345)
    pool = [objective.evaluate(space.params_to_candidate(space.random_params(rng))) for _ in range(POOL_SIZE)]
    reference = losses(pool).max(axis=0)
    reference = reference + 0.05 * np.abs(reference)

    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    results: dict[str, list[float]] = {}
    start = time.perf_counter()
    for name in samplers:
        results[name] = [hypervolume(run(name, seed, args.trials, objective, args.variants), reference)
                          for seed in range(args.seeds)]
    seconds = time.perf_counter() - start

    print(f"E-RADIO space at {args.resolution} px ({space.size():,} candidates), surrogate objective, "
          f"{args.trials} trials x {args.seeds} seeds{', paper variants first' if args.variants else ''}, reference point {np.round(reference, 4).tolist()}")
    print(f"random pool of {POOL_SIZE}: hypervolume {hypervolume(pool, reference):.4f}")
    print_hypervolumes(results)
    print(f"{len(objective.cache)} distinct candidates evaluated in {seconds:.0f} s")


def main_real(args: argparse.Namespace) -> None:
    import tempfile

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    space = ERadioSpace((args.resolution,), limits=parse_limits(args.limit) or None)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    fronts: dict[str, list[list[tuple[float, float]]]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        objective = RealObjective(space, out_dir, args.proxy_steps)
        for name in samplers:
            fronts[name] = [run(name, seed, args.trials, objective, args.variants) for seed in range(args.seeds)]
    seconds = time.perf_counter() - start
    everything = [point for runs in fronts.values() for points in runs for point in points]
    reference = losses(everything).max(axis=0)
    reference = reference + 0.05 * np.abs(reference)
    print(f"E-RADIO space at {args.resolution} px, REAL objective (zoo.bench throughput on this machine + "
          f"{args.proxy_steps}-step proxy distillation, random tiny teachers), {args.trials} trials x "
          f"{args.seeds} seeds, reference point {np.round(reference, 4).tolist()} (worst of all trials + 5%)")
    results = {name: [hypervolume(points, reference) for points in runs] for name, runs in fronts.items()}
    print_hypervolumes(results)
    print(f"{objective.evaluated} trials evaluated in {seconds:.0f} s")


if __name__ == "__main__":
    main()
