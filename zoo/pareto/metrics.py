"""Metric names and directions: the dotted names records are flattened to, their labels, and which way is better.

Every numeric leaf of a record is a metric under its dotted path
(``throughput.median``, ``losses.dinov2/features``, ``knn_top1``). Whether
higher is better follows the name, so ``zoo pareto --y miou_ade20k`` or
``--y fd_loss_train`` needs no ``--y-dir``:

* lower is better: anything with ``loss`` in it; names starting with
  ``latency``, ``params``, ``gmacs``, ``flops``, ``peak_memory``/``memory``,
  ``wall_time``;
* higher is better: names starting with ``throughput``, ``knn_``,
  ``zeroshot_``/``zero_shot``, ``miou``, ``pixel_acc``, ``top1``/``top5``,
  ``accuracy``.

The first and last parts of a dotted name are checked (``throughput.median``
is a throughput, ``evaluations.seg.miou`` an mIoU); a metric matching no rule
must be given a direction (``NAME:max``, ``--y-dir``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from zoo.errors import ConfigError, unknown_name

THROUGHPUT = "throughput.median"
DEFAULT_X = "throughput"
DEFAULT_Y = "fd_loss"
# Short names for metrics that live under a prefix.
METRIC_ALIASES = {"throughput": THROUGHPUT}
# Direction rules (see the module docs). Losses are checked first: "knn_loss" is a loss.
MINIMIZE_SUBSTRINGS = ("loss",)
MINIMIZE_PREFIXES = ("latency", "params", "gmacs", "flops", "peak_memory", "memory", "wall_time")
MAXIMIZE_PREFIXES = ("throughput", "knn_", "zeroshot_", "zero_shot", "miou", "pixel_acc", "top1", "top5",
                     "accuracy")
METRIC_LABELS = {
    THROUGHPUT: "throughput (img/s, median)",
    "fd_loss": "FD loss (DINOv2 features, held-out)",
    "fd_loss_train": "FD loss (DINOv2 features, training)",
    "params_m": "params (M)",
    "gmacs": "GMACs",
    "knn_top1": "k-NN top-1",
    "zeroshot_top1": "zero-shot top-1",
    "miou_ade20k": "ADE20k mIoU",
    "miou_voc": "VOC mIoU",
    "peak_memory_mb": "peak memory (MB)",
    "throughput.latency_p50": "latency p50 (ms, batch 1)",
    "throughput.latency_p90": "latency p90 (ms, batch 1)",
    "throughput.latency_p99": "latency p99 (ms, batch 1)",
}
# Top-level fields whose numbers are not metrics (fvcore's per-op skip counts, versions, the layout's version).
NOT_METRICS = ("flops_skipped", "versions", "schema_version")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten_metrics(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of ``data`` under a dotted name (``throughput.median``, ``losses.dinov2/features``).

    Booleans, strings, lists and nulls are not metrics; ``None`` simply leaves
    the metric missing for that record.
    """
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, prefix=f"{name}."))
        elif _is_number(value):
            out[name] = float(value)
    return out


def available_metrics(records: Iterable[Any]) -> list[str]:
    """Every metric name some record has (dotted names plus the ``throughput`` short name)."""
    names: set[str] = set()
    for record in records:
        names.update(record.metrics)
    names.update(alias for alias, target in METRIC_ALIASES.items() if target in names)
    return sorted(names)


def resolve_metric(name: str, records: Sequence[Any]) -> str:
    """The canonical metric name for ``name``; an unknown name raises with the closest names.

    Accepts the exact dotted name, an alias (``throughput``), or an unambiguous
    last part after a dot (``dinov2/features`` for ``losses.dinov2/features``).
    """
    names = available_metrics(records)
    name = name.strip()
    if name in METRIC_ALIASES and METRIC_ALIASES[name] in names:
        return METRIC_ALIASES[name]
    if name in names and name not in METRIC_ALIASES:
        return name
    suffix = [n for n in names if n.endswith(f".{name}")]
    if len(suffix) == 1:
        return suffix[0]
    if len(suffix) > 1:
        raise ConfigError(f"metric '{name}' is ambiguous: {', '.join(suffix)}")
    raise unknown_name("metric", name, names)


def default_direction(metric: str) -> str:
    """``'max'`` or ``'min'`` by the metric's name (module docs); raises for a name no rule covers."""
    lower = metric.lower()
    if any(part in lower for part in MINIMIZE_SUBSTRINGS):
        return "min"
    parts = lower.split(".")
    ends = {parts[0], parts[-1]}
    if any(end.startswith(MINIMIZE_PREFIXES) for end in ends):
        return "min"
    if any(end.startswith(MAXIMIZE_PREFIXES) for end in ends):
        return "max"
    raise ConfigError(f"no default direction for metric '{metric}': say whether higher is better "
                      "(--x-dir/--y-dir max|min, or --objective NAME:max)")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def short_label(metric: str) -> str:
    """The label without its parenthesised detail (``FD loss``), for titles."""
    return metric_label(metric).split(" (")[0]


@dataclass(frozen=True)
class Objective:
    name: str  # canonical metric name
    direction: str  # "max" | "min"

    @property
    def maximize(self) -> bool:
        return self.direction == "max"

    @property
    def label(self) -> str:
        return metric_label(self.name)

    @property
    def arrow(self) -> str:
        return "↑" if self.maximize else "↓"

    @property
    def better(self) -> str:
        """``higher is better`` or ``lower is better``: said next to every axis and table."""
        return "higher is better" if self.maximize else "lower is better"


def parse_objective(spec: str, records: Sequence[Any], direction: str | None = None) -> Objective:
    """An :class:`Objective` from ``NAME`` or ``NAME:max|min`` (default direction per metric)."""
    name, sep, tail = spec.rpartition(":")
    if sep and tail.strip().lower() in ("max", "min"):
        direction = direction or tail.strip().lower()
    else:
        name = spec
    if not name.strip():
        raise ConfigError(f"empty metric name in objective {spec!r}")
    metric = resolve_metric(name, records)
    if direction is not None and direction not in ("max", "min"):
        raise ConfigError(f"direction must be 'max' or 'min', got {direction!r}")
    return Objective(metric, direction or default_direction(metric))


def format_value(value: float) -> str:
    """A metric value for tables and hover text: ``—`` when missing, thousands separated above 1000."""
    if math.isnan(value):
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"
