"""``zoo pareto``: the speed/quality Pareto front of runs, benches and search trials."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from zoo.atomic import atomic_write_bytes, atomic_write_text
from zoo.commands.options import RESOLUTION
from zoo.errors import ConfigError, ZooError
from zoo.pareto import (DEFAULT_X, DEFAULT_Y, FRONT_MARK, RANDOM_TEACHER_MARK, THROUGHPUT, Analysis, Group,
                        analyse, format_value, load_records, load_study_records, metric_label, parse_objective,
                        plot_html, plot_png, to_csv, to_json)
from zoo.pareto.render import PREDICTED_MARK, SURROGATE_MARK, caveats, kind_style, record_marks
from zoo.runs import DEFAULT_OUT as DEFAULT_RUNS_DIR
from zoo.ui import console, err_console

# Extra columns shown when some record has them and they are not objectives already.
EXTRA_COLUMNS = ("params_m", "gmacs", "knn_top1", "zeroshot_top1")


# Messages carry user text (labels, paths): escaped, so "[" in a run name is not rich markup.
def _note(message: str) -> None:
    err_console.print(f"[dim]note:[/dim] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def _group_table(group: Group, analysis: Analysis, total: int) -> Table:
    objectives = analysis.objectives
    ranked = group.ranked
    title = group.describe()
    if total > 1:
        title = f"[{group.index}/{total}] {title}"
    title += f" — {len(group.front)} of {len(ranked)} on the front"
    caption = "\n".join([" · ".join(f"{o.label} {o.arrow} {o.better}" for o in objectives), *caveats(group)])
    table = Table(title=Text(title), title_justify="left", caption=Text(caption), caption_justify="left")
    table.add_column(FRONT_MARK, justify="center")
    table.add_column("model")
    table.add_column("kind")
    for o in objectives:
        table.add_column(Text(f"{o.label} {o.arrow}"), justify="right")
    speed_shown = any(o.name == THROUGHPUT for o in objectives)
    if speed_shown:
        table.add_column("min–max img/s", justify="right")
    extras = [name for name in EXTRA_COLUMNS if name not in {o.name for o in objectives}
              and any(name in row.record.metrics for row in ranked)]
    if not speed_shown and any(THROUGHPUT in row.record.metrics for row in ranked):
        extras.insert(0, THROUGHPUT)
    for name in extras:
        table.add_column(Text(metric_label(name)), justify="right")
    table.add_column("run / source")
    table.add_column("note")
    for row in ranked:
        r = row.record
        notes = []
        if r.random_teacher:
            notes.append(f"{RANDOM_TEACHER_MARK} random teacher")
        if r.fd_loss_surrogate:
            notes.append(f"{SURROGATE_MARK} surrogate FD loss (dry run)")
        if r.throughput_predicted:
            notes.append(f"{PREDICTED_MARK} predicted speed")
        if r.status and r.status.lower() not in ("done", "complete", "completed", "ok", "success", "finished"):
            notes.append(f"status: {r.status}")
        if r.throughput_source != "record":
            notes.append(f"speed from {r.throughput_source.rsplit('/', 1)[-1]}")
        kind = r.kind if len(group.kinds) <= 1 else f"{kind_style(r.kind).glyph} {r.kind}"
        cells = [FRONT_MARK if row.on_front else "", row.label + record_marks(r), kind]
        cells += [format_value(v) for v in row.values]
        if speed_shown:
            low, high = r.metric("throughput.min"), r.metric("throughput.max")
            cells.append("" if math.isnan(low) or math.isnan(high) else f"{low:,.0f}–{high:,.0f}")
        cells += [format_value(r.metric(name)) for name in extras]
        cells += [r.run_id or r.source, "; ".join(notes)]
        table.add_row(*(Text(cell) for cell in cells), style="bold" if row.on_front else None)
    return table


def _print_versus(group: Group, total: int) -> None:
    """Under a table holding both kinds: the three hypervolumes and the hand-picked backbones a trial dominates."""
    versus = group.versus
    if versus is None:
        return
    where = f"[{group.index}] " if total > 1 else ""
    lines = [f"{where}hypervolume of the fronts: {versus.summary()}",
             f"  {versus.reference}"]
    if versus.dominated:
        lines.append(f"{where}hand-picked backbones dominated by a searched configuration:")
        for d in versus.dominated:
            by = [t.label + record_marks(t.record) for t in d.by]
            shown = ", ".join(by[:3]) + (f" and {len(by) - 3} more" if len(by) > 3 else "")
            lines.append(f"  {d.row.label} by {shown}")
    else:
        lines.append(f"{where}no hand-picked backbone is dominated by a searched configuration")
    if group.surrogate_points:
        lines.append(f"{where}{SURROGATE_MARK} these compare dry-run surrogate FD losses with distillations: "
                     "they say nothing about quality")
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _objectives(records, x, y, x_dir, y_dir, objective_specs):
    if objective_specs:
        if x is not None or y is not None or x_dir or y_dir:
            raise ConfigError("use either --objective (repeatable) or --x/--y, not both")
        return [parse_objective(spec, records) for spec in objective_specs]
    return [parse_objective(x or DEFAULT_X, records, x_dir), parse_objective(y or DEFAULT_Y, records, y_dir)]


@click.command("pareto")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--x", "x", default=None, metavar="METRIC",
              help=f"Metric on the x axis (default {DEFAULT_X}, i.e. throughput.median).")
@click.option("--y", "y", default=None, metavar="METRIC", help=f"Metric on the y axis (default {DEFAULT_Y}).")
@click.option("--x-dir", type=click.Choice(["max", "min"]), default=None,
              help="Whether higher x is better (default per metric: speed/accuracy max, losses/size min).")
@click.option("--y-dir", type=click.Choice(["max", "min"]), default=None, help="Whether higher y is better.")
@click.option("--objective", "objective_specs", multiple=True, metavar="NAME[:max|min]",
              help="An objective; repeat for more than two (table, CSV and JSON only).")
@click.option("--group-by", type=click.Choice(["env", "none"]), default="env", show_default=True,
              help="One front per measurement environment (device, resolution, dtype, batch), "
                   "or 'none' to mix environments on purpose.")
@click.option("--env", "env_index", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the N-th environment group as listed (largest first).")
@click.option("--device", default=None,
              help="Only throughput measured on this device: cpu, cuda, cuda:N, or part of its name (e.g. A100).")
@click.option("--resolution", type=RESOLUTION, default=None,
              help="Only throughput measured at this resolution (224 or 224x320).")
@click.option("--dtype", default=None, help="Only throughput measured in this dtype (fp32, fp16, bf16).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Only throughput measured at this batch.")
@click.option("--throughput-from", type=click.Choice(["record", "bench"]), default="record", show_default=True,
              help="'bench': take each distill run's throughput from the bench records of the same backbone "
                   "at the run's resolution (one row per bench environment; runs with no bench are left out).")
@click.option("--study", "study_url", default=None, metavar="URL",
              help="Also read the complete trials of an Optuna study (storage URL, e.g. sqlite:///search.db).")
@click.option("--study-name", default=None, help="The study in --study (optional when it holds one).")
@click.option("--skip-invalid", is_flag=True, help="Skip (and report) invalid records instead of stopping.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write all rows as CSV.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write all rows as JSON.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG plot (one panel per environment).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained interactive HTML plot (works offline).")
@click.option("--title", default=None, help="Title of the plots.")
def pareto_command(paths, x, y, x_dir, y_dir, objective_specs, group_by, env_index, device, resolution, dtype,
                   batch_size, throughput_from, study_url, study_name, skip_invalid, csv_path, json_path,
                   png_path, html_path, title) -> None:
    """The speed/quality Pareto front of distillation runs, benches and
    search trials: a table per measurement environment (front members ★,
    fastest first), and optionally CSV, JSON, PNG and HTML.

    PATHS are run folders, folders of runs (searched recursively), the
    --out folder of a `zoo search`, summary.json files or bench .jsonl files
    (default: runs/). Throughputs measured on different devices,
    resolutions, dtypes or batch sizes are never compared: each environment
    gets its own front. Search trials given beside hand-picked runs share
    their environment's front, drawn with their own marker (▲ trials,
    ● runs); trials that violate the search's constraints are left out.
    Such a group also reports the hypervolume of the hand-picked front, the
    searched front and both together (objectives normalised over the group,
    log throughput), and which hand-picked backbones a trial dominates
    (also in --json, and in the plots' panel titles). Figures that are not
    measurements are marked in tables, files and plots: § the surrogate FD
    loss of `zoo search run --dry-run` trials, ≈ a predicted throughput not
    measured since, † a random teacher.

    \b
    Examples:
      zoo pareto                                   # runs/, throughput vs FD loss
      zoo pareto runs/ --png front.png --html front.html
      zoo pareto search-out/                       # the trials of a zoo search run --out folder
      zoo pareto runs/ search-out/ --png both.png  # hand-picked runs beside the trials
      zoo pareto runs/ --throughput-from bench     # speeds from runs/bench.jsonl
      zoo pareto runs/ --y knn_top1                # any numeric field, direction by name
      zoo pareto runs/ --y miou_ade20k             # higher is better: knn_, zeroshot_, miou, pixel_acc
      zoo pareto runs/ --y dinov2/features --x gmacs
      zoo pareto runs/ --objective throughput --objective fd_loss --objective params_m:min
      zoo pareto runs/ --device cuda --batch-size 128 --csv front.csv
      zoo pareto --study sqlite:///search.db --study-name eradio
    """
    if study_name and not study_url:
        raise ConfigError("--study-name needs --study URL")
    if png_path or html_path:
        if objective_specs and len(objective_specs) != 2:
            raise ConfigError(f"--png/--html plot exactly two objectives; got {len(objective_specs)} --objective")
    records = []
    if paths or not study_url:
        if not paths and not Path(DEFAULT_RUNS_DIR).exists():
            raise ZooError(f"no {DEFAULT_RUNS_DIR}/ folder here: pass run folders, a search --out folder or "
                           "bench .jsonl files (written by `zoo distill`, `zoo search` and `zoo bench`)")
        records += load_records(list(paths) or [DEFAULT_RUNS_DIR], skip_invalid=skip_invalid, warn=_warn)
    if study_url:
        records += load_study_records(study_url, study_name, skip_invalid=skip_invalid, warn=_warn)
    objectives = _objectives(records, x, y, x_dir, y_dir, objective_specs)
    analysis = analyse(records, objectives, group_by=group_by, env_index=env_index, device=device,
                       resolution=resolution, dtype=dtype, batch_size=batch_size,
                       throughput_from=throughput_from, warn=_warn)
    # Build every file before writing any, so a plotting error leaves nothing half-done.
    outputs: list[tuple[str, bytes | str]] = []
    if csv_path:
        outputs.append((csv_path, to_csv(analysis)))
    if json_path:
        outputs.append((json_path, to_json(analysis)))
    if png_path:
        outputs.append((png_path, plot_png(analysis, title)))
    if html_path:
        outputs.append((html_path, plot_html(analysis, title)))

    for group in analysis.groups:
        if group.ranked:
            console.print(_group_table(group, analysis, len(analysis.groups)))
            _print_versus(group, len(analysis.groups))
        else:
            console.print(f"[{group.index}/{len(analysis.groups)}] {group.describe()}: no record has every "
                          f"objective ({', '.join(o.name for o in objectives)})", highlight=False, markup=False)
        for note in group.notes:
            _note(f"[{group.index}] {note}" if len(analysis.groups) > 1 else note)
    if analysis.random_teacher:
        _note(f"{RANDOM_TEACHER_MARK} distilled from a random teacher: losses measure the pipeline, not quality")
    if analysis.surrogate_points:
        _note(f"{caveats(analysis)[0]}: `zoo search run --dry-run` tests the search machinery, its losses rank nothing")
    if analysis.predicted_points:
        _note(f"{caveats(analysis)[-1]} (zoo search run measures the front's predicted trials when it ends)")
    for note in analysis.notes:
        _note(note)
    if not any(group.ranked for group in analysis.groups):
        raise ZooError(f"no record has every objective ({', '.join(o.name for o in objectives)})")
    # Each file is written whole or not at all (zoo.atomic); a full disk stops here with one line
    # (DiskFullError: path, bytes needed), files written before it stay as written.
    for path, content in outputs:
        if isinstance(content, str):
            atomic_write_text(path, content)
        else:
            atomic_write_bytes(path, content)
        err_console.print(f"wrote {path}", highlight=False, markup=False)
