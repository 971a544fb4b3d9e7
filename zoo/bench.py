"""Throughput, parameters and FLOPs of backbones, measured like timm's benchmark.

Inputs are made once on the device (no data loader); every forward runs in
``torch.inference_mode`` (with autocast for bf16/fp16) and is followed by a
synchronise on accelerators; warm-up steps come first, then timed repeats of
``steps_per_repeat`` forward passes each. Throughput is reported as a
distribution over repeats (median, min, max, every value), in images per
second, with the environment that produced it.

Several models are measured *interleaved*: repeat 1 of every model, then
repeat 2 of every model, ... so that machine noise (other jobs, clock
changes, thermal throttling) falls on all of them alike. On GPUs,
``subprocess=True`` measures each model in a fresh process instead (no memory
fragmentation left by the previous model), one after the other; those
processes run the same ``zoo`` as their parent, never a ``zoo/`` folder that
happens to sit in the working directory (see :func:`worker_command`).

The runtime a model is measured in (eager PyTorch, ``torch.compile``,
onnxruntime, TensorRT) is a plug-in of :mod:`zoo.runtimes`; several runtimes
(``runtime="eager,onnxruntime"``) are measured in the same interleaved run,
each backbone once per runtime, and every result records its runtime as part
of the environment. ``latency=True`` adds batch-1 latency percentiles (p50,
p90, p99 in ms, every single forward timed on its own), sampled in every round
next to the throughput repeats.

Every default lives in :class:`BenchSettings` (``zoo bench``'s option
defaults are read from it); the device comes from
:func:`zoo.devices.resolve_device` and the recorded versions from
:func:`zoo.versions.versions`.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

import zoo
from zoo.atomic import atomic_write_json, atomic_write_text
from zoo.devices import resolve_device
from zoo.errors import ConfigError, ZooError
from zoo.progress import progress_bar
from zoo.runtimes import LatencySamples, RuntimeOptions, get_runtime
from zoo.sizes import as_hw
from zoo.versions import versions

__all__ = [  # resolve_device and versions are re-exported: older callers import them from here
    "BenchResult", "BenchSettings", "DEFAULTS", "append_results", "bench_backbones", "bench_model", "bench_models",
    "check_backbones", "count_params_m", "device_name", "read_results", "resolve_device", "versions",
    "worker_command",
]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Defaults that depend on the device: on CUDA, Table 7's protocol (batch 128, mixed FP16/FP32).
DEFAULT_BATCH_SIZE: dict[str, int] = {"cuda": 128, "cpu": 8}
DEFAULT_DTYPE: dict[str, str] = {"cuda": "fp16", "cpu": "fp32"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_RESULTS_FILE = Path("runs") / "bench.jsonl"
THROUGHPUT_UNIT = "img/s"
_MB = 1024 * 1024


@dataclass
class BenchSettings:
    """How to measure. ``device='auto'``, ``dtype='auto'`` and ``batch_size=None``
    resolve per device (see :data:`DEFAULT_DTYPE`, :data:`DEFAULT_BATCH_SIZE`).

    Args:
        resolution: input ``(height, width)`` (an int means square).
        batch_size: images per forward pass (halved on out-of-memory; the result says the one used).
        dtype: ``fp32``, ``bf16`` or ``fp16`` (autocast; the weights stay fp32).
        channels_last: NHWC memory format for the model and its input.
        compile: ``False`` or a ``torch.compile`` mode (``True`` means ``"default"``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: ``torch.set_num_threads`` while measuring; None leaves it.
        warmup: untimed forward passes per model before the first repeat.
        repeats: timed repeats per model (the throughput distribution).
        steps_per_repeat: forward passes per timed repeat.
        fuse: call ``backbone.fuse()`` (deploy mode) where the backbone supports it.
        flops: count GMACs with fvcore (batch 1, fp32, on the model's device).
        subprocess: one fresh process per model, measured one after the other.
        runtime: ``eager``, ``compile``, ``onnxruntime``, ``tensorrt`` (:mod:`zoo.runtimes`), or several
            comma-separated (each backbone measured in each, interleaved). A ``compile`` mode alone
            means the ``compile`` runtime.
        latency: also measure batch-1 latency (p50/p90/p99, ms).
        latency_steps: single-image forwards timed per model and round (with ``latency``).
    """

    resolution: tuple[int, int] = (224, 224)
    batch_size: int | None = None
    dtype: str = "auto"
    channels_last: bool = False
    compile: bool | str = False
    device: str = "auto"
    threads: int | None = None
    warmup: int = 5
    repeats: int = 5
    steps_per_repeat: int = 10
    fuse: bool = False
    flops: bool = True
    subprocess: bool = False
    runtime: str = "eager"
    latency: bool = False
    latency_steps: int = 20

    def __post_init__(self) -> None:
        self.resolution = as_hw(self.resolution)

    def resolved(self) -> "BenchSettings":
        """A copy with device, dtype, batch size and compile mode made concrete and checked."""
        device = resolve_device(self.device)
        kind = device.type
        dtype = DEFAULT_DTYPE[kind] if self.dtype == "auto" else self.dtype
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype '{self.dtype}'; choose auto, {', '.join(DTYPES)}")
        if dtype == "fp16" and kind == "cpu":
            # CPU kernels for fp16 are missing or slow emulations: the figure would mislead.
            raise ConfigError("dtype fp16 is not measured on CPU (slow emulated kernels); use bf16 or fp32")
        compile_mode = self.compile
        if compile_mode is True:
            compile_mode = "default"
        if compile_mode and compile_mode not in COMPILE_MODES:
            raise ConfigError(f"unknown torch.compile mode '{compile_mode}'; choose {', '.join(COMPILE_MODES)}")
        for name in ("repeats", "steps_per_repeat"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be 0 or more, got {self.warmup}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.latency_steps < 1:
            raise ConfigError(f"latency steps must be at least 1, got {self.latency_steps}")
        runtimes = [r.strip() for r in str(self.runtime).split(",") if r.strip()] or ["eager"]
        if len(set(runtimes)) != len(runtimes):
            raise ConfigError(f"runtime listed twice in '{self.runtime}'")
        if compile_mode and runtimes == ["eager"]:
            runtimes = ["compile"]  # --compile alone: the compile runtime
        if "compile" in runtimes and not compile_mode:
            compile_mode = "default"
        if compile_mode and "compile" not in runtimes:
            raise ConfigError(f"--compile applies to the compile runtime; --runtime {','.join(runtimes)} has none")
        for name in runtimes:
            get_runtime(name).check(device, dtype)  # unknown names and missing packages: one line, nothing built
        return replace(
            self,
            device=str(device),
            dtype=dtype,
            batch_size=self.batch_size or DEFAULT_BATCH_SIZE[kind],
            compile=compile_mode or False,
            runtime=",".join(runtimes),
        )

    @property
    def runtimes(self) -> list[str]:
        """The runtimes to measure in, in the given order."""
        return [r.strip() for r in str(self.runtime).split(",") if r.strip()] or ["eager"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["resolution"] = list(self.resolution)
        return data


DEFAULTS = BenchSettings()  # the one source of every default (zoo bench reads its option defaults here)


@dataclass
class BenchResult:
    """One backbone measured under one :class:`BenchSettings` (a line of ``bench.jsonl``).

    ``throughput`` holds ``median``, ``min``, ``max``, ``values`` (img/s per
    repeat), ``unit``, and the environment: ``device``, ``device_name``,
    ``batch_size`` (the one actually used), ``resolution``, ``dtype``,
    ``channels_last``, ``compile``, ``fuse`` (whether fusing applied), ``threads``,
    ``runtime`` and ``runtime_version`` (:mod:`zoo.runtimes`; ``runtime_info``
    says how it ran, e.g. the ONNX export's check; absent for eager PyTorch,
    as in every result written before runtimes existed), and with ``latency`` the
    batch-1 ``latency_p50``/``latency_p90``/``latency_p99`` (ms).
    ``params_m`` counts the backbone as built (before any fuse; no head).
    ``peak_memory_mb`` is CUDA only (weights + input + peak activations of the
    timed passes); None on CPU. ``gmacs`` is per image (fvcore, one multiply-add
    = one MAC); None when FLOPs were not counted.
    """

    backbone: str
    family: str | None
    params_m: float
    gmacs: float | None
    flops_skipped: dict[str, int]
    peak_memory_mb: float | None
    throughput: dict[str, Any]
    versions: dict[str, str]
    created: str
    kind: str = "bench"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"kind": data.pop("kind"), **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BenchResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------- environment


def device_name(device: torch.device) -> str:
    """The GPU name, or the CPU model (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _runtime(settings: BenchSettings, device: torch.device) -> Iterator[None]:
    """Thread count and cudnn autotuning for the measurement, restored afterwards."""
    threads = torch.get_num_threads()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark


# --------------------------------------------------------------------------- one model


def count_params_m(model: nn.Module) -> float:
    """Parameters in millions (the backbone alone: students carry no head)."""
    return sum(p.numel() for p in model.parameters()) / 1e6


class _Measurement:
    """One model on the device with its inputs, its timed values and its batch size."""

    def __init__(self, name: str, family: str | None, model: nn.Module, settings: BenchSettings,
                 runtime: str = "eager") -> None:
        self.name = name
        self.family = family
        self.settings = settings
        self.runtime = get_runtime(runtime)
        self.latency = LatencySamples()
        self.device = torch.device(settings.device)
        self.batch_size = int(settings.batch_size)
        self.values: list[float] = []
        self.peak_bytes: int | None = None
        self.warm = False
        self.gmacs: float | None = None
        self.flops_skipped: dict[str, int] = {}

        model.eval()
        # Parameters of the model as trained; FLOPs and speed of what runs (fused where asked).
        self.params_m = count_params_m(model)
        self.fused = False
        if settings.fuse and getattr(model, "supports_fuse", False):
            model = model.fuse() or model
            self.fused = True
        if settings.flops:
            self._count_flops(model)
        model.to(self.device)
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
        self.weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        options = RuntimeOptions(device=self.device, dtype=settings.dtype, compile_mode=settings.compile or None,
                                 threads=settings.threads, max_batch=self.batch_size,
                                 resolution=tuple(settings.resolution), channels_last=settings.channels_last)
        self.prepared = self.runtime.prepare(model, options)
        self.inputs = self._make_inputs()
        self.latency_inputs = self.prepared.inputs(self._make_inputs(1)) if settings.latency else None

    def _count_flops(self, model: nn.Module) -> None:
        from zoo.flops import count_gmacs
        from zoo.ui import err_console

        device = next(iter(model.parameters()), torch.empty(0)).device
        try:
            count = count_gmacs(model, self.settings.resolution, device=device)
        except Exception as err:  # noqa: BLE001 - a model fvcore cannot trace is still measured
            err_console.print(f"[yellow]note:[/] FLOPs of {self.name} not counted ({type(err).__name__}: {err})")
            return
        self.gmacs, self.flops_skipped = count.gmacs, count.skipped_ops

    def _make_inputs(self, batch_size: int | None = None) -> Any:
        """A random input batch on the device, converted once for the runtime (numpy for onnxruntime)."""
        height, width = self.settings.resolution
        memory_format = torch.channels_last if self.settings.channels_last else torch.contiguous_format
        x = torch.randn(batch_size or self.batch_size, 3, height, width, device=self.device).contiguous(
            memory_format=memory_format)
        return x if batch_size is not None else self.prepared.inputs(x)

    def _forward_steps(self, steps: int) -> None:
        for _ in range(steps):
            self.prepared.run(self.inputs)  # synchronised: each step's kernels are done when it is counted

    def warmup(self) -> None:
        self._forward_steps(self.settings.warmup)
        if self.latency_inputs is not None:
            for _ in range(min(self.settings.warmup, 3)):
                self.prepared.run(self.latency_inputs)
        self.warm = True

    def sample_latency(self) -> None:
        """Batch-1 single-forward times (one round's worth), when latency is measured."""
        if self.latency_inputs is not None:
            self.latency.add(self.prepared, self.latency_inputs, self.settings.latency_steps)

    def repeat(self) -> float:
        """One timed repeat; appends and returns its throughput (img/s)."""
        if not self.warm:
            self.warmup()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            baseline = torch.cuda.memory_allocated(self.device)
        steps = self.settings.steps_per_repeat
        _synchronize(self.device)
        start = time.perf_counter()
        self._forward_steps(steps)
        elapsed = time.perf_counter() - start
        if cuda:
            extra = torch.cuda.max_memory_allocated(self.device) - baseline
            peak = extra + self.weight_bytes + self.inputs.numel() * self.inputs.element_size()
            self.peak_bytes = max(self.peak_bytes or 0, peak)
        value = self.batch_size * steps / max(elapsed, 1e-9)
        self.values.append(value)
        return value

    def shrink(self) -> None:
        """After out-of-memory: half the batch, start this model's measurement over."""
        if self.batch_size == 1:
            raise ZooError(f"{self.name} runs out of {self.device.type} memory even at batch size 1 "
                           f"at {'x'.join(map(str, self.settings.resolution))}")
        self.batch_size //= 2
        self.values.clear()
        self.peak_bytes = None
        self.warm = False
        del self.inputs
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.inputs = self._make_inputs()

    def guarded(self, action: str) -> None:
        """Run ``warmup`` or ``repeat``, halving the batch on out-of-memory (CUDA, or CPU allocations)."""
        while True:
            try:
                getattr(self, action)()
                return
            except torch.OutOfMemoryError:
                pass  # shrink outside the handler: its traceback keeps the activations alive
            self.shrink()
            from zoo.ui import err_console

            err_console.print(f"[yellow]note:[/] {self.name}: out of memory, batch size now {self.batch_size}")

    def result(self, settings: BenchSettings, created: str, environment: dict[str, Any]) -> BenchResult:
        values = [round(v, 3) for v in self.values]
        throughput = {
            "median": round(statistics.median(self.values), 3),
            "min": min(values),
            "max": max(values),
            "values": values,
            "unit": THROUGHPUT_UNIT,
            **environment,
            "batch_size": self.batch_size,
            "resolution": list(settings.resolution),
            "dtype": settings.dtype,
            "channels_last": settings.channels_last,
            "compile": settings.compile if self.runtime.name == "compile" else False,
            "fuse": self.fused,
        }
        if self.runtime.name != "eager":  # no runtime key: eager, as every result before runtimes existed
            throughput.update(self.runtime.environment(), runtime_info=dict(self.prepared.info))
        if self.latency.values:
            throughput.update(self.latency.summary())
        return BenchResult(
            backbone=self.name,
            family=self.family,
            params_m=round(self.params_m, 4),
            gmacs=None if self.gmacs is None else round(self.gmacs, 6),
            flops_skipped=self.flops_skipped,
            peak_memory_mb=None if self.peak_bytes is None else round(self.peak_bytes / _MB, 1),
            throughput=throughput,
            versions=versions(),
            created=created,
        )


# --------------------------------------------------------------------------- many models


def bench_models(
    models: Mapping[str, nn.Module],
    settings: BenchSettings,
    progress: bool = True,
    families: Mapping[str, str | None] | None = None,
) -> list[BenchResult]:
    """Measure already-built modules, interleaved round-robin across repeats.

    Each module is set to eval mode, moved to the device (and fused, converted
    to channels_last, compiled as the settings say) in place. With several
    runtimes each module is measured once per runtime (a copy for every
    runtime after the first), all interleaved in the same rounds; results
    come per module, in the runtimes' order.
    """
    settings = settings.resolved()
    device = torch.device(settings.device)
    families = families or {}
    runtimes = settings.runtimes
    with _runtime(settings, device), progress_bar(progress) as bar:
        task = bar.add_task("bench", total=len(models) * len(runtimes) * (settings.repeats + 1), info="")
        runs = []
        try:
            for name, model in models.items():
                for index, runtime in enumerate(runtimes):
                    label = name if len(runtimes) == 1 else f"{name} ({runtime})"
                    bar.update(task, info=f"prepare + warm-up {label}")
                    unit = model if index == len(runtimes) - 1 else copy.deepcopy(model)
                    # FLOPs are the model's, not the runtime's: counted once per model
                    run = _Measurement(name, families.get(name), unit,
                                       settings if index == 0 else replace(settings, flops=False), runtime)
                    if index > 0:
                        run.gmacs, run.flops_skipped = runs[-index].gmacs, runs[-index].flops_skipped
                    run.guarded("warmup")
                    runs.append(run)
                    bar.advance(task)
            threads = torch.get_num_threads()
            # Round-robin; a model whose batch was halved mid-way needs extra rounds.
            round_index = 0
            while any(len(run.values) < settings.repeats for run in runs):
                round_index += 1
                for run in runs:
                    if len(run.values) >= settings.repeats:
                        continue
                    bar.update(task, info=f"repeat {round_index}/{settings.repeats} {run.name} ({run.runtime.name})")
                    before = len(run.values)
                    run.guarded("repeat")
                    run.sample_latency()
                    if len(run.values) > before:
                        bar.advance(task)
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            environment = {"device": str(device), "device_name": device_name(device), "threads": threads}
            return [run.result(settings, created, environment) for run in runs]
        finally:
            for run in runs:
                run.prepared.close()


def bench_model(model: nn.Module, settings: BenchSettings, name: str = "model", family: str | None = None,
                progress: bool = False) -> BenchResult:
    """Measure one already-built module (e.g. a student at the end of distillation).

    The module is moved/converted in place (see :func:`bench_models`); its
    train/eval mode is restored afterwards. Pass a copy to keep it untouched.
    """
    was_training = model.training
    try:
        if family is None:
            family = _registry_family(name)
        return bench_models({name: model}, settings, progress=progress, families={name: family})[0]
    finally:
        model.train(was_training)


def _registry_family(name: str) -> str | None:
    from zoo.registry import list_backbones

    return next((entry.family for entry in list_backbones() if entry.name == name), None)


def check_backbones(names: Sequence[str], resolution: int | Sequence[int]) -> None:
    """Fail fast (before building anything for real) on unknown names or impossible sizes.

    Each backbone is built on the meta device (no memory, no compute), which
    runs the same checks a real build does.
    """
    from zoo.registry import create_backbone, get_entry

    if not names:
        raise ConfigError("no backbone to measure")
    height, width = as_hw(resolution)
    for name in names:
        get_entry(name)
    for name in names:
        try:
            with torch.device("meta"):
                backbone = create_backbone(name, resolution=(height, width))
        except ZooError:
            raise
        except Exception:  # noqa: BLE001 - a builder that cannot run on meta is checked by its real build
            continue
        backbone.check_resolution(height, width)


def bench_backbones(names: Sequence[str], settings: BenchSettings, progress: bool = True,
                    results_file: str | os.PathLike | None = None) -> list[BenchResult]:
    """Build registry backbones at ``settings.resolution`` and measure them.

    Unknown names and impossible resolutions raise a :class:`ZooError` before
    any measuring. Results are appended to ``results_file`` when given.
    """
    from zoo.registry import create_backbone, get_entry

    settings = settings.resolved()
    names = list(dict.fromkeys(names))  # once each, in the given order
    check_backbones(names, settings.resolution)
    if settings.subprocess:
        results = _bench_in_subprocesses(names, settings, progress)
    else:
        models = {name: create_backbone(name, resolution=settings.resolution) for name in names}
        families = {name: get_entry(name).family for name in names}
        results = bench_models(models, settings, progress=progress, families=families)
    if results_file is not None:
        append_results(results_file, results)
    return results


# --------------------------------------------------------------------------- one process per model


def worker_command(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a ``python -m zoo.bench`` worker.

    ``python -m`` puts the working directory first on the import path, so a
    worker started from a folder holding a ``zoo/`` directory would run that
    code. The worker gets ``-P`` (Python 3.11+: no such entry), is started in
    a fresh temporary folder (the guard on older Pythons), and finds the
    parent's own ``zoo`` through ``PYTHONPATH`` (an editable install or a
    source checkout works the same).
    """
    isolate = ["-P"] if sys.version_info >= (3, 11) else []
    zoo_root = str(Path(zoo.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([zoo_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                      if p and p != "."])
    return [sys.executable, *isolate, "-m", "zoo.bench", *args], env


def _bench_in_subprocesses(names: Sequence[str], settings: BenchSettings, progress: bool) -> list[BenchResult]:
    """Each backbone in a fresh ``python -m zoo.bench`` worker (:func:`worker_command`), one after the other."""
    worker_settings = replace(settings, subprocess=False)
    results = []
    with progress_bar(progress) as bar, tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        task = bar.add_task("bench", total=len(names), info="")
        for name in names:
            bar.update(task, info=f"{name} (own process)")
            out = Path(tmp) / f"{len(results)}.json"
            command, env = worker_command([json.dumps(worker_settings.to_dict()), name, str(out)])
            proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp, env=env)
            if proc.returncode != 0:
                lines = [line for line in proc.stderr.splitlines() if line.strip()]
                last = lines[-1] if lines else f"exit status {proc.returncode}"
                if proc.returncode == 2:  # a ZooError in the worker: pass its message on
                    raise ZooError(f"{name}: {last.removeprefix('Error: ')}")
                raise RuntimeError(f"bench worker for {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            written = json.loads(out.read_text(encoding="utf-8"))
            results.extend(BenchResult.from_dict(r) for r in (written if isinstance(written, list) else [written]))
            bar.advance(task)
    return results


def _worker(argv: Sequence[str]) -> int:
    settings_json, name, out = argv
    data = json.loads(settings_json)
    settings = BenchSettings(**{**data, "resolution": tuple(data["resolution"])})
    try:
        results = bench_backbones([name], settings, progress=False)
    except ZooError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    atomic_write_json(out, [r.to_dict() for r in results])
    return 0


# --------------------------------------------------------------------------- results file


def append_results(path: str | os.PathLike, results: Sequence[BenchResult | Mapping[str, Any]]) -> Path:
    """Append one JSON object per line to ``path``, atomically (existing lines are kept)."""
    path = Path(path)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    lines = [json.dumps(r.to_dict() if isinstance(r, BenchResult) else dict(r), default=str) for r in results]
    return atomic_write_text(path, existing + "".join(line + "\n" for line in lines))


def read_results(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines results file (optionally only one ``kind``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"results file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number} is not a JSON line ({err.msg})") from None
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


if __name__ == "__main__":  # the per-model worker of ``subprocess=True``
    sys.exit(_worker(sys.argv[1:]))
