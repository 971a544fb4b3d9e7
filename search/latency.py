"""A per-device latency table of the E-RADIO space, and the throughput predictor built on it.

Measuring every candidate of a search with :mod:`zoo.bench` costs as much as a
short proxy run on a CPU. nn-Meter's idea instead: time each *stage
configuration* once, on its own, and predict a network as the sum of its
stages. An E-RADIO network is (:mod:`eradio.model`)::

    stem(in_dim, d) -> C2f(d, n1) -> down(d) -> C2f(2d, n2) -> down(2d)
    -> n3 x MRA layer (one block per ratio r of the pattern: 4d, heads, r, resample, window, mlp)
    -> down(4d) -> window partition -> n4 x window block(8d, heads, window, mlp) -> norm + pool
    [-> neck(4d, 8d, neck width)]

so the table holds one entry per stage configuration (:func:`stage_entries`
lists a candidate's, with how many times each runs), each timed on inputs of
the shape it sees at the table's resolution and batch. The predictor is one
coefficient per stage kind (stem, C2f, down-sampling, MRA, window attention,
norm + pooling, neck) times that kind's summed table time, plus an overhead
(:class:`Fit`). The coefficients come from a few full models *profiled in
context*: each timed end to end and, in the same time window, each of its
stages inside the network (forward hooks), so every fit model gives one
equation per kind (in-context over isolated time) instead of one for the
whole network, and a kind whose isolated timing is off (small stages
dominated by Python dispatch, stages whose weights stay cached) gets its own
correction. :meth:`LatencyTable.validate` compares predictions with
end-to-end measurements of held-out models: the mean absolute percentage
deviation and the share within +-10 % (nn-Meter's metric).

A table is valid for one environment only: device (and its name), torch
version, threads, resolution, batch, dtype. It is stored as one JSON file
named by a fingerprint of that environment, in ``~/.cache/zoo/latency``
(``$ZOO_LATENCY_DIR`` or ``$XDG_CACHE_HOME/zoo/latency`` if set), so every
search on the machine shares it. Entries are measured when first needed and
merged into the file under a lock (workers of one sweep share the table);
the file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from zoo.errors import ConfigError, ZooError

# 2: per-kind coefficients fitted from in-context profiles; on the cpu clock every call is a sample (the minimum
# is kept). Part of the environment, so a table of format 1 has another file name and is simply measured anew.
TABLE_FORMAT = 2
TABLE_KIND = "latency-table"
DTYPES = ("fp32", "bf16", "fp16")
CLOCKS = ("wall", "cpu")
WITHIN = 0.10  # nn-Meter's accuracy metric: share of models predicted within +-10 %
# Each stage is timed as COPIES distinct instances called in turn: inside a network the next block's
# weights are not the ones just used, so a block timed alone, over and over, with its weights hot in
# the cache runs faster than it does in the model (measured: 1.6-1.8x for 2 MB blocks on this CPU).
COPIES = 4
DEFAULT_FIT_MODELS = 4
# The stage kinds that get their own coefficient (a window stage's partition counts as window attention).
KINDS = ("stem", "c2f", "down", "mra", "window", "head", "neck")
KIND_OF = {"partition": "window"}
# The E-RADIO modules whose in-context time is each kind's (attributes of eradio.ERadio).
MODULE_KINDS = {"stem": "stem", "stage1": "c2f", "down1": "down", "stage2": "c2f", "down2": "down", "stage3": "mra",
                "down3": "down", "stage4": "window", "norm": "head", "neck": "neck"}


def default_folder() -> Path:
    """Where tables live: ``$ZOO_LATENCY_DIR``, else ``$XDG_CACHE_HOME/zoo/latency``, else ``~/.cache/zoo/latency``."""
    if os.environ.get("ZOO_LATENCY_DIR"):
        return Path(os.environ["ZOO_LATENCY_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "zoo" / "latency"


# --------------------------------------------------------------------------- settings and environment


@dataclass(frozen=True)
class LatencySettings:
    """What a table is measured under (one table per distinct environment).

    Args:
        resolution: square input side (a multiple of 32).
        batch_size: images per forward pass.
        dtype: ``fp32``, ``bf16`` or ``fp16`` (autocast, as :mod:`zoo.bench`).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        threads: ``torch.set_num_threads`` while timing (None: leave it; part of the fingerprint on CPU).
        warmup: untimed calls per entry before timing.
        repeats: timed repeats per entry (the entry is their median).
        steps_per_repeat: calls per timed repeat.
        clock: ``wall`` (elapsed time, as :mod:`zoo.bench` measures) or ``cpu`` (this process's CPU time:
            one thread on a CPU only; on a machine shared with other jobs it leaves out the time the
            scheduler gives them, which wall-clock timings cannot). End-to-end measurements use the
            same clock.
    """

    resolution: int = 224
    batch_size: int = 1
    dtype: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    warmup: int = 2
    repeats: int = 5
    steps_per_repeat: int = 3
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ConfigError(f"latency clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and (self.threads != 1 or not str(self.device).startswith("cpu")):
            raise ConfigError("the cpu clock measures one thread on a CPU: give device cpu and threads 1")
        if not isinstance(self.resolution, int) or self.resolution < 32 or self.resolution % 32:
            raise ConfigError(f"latency table resolution must be a positive multiple of 32, got {self.resolution!r}")
        if self.batch_size < 1:
            raise ConfigError(f"latency table batch size must be at least 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"latency table dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.repeats < 1 or self.steps_per_repeat < 1 or self.warmup < 0:
            raise ConfigError("latency table timing needs repeats >= 1, steps_per_repeat >= 1, warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")

    def resolved(self) -> "LatencySettings":
        from zoo.devices import resolve_device

        device = resolve_device(self.device)
        if self.dtype == "fp16" and device.type == "cpu":
            raise ConfigError("dtype fp16 is not measured on CPU (slow emulated kernels); use bf16 or fp32")
        return replace(self, device=str(device))

    def bench_settings(self) -> Any:
        """The :class:`zoo.bench.BenchSettings` of the end-to-end measurements (the same protocol)."""
        from zoo.bench import BenchSettings

        return BenchSettings(resolution=(self.resolution, self.resolution), batch_size=self.batch_size,
                             dtype=self.dtype, device=self.device, threads=self.threads, warmup=self.warmup,
                             repeats=self.repeats, steps_per_repeat=self.steps_per_repeat, flops=False)


def environment(settings: LatencySettings) -> dict[str, Any]:
    """Everything a latency depends on besides the model: the table's identity."""
    import torch

    from zoo.bench import device_name

    device = torch.device(settings.device)
    threads = settings.threads if settings.threads is not None else torch.get_num_threads()
    return {
        "device": device.type if device.type == "cpu" else str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": threads if device.type == "cpu" else None,
        "resolution": settings.resolution,
        "batch_size": settings.batch_size,
        "dtype": settings.dtype,
        "channels_last": False,
        "fuse": False,
        "clock": settings.clock,
        "copies": COPIES,
        "format": TABLE_FORMAT,
    }


def fingerprint(env: Mapping[str, Any]) -> str:
    """A short stable hash of an environment (the table's file name)."""
    return hashlib.sha1(json.dumps(dict(env), sort_keys=True).encode()).hexdigest()[:12]


def table_path(settings: LatencySettings, folder: str | os.PathLike | None = None) -> Path:
    env = environment(settings)
    name = f"{env['device'].replace(':', '')}-{settings.resolution}px-b{settings.batch_size}-{settings.dtype}"
    return Path(folder or default_folder()) / f"{name}-{fingerprint(env)}.json"


# --------------------------------------------------------------------------- stage configurations


@dataclass(frozen=True)
class Stage:
    """One timed stage configuration: its kind and the fields that determine its module and input."""

    kind: str
    fields: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        return self.kind + "".join(f":{name}={value}" for name, value in self.fields)

    def get(self, name: str) -> Any:
        return dict(self.fields)[name]


def _stage(kind: str, **values: Any) -> Stage:
    return Stage(kind, tuple(values.items()))


def _extra_modes(config: Any) -> dict[str, Any]:
    """Attention settings that change the timing, named in keys only when not the defaults (short keys)."""
    extra = {}
    if config.cpb_hidden != 512:
        extra["cpb"] = config.cpb_hidden
    if config.large_window != "clamp":
        extra["large"] = config.large_window
    if config.cpb_norm_window != "current":
        extra["norm"] = config.cpb_norm_window
    return extra


def stage_entries(config: Any, resolution: int) -> list[tuple[Stage, int]]:
    """The stage configurations an E-RADIO ``config`` runs at ``resolution``, each with how often it runs."""
    from eradio.config import as_config

    config = as_config(config)
    d1, d2, d3, d4 = config.stage_dims()
    w3, w4 = (tuple(w) if isinstance(w, (list, tuple)) else (w, w) for w in _windows(config))
    extra = _extra_modes(config)
    mlp = float(config.mlp_ratio)
    entries: list[tuple[Stage, int]] = [
        (_stage("stem", in_dim=config.in_dim, dim=d1), 1),
        (_stage("c2f", dim=d1, depth=config.depths[0], stride=4), 1),
        (_stage("down", dim=d1, stride=4), 1),
        (_stage("c2f", dim=d2, depth=config.depths[1], stride=8), 1),
        (_stage("down", dim=d2, stride=8), 1),
    ]
    if config.depths[2]:
        counts: dict[Stage, int] = {}
        for ratio in config.mra_ratios:
            stage = _stage("mra", dim=d3, heads=config.num_heads[2], ratio=int(ratio),
                           resample=config.mra_resample if ratio > 1 else "-", window=f"{w3[0]}x{w3[1]}",
                           mlp=mlp, **extra)
            counts[stage] = counts.get(stage, 0) + config.depths[2]
        entries += list(counts.items())
    entries.append((_stage("down", dim=d3, stride=16), 1))
    if config.depths[3]:
        entries.append((_stage("partition", dim=d4, window=f"{w4[0]}x{w4[1]}", **extra), 1))
        entries.append((_stage("window", dim=d4, heads=config.num_heads[3], window=f"{w4[0]}x{w4[1]}", mlp=mlp,
                               **extra), config.depths[3]))
    entries.append((_stage("head", dim=d4), 1))
    if config.neck_dim:
        entries.append((_stage("neck", dim3=d3, dim4=d4, neck=config.neck_dim), 1))
    return entries


def _windows(config: Any) -> tuple[Any, Any]:
    window = config.window_size
    if isinstance(window, int):
        return window, window
    return window[0], window[1]


def _parse_window(text: str) -> tuple[int, int]:
    h, w = text.split("x")
    return int(h), int(w)


def build_stage(stage: Stage, resolution: int, batch_size: int, device: Any) -> tuple[Any, Callable[[], Any]]:
    """The module of ``stage`` (eval mode, on ``device``) and a call running it on inputs of its shape."""
    import torch
    from torch import nn

    from eradio._c2f import C2f
    from eradio.blocks import (MRABlock, Neck, Stem, Downsample, WindowBlock, fit_window, half_mix,
                               window_partition, window_reverse)

    f = dict(stage.fields)
    b, r = batch_size, resolution
    cpb = f.get("cpb", 512)
    large = f.get("large", "clamp")
    norm = f.get("norm", "current")

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device)

    if stage.kind == "stem":
        module, x = Stem(3, f["in_dim"], f["dim"]), rand(b, 3, r, r)
        call = lambda: module(x)  # noqa: E731 - tiny closures over the prepared inputs
    elif stage.kind == "c2f":
        side = r // f["stride"]
        module, x = C2f(f["dim"], f["dim"], n=f["depth"], shortcut=True, e=0.5), rand(b, f["dim"], side, side)
        call = lambda: module(x)  # noqa: E731
    elif stage.kind == "down":
        side = r // f["stride"]
        module, x = Downsample(f["dim"], 2 * f["dim"]), rand(b, f["dim"], side, side)
        call = lambda: module(x)  # noqa: E731
    elif stage.kind == "mra":
        side, window = r // 16, _parse_window(f["window"])
        module = MRABlock(f["dim"], f["heads"], f["ratio"], f["mlp"], 0.0, cpb, window,
                          f["resample"] if f["ratio"] > 1 else "conv", norm, large)
        x = rand(b, f["dim"], side, side)
        call = lambda: module(x, window)  # noqa: E731
    elif stage.kind == "partition":
        side = r // 32
        window = fit_window(_parse_window(f["window"]), side, side, large)
        module, x = nn.Identity(), rand(b, f["dim"], side, side)

        def call() -> Any:
            tokens, padded = window_partition(x, window)
            return window_reverse(tokens, window, (side, side), padded)
    elif stage.kind == "window":
        side = r // 32
        window = fit_window(_parse_window(f["window"]), side, side, large)
        module = WindowBlock(f["dim"], f["heads"], f["mlp"], 0.0, cpb, _parse_window(f["window"]), norm)
        tokens, _ = window_partition(rand(b, f["dim"], side, side), window)
        call = lambda: half_mix(module(tokens, window), tokens)  # noqa: E731
    elif stage.kind == "head":
        side = r // 32
        module, x = nn.BatchNorm2d(f["dim"]), rand(b, f["dim"], side, side)
        call = lambda: module(x).mean(dim=(2, 3))  # noqa: E731
    elif stage.kind == "neck":
        module = Neck(f["dim3"], f["dim4"], f["neck"])
        x3, x4 = rand(b, f["dim3"], r // 16, r // 16), rand(b, f["dim4"], r // 32, r // 32)
        call = lambda: module(x3, x4)  # noqa: E731
    else:
        raise ConfigError(f"unknown latency-table stage kind {stage.kind!r}")
    module.to(device).eval()
    return module, call


# --------------------------------------------------------------------------- timing


def _synchronize(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _timing_runtime(settings: LatencySettings) -> Iterator[Any]:
    """inference_mode + autocast + thread count, as :mod:`zoo.bench` measures."""
    import torch

    device = torch.device(settings.device)
    threads = torch.get_num_threads()
    autocast = nullcontext() if settings.dtype == "fp32" else torch.autocast(
        device_type=device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[settings.dtype])
    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        with torch.inference_mode(), autocast:
            yield device
    finally:
        torch.set_num_threads(threads)


def time_call(call: Callable[[], Any], settings: LatencySettings, device: Any) -> list[float]:
    """Milliseconds per call, after ``warmup`` untimed calls, on the settings' clock.

    Wall clock: one value per repeat (the mean of ``steps_per_repeat`` calls), as :mod:`zoo.bench`. CPU
    clock: every call is a value (``repeats x steps_per_repeat`` of them): a single call is more likely
    to run between two of the scheduler's switches to other jobs, so the minimum over single calls is
    steadier on a shared machine than the minimum over means of several (measured: 4 % spread instead
    of 10-20 % between runs minutes apart).
    """
    clock = time.process_time if settings.clock == "cpu" else time.perf_counter
    for _ in range(settings.warmup):
        call()
    _synchronize(device)
    values = []
    if settings.clock == "cpu":
        for _ in range(settings.repeats * settings.steps_per_repeat):
            start = clock()
            call()
            values.append((clock() - start) * 1000.0)
        return values
    for _ in range(settings.repeats):
        _synchronize(device)
        start = clock()
        for _ in range(settings.steps_per_repeat):
            call()
            _synchronize(device)
        values.append((clock() - start) * 1000.0 / settings.steps_per_repeat)
    return values


def summarise(values: Sequence[float], settings: LatencySettings) -> float:
    """One figure per timing: the median on the wall clock (as :mod:`zoo.bench`); the minimum on the cpu
    clock, whose noise only adds (time slices shared with other jobs refill the caches)."""
    return min(values) if settings.clock == "cpu" else statistics.median(values)


def profile_model(model: Any, x: Any, settings: LatencySettings, device: Any) -> tuple[float, dict[str, float]]:
    """``(total_ms, {kind: ms})`` of an :class:`eradio.ERadio` ``model`` (or a wrapper holding one as
    ``.model``) on ``x``: its end-to-end time and each stage kind's time *inside* the network.

    Plain calls and calls with forward hooks on the stage modules alternate, so both see the same load
    of the machine; each figure is summarised over its own calls (:func:`summarise`). Hooked calls
    never count towards the total.
    """
    network = getattr(model, "model", model)
    clock = time.process_time if settings.clock == "cpu" else time.perf_counter
    modules = [(name, getattr(network, name, None)) for name in MODULE_KINDS]
    modules = [(name, module) for name, module in modules if module is not None]
    started: dict[str, float] = {}
    parts: dict[str, float] = {}

    def before(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any) -> None:
            _synchronize(device)
            started[name] = clock()
        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            _synchronize(device)
            parts[name] = parts.get(name, 0.0) + (clock() - started[name]) * 1000.0
        return hook

    def hooked_call() -> dict[str, float]:
        handles = []
        for name, module in modules:
            handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
        parts.clear()
        try:
            model(x)
        finally:
            for handle in handles:
                handle.remove()
        kinds: dict[str, float] = {}
        for name, ms in parts.items():
            kinds[MODULE_KINDS[name]] = kinds.get(MODULE_KINDS[name], 0.0) + ms
        return kinds

    for _ in range(settings.warmup):
        model(x)
    plain = replace(settings, warmup=0, repeats=1)
    totals: list[float] = []
    samples: dict[str, list[float]] = {}
    for _ in range(settings.repeats):
        totals += time_call(lambda: model(x), plain, device)
        for _ in range(settings.steps_per_repeat if settings.clock == "cpu" else 1):
            for kind, ms in hooked_call().items():
                samples.setdefault(kind, []).append(ms)
    return summarise(totals, settings), {kind: summarise(values, settings) for kind, values in samples.items()}


# --------------------------------------------------------------------------- the table


@dataclass
class Fit:
    """``latency_ms = sum over kinds of kinds[kind] x (the kind's table time) + overhead_ms``.

    ``kinds`` holds one coefficient per stage kind (:data:`KINDS`); ``scale`` is the pooled one, for a
    kind none of the fit ``models`` ran (a neck when no fit model had one).
    """

    scale: float = 1.0
    overhead_ms: float = 0.0
    models: list[dict[str, Any]] = field(default_factory=list)  # {"key", "sum_ms", "measured_ms", "kinds", "context"}
    kinds: dict[str, float] = field(default_factory=dict)

    def coefficient(self, kind: str) -> float:
        return self.kinds.get(kind, self.scale)

    def predict(self, kind_ms: Mapping[str, float] | float) -> float:
        """The latency of a network whose table times per kind are ``kind_ms`` (a plain stage sum: scaled alone)."""
        if isinstance(kind_ms, Mapping):
            stage_sum = sum(kind_ms.values())
            total = sum(self.coefficient(kind) * ms for kind, ms in kind_ms.items()) + self.overhead_ms
        else:
            stage_sum, total = float(kind_ms), self.scale * float(kind_ms) + self.overhead_ms
        # A negative overhead (noise in the fit models' glue) must not drive a small model's latency to zero.
        return max(0.1 * stage_sum, total, 1e-6)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fit":
        return cls(float(data["scale"]), float(data["overhead_ms"]), list(data.get("models") or []),
                   {str(k): float(v) for k, v in (data.get("kinds") or {}).items()})


def fit_kinds(models: Sequence[Mapping[str, Any]]) -> Fit:
    """The :class:`Fit` of profiled models: ``{"measured_ms": end to end, "kinds": {kind: table ms},
    "context": {kind: in-context ms}}`` each.

    Two steps. Each kind's coefficient is the median over the models that run it of (in-context /
    table time): every fit model is an equation per kind, and one model measured while the machine
    was busy moves no median. Then the end-to-end times against the in-context stage sums, taken in
    the same time window (so free of the drift between the table's timing and the fit's):
    ``end to end = alpha x in-context sum + overhead``, what lies between the stages (Python dispatch,
    the wrapper's input checks: a constant) and what a long call pays on a shared CPU (cut by the
    scheduler more often: proportional). That line is fitted on ratios (end to end / in-context sum
    against 1 / in-context sum), so small and large models weigh alike, by Theil-Sen (median of
    pairwise slopes), robust to a contended timing. ``alpha`` multiplies the per-kind coefficients.
    """
    if not models:
        return Fit()
    ratios: dict[str, list[float]] = {}
    pooled = []
    for model in models:
        table, context = model["kinds"], model["context"]
        shared = [kind for kind in table if table[kind] > 0 and context.get(kind, 0.0) > 0]
        for kind in shared:
            ratios.setdefault(kind, []).append(context[kind] / table[kind])
        if shared:
            pooled.append(sum(context[k] for k in shared) / sum(table[k] for k in shared))
    scale = statistics.median(pooled) if pooled else 1.0
    kinds = {kind: statistics.median(values) for kind, values in sorted(ratios.items())}
    alpha, overhead = _theil_sen_ratio([sum(m["context"].values()) for m in models],
                                       [float(m["measured_ms"]) for m in models])
    return Fit(round(alpha * scale, 6), round(overhead, 6), [dict(m) for m in models],
               {kind: round(alpha * value, 6) for kind, value in kinds.items()})


def _theil_sen_ratio(estimates: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """``(alpha, overhead)`` of ``measured = alpha x estimate + overhead``, fitted as ``measured / estimate
    = alpha + overhead x (1 / estimate)`` by Theil-Sen; the overhead is kept >= 0 (a negative one is noise)
    and alpha within [0.5, 2] (else alpha 1 and the median residual)."""
    points = [(1.0 / e, m / e) for e, m in zip(estimates, measured) if e > 0]
    if not points:
        return 1.0, 0.0
    slopes = [(y2 - y1) / (u2 - u1) for i, (u1, y1) in enumerate(points) for u2, y2 in points[i + 1:]
              if abs(u2 - u1) > 1e-12]
    overhead = max(0.0, statistics.median(slopes)) if slopes else 0.0
    alpha = statistics.median(y - overhead * u for u, y in points)
    if not 0.5 <= alpha <= 2.0:
        return 1.0, statistics.median(m - e for e, m in zip(estimates, measured))
    return alpha, overhead


@dataclass
class Validation:
    """Predicted against measured end-to-end latency of held-out models."""

    rows: list[dict[str, Any]]  # {"key", "predicted_ms", "measured_ms", "deviation"}

    @property
    def mape(self) -> float:
        """Mean absolute percentage deviation, in percent."""
        return 100.0 * statistics.fmean(abs(r["deviation"]) for r in self.rows) if self.rows else float("nan")

    @property
    def within(self) -> float:
        """Share of models predicted within +-10 % (0..1)."""
        return sum(abs(r["deviation"]) <= WITHIN for r in self.rows) / len(self.rows) if self.rows else float("nan")

    def line(self) -> str:
        return (f"latency predictor on {len(self.rows)} held-out models: mean absolute deviation {self.mape:.1f}%, "
                f"{100 * self.within:.0f}% within +-{100 * WITHIN:.0f}%")


class LatencyTable:
    """The stage latencies of one environment, their file, and the fitted predictor.

    ``LatencyTable.open(settings, folder)`` loads the environment's file (or starts an empty table);
    :meth:`predict_ms` measures the stages a config needs that are missing, then predicts.
    """

    def __init__(self, settings: LatencySettings, path: Path, entries: dict[str, dict[str, Any]] | None = None,
                 fit: Fit | None = None) -> None:
        self.settings = settings
        self.path = Path(path)
        self.env = environment(settings)
        self.entries: dict[str, dict[str, Any]] = dict(entries or {})
        self.fit = fit
        self.measured_now = 0  # entries this process timed (tests, reports)

    # ------------------------------------------------------------------ file

    @classmethod
    def open(cls, settings: LatencySettings, folder: str | os.PathLike | None = None,
             path: str | os.PathLike | None = None) -> "LatencyTable":
        settings = settings.resolved()
        path = Path(path) if path is not None else table_path(settings, folder)
        table = cls(settings, path)
        table._merge(table._read())
        return table

    def _read(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ZooError(f"latency table {self.path} is unreadable ({type(err).__name__}); delete it to "
                           "measure again") from None
        if isinstance(data, dict) and data.get("kind") == TABLE_KIND and data.get("format") != TABLE_FORMAT:
            raise ZooError(f"latency table {self.path} has format {data.get('format')!r}, this zoo reads format "
                           f"{TABLE_FORMAT}; delete it to measure again")
        if not isinstance(data, dict) or data.get("kind") != TABLE_KIND:
            raise ZooError(f"{self.path} is not a zoo latency table (format {TABLE_FORMAT}); delete it or pick "
                           "another folder")
        if data.get("environment") != self.env:
            theirs, ours = data.get("environment") or {}, self.env
            key = next((k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)), "?")
            raise ZooError(f"latency table {self.path} was measured under another environment ({key}: "
                           f"{theirs.get(key)!r}, here {ours.get(key)!r}); its figures do not apply here")
        return data

    def _merge(self, data: dict[str, Any] | None) -> None:
        """Take the file's entries (first measurement wins: every prediction uses one value per stage)."""
        if not data:
            return
        for key, entry in (data.get("entries") or {}).items():
            self.entries.setdefault(key, entry)
        if data.get("fit") and self.fit is None:
            self.fit = Fit.from_dict(data["fit"])

    def to_dict(self) -> dict[str, Any]:
        from zoo.runs import now_utc
        from zoo.versions import versions

        return {"format": TABLE_FORMAT, "kind": TABLE_KIND, "fingerprint": fingerprint(self.env),
                "environment": self.env, "settings": asdict(self.settings), "updated": now_utc(),
                "versions": versions(), "entries": dict(sorted(self.entries.items())),
                "fit": None if self.fit is None else asdict(self.fit)}

    def save(self) -> Path:
        """Merge with the file as it is now (another worker may have added entries) and write it atomically."""
        from zoo.atomic import atomic_write_json

        with _locked(self.path):
            self._merge(self._read())
            atomic_write_json(self.path, self.to_dict())
        return self.path

    # ------------------------------------------------------------------ entries

    def stages(self, config: Any) -> list[tuple[Stage, int]]:
        return stage_entries(config, self.settings.resolution)

    def missing(self, configs: Iterable[Any]) -> list[Stage]:
        seen: dict[str, Stage] = {}
        for config in configs:
            for stage, _ in self.stages(config):
                if stage.key not in self.entries:
                    seen.setdefault(stage.key, stage)
        return list(seen.values())

    def measure(self, stages: Sequence[Stage], save: bool = True,
                progress: Callable[[int, int], None] | None = None) -> int:
        """Time ``stages`` (those not in the table yet); returns how many were timed."""
        from zoo.runs import now_utc

        todo = [s for s in dict.fromkeys(stages) if s.key not in self.entries]
        if not todo:
            return 0
        with _timing_runtime(self.settings) as device:
            for index, stage in enumerate(todo):
                built = [build_stage(stage, self.settings.resolution, self.settings.batch_size, device)
                         for _ in range(COPIES)]
                calls = [call for _, call in built]

                def round_robin(calls: list = calls) -> None:
                    for call in calls:
                        call()

                values = [v / COPIES for v in time_call(round_robin, self.settings, device)]
                self.entries[stage.key] = {"ms": round(summarise(values, self.settings), 6),
                                           "values": [round(v, 6) for v in values], "created": now_utc()}
                del built, calls, round_robin
                if progress:
                    progress(index + 1, len(todo))
        self.measured_now += len(todo)
        if save:
            self.save()
        return len(todo)

    def kind_ms(self, config: Any, measure: bool = True) -> dict[str, float]:
        """The config's table time per stage kind (measuring missing stages first unless ``measure`` is False)."""
        stages = self.stages(config)
        if measure:
            self.measure([s for s, _ in stages])
        missing = [s.key for s, _ in stages if s.key not in self.entries]
        if missing:
            raise ZooError(f"latency table {self.path} lacks {len(missing)} stage(s), e.g. {missing[0]}")
        kinds: dict[str, float] = {}
        for stage, count in stages:
            kind = KIND_OF.get(stage.kind, stage.kind)
            kinds[kind] = kinds.get(kind, 0.0) + self.entries[stage.key]["ms"] * count
        return kinds

    def stage_sum_ms(self, config: Any, measure: bool = True) -> float:
        """Sum of the config's stage latencies (measuring missing ones first unless ``measure`` is False)."""
        return sum(self.kind_ms(config, measure).values())

    # ------------------------------------------------------------------ prediction

    def predict_ms(self, config: Any) -> float:
        """Predicted end-to-end latency (ms per batch); the plain stage sum until a fit exists."""
        kinds = self.kind_ms(config)
        return self.fit.predict(kinds) if self.fit is not None else sum(kinds.values())

    def predict_throughput(self, config: Any) -> float:
        """Predicted images per second at the table's batch size."""
        return self.settings.batch_size * 1000.0 / self.predict_ms(config)

    def _build_model(self, config: Any, name: str) -> Any:
        from zoo.search.space import Candidate

        return Candidate("eradio", config, self.settings.resolution).build(name=name)  # as the search measures

    def _bench_ms(self, model: Any, name: str) -> float:
        from zoo.bench import bench_model

        result = bench_model(model, self.settings.bench_settings(), name=name, family="eradio")
        if int(result.throughput["batch_size"]) != self.settings.batch_size:
            raise ZooError(f"{name} did not fit at batch {self.settings.batch_size} on {self.settings.device}")
        return self.settings.batch_size * 1000.0 / float(result.throughput["median"])

    def measure_model_ms(self, config: Any, name: str = "model") -> float:
        """End-to-end latency (ms per batch) of the full network as the search builds it: measured with
        :mod:`zoo.bench` on the wall clock, with the table's own timer on the cpu clock."""
        model = self._build_model(config, name)
        if self.settings.clock == "cpu":
            import torch

            with _timing_runtime(self.settings) as device:
                model.to(device).eval()
                x = torch.randn(self.settings.batch_size, 3, self.settings.resolution, self.settings.resolution,
                                device=device)
                return summarise(time_call(lambda: model(x), self.settings, device), self.settings)
        return self._bench_ms(model, name)

    def profile_config(self, config: Any, name: str = "model") -> tuple[float, dict[str, float]]:
        """``(end-to-end ms, {kind: in-context ms})`` of the full network (:func:`profile_model`); on the wall
        clock the end-to-end figure is :mod:`zoo.bench`'s, as :meth:`measure_model_ms`."""
        import torch

        model = self._build_model(config, name)
        with _timing_runtime(self.settings) as device:
            model.to(device).eval()
            x = torch.randn(self.settings.batch_size, 3, self.settings.resolution, self.settings.resolution,
                            device=device)
            total, context = profile_model(model, x, self.settings, device)
        if self.settings.clock != "cpu":
            total = self._bench_ms(model, name)
        return total, context

    def _fit(self, configs: Sequence[Any], keys: Sequence[str] | None) -> Fit:
        self.measure(self.missing(configs), save=False)
        models = []
        for index, config in enumerate(configs):
            key = keys[index] if keys else f"model-{index}"
            kinds = self.kind_ms(config, measure=False)
            measured, context = self.profile_config(config, key)
            models.append({"key": key, "sum_ms": round(sum(kinds.values()), 6), "measured_ms": round(measured, 6),
                           "kinds": {k: round(v, 6) for k, v in kinds.items()},
                           "context": {k: round(v, 6) for k, v in context.items()}})
        return fit_kinds(models)

    def fit_overhead(self, configs: Sequence[Any], keys: Sequence[str] | None = None) -> Fit:
        """Profile ``configs`` (end to end and stage by stage in context) and fit the per-kind coefficients
        and the overhead to them (replacing the table's fit). Give models that span the space's widths."""
        from zoo.atomic import atomic_write_json

        with _locked(self.path):
            self._merge(self._read())
            self.fit = self._fit(configs, keys)
            atomic_write_json(self.path, self.to_dict())
        return self.fit

    def ensure_fit(self, configs: Callable[[], Sequence[Any]], keys: Sequence[str] | None = None) -> Fit:
        """The table's fit; made from ``configs()`` when it has none. Under the table's lock, so workers
        starting together fit once and all predict with the same fit."""
        if self.fit is not None:
            return self.fit
        from zoo.atomic import atomic_write_json

        with _locked(self.path):
            self._merge(self._read())
            if self.fit is None:
                self.fit = self._fit(configs(), keys)
                atomic_write_json(self.path, self.to_dict())
        return self.fit

    def validate(self, configs: Sequence[Any], keys: Sequence[str] | None = None) -> Validation:
        """Predicted vs measured end-to-end latency of ``configs`` (models not used in the fit)."""
        rows = []
        for index, config in enumerate(configs):
            key = keys[index] if keys else f"model-{index}"
            predicted = self.predict_ms(config)
            measured = self.measure_model_ms(config, key)
            rows.append({"key": key, "predicted_ms": round(predicted, 4), "measured_ms": round(measured, 4),
                         "deviation": round((predicted - measured) / measured, 5)})
        return Validation(rows)

    def describe(self) -> dict[str, Any]:
        """What a trial record says about where its predicted throughput came from."""
        return {"path": str(self.path), "fingerprint": fingerprint(self.env), "entries": len(self.entries),
                "fit": None if self.fit is None else {"scale": self.fit.scale, "overhead_ms": self.fit.overhead_ms,
                                                      "kinds": dict(self.fit.kinds), "models": len(self.fit.models)}}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path.lock`` (workers of one machine merging into one table); no-op without fcntl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic replace alone (a racing entry is re-measured later)
        yield
        return
    with open(str(path) + ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the search's speed objective


def predicted_throughput_record(table: LatencyTable, config: Any) -> dict[str, Any]:
    """A ``throughput`` block (as :mod:`zoo.bench` writes one) holding the prediction, marked as such."""
    predicted = table.predict_throughput(config)
    env = table.env
    return {"median": round(predicted, 3), "unit": "img/s", "source": "predicted", "latency_ms": round(
        table.settings.batch_size * 1000.0 / predicted, 4), "device": table.settings.device,
        "device_name": env["device_name"], "threads": env["threads"], "batch_size": table.settings.batch_size,
        "resolution": [table.settings.resolution] * 2, "dtype": table.settings.dtype, "channels_last": False,
        "compile": False, "fuse": False, "latency_table": table.describe()}


def fit_candidates(space: Any, count: int, rng: Any, resolution: int | None = None,
                   exclude: Iterable[str] = (), pool: int = 20) -> list[Any]:
    """``count`` random candidates of ``space`` that span its widths, for a table's fit.

    A handful drawn uniformly often misses the widest or narrowest networks, where stage timings are
    furthest off (weights that no longer stay in the caches; Python dispatch that dominates); drawn
    ``pool`` times as many, sorted by base width, and taken evenly from narrowest to widest, they cover
    the range. ``exclude``: candidate keys not to take (held-out models); ``resolution``: only those.
    """
    if count < 1:
        return []
    skip, found = set(exclude), {}
    for _ in range(pool * count * 10):
        candidate = space.params_to_candidate(space.random_params(rng))
        if candidate.key() in skip or (resolution is not None and candidate.resolution != resolution):
            continue
        found.setdefault(candidate.key(), candidate)
        if len(found) >= pool * count:
            break
    ordered = sorted(found.values(), key=lambda c: (getattr(c.config, "dim", 0), c.key()))
    if len(ordered) <= count:
        return ordered
    return [ordered[round(i * (len(ordered) - 1) / (count - 1))] for i in range(count)] if count > 1 else \
        [ordered[len(ordered) // 2]]


def relative_error(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured if measured else math.inf
