"""The speed/quality Pareto front of distillation runs, benches and search trials.

Reads the records the other commands write (run folders' ``summary.json``,
``runs/bench.jsonl``, a ``zoo search run --out`` folder, Optuna studies),
flattens every numeric field to a dotted metric name, groups records by the
environment their speed was measured in, and marks the non-dominated records
of each group. Figures (PNG via matplotlib, HTML via plotly) and tables are
built from one :class:`Analysis`.

* :mod:`zoo.pareto.records`: the loaders and :class:`Record` / :class:`Env`;
* :mod:`zoo.pareto.metrics`: metric names, labels and which way is better;
* :mod:`zoo.pareto.front`: non-dominated sets, grouping, the bench join, :func:`analyse`;
* :mod:`zoo.pareto.versus`: hand-picked runs against search trials (hypervolumes, dominated backbones);
* :mod:`zoo.pareto.render`: rows, CSV, JSON, PNG and HTML.

The package imports neither torch nor optuna (plotting and study libraries are
imported only when used), so ``zoo pareto`` starts fast.
"""

from zoo.pareto.front import (Analysis, Group, Row, analyse, join_bench_throughput, pareto_front)
from zoo.pareto.metrics import (DEFAULT_X, DEFAULT_Y, METRIC_LABELS, THROUGHPUT, Objective, available_metrics,
                                default_direction, flatten_metrics, format_value, metric_label, parse_objective,
                                resolve_metric)
from zoo.pareto.records import (RECORD_KINDS, RUN_KINDS, UNMEASURED, Env, Record, load_records,
                                load_study_records, normalise_dtype, record_files, record_from_dict)
from zoo.pareto.render import (FRONT_MARK, KIND_STYLES, PREDICTED_MARK, RANDOM_TEACHER_MARK, SURROGATE_MARK, caveats,
                               figure_title, plot_html, plot_png, record_marks, rows_as_dicts, to_csv, to_json,
                               versus_caption)
from zoo.pareto.versus import KindComparison, compare_kinds, hypervolume, hypervolume_2d

__all__ = [
    "Analysis", "Group", "Row", "analyse", "join_bench_throughput", "pareto_front",
    "DEFAULT_X", "DEFAULT_Y", "METRIC_LABELS", "THROUGHPUT", "Objective", "available_metrics", "default_direction",
    "flatten_metrics", "format_value", "metric_label", "parse_objective", "resolve_metric",
    "RECORD_KINDS", "RUN_KINDS", "UNMEASURED", "Env", "Record", "load_records", "load_study_records",
    "normalise_dtype", "record_files", "record_from_dict",
    "FRONT_MARK", "KIND_STYLES", "PREDICTED_MARK", "RANDOM_TEACHER_MARK", "SURROGATE_MARK", "caveats",
    "figure_title", "record_marks", "plot_html", "plot_png", "rows_as_dicts",
    "to_csv", "to_json", "versus_caption",
    "KindComparison", "compare_kinds", "hypervolume", "hypervolume_2d",
]
