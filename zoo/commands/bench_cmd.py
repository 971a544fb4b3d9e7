"""``zoo bench``: throughput (a distribution over repeats), params and GMACs of backbones."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

import click
from rich.table import Table

from zoo.atomic import atomic_write_text
from zoo.bench import (COMPILE_MODES, DEFAULT_BATCH_SIZE, DEFAULT_DTYPE, DEFAULT_RESULTS_FILE, DEFAULTS, DTYPES,
                       BenchResult, BenchSettings, bench_backbones)
from zoo.commands.options import RESOLUTION, device_option
from zoo.errors import ConfigError
from zoo.runtimes import runtime_names
from zoo.ui import img_rate

def _per_device(defaults: dict) -> str:
    """``128 on CUDA, 8 on CPU``: a per-device default, for help texts."""
    return ", ".join(f"{value} on {kind.upper()}" for kind, value in defaults.items())


CSV_COLUMNS = ["backbone", "family", "params_m", "gmacs", "peak_memory_mb", "median", "min", "max", "values",
               "unit", "device", "device_name", "batch_size", "resolution", "dtype", "channels_last", "compile",
               "fuse", "threads", "runtime", "runtime_version", "latency_p50", "latency_p90", "latency_p99", "torch", "timm", "open_clip", "numpy", "zoo", "python", "created"]


def _select_backbones(backbone: str | None, family: str | None, every: bool) -> list[str]:
    from zoo.registry import list_backbones, parse_backbone_list

    chosen = sum(bool(v) for v in (backbone, family, every))
    if chosen != 1:
        raise ConfigError("choose the backbones with exactly one of --backbone a,b,c, --family F or --all")
    if backbone:
        names = parse_backbone_list(backbone)
        if not names:
            raise ConfigError("--backbone got no names (e.g. --backbone convnext-atto,resnet-18)")
        return names
    return [entry.name for entry in list_backbones(family)]


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)



def _settings_line(results: Sequence[BenchResult]) -> str:
    tp = results[0].throughput
    parts = [f"device {tp['device']} ({tp['device_name']})", tp["dtype"], f"batch {tp['batch_size']}",
             "x".join(str(v) for v in tp["resolution"]), f"threads {tp['threads']}"]
    if tp["channels_last"]:
        parts.append("channels_last")
    if tp["compile"]:
        parts.append(f"compile={tp['compile']}")
    parts.append(f"{len(tp['values'])} repeats")
    if "latency_p50" in tp:
        parts.append(f"latency: batch 1, {tp['latency_samples']} single forwards per model")
    return " · ".join(parts)


def runtime_of(result: BenchResult) -> str:
    """A result's runtime (``eager`` for results that record none)."""
    return str(result.throughput.get("runtime") or "eager")


def _table(results: Sequence[BenchResult]) -> Table:
    batches = {r.throughput["batch_size"] for r in results}
    runtimes = list(dict.fromkeys(runtime_of(r) for r in results))
    latency = any("latency_p50" in r.throughput for r in results)
    table = Table(title="zoo bench", title_justify="left")
    columns = [("backbone", "left")]
    if runtimes != ["eager"]:
        columns.append(("runtime", "left"))
    columns.append(("img/s median (min–max)", "right"))
    if len(runtimes) > 1:  # the same backbone in each runtime, measured in the same interleaved rounds
        columns.append((f"× {runtimes[0]}", "right"))
    if latency:
        columns.append(("latency ms p50 / p90 / p99", "right"))
    columns += [("params (M)", "right"), ("GMACs", "right"), ("peak mem (MB)", "right")]
    if len(batches) > 1:  # some model ran at a smaller batch after running out of memory
        columns.append(("batch", "right"))
    for name, justify in columns:
        table.add_column(name, justify=justify)
    first = {r.backbone: r.throughput["median"] for r in results if runtime_of(r) == runtimes[0]}
    for r in results:
        tp = r.throughput
        name = r.backbone + (" (fused)" if tp["fuse"] else "")
        row = [name]
        if runtimes != ["eager"]:
            row.append(runtime_of(r))
        row.append(f"{img_rate(tp['median'])} ({img_rate(tp['min'])}–{img_rate(tp['max'])})")
        if len(runtimes) > 1:
            base = first.get(r.backbone)
            row.append(f"{tp['median'] / base:.2f}" if base else "—")
        if latency:
            row.append(" / ".join(_fmt(tp.get(f"latency_p{q}"), ".2f") for q in (50, 90, 99)))
        row += [_fmt(r.params_m), _fmt(r.gmacs, ".3f"), _fmt(r.peak_memory_mb, ".0f")]
        if len(batches) > 1:
            row.append(str(tp["batch_size"]))
        table.add_row(*row)
    return table


def _csv_text(results: Sequence[BenchResult]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in results:
        tp = r.throughput
        row: dict[str, Any] = {"backbone": r.backbone, "family": r.family, "params_m": r.params_m, "gmacs": r.gmacs,
                               "peak_memory_mb": r.peak_memory_mb, "created": r.created, **r.versions}
        row.update({k: tp[k] for k in CSV_COLUMNS if k in tp})
        row["runtime"] = runtime_of(r)
        row["values"] = ";".join(str(v) for v in tp["values"])
        row["resolution"] = "x".join(str(v) for v in tp["resolution"])
        writer.writerow({k: row.get(k) for k in CSV_COLUMNS})
    return buffer.getvalue()


def _write(target: str, text: str) -> None:
    if target == "-":
        click.echo(text, nl=not text.endswith("\n"))
    else:
        atomic_write_text(target, text)


@click.command("bench")
@click.option("--backbone", "-b", default=None, metavar="A,B,C", help="Backbones to measure (comma-separated).")
@click.option("--family", default=None, help="Every backbone of one family (e.g. convnext, vit-cpe).")
@click.option("--all", "every", is_flag=True, help="Every registered backbone.")
@click.option("--resolution", "-r", type=RESOLUTION, default="x".join(map(str, DEFAULTS.resolution)),
              show_default=True, help="Input size: N or HxW (e.g. 320x480).")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size,
              help=f"Images per forward pass [default: {_per_device(DEFAULT_BATCH_SIZE)}].")
@click.option("--dtype", type=click.Choice(["auto", *DTYPES]), default=DEFAULTS.dtype, show_default=True,
              help=f"Autocast precision; auto = {_per_device(DEFAULT_DTYPE)} (Table 7's mixed precision on CUDA).")
@click.option("--channels-last", is_flag=True, help="NHWC memory format for model and input.")
@click.option("--compile", "compile_mode", is_flag=False, flag_value="default", default=None, metavar="[MODE]",
              help=f"torch.compile the models; MODE is one of {', '.join(COMPILE_MODES)} (default: default).")
@click.option("--fuse", is_flag=True, help="Deploy mode (backbone.fuse()) where the backbone supports it.")
@click.option("--runtime", default=DEFAULTS.runtime, show_default=True, metavar="R[,R...]",
              help=f"Where to run the models: {', '.join(runtime_names())}; several comma-separated are measured "
                   "in the same interleaved run (e.g. eager,onnxruntime), each figure recorded with its runtime.")
@click.option("--latency", is_flag=True, help="Also measure batch-1 latency (p50, p90, p99 in ms) per runtime.")
@click.option("--latency-steps", type=int, default=DEFAULTS.latency_steps, show_default=True,
              help="Single-image forwards timed per model and repeat (with --latency).")
@device_option(default=DEFAULTS.device)
@click.option("--threads", type=int, default=DEFAULTS.threads,
              help="CPU threads (torch.set_num_threads) [default: leave].")
@click.option("--warmup", type=int, default=DEFAULTS.warmup, show_default=True, help="Untimed forward passes per model.")
@click.option("--repeats", type=int, default=DEFAULTS.repeats, show_default=True,
              help="Timed repeats per model (the distribution).")
@click.option("--steps", "steps_per_repeat", type=int, default=DEFAULTS.steps_per_repeat, show_default=True,
              help="Forward passes per timed repeat.")
@click.option("--no-flops", is_flag=True, help="Skip counting GMACs with fvcore.")
@click.option("--subprocess", "use_subprocess", is_flag=True,
              help="One fresh process per model (GPUs: no fragmentation); measured one after the other.")
@click.option("--results", "results_file", type=click.Path(dir_okay=False), default=str(DEFAULT_RESULTS_FILE),
              show_default=True, help="JSON-lines file the results are appended to.")
@click.option("--no-save", is_flag=True, help="Do not append to the results file.")
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the results as JSON ('-': stdout).")
@click.option("--csv", "csv_path", default=None, metavar="PATH", help="Write the results as CSV ('-': stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def bench_command(backbone, family, every, resolution, batch_size, dtype, channels_last, compile_mode, fuse, runtime,
                  latency, latency_steps, device, threads, warmup, repeats, steps_per_repeat, no_flops, use_subprocess, results_file, no_save,
                  json_path, csv_path, quiet) -> None:
    """Measure throughput (img/s: median, min and max over repeats), parameters
    and GMACs (fvcore, one multiply-add = one MAC) of backbones.

    Models are measured interleaved (repeat 1 of each, then repeat 2, ...) so
    machine noise falls on all alike. Every result is appended to the results
    file with its environment (device, dtype, batch, resolution, threads,
    versions); compare figures only when those match.

    \b
    Examples:
      zoo bench --backbone convnext-atto,resnet-18 --resolution 128
      zoo bench --family vit-cpe --device cuda --dtype fp16 --batch-size 128
      zoo bench --backbone swinv2-s,maxvit-b --channels-last --compile max-autotune
      zoo bench --backbone resnet-18 --device cpu --threads 4 --json - --no-save
      zoo bench --all --subprocess --csv bench.csv
      zoo bench --backbone resnet-18,eradio-xt --runtime eager,onnxruntime --threads 1 --latency
      zoo bench --all --device cuda --runtime tensorrt --dtype fp16 --batch-size 128
    """
    from zoo.ui import console, err_console

    # Every check that can fail runs here, before any model is built or timed.
    settings = BenchSettings(
        resolution=resolution, batch_size=batch_size, dtype=dtype, channels_last=channels_last,
        compile=compile_mode or False, device=device, threads=threads, warmup=warmup, repeats=repeats,
        steps_per_repeat=steps_per_repeat, fuse=fuse, flops=not no_flops, subprocess=use_subprocess,
        runtime=runtime, latency=latency, latency_steps=latency_steps,
    ).resolved()
    names = _select_backbones(backbone, family, every)
    results = bench_backbones(names, settings, progress=not quiet, results_file=None if no_save else results_file)

    # Machine-readable output on stdout keeps the table off stdout.
    table_console = err_console if "-" in (json_path, csv_path) else console
    table_console.print(_table(results))
    table_console.print(_settings_line(results), highlight=False)
    if not no_save:
        err_console.print(f"appended {len(results)} result(s) to {results_file}")
    if json_path:
        _write(json_path, json.dumps([r.to_dict() for r in results], indent=2, default=str) + "\n")
    if csv_path:
        _write(csv_path, _csv_text(results))

