"""How well does the stage latency table predict whole E-RADIO networks on this machine?

Builds (or reuses) the latency table of :mod:`zoo.search.latency` for one
environment, fits its per-kind coefficients and overhead on ``--fit-models``
candidates of the search space spanning its widths (profiled end to end and
stage by stage in context), then measures ``--held-out`` other, random,
candidates end to end (disjoint from the fit models) and compares: the mean
absolute percentage deviation (MAPD) and the share of models predicted
within +-10 % (nn-Meter's accuracy metric). Also printed: the cost of the
table (stages timed, seconds) against the cost of measuring every held-out
model, and Kendall's tau between predicted and measured throughput (what a
search needs is the order).

    python benchmarks/latency_table.py                                   # 64 px, batch 1, 1 thread
    python benchmarks/latency_table.py --resolution 224 --batch 8 --held-out 20
    python benchmarks/latency_table.py --limit dim=32,48,64 --fit-models 6
    python benchmarks/latency_table.py --clock cpu --seed 1   # on a machine shared with other jobs

The table goes to a temporary folder unless ``--folder`` is given (the
search's default folder is ``~/.cache/zoo/latency``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings

import torch
from zoo.search.latency import (
    KINDS,
    LatencySettings,
    LatencyTable,
    fit_candidates,
    stage_entries,
)
from zoo.search.space import make_space, parse_limits


def kendall_tau(a: list[float], b: list[float]) -> float:
    pairs = concordant = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            pairs += 1
            concordant += 1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1
    return concordant / pairs if pairs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--fit-models", type=int, default=6)
    parser.add_argument("--held-out", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="calls per timed repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time, end-to-end through zoo.bench; cpu: this process's CPU time "
                             "(one thread; what to use on a machine shared with other jobs)")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=V1,V2",
                        help="restrict a search parameter, as `zoo search run --limit` (e.g. dim=32,48,64)")
    parser.add_argument("--folder", default=None, help="table folder [a temporary one]")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)

    space = make_space("eradio", (args.resolution,), parse_limits(args.limit) or None)
    rng = random.Random(args.seed)
    held_out = [space.params_to_candidate(space.random_params(rng)) for _ in range(args.held_out)]
    fit_set = fit_candidates(space, args.fit_models, rng, exclude=[c.key() for c in held_out])
    assert not {c.key() for c in fit_set} & {c.key() for c in held_out}
    candidates = fit_set + held_out
    settings = LatencySettings(resolution=args.resolution, batch_size=args.batch, dtype=args.dtype, device=args.device,
                               threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                               steps_per_repeat=args.steps, clock=args.clock)
    with tempfile.TemporaryDirectory() as scratch:
        table = LatencyTable.open(settings, folder=args.folder or scratch)
        start = time.perf_counter()
        stages = table.missing([c.config for c in candidates])
        table.measure(stages)
        table_seconds = time.perf_counter() - start
        start = time.perf_counter()
        fit = table.fit_overhead([c.config for c in fit_set], keys=[c.key() for c in fit_set])
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        check = table.validate([c.config for c in held_out], keys=[c.key() for c in held_out])
        measure_seconds = time.perf_counter() - start
        path = table.path

    print(f"E-RADIO space at {args.resolution} px ({space.size():,} candidates), batch {args.batch}, {args.dtype}, "
          f"{args.device}, {args.threads} thread(s), {args.clock} clock; table {path.name}")
    print(f"table: {len(stages)} stage configurations timed in {table_seconds:.1f} s "
          f"(~{sum(len(stage_entries(c.config, args.resolution)) for c in candidates) / len(candidates):.0f} "
          f"stages per network)")
    widths = sorted(c.config.dim for c in fit_set)
    terms = " + ".join(f"{fit.coefficient(kind):.2f} {kind}" for kind in KINDS)
    print(f"fit on {len(fit_set)} models, widths {widths} ({fit_seconds:.1f} s): latency = {terms} "
          f"+ {fit.overhead_ms:.3f} ms")
    for model in fit.models:
        print(f"  fit {model['key']}: measured {model['measured_ms']:8.3f} ms, table sum {model['sum_ms']:8.3f} ms, "
              f"in context {sum(model['context'].values()):8.3f} ms")
    for row in check.rows:
        print(f"  held-out {row['key']}: predicted {row['predicted_ms']:8.3f} ms, measured {row['measured_ms']:8.3f} ms, "
              f"deviation {100 * row['deviation']:+6.1f}%")
    print(check.line())
    predicted = [r["predicted_ms"] for r in check.rows]
    measured = [r["measured_ms"] for r in check.rows]
    print(f"Kendall tau (predicted vs measured latency order): {kendall_tau(predicted, measured):.3f}")
    print(f"measuring the {len(held_out)} held-out models end to end took {measure_seconds:.1f} s "
          f"({measure_seconds / len(held_out):.2f} s each); a prediction from the table takes none once its "
          f"stages are timed (median stage {statistics.median(e['ms'] for e in table.entries.values()):.3f} ms)")


if __name__ == "__main__":
    main()
