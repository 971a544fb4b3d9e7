"""Can a short proxy and a latency table be trusted to rank candidates? Kendall's tau on sampled configurations.

For ``--n`` distinct random candidates of the E-RADIO search space (narrowed by
``--limit``; the default keeps models CPU-sized), this script

1. runs the search proxy (the ``search-proxy`` recipe, its tiny teachers, or a
   ``--teacher-cache`` folder) for ``--steps`` S steps and takes the FD loss;
2. RESUMES the same run to ``K x S`` steps (``--factor`` K; ``train.steps`` is a
   resumable key, as the multi-fidelity rungs of :mod:`zoo.search.fidelity` use
   it, so the cosine schedule is stretched: a warm restart) and takes the FD
   loss again. Cost: K x S steps per candidate, not (K+1) x S;
3. predicts each candidate's throughput from a latency table of
   :mod:`zoo.search.latency` (its stages timed here) and measures the full
   network end to end.

Printed: Kendall's tau (``scipy.stats.kendalltau``, tau-b, two-sided p-value)
between short- and long-proxy FD losses, and between predicted and measured
throughput, with N, S, K and the time each part took. The table's overhead fit
(``scale x stage sum + overhead``, scale > 0) cannot change an order, so none is
fitted: tau is that of the plain stage sum. With N candidates there are only
N(N-1)/2 pairs: at N < 10 one swapped pair moves tau by 0.07 or more and
p-values stay large; read the figures as a noisy indication.

    python benchmarks/proxy_fidelity.py --n 6 --steps 5 --factor 6 --threads 1 --clock cpu   # a few minutes
    python benchmarks/proxy_fidelity.py                            # N=12, S=10, K=10 (~10x longer)
    python benchmarks/proxy_fidelity.py --teacher-cache cache/ --n 20 --limit dim=32,48,64,80

Runs go to a temporary folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

DEFAULT_LIMITS = ["dim=32,48,64", "depth1=1,2", "depth2=1,2", "depth3=1,2", "depth4=1,2"]


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``proxy_fidelity.py: error: ...``) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(kind: type, minimum: float) -> "callable":
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    return parse


def build_parser() -> Parser:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive(int, 3), default=12, help="sampled configurations [12]")
    parser.add_argument("--steps", type=positive(int, 1), default=10, help="short proxy length S [10]")
    parser.add_argument("--factor", type=positive(int, 2), default=10, help="long proxy = K x S steps [10]")
    parser.add_argument("--resolution", type=positive(int, 32), default=64)
    parser.add_argument("--recipe", default="search-proxy", help="proxy recipe (name or YAML) [search-proxy]")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="recipe override (repeatable), e.g. optim.lr=2e-3")
    parser.add_argument("--teacher", action="append", default=[], metavar="SPEC", dest="teachers",
                        help="teacher spec (repeatable) [the recipe's: tiny random teachers]")
    parser.add_argument("--teacher-cache", default=None, metavar="DIR",
                        help="a `zoo cache` folder: targets read from it, no teacher runs")
    parser.add_argument("--limit", action="append", default=None, metavar="NAME=V1,V2",
                        help=f"restrict a search parameter, as `zoo search run --limit` "
                             f"[{' '.join(DEFAULT_LIMITS)}]; `--limit none` searches the whole space")
    parser.add_argument("--threads", type=positive(int, 1), default=1)
    parser.add_argument("--batch", type=positive(int, 1), default=1, help="throughput batch size [1]")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="latency clock: wall (zoo.bench) or this process's CPU time (shared machines)")
    parser.add_argument("--repeats", type=positive(int, 1), default=5, help="timed repeats per measurement [5]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder parent [a temporary folder]")
    return parser


def sample(space, n: int, seed: int) -> list:
    """``n`` distinct candidates (by key), or fewer when the narrowed space is that small."""
    rng, found = random.Random(seed), {}
    for _ in range(200 * n):
        candidate = space.params_to_candidate(space.random_params(rng))
        found.setdefault(candidate.key(), candidate)
        if len(found) == n:
            break
    return list(found.values())


def proxy_loss(candidate, recipe, out: Path, teachers, teacher_cache, resume: bool) -> float:
    """FD loss of the candidate's proxy run after ``recipe.train.steps`` (resuming its checkpoint); NaN if diverged."""
    from zoo.distill import distill
    from zoo.errors import DivergedError

    name = candidate.backbone_name()
    try:
        record = distill(candidate.build(name=name), recipe, out_dir=str(out), run_name=candidate.key(),
                         resume=resume, device="cpu", progress=False, teachers=teachers,
                         teacher_cache=teacher_cache)
    except DivergedError:
        return math.nan
    value = record.get("fd_loss")
    return float(value) if value is not None else math.nan


def tau(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """Kendall's tau-b, its p-value and the pairs' count over entries finite in both."""
    from scipy.stats import kendalltau

    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    result = kendalltau([x for x, _ in pairs], [y for _, y in pairs])
    return float(result.statistic), float(result.pvalue), len(pairs)


def run(args: argparse.Namespace) -> None:
    import torch

    from zoo.recipe import load_recipe
    from zoo.search.latency import LatencySettings, LatencyTable
    from zoo.search.space import make_space, parse_limits

    torch.set_num_threads(args.threads)
    limits = [] if args.limit == ["none"] else (args.limit or DEFAULT_LIMITS)
    space = make_space("eradio", (args.resolution,), parse_limits(limits) or None)
    candidates = sample(space, args.n, args.seed)
    if len(candidates) < 3:
        raise SystemExit(f"proxy_fidelity.py: error: only {len(candidates)} distinct candidates under --limit")

    short_steps, long_steps = args.steps, args.steps * args.factor
    base = [*args.overrides, "bench.enabled=false", "eval.every=0", f"train.resolution={args.resolution}"]
    short_recipe = load_recipe(args.recipe, overrides=[*base, f"train.steps={short_steps}"])
    long_recipe = load_recipe(args.recipe, overrides=[*base, f"train.steps={long_steps}"])
    teachers = None
    if args.teacher_cache is None:
        from zoo.teachers import build_teachers

        teachers = build_teachers(list(args.teachers or short_recipe.teachers), "cpu")

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        short, long_, seconds = [], [], {"short": 0.0, "long": 0.0}
        for index, candidate in enumerate(candidates, start=1):
            start = time.perf_counter()
            short.append(proxy_loss(candidate, short_recipe, out, teachers, args.teacher_cache, resume=False))
            seconds["short"] += time.perf_counter() - start
            start = time.perf_counter()
            finished = math.isfinite(short[-1])  # a diverged run keeps no checkpoint worth resuming
            long_.append(proxy_loss(candidate, long_recipe, out, teachers, args.teacher_cache, resume=True)
                         if finished else math.nan)
            seconds["long"] += time.perf_counter() - start
            print(f"[{index}/{len(candidates)}] {candidate.key()}: FD loss {short[-1]:.4f} after {short_steps}, "
                  f"{long_[-1]:.4f} after {long_steps} steps", file=sys.stderr, flush=True)

        settings = LatencySettings(resolution=args.resolution, batch_size=args.batch, device="cpu",
                                   threads=args.threads, repeats=args.repeats, clock=args.clock)
        table = LatencyTable.open(settings, folder=out / "latency")
        start = time.perf_counter()
        configs = [c.config for c in candidates]
        table.measure(table.missing(configs))
        predicted = [table.predict_throughput(config) for config in configs]
        seconds["table"] = time.perf_counter() - start
        start = time.perf_counter()
        measured = [args.batch * 1000.0 / table.measure_model_ms(c.config, c.key()) for c in candidates]
        seconds["measure"] = time.perf_counter() - start

    fd_tau, fd_p, fd_n = tau(short, long_)
    speed_tau, speed_p, speed_n = tau(predicted, measured)
    print(f"E-RADIO space at {args.resolution} px ({space.size():,} candidates; limits "
          f"{' '.join(limits) or 'none'}), recipe {args.recipe} "
          f"({'teacher cache ' + args.teacher_cache if args.teacher_cache else 'teachers ' + ', '.join(args.teachers or short_recipe.teachers)}), "
          f"{args.threads} thread(s), seed {args.seed}")
    print(f"{'key':<28} {'FD@' + str(short_steps):>8} {'FD@' + str(long_steps):>8} {'pred img/s':>11} "
          f"{'meas img/s':>11}")
    for candidate, s, l, p, m in zip(candidates, short, long_, predicted, measured):
        print(f"{candidate.key()[:28]:<28} {s:8.4f} {l:8.4f} {p:11.1f} {m:11.1f}")
    print()
    print("| rank agreement | N | S | K | Kendall tau | p-value |")
    print("|---|---|---|---|---|---|")
    print(f"| FD loss after S vs after K x S steps (resumed) | {fd_n} | {short_steps} | {args.factor} | "
          f"{fd_tau:.3f} | {fd_p:.3g} |")
    print(f"| throughput predicted (latency table, b{args.batch}, {args.clock} clock) vs measured | {speed_n} | - | - | "
          f"{speed_tau:.3f} | {speed_p:.3g} |")
    print()
    spread = [v for v in short if math.isfinite(v)]
    spread_long = [v for v in long_ if math.isfinite(v)]
    if spread and spread_long:
        print(f"FD loss range: {min(spread):.4f}-{max(spread):.4f} after {short_steps} steps, "
              f"{min(spread_long):.4f}-{max(spread_long):.4f} after {long_steps}")
    print(f"time: short proxies {seconds['short']:.0f} s, resumed to {long_steps} steps {seconds['long']:.0f} s "
          f"(total {short_steps * len(candidates)} + {(long_steps - short_steps) * len(candidates)} steps); "
          f"latency table {seconds['table']:.0f} s; end-to-end measurements {seconds['measure']:.0f} s")


def main() -> None:
    args = build_parser().parse_args()
    warnings.simplefilter("ignore")
    from zoo.errors import ZooError

    try:
        run(args)
    except ZooError as err:
        print(f"proxy_fidelity.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
