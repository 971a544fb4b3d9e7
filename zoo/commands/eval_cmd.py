"""``zoo eval``: quality of distilled students (run folders) and of teachers.

Each evaluation is one small subcommand of :data:`eval_group`; the shared
option sets below (:func:`target_options`, :func:`labelled_options`,
:func:`output_options`) and helpers (:func:`record_result`) keep a new one
short. An evaluation in another module joins with ``eval_group.add_command(...)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click
from rich.table import Table

from zoo.commands.options import RESOLUTION, device_option, teacher_option
from zoo.errors import ConfigError, ZooError
from zoo.evaluations.embedding import EMBED_BATCH_SIZE
from zoo.evaluations.knn import KNN_K, KNN_TEMPERATURE
from zoo.evaluations.labelled import DIGITS_SOURCE, SPLIT_SEED, VAL_FRACTION
from zoo.evaluations.zeroshot import TEMPLATE_SETS
from zoo.ui import console, err_console


@click.group("eval")
def eval_group() -> None:
    """Quality of students (run folders) and teachers: k-NN, zero-shot, segmentation probe.

    \b
    Examples:
      zoo eval knn runs/resnet-18-smoke-... --data sklearn:digits
      zoo eval knn runs/resnet-18-smoke-... --data ~/imagenette --head clip
      zoo eval knn --teacher clip:tiny --teacher dinov2:tiny --data sklearn:digits
      zoo eval zeroshot runs/resnet-18-smoke-... --data sklearn:digits
      zoo eval seg runs/resnet-18-smoke-... --data /data/ade --format ade20k
      zoo eval export-digits digits/
    """


# --------------------------------------------------------------------------- shared options


def _apply(options: Sequence[Callable], fn: Callable) -> Callable:
    for option in reversed(options):
        fn = option(fn)
    return fn


def target_options(fn: Callable) -> Callable:
    """``[RUN]`` (a run folder or id), ``--teacher SPEC`` (repeatable) and ``--device``."""
    return _apply([
        click.argument("run", required=False, metavar="[RUN]"),
        teacher_option("Also score this teacher (repeatable), e.g. --teacher clip:tiny; its own evaluation "
                       "transform (bicubic resize + centre crop, its mean/std) is used."),
        device_option(),
    ], fn)


def labelled_options(fn: Callable) -> Callable:
    """The labelled data set and its split (k-NN, zero-shot)."""
    return _apply([
        click.option("--data", default=DIGITS_SOURCE, show_default=True, metavar="FOLDER|sklearn:digits",
                     help="A folder with one sub-folder per class (or train/ and val/ sub-folders), or "
                          f"{DIGITS_SOURCE} (ships with scikit-learn)."),
        click.option("--val-fraction", default=VAL_FRACTION, show_default=True, type=float,
                     help="Held-out share of a set without train/ and val/ (stratified split)."),
        click.option("--seed", default=SPLIT_SEED, show_default=True, type=int, help="Seed of the split."),
        click.option("--per-class", default=None, type=click.IntRange(min=1), metavar="N",
                     help="Keep at most N images per class in each split (quick checks)."),
        click.option("--resolution", default=None, type=RESOLUTION, metavar="N|HxW",
                     help="Student input size (default: the run's resolution; teachers use their own)."),
        click.option("--batch-size", default=EMBED_BATCH_SIZE, show_default=True, type=click.IntRange(min=1)),
    ], fn)


def output_options(fn: Callable) -> Callable:
    """``--json PATH`` and ``--no-record``."""
    return _apply([
        click.option("--json", "json_path", default=None, type=click.Path(path_type=Path),
                     help="Also write the result as JSON here (a list when several targets are scored)."),
        click.option("--no-record", is_flag=True, help="Do not add the result to the run's summary.json."),
    ], fn)


# --------------------------------------------------------------------------- shared helpers


def check_targets(run: str | None, teacher_specs: Sequence[str], head: str | None = None) -> None:
    """At least one target; ``--head`` only with a run; every teacher spec parses (before any work)."""
    from zoo.teachers import parse_teacher_spec

    if run is None and not teacher_specs:
        raise ConfigError("give a RUN, one or more --teacher SPEC, or both")
    if head is not None and run is None:
        raise ConfigError("--head applies to a run's student, not to --teacher")
    for spec in teacher_specs:
        parse_teacher_spec(spec)


def open_record(run: str):
    """``(run folder, record)`` of ``run`` without loading the model (fails fast on a bad folder or record)."""
    from zoo.runs import open_run

    opened = open_run(run)
    return opened.root, opened.record


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """One task of the shared progress bar; yields ``advance(n)``."""
    from zoo.progress import progress_bar

    with progress_bar(transient=True) as bar:
        task = bar.add_task(description, total=total, info="")
        yield lambda n: bar.update(task, advance=n)


def write_json(path: Path | None, results: Sequence[dict[str, Any]]) -> None:
    if path is not None:
        from zoo.atomic import atomic_write_json

        atomic_write_json(path, results[0] if len(results) == 1 else list(results))
        err_console.print(f"wrote {path}", highlight=False)


def record_result(run_dir: Path, metrics: dict[str, float], evaluation: dict[str, Any]) -> None:
    """Add ``metrics`` and one ``evaluations`` entry to the run's summary.json (atomic)."""
    from zoo.runs import SUMMARY_FILE, update_record

    update_record(run_dir, metrics, evaluation)
    err_console.print(f"added {', '.join(metrics)} to {run_dir / SUMMARY_FILE}", highlight=False)


def random_note(random: bool) -> None:
    if random:
        err_console.print("[yellow]note:[/yellow] random (untrained) teacher involved: "
                          "these numbers test the machinery, not a model", highlight=False)


@dataclass
class Target:
    """One thing to score: a run's student (through a head or not) or a teacher."""

    who: str
    embedder: Callable
    view: Any  # zoo.evaluations.embedding.ImageView
    random: bool
    teacher: Any = None  # the built teacher (teacher targets; the run's CLIP teacher for zero-shot)
    spec: str | None = None


def student_target(run_dir: Path, device: Any, resolution: tuple[int, int] | None, head: str | None):
    """``(loaded run, target)``: the run's student at ``resolution`` (default: its own)."""
    from zoo.evaluations.embedding import StudentView, student_embedder
    from zoo.loading import load_run

    loaded = load_run(run_dir, device)
    if head is not None:
        loaded.check_head(head)
    size_hw = tuple(resolution) if resolution else loaded.resolution
    loaded.backbone.check_resolution(*size_hw)
    who = f"{loaded.record.backbone} ({'head ' + head if head else 'backbone'} summary)"
    return loaded, Target(who, student_embedder(loaded, head, size_hw), StudentView(size_hw),
                          bool(loaded.record.random_teacher))


def teacher_target(spec: str, device: Any) -> Target:
    from zoo.evaluations.embedding import teacher_embedder, teacher_view
    from zoo.teachers import build_teacher

    teacher = build_teacher(spec, device)  # local files first; the hub only when it answers
    return Target(f"teacher {spec}", teacher_embedder(teacher), teacher_view(teacher), teacher.is_random, teacher, spec)


def _result_table(title: str, results: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("target", "top-1", "top-5", "dataset", "classes", "train", "val", "resolution", "settings"):
        table.add_column(column, justify="right" if column.startswith("top") else "left")
    for result in results:
        settings = (f"k={result['k']} T={result['temperature']:g}" if "k" in result
                    else f"{result['templates']} templates")
        table.add_row(str(result["target"]), f"{result['top1']:.4f}", f"{result['top5']:.4f}", str(result["dataset"]),
                      str(result["classes"]), str(result["train_images"]), str(result["val_images"]),
                      "x".join(str(v) for v in result["resolution"]), settings)
    return table


def _settings(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("top1", "top5", "dataset", "split", "classes", "train_images", "val_images", "resolution", "transform",
            "k", "temperature", "templates")
    return {key: result[key] for key in keys if key in result}


# --------------------------------------------------------------------------- k-NN


@eval_group.command("knn")
@target_options
@labelled_options
@output_options
@click.option("--head", default=None, metavar="NAME",
              help="Embed with this teacher head's summary (e.g. clip) instead of the backbone's summary.")
@click.option("-k", "--k", "k", default=KNN_K, show_default=True, type=click.IntRange(min=1),
              help="Neighbours that vote.")
@click.option("--temperature", default=KNN_TEMPERATURE, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Vote weight exp(similarity / T).")
def knn_command(run: str | None, teacher_specs: tuple[str, ...], device: str, data: str, val_fraction: float,
                seed: int, per_class: int | None, resolution: tuple[int, int] | None, batch_size: int,
                json_path: Path | None, no_record: bool, head: str | None, k: int, temperature: float) -> None:
    """Weighted k-NN top-1/top-5 (DINO's protocol) of a run's student and/or of teachers.

    \b
    Examples:
      zoo eval knn runs/resnet-18-smoke-... --data sklearn:digits
      zoo eval knn runs/resnet-18-smoke-... --data ~/imagenette --head clip
      zoo eval knn --teacher clip:tiny --teacher dinov2:tiny --data sklearn:digits
      zoo eval knn runs/<run-id> --data '/data/val-{00..07}.tar'    # labelled shards (cls)
    """
    from zoo.devices import resolve_device
    from zoo.evaluations.knn import evaluate_knn
    from zoo.evaluations.labelled import load_labelled
    from zoo.loading import teacher_info

    check_targets(run, teacher_specs, head)
    run_dir = None
    if run is not None:
        run_dir, record = open_record(run)
        if head is not None:
            teacher_info(record, head)  # a typo fails before anything heavy
    labelled = load_labelled(data, val_fraction, seed, per_class)
    dev = resolve_device(device)
    results = []

    def score(target: Target) -> dict[str, Any]:
        with progress(f"k-NN {target.who}", len(labelled.train) + len(labelled.val)) as advance:
            result = evaluate_knn(labelled, target.embedder, target.view, k, temperature, batch_size, advance)
        result.update(target=target.who, head=head if target.spec is None else None, teacher=target.spec,
                      random_teacher=target.random)
        return result

    if run_dir is not None:
        _, target = student_target(run_dir, dev, resolution, head)
        results.append(score(target))
    for spec in teacher_specs:
        results.append(score(teacher_target(spec, dev)))  # one teacher in memory at a time
    console.print(_result_table("k-NN", results))
    random_note(any(r["random_teacher"] for r in results))
    write_json(json_path, results)
    if run_dir is not None and not no_record:
        prefix = "knn" if head is None else f"knn_{head}"  # knn_top1 is always the backbone's own summary
        record_result(run_dir, {f"{prefix}_top1": results[0]["top1"], f"{prefix}_top5": results[0]["top5"]},
                      {"kind": "knn", "head": head or "backbone", **_settings(results[0])})


# --------------------------------------------------------------------------- zero-shot


@eval_group.command("zeroshot")
@target_options
@labelled_options
@output_options
@click.option("--classes", default=None, metavar="NAMES|FILE",
              help="Class names for the prompts: comma-separated or a file, one per line "
                   "(default: folder names; digits: zero..nine).")
@click.option("--templates", default="simple", show_default=True, type=click.Choice(TEMPLATE_SETS),
              help="Prompt templates: 'a photo of a {}.' + open_clip's simple set, open_clip's 80, or one.")
@click.option("--head", default=None, metavar="NAME", help="The CLIP head to use (default: the run's CLIP teacher).")
def zeroshot_command(run: str | None, teacher_specs: tuple[str, ...], device: str, data: str, val_fraction: float,
                     seed: int, per_class: int | None, resolution: tuple[int, int] | None, batch_size: int,
                     json_path: Path | None, no_record: bool, classes: str | None, templates: str,
                     head: str | None) -> None:
    """Zero-shot top-1/top-5 through the CLIP text tower, for a run's CLIP head and/or CLIP teachers.

    \b
    Examples:
      zoo eval zeroshot runs/resnet-18-smoke-... --data sklearn:digits
      zoo eval zeroshot runs/<run-id> --data ~/imagenette --templates openai
      zoo eval zeroshot --teacher clip:tiny --data sklearn:digits
    """
    from zoo.devices import resolve_device
    from zoo.evaluations.labelled import load_labelled, parse_class_names
    from zoo.evaluations.zeroshot import clip_head_name, evaluate_zeroshot, zeroshot_templates
    from zoo.loading import build_run_teacher
    from zoo.teachers import parse_teacher_spec

    check_targets(run, teacher_specs)
    for spec in teacher_specs:
        if parse_teacher_spec(spec).kind != "clip":
            raise ConfigError(f"zero-shot needs a CLIP teacher (clip:...), got '{spec}'")
    run_dir = None
    if run is not None:
        run_dir, record = open_record(run)
        head = clip_head_name(record.teachers, head, record.run_id)  # fail before loading anything heavy
    labelled = load_labelled(data, val_fraction, seed, per_class)
    names = parse_class_names(classes, labelled.class_names, len(labelled.classes))
    prompts = zeroshot_templates(templates)
    dev = resolve_device(device)
    results = []

    def score(target: Target, clip: Any) -> dict[str, Any]:
        with progress(f"zero-shot {target.who}", len(labelled.val)) as advance:
            result = evaluate_zeroshot(labelled, target.embedder, clip, target.view, names, prompts, batch_size,
                                       advance)
        result.update(target=target.who, head=head if target.spec is None else None, teacher=target.spec,
                      template_set=templates, random_teacher=target.random)
        return result

    if run_dir is not None:
        loaded, target = student_target(run_dir, dev, resolution, head)
        results.append(score(target, build_run_teacher(loaded.record, head, dev)))
    for spec in teacher_specs:
        target = teacher_target(spec, dev)
        results.append(score(target, target.teacher))
    console.print(_result_table("zero-shot", results))
    random_note(any(r["random_teacher"] for r in results))
    write_json(json_path, results)
    if run_dir is not None and not no_record:
        record_result(run_dir, {"zeroshot_top1": results[0]["top1"], "zeroshot_top5": results[0]["top5"]},
                      {"kind": "zeroshot", "head": head, "template_set": templates, **_settings(results[0])})


# --------------------------------------------------------------------------- data


@eval_group.command("export-digits")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--val-fraction", default=VAL_FRACTION, show_default=True, type=float)
@click.option("--seed", default=SPLIT_SEED, show_default=True, type=int)
@click.option("--size", default=32, show_default=True, type=click.IntRange(min=8), help="Side of each PNG.")
def export_digits_command(folder: Path, val_fraction: float, seed: int, size: int) -> None:
    """Write scikit-learn's digits as FOLDER/train/<digit>/*.png and FOLDER/val/<digit>/*.png."""
    from zoo.evaluations.labelled import export_digits

    if folder.exists() and any(folder.iterdir()):
        raise ZooError(f"{folder} is not empty; choose a new folder")
    counts = export_digits(folder, val_fraction, seed, size)
    console.print(f"wrote {counts['train']} train and {counts['val']} val images to {folder}", highlight=False)


# The segmentation probe lives in its own module (zoo/commands/eval_seg_cmd.py).
from zoo.commands.eval_seg_cmd import seg_command  # noqa: E402

eval_group.add_command(seg_command)
