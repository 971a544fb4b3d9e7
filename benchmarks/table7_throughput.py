"""Table 7 throughput: every Table 7 backbone and the E-RADIO variants at 224 px.

Three modes, each printed as img/s (median over repeats) and as a ratio to
``eradio-b`` measured in the same mode:

* ``eager``: every model, interleaved round-robin (repeat 1 of every model,
  then repeat 2, ...) so machine noise falls on all alike;
* ``fused``: the E-RADIO models in deploy mode (BatchNorm folded, position
  bias cached), interleaved;
* ``compiled``: ``torch.compile`` (E-RADIO fused first). Compilation takes
  tens of seconds per model, so each model is compiled and measured on its own,
  ``eradio-b`` first, and models that no longer fit ``--time-budget`` are
  listed as skipped rather than overrunning it.
* ``tensorrt`` (GPU only): the paper's protocol for Table 7, TensorRT in fp16
  at batch 128 (E-RADIO fused), through :mod:`zoo.runtimes` (torch-tensorrt,
  or TensorRT's Python API on the ONNX export). Engines take tens of seconds
  to build, so models are measured one by one within the time budget, like
  ``compiled``. On by default on a GPU where torch-tensorrt or tensorrt is
  installed; without them the run says so and measures the other modes.

Defaults follow the paper's GPU protocol on CUDA (batch 128, bf16 autocast,
channels_last, all models, all modes, 285 s budget so a run ends within
5 minutes on an H200) and a light CPU check elsewhere (batch 8, fp32, a few
models, eager + fused). Measuring is :mod:`zoo.bench` (inputs on the device,
inference mode, warm-up, synchronised timed steps).

Examples::

    python benchmarks/table7_throughput.py                      # GPU protocol
    python benchmarks/table7_throughput.py --device cpu --models eradio-b,eradio-xt,resnet-18 --batch-size 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field

import torch
from rich.table import Table

from zoo.bench import DEFAULT_BATCH_SIZE, DEFAULTS, BenchResult, BenchSettings, bench_backbones, device_name
from zoo.devices import resolve_device
from zoo.errors import ZooError
from zoo.registry import list_backbones, parse_backbone_list
from zoo.runtimes import get_runtime
from zoo.ui import console, err_console

REFERENCE = "eradio-b"
MODES = ("eager", "fused", "compiled", "tensorrt")
# Table 7's deployment protocol: TensorRT, fp16, batch 128.
TENSORRT_DTYPE = "fp16"
TENSORRT_BATCH = 128
CPU_DEFAULT_MODELS = ["eradio-b", "eradio-b-noup", "eradio-xt", "efficientnetv2-s", "convnext-b"]
FIRST_COMPILE_ESTIMATE_S = 60.0  # before any compile has been timed
# This script's protocol where it departs from zoo bench's defaults (zoo.bench.DEFAULTS): bf16 autocast on
# GPUs, and fewer warm-up / timed steps so every model and mode fits the time budget.
GPU_DTYPE = "bf16"
WARMUP = {"cuda": 3, "cpu": 2}
STEPS_PER_REPEAT = {"cuda": 5, "cpu": 3}
GPU_TIME_BUDGET_S = 285.0


def table7_names() -> list[str]:
    """Every Table 7 backbone, then the E-RADIO variants not already listed."""
    names = [e.name for e in list_backbones() if e.in_table7]
    names += [e.name for e in list_backbones("eradio") if e.name not in names]
    return names


def is_eradio(name: str) -> bool:
    return name.startswith("eradio-")


@dataclass
class Plan:
    names: list[str]
    modes: list[str]
    settings: BenchSettings
    time_budget_s: float | None
    results_file: str | None
    compile_mode: str = "default"
    elapsed_s: float = 0.0
    results: dict[str, dict[str, BenchResult]] = field(default_factory=dict)  # mode -> name -> result
    skipped: dict[str, list[str]] = field(default_factory=dict)  # mode -> names
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--models", default=None,
                        help="comma-separated registry names (default: all on GPU, a few on CPU)")
    parser.add_argument("--modes", default=None, help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--resolution", type=int, default=DEFAULTS.resolution[0])
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default {DEFAULT_BATCH_SIZE['cuda']} on GPU, {DEFAULT_BATCH_SIZE['cpu']} on CPU")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help=f"default {GPU_DTYPE} on GPU, fp32 on CPU")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default on for GPU, off for CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="forward passes per timed repeat")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for the compiled pass")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the whole run; compiled models that no longer fit are skipped "
                             f"(default {GPU_TIME_BUDGET_S:.0f} on GPU, none on CPU)")
    parser.add_argument("--flops", action="store_true", help="also count GMACs (fvcore) in the eager pass")
    parser.add_argument("--results", default=None, help="append every result to this JSONL file")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    names = parse_backbone_list(args.models) if args.models else (table7_names() if gpu else CPU_DEFAULT_MODELS)
    tensorrt_missing = tensorrt_unavailable(device)
    notes = []
    if args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    elif gpu:
        modes = list(MODES) if tensorrt_missing is None else list(MODES[:3])
        if tensorrt_missing:
            notes.append(f"tensorrt mode (Table 7's protocol) not measured: {tensorrt_missing}")
    else:
        modes = list(MODES[:2])
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    if "tensorrt" in modes and tensorrt_missing:
        parser.error(tensorrt_missing)
    settings = BenchSettings(
        resolution=args.resolution,
        batch_size=args.batch_size or DEFAULT_BATCH_SIZE[device.type],
        dtype=args.dtype or (GPU_DTYPE if gpu else "fp32"),
        channels_last=gpu if args.channels_last is None else args.channels_last,
        compile=False,
        device=str(device),
        threads=args.threads,
        warmup=args.warmup if args.warmup is not None else WARMUP[device.type],
        repeats=args.repeats or DEFAULTS.repeats,
        steps_per_repeat=args.steps or STEPS_PER_REPEAT[device.type],
        fuse=False,
        flops=args.flops,
    )
    budget = args.time_budget if args.time_budget is not None else (GPU_TIME_BUDGET_S if gpu else None)
    return Plan(names=names, modes=modes, settings=settings, time_budget_s=budget, results_file=args.results,
                compile_mode=args.compile_mode, notes=notes)


def tensorrt_unavailable(device: torch.device) -> str | None:
    """Why the tensorrt mode cannot run here (no CUDA, no torch-tensorrt/tensorrt), or None."""
    try:
        get_runtime("tensorrt").check(device, TENSORRT_DTYPE)
    except ZooError as err:
        return str(err)
    return None


def with_settings(settings: BenchSettings, **changes) -> BenchSettings:
    return dataclasses.replace(settings, **changes)


def run(plan: Plan) -> None:
    start = time.perf_counter()
    settings = plan.settings

    def measure(mode: str, names: list[str], mode_settings: BenchSettings) -> None:
        if not names:
            return
        results = bench_backbones(names, mode_settings, progress=True, results_file=plan.results_file)
        plan.results.setdefault(mode, {}).update({r.backbone: r for r in results})

    if "eager" in plan.modes:
        measure("eager", plan.names, settings)
    if "fused" in plan.modes:
        measure("fused", [n for n in plan.names if is_eradio(n)], with_settings(settings, fuse=True, flops=False))
    def one_by_one(mode: str, mode_settings: BenchSettings) -> None:
        """Each model on its own (compiling / building an engine takes tens of seconds), within the budget."""
        order = sorted(plan.names, key=lambda n: (n != REFERENCE, not is_eradio(n)))  # reference first
        longest = None
        for name in order:
            elapsed = time.perf_counter() - start
            estimate = longest if longest is not None else FIRST_COMPILE_ESTIMATE_S
            if plan.time_budget_s is not None and elapsed + estimate > plan.time_budget_s:
                plan.skipped.setdefault(mode, []).append(name)
                continue
            began = time.perf_counter()
            measure(mode, [name], mode_settings)
            longest = max(longest or 0.0, time.perf_counter() - began)
            torch._dynamo.reset()  # drop compiled graphs and their caches between models

    if "compiled" in plan.modes:
        one_by_one("compiled", with_settings(settings, fuse=True, flops=False, compile=plan.compile_mode))
    if "tensorrt" in plan.modes:
        one_by_one("tensorrt", with_settings(settings, fuse=True, flops=False, runtime="tensorrt",
                                             dtype=TENSORRT_DTYPE, batch_size=TENSORRT_BATCH, channels_last=False))
    plan.elapsed_s = time.perf_counter() - start


def report(plan: Plan) -> None:
    settings = plan.settings.resolved()
    device = torch.device(settings.device)
    console.print(
        f"[bold]Table 7 throughput[/] at {settings.resolution[0]}x{settings.resolution[1]}, "
        f"batch {settings.batch_size}, {settings.dtype}, channels_last={settings.channels_last}, "
        f"{device_name(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{plan.elapsed_s:.0f} s"
    )
    if "tensorrt" in plan.modes:
        console.print(f"tensorrt mode: TensorRT {TENSORRT_DTYPE}, batch {TENSORRT_BATCH} (Table 7's protocol), "
                      "E-RADIO fused")
    table = Table(title=f"img/s (median) and ratio to {REFERENCE} in the same mode", title_justify="left")
    table.add_column("backbone")
    table.add_column("Table 7 (M)", justify="right")
    for mode in plan.modes:
        table.add_column(f"{mode} img/s", justify="right")
        table.add_column(f"{mode} ×{REFERENCE}", justify="right")
    paper = {e.name: e.paper_params_m for e in list_backbones()}
    for name in plan.names:
        cells = [name, f"{paper[name]:g}" if paper.get(name) else "—"]
        for mode in plan.modes:
            result = plan.results.get(mode, {}).get(name)
            reference = plan.results.get(mode, {}).get(REFERENCE)
            if result is None:
                why = "skipped" if name in plan.skipped.get(mode, []) else "—"
                cells += [why, ""]
                continue
            value = result.throughput["median"]
            ratio = value / reference.throughput["median"] if reference else None
            cells += [f"{value:,.1f}", f"{ratio:.2f}" if ratio is not None else "n/a"]
        table.add_row(*cells)
    console.print(table)
    for note in plan.notes:
        err_console.print(f"[yellow]note:[/] {note}")
    for mode, names in plan.skipped.items():
        err_console.print(f"[yellow]note:[/] {mode}: {len(names)} model(s) skipped to stay within "
                          f"{plan.time_budget_s:.0f} s: {', '.join(names)}")
    if all(REFERENCE not in plan.results.get(mode, {}) for mode in plan.modes):
        err_console.print(f"[yellow]note:[/] {REFERENCE} was not measured, so there are no ratios")


def main(argv: list[str] | None = None) -> None:
    plan = parse_args(argv)
    run(plan)
    report(plan)


if __name__ == "__main__":
    main()
