"""Overhead of ``zoo.bench`` against a bare timed loop of the same forward pass.

Both measure the same model under identical settings (device, threads,
input shape, ``inference_mode``, warm-up, repeats x steps), alternating
several rounds so machine noise falls on both alike. The ratio
``zoo / bare`` of the median throughputs should be within 5% of 1.

    python benchmarks/bench_overhead.py                       # resnet-18, batch 8, 128 px, CPU
    python benchmarks/bench_overhead.py --backbone convnext-atto --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.bench import DEFAULT_BATCH_SIZE, BenchSettings, bench_model
from zoo.registry import create_backbone


def bare_loop(model: torch.nn.Module, inputs: torch.Tensor, warmup: int, repeats: int, steps: int) -> list[float]:
    """img/s per repeat of the plainest timed loop there is."""
    values = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                model(inputs)
            values.append(inputs.shape[0] * steps / (time.perf_counter() - start))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet-18")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE["cpu"])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6, help="alternations of zoo and bare measurements")
    args = parser.parse_args()

    settings = BenchSettings(resolution=args.resolution, batch_size=args.batch_size, dtype="fp32", device="cpu",
                             threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                             steps_per_repeat=args.steps, flops=False)
    model = create_backbone(args.backbone, resolution=args.resolution).eval()
    inputs = torch.randn(args.batch_size, 3, args.resolution, args.resolution)

    zoo_values: list[float] = []
    bare_values: list[float] = []
    previous_threads = torch.get_num_threads()
    for _ in range(args.rounds):
        zoo_values += bench_model(model, settings, name=args.backbone).throughput["values"]
        torch.set_num_threads(args.threads)  # what zoo.bench does for its measurement
        try:
            bare_values += bare_loop(model, inputs, args.warmup, args.repeats, args.steps)
        finally:
            torch.set_num_threads(previous_threads)

    zoo_median, bare_median = statistics.median(zoo_values), statistics.median(bare_values)
    print(f"{args.backbone}, batch {args.batch_size}, {args.resolution} px, CPU, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.repeats} repeats x {args.steps} steps")
    print(f"zoo.bench : {zoo_median:8.2f} img/s (min {min(zoo_values):.2f}, max {max(zoo_values):.2f})")
    print(f"bare loop : {bare_median:8.2f} img/s (min {min(bare_values):.2f}, max {max(bare_values):.2f})")
    print(f"ratio zoo/bare: {zoo_median / bare_median:.3f}")


if __name__ == "__main__":
    main()
