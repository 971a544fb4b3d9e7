"""Renderers of an :class:`~zoo.pareto.front.Analysis`: row dicts, CSV, JSON, a matplotlib PNG, a plotly HTML page.

User text (backbone labels, run ids, ``--title``, device names, metric names)
is drawn as plain text: matplotlib's mathtext never parses it
(``parse_math=False`` on every text artist, so ``$\\frac{1`` is shown, not
parsed) and the HTML page escapes it and never typesets math. When a group
holds several kinds of records (distillation runs beside search trials),
each kind gets its own marker and colour in the legend; the front is drawn
over all of them. Figures that are not measurements of the model are marked
everywhere (label mark, table note, row field, legend entry, caption line):
a dry-run search trial's surrogate FD loss (§) and a throughput predicted
from a latency table (≈), as distillations from random teachers are (†).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from html import escape
from typing import Any, Iterable, Sequence

from zoo.errors import ConfigError, ZooError
from zoo.pareto.front import Analysis, Group, Row
from zoo.pareto.metrics import THROUGHPUT, Objective, format_value, metric_label, short_label
from zoo.pareto.records import KIND_BENCH, KIND_SEARCH_TRIAL, Record
from zoo.pareto.versus import log_axis

FRONT_MARK = "★"
RANDOM_TEACHER_MARK = "†"
SURROGATE_MARK = "§"  # FD loss from `zoo search run --dry-run`'s surrogate, not a distillation
PREDICTED_MARK = "≈"  # throughput predicted from a latency table, not measured
LABEL_ALL_UP_TO = 40  # points per panel; above this, only labels that fit are drawn (plus the front's)
HOVER_METRICS = (THROUGHPUT, "fd_loss", "params_m", "gmacs", "knn_top1", "zeroshot_top1")


@dataclass(frozen=True)
class KindStyle:
    """How one kind of record is drawn when kinds share a panel."""

    name: str  # legend text
    marker: str  # matplotlib
    symbol: str  # plotly
    color: str  # matplotlib colour; plotly takes the same CSS name after "tab:"
    glyph: str  # the marker's shape in the table


KIND_STYLES = {
    "distill": KindStyle("runs", "o", "circle", "tab:blue", "●"),
    KIND_SEARCH_TRIAL: KindStyle("search trials", "^", "triangle-up", "tab:orange", "▲"),
    KIND_BENCH: KindStyle("bench", "s", "square", "tab:green", "■"),
}
OTHER_KIND = KindStyle("other", "D", "diamond", "tab:purple", "◆")


def kind_style(kind: str) -> KindStyle:
    return KIND_STYLES.get(kind, OTHER_KIND)


@dataclass(frozen=True)
class CaveatStyle:
    """The ring drawn around points whose figure is not a measurement, and its legend entry."""

    legend: str
    marker: str  # matplotlib (drawn hollow)
    symbol: str  # plotly
    color: str  # matplotlib colour; plotly takes the same CSS name after "tab:"
    size: int


SURROGATE_STYLE = CaveatStyle(f"{SURROGATE_MARK} FD loss: dry-run surrogate", "o", "circle-open", "tab:purple", 16)
PREDICTED_STYLE = CaveatStyle(f"{PREDICTED_MARK} throughput: predicted", "s", "square-open", "tab:brown", 19)


def record_marks(record: Record) -> str:
    """``†`` random teacher, ``§`` surrogate FD loss, ``≈`` predicted throughput: appended to the record's label."""
    return ((RANDOM_TEACHER_MARK if record.random_teacher else "") + (SURROGATE_MARK if record.fd_loss_surrogate else "")
            + (PREDICTED_MARK if record.throughput_predicted else ""))


def point_label(row: Row) -> str:
    return row.label + record_marks(row.record)


def _points(n: int) -> str:
    return f"{n} point{'s' if n != 1 else ''}"


def caveats(analysis: Analysis | Group) -> list[str]:
    """Caption lines for figures that are not measurements (an analysis's, or one group's, ranked rows)."""
    lines = []
    if analysis.surrogate_points:
        lines.append(f"{SURROGATE_MARK} FD loss of {_points(analysis.surrogate_points)} is the dry-run surrogate, "
                     "not a distillation")
    if analysis.predicted_points:
        lines.append(f"{PREDICTED_MARK} throughput of {_points(analysis.predicted_points)} is predicted from a "
                     "latency table, not measured")
    return lines


def _caveat_series(group: Group) -> list[tuple[list[Row], CaveatStyle]]:
    rows = group.ranked
    series = [([r for r in rows if r.record.fd_loss_surrogate], SURROGATE_STYLE),
              ([r for r in rows if r.record.throughput_predicted], PREDICTED_STYLE)]
    return [(part, style) for part, style in series if part]


# --------------------------------------------------------------------------- data


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def rows_as_dicts(analysis: Analysis) -> list[dict[str, Any]]:
    """One flat dict per row: identity, group, environment, objectives, ``on_front`` and all metrics."""
    out = []
    for group in analysis.groups:
        for row in group.rows:
            r = row.record
            out.append({
                "group": group.index, "label": row.label, "backbone": r.backbone, "family": r.family,
                "kind": r.kind, "run_id": r.run_id, "trial_number": r.trial_number, "source": r.source,
                "on_front": row.on_front, "missing": list(row.missing), "random_teacher": r.random_teacher,
                "fd_loss_surrogate": r.fd_loss_surrogate, "throughput_predicted": r.throughput_predicted,
                "status": r.status, "throughput_source": r.throughput_source, "env": r.env.to_dict(),
                "objectives": {o.name: _json_number(v) for o, v in zip(analysis.objectives, row.values)},
                "metrics": {k: _json_number(v) for k, v in sorted(r.metrics.items())},
            })
    return out


def to_json(analysis: Analysis) -> str:
    payload = {
        "objectives": [{"name": o.name, "direction": o.direction, "better": o.better} for o in analysis.objectives],
        "throughput_from": analysis.throughput_from,
        "groups": [{"group": g.index, "environment": g.describe(), "envs": [e.to_dict() for e in g.envs],
                    "kinds": g.kinds, "front": [row.label for row in g.front], "notes": g.notes,
                    "surrogate_points": g.surrogate_points, "predicted_points": g.predicted_points,
                    **(g.versus.to_dict() if g.versus is not None else {})}
                   for g in analysis.groups],
        "notes": analysis.notes,
        "caveats": caveats(analysis),
        "rows": rows_as_dicts(analysis),
    }
    return json.dumps(payload, indent=2) + "\n"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def to_csv(analysis: Analysis) -> str:
    """CSV with one column per identity field, environment field, objective and metric."""
    rows = rows_as_dicts(analysis)
    metric_names = sorted({name for row in rows for name in row["metrics"]})
    head = ["group", "on_front", "label", "backbone", "family", "kind", "run_id", "trial_number", "random_teacher",
            "fd_loss_surrogate", "throughput_predicted", "status", "device", "device_name", "resolution", "dtype", "batch_size", "compile", "threads",
            "throughput_source", "missing", "source"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head + metric_names)
    for row in rows:
        env = row["env"]
        identity = {**row, **env, "resolution": "x".join(map(str, env["resolution"])) if env["resolution"] else "",
                    "missing": " ".join(row["missing"])}
        writer.writerow([_csv_cell(identity[name]) for name in head]
                        + [_csv_cell(row["metrics"].get(name)) for name in metric_names])
    return buffer.getvalue()


# --------------------------------------------------------------------------- shared by the figures


def figure_title(analysis: Analysis, title: str | None = None) -> str:
    x, y = analysis.objectives[:2]
    text = title or f"Pareto front: {short_label(y.name)} vs {short_label(x.name)}"
    if analysis.random_teacher:
        text += " (random teacher)"
    return text


def axis_title(objective: Objective) -> str:
    """``FD loss (...) ↓ lower is better``: every axis says which way is better."""
    return f"{objective.label} {objective.arrow} {objective.better}"


def _front_line(rows: Sequence[Row], objectives: Sequence[Objective]) -> tuple[list[float], list[float], str]:
    """The front as a step line: x, y and matplotlib's ``where`` ('pre' when x is maximised).

    Sorted by x, the best y attainable on (x_{i-1}, x_i] is y_i when x is
    maximised (a point dominates everything slower), on [x_i, x_{i+1}) when
    it is minimised.
    """
    front = sorted((row for row in rows if row.on_front), key=lambda row: (row.values[0], row.values[1]))
    return [r.values[0] for r in front], [r.values[1] for r in front], "pre" if objectives[0].maximize else "post"


def _use_log(objective: Objective, values: Iterable[float]) -> bool:
    # One rule for the axis and the hypervolume's normalisation (zoo.pareto.versus).
    return log_axis(objective, values)


def versus_caption(group: Group) -> str | None:
    """``hypervolume: hand-picked 0.81 · searched 0.835 · combined 0.8975``, for groups holding both kinds."""
    return None if group.versus is None else f"hypervolume: {group.versus.summary()}"


def _require_2d(analysis: Analysis, what: str) -> None:
    if len(analysis.objectives) != 2:
        raise ConfigError(f"{what} plots exactly two objectives; got {len(analysis.objectives)} "
                          "(use the table, --csv or --json for more)")
    if not any(group.ranked for group in analysis.groups):
        raise ZooError(f"nothing to plot: no record has both {analysis.objectives[0].name} "
                       f"and {analysis.objectives[1].name}")


def _series(group: Group) -> list[tuple[list[Row], bool, str, KindStyle | None]]:
    """The point sets of a panel: (rows, on the front?, legend name, style of their kind or None).

    One kind: grey dominated points and red front stars. Several kinds: one
    marker and colour per kind, front members larger with a black edge.
    """
    rows = group.ranked
    kinds = group.kinds
    if len(kinds) <= 1:
        return [([r for r in rows if not r.on_front], False, "dominated", None),
                ([r for r in rows if r.on_front], True, "Pareto front", None)]
    out = []
    for kind in kinds:
        style = kind_style(kind)
        for on_front in (False, True):
            part = [r for r in rows if r.record.kind == kind and r.on_front == on_front]
            if part:
                out.append((part, on_front, style.name + (" (on the front)" if on_front else ""), style))
    return out


# --------------------------------------------------------------------------- PNG (matplotlib)


def _log_axis(axis, set_scale) -> None:
    """Log scale with plain numbers at 1-2-5 steps (1000, 2000, 5000), as throughput tables read."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(NullFormatter())


def _box_around(point, radius: float):
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(point[0] - radius, point[1] - radius, point[0] + radius, point[1] + radius)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


LABEL_OFFSETS = [((6, 4), "left", "bottom"), ((6, -4), "left", "top"), ((-6, 4), "right", "bottom"),
                 ((-6, -4), "right", "top"), ((0, 8), "center", "bottom"), ((0, -8), "center", "top"),
                 ((10, 0), "left", "center"), ((-10, 0), "right", "center"), ((14, 14), "left", "bottom"),
                 ((-14, -14), "right", "top"), ((14, -14), "left", "top"), ((-14, 14), "right", "bottom")]


def _place_labels(ax, rows: Sequence[Row], renderer) -> int:
    """Label the points, trying offsets around each so labels avoid each other, the markers and the legend.

    Every point is labelled up to ``LABEL_ALL_UP_TO`` points per panel; in a
    more crowded panel (a search study) a dominated point whose label cannot
    be placed without overlap stays unlabelled. Returns how many were left out.
    """
    axes_box = ax.get_window_extent(renderer)
    points = [ax.transData.transform((row.values[0], row.values[1])) for row in rows]
    taken = [_box_around(p, 4) for p in points]  # the markers themselves
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    crowded = len(rows) > LABEL_ALL_UP_TO
    omitted = 0
    # Front members first: their labels get the best spots.
    for row in sorted(rows, key=lambda row: not row.on_front):
        best = None
        for offset, ha, va in LABEL_OFFSETS:
            ann = ax.annotate(point_label(row), (row.values[0], row.values[1]), xytext=offset,
                              textcoords="offset points", ha=ha, va=va, fontsize=8,
                              fontweight="bold" if row.on_front else "normal",
                              color="black" if row.on_front else "0.35", parse_math=False)
            ann.set_in_layout(False)
            box = ann.get_window_extent(renderer)
            cost = sum(_overlap(box, other) for other in taken)
            cost += box.width * box.height - _overlap(box, axes_box)  # outside the axes
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        if crowded and best[0] > 0 and not row.on_front:
            best[1].remove()
            omitted += 1
            continue
        taken.append(best[2])
    return omitted


def _scatter_png(ax, group: Group) -> None:
    for rows, on_front, name, style in _series(group):
        if not rows:
            continue
        xs, ys = [r.values[0] for r in rows], [r.values[1] for r in rows]
        if style is None:  # one kind: today's grey points and red stars
            if on_front:
                ax.scatter(xs, ys, s=90, marker="*", color="tab:red", edgecolor="black", linewidth=0.5,
                           label=name, zorder=3)
            else:
                ax.scatter(xs, ys, s=28, color="0.6", label=name, zorder=2)
        elif on_front:
            ax.scatter(xs, ys, s=80, marker=style.marker, color=style.color, edgecolor="black", linewidth=1.0,
                       label=name, zorder=3)
        else:
            ax.scatter(xs, ys, s=28, marker=style.marker, color=style.color, alpha=0.45, label=name, zorder=2)
    for rows, caveat in _caveat_series(group):
        ax.scatter([r.values[0] for r in rows], [r.values[1] for r in rows], s=caveat.size ** 2, marker=caveat.marker,
                   facecolors="none", edgecolors=caveat.color, linewidths=1.2, label=caveat.legend, zorder=4)


def plot_png(analysis: Analysis, title: str | None = None, dpi: int = 150) -> bytes:
    """A PNG of every group's points and front (one panel per environment), as bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    _require_2d(analysis, "--png")
    x, y = analysis.objectives
    groups = [g for g in analysis.groups if g.ranked]
    cols = min(len(groups), 2)
    nrows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(7.5 * cols, 5.5 * nrows), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for ax, group in zip(axes, groups):
        rows = group.ranked
        if _use_log(x, (r.values[0] for r in rows)):
            _log_axis(ax.xaxis, ax.set_xscale)
        if _use_log(y, (r.values[1] for r in rows)):
            _log_axis(ax.yaxis, ax.set_yscale)
        _scatter_png(ax, group)
        fx, fy, where = _front_line(rows, analysis.objectives)
        if len(fx) > 1:
            ax.step(fx, fy, where=where, color="tab:red", linewidth=1.2, alpha=0.7, zorder=1)
        ax.set_xlabel(axis_title(x), parse_math=False)
        ax.set_ylabel(axis_title(y), parse_math=False)
        ax.grid(True, which="both", alpha=0.25)
        ax.margins(0.12)
        panel = group.describe()
        if len(groups) > 1:
            panel = f"[{group.index}] {panel}"
        if group.random_teacher and len(groups) > 1:
            panel += f"  {RANDOM_TEACHER_MARK} random teacher"
        if versus_caption(group):
            panel += "\n" + versus_caption(group)
        ax.set_title(panel, fontsize=9, parse_math=False)
        legend = ax.legend(loc="best", fontsize=8)
        for text in legend.get_texts():
            text.set_parse_math(False)
    fig.suptitle(figure_title(analysis, title), fontsize=11, parse_math=False)
    if caveats(analysis):  # under the panels, one line per kind of unmeasured figure
        fig.supxlabel("\n".join(caveats(analysis)), fontsize=8, color="0.25", parse_math=False)
    canvas.draw()  # final layout before measuring label boxes
    fig.set_layout_engine("none")  # freeze it: labels must not move the axes they were placed on
    renderer = canvas.get_renderer()
    for ax, group in zip(axes, groups):
        omitted = _place_labels(ax, group.ranked, renderer)
        if omitted:
            ax.text(0.01, 0.01, f"{omitted} crowded labels omitted (see --html or the table)", fontsize=7,
                    color="0.4", transform=ax.transAxes, ha="left", va="bottom", parse_math=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


# --------------------------------------------------------------------------- HTML (plotly)


def _hover_text(row: Row, analysis: Analysis) -> str:
    r = row.record
    lines = [f"<b>{escape(row.label)}</b>{' ' + FRONT_MARK if row.on_front else ''}"]
    if row.label != r.backbone:
        lines.append(f"backbone: {escape(r.backbone)}")
    lines.append(f"kind: {escape(r.kind)}" + (f" · run {escape(r.run_id)}" if r.run_id else ""))
    for o, v in zip(analysis.objectives, row.values):
        lines.append(f"{escape(o.label)}: {format_value(v)} ({o.better})")
    for name in HOVER_METRICS:
        if name in r.metrics and name not in (o.name for o in analysis.objectives):
            lines.append(f"{escape(metric_label(name))}: {format_value(r.metrics[name])}")
    lines.append(f"env: {escape(r.env.describe())}")
    if r.throughput_source != "record":
        lines.append(f"throughput from {escape(r.throughput_source)}")
    if r.random_teacher:
        lines.append("random teacher")
    if r.fd_loss_surrogate:
        lines.append(f"{SURROGATE_MARK} FD loss: the dry-run surrogate, not a distillation")
    if r.throughput_predicted:
        lines.append(f"{PREDICTED_MARK} throughput: predicted from a latency table, not measured")
    return "<br>".join(lines)


def _plotly_marker(on_front: bool, style: KindStyle | None) -> dict[str, Any]:
    if style is None:
        return dict(size=14 if on_front else 8, symbol="star" if on_front else "circle",
                    color="crimson" if on_front else "gray", line=dict(width=0.5, color="black"))
    color = style.color.removeprefix("tab:")
    return dict(size=13 if on_front else 8, symbol=style.symbol, color=color, opacity=1.0 if on_front else 0.5,
                line=dict(width=1.5 if on_front else 0, color="black"))


def plot_html(analysis: Analysis, title: str | None = None) -> str:
    """A self-contained interactive plotly page (plotly.js inline, works offline)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _require_2d(analysis, "--html")
    x, y = analysis.objectives
    groups = [g for g in analysis.groups if g.ranked]
    titles = [escape(f"[{g.index}] {g.describe()}" if len(groups) > 1 else g.describe())
              + (f"<br>{escape(versus_caption(g))}" if versus_caption(g) else "") for g in groups]
    fig = make_subplots(rows=len(groups), cols=1, subplot_titles=titles, vertical_spacing=0.12 / max(1, len(groups)))
    for i, group in enumerate(groups, start=1):
        rows = group.ranked
        for part, on_front, name, style in _series(group):
            if not part:
                continue
            fig.add_trace(go.Scatter(
                x=[r.values[0] for r in part], y=[r.values[1] for r in part], mode="markers+text",
                text=[escape(point_label(r)) if on_front or len(rows) <= LABEL_ALL_UP_TO else "" for r in part],
                textposition="top center", hovertext=[_hover_text(r, analysis) for r in part],
                hoverinfo="text", name=f"{name} [{group.index}]", marker=_plotly_marker(on_front, style),
            ), row=i, col=1)
        for part, caveat in _caveat_series(group):
            fig.add_trace(go.Scatter(
                x=[r.values[0] for r in part], y=[r.values[1] for r in part], mode="markers", hoverinfo="skip",
                name=f"{caveat.legend} [{group.index}]",
                marker=dict(symbol=caveat.symbol, size=caveat.size + 4, color=caveat.color.removeprefix("tab:"),
                            line=dict(width=1.5)),
            ), row=i, col=1)
        fx, fy, where = _front_line(rows, analysis.objectives)
        if len(fx) > 1:
            fig.add_trace(go.Scatter(x=fx, y=fy, mode="lines", line_shape="vh" if where == "pre" else "hv",
                                     line=dict(color="crimson", width=1.5), hoverinfo="skip",
                                     name=f"front line [{group.index}]", showlegend=False), row=i, col=1)
        fig.update_xaxes(title_text=escape(axis_title(x)), row=i, col=1,
                         type="log" if _use_log(x, (r.values[0] for r in rows)) else "linear")
        fig.update_yaxes(title_text=escape(axis_title(y)), row=i, col=1,
                         type="log" if _use_log(y, (r.values[1] for r in rows)) else "linear")
    lines = caveats(analysis)
    heading = escape(figure_title(analysis, title)) + "".join(f"<br><sup>{escape(line)}</sup>" for line in lines)
    fig.update_layout(title=heading, height=480 * len(groups) + 80 + 20 * len(lines), template="plotly_white",
                      margin=dict(t=100 + 20 * len(lines)))
    # typesetMath off: a "$...$" in a label stays text even on a page that loads MathJax.
    return fig.to_html(include_plotlyjs=True, full_html=True, config={"typesetMath": False})
