"""``zoo eval``: k-NN and zero-shot classification of distilled students and of teachers."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import click
from rich.table import Table

from zoo.errors import ConfigError, ZooError
from zoo.evaluate import (DIGITS_SOURCE, EMBED_BATCH_SIZE, KNN_K, KNN_TEMPERATURE, SPLIT_SEED, VAL_FRACTION,
                          clip_head_name)
from zoo.ui import console, err_console

TEMPLATE_SETS = ("simple", "openai", "photo")


@click.group("eval")
def eval_group() -> None:
    """k-NN and zero-shot classification of students (run folders) and teachers.

    \b
    Examples:
      zoo eval knn runs/resnet-18-smoke-... --data sklearn:digits
      zoo eval knn runs/resnet-18-smoke-... --data ~/imagenette --head clip
      zoo eval knn --teacher clip:tiny --data sklearn:digits
      zoo eval zeroshot runs/resnet-18-smoke-... --data sklearn:digits
      zoo eval export-digits digits/
    """


def _common(fn: Callable) -> Callable:
    options = [
        click.argument("run_dir", required=False, type=click.Path(path_type=Path)),
        click.option("--teacher", "teacher_spec", default=None, metavar="SPEC",
                     help="Score this teacher instead of a run (e.g. clip:tiny, dinov2:vit_small_patch14_dinov2)."),
        click.option("--data", default=DIGITS_SOURCE, show_default=True, metavar="FOLDER|sklearn:digits",
                     help="A folder with one sub-folder per class (or train/ and val/ sub-folders), or "
                          f"{DIGITS_SOURCE} (ships with scikit-learn)."),
        click.option("--val-fraction", default=VAL_FRACTION, show_default=True, type=float,
                     help="Held-out share of a set without train/ and val/ (stratified split)."),
        click.option("--seed", default=SPLIT_SEED, show_default=True, type=int, help="Seed of the split."),
        click.option("--per-class", default=None, type=click.IntRange(min=1), metavar="N",
                     help="Keep at most N images per class in each split (quick checks)."),
        click.option("--resolution", default=None, metavar="N|HxW",
                     help="Student input size (default: the run's resolution)."),
        click.option("--batch-size", default=EMBED_BATCH_SIZE, show_default=True, type=click.IntRange(min=1)),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--json", "json_path", default=None, type=click.Path(path_type=Path),
                     help="Also write the result as JSON here."),
        click.option("--no-record", is_flag=True, help="Do not add the result to the run's summary.json."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _check_target(run_dir: Path | None, teacher_spec: str | None) -> None:
    if (run_dir is None) == (teacher_spec is None):
        raise ConfigError("give either a RUN_DIR or --teacher SPEC (exactly one)")


@contextlib.contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.update(task, advance=n)


def _result_table(title: str, result: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("top-1", "top-5", "dataset", "classes", "train", "val", "resolution", "settings"):
        table.add_column(column, justify="right" if column.startswith("top") else "left")
    settings = (f"k={result['k']} T={result['temperature']:g}" if "k" in result
                else f"{result['templates']} templates")
    table.add_row(f"{result['top1']:.4f}", f"{result['top5']:.4f}", str(result["dataset"]), str(result["classes"]),
                  str(result["train_images"]), str(result["val_images"]),
                  "x".join(str(v) for v in result["resolution"]), settings)
    return table


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        from zoo.atomic import atomic_write_json

        atomic_write_json(path, result)
        err_console.print(f"wrote {path}", highlight=False)


def _student(run_dir: Path, device_spec: str, resolution: str | None, head: str | None):
    """``(loaded run, embedder, input size, device)``."""
    from zoo.backbone import as_hw
    from zoo.evaluate import check_head, open_run, resolve_device, student_embedder

    device = resolve_device(device_spec)
    run = open_run(run_dir, device)
    check_head(run.record, head)
    size_hw = as_hw(resolution) if resolution else as_hw(run.record["resolution"])
    run.backbone.check_resolution(*size_hw)
    return run, student_embedder(run.backbone, run.heads, head, size_hw, device), size_hw, device


def _teacher(spec: str, device_spec: str):
    from zoo.evaluate import resolve_device, teacher_embedder
    from zoo.teachers import build_teacher

    teacher = build_teacher(spec, resolve_device(device_spec), offline=True)
    return teacher, teacher_embedder(teacher), tuple(teacher.resolution)


def _random_note(random: bool) -> None:
    if random:
        err_console.print("[yellow]note:[/yellow] random (untrained) teacher involved: "
                          "these numbers test the machinery, not a model", highlight=False)


@eval_group.command("knn")
@_common
@click.option("--head", default=None, metavar="NAME",
              help="Embed with this teacher head's summary (e.g. clip) instead of the backbone's summary.")
@click.option("-k", "--k", "k", default=KNN_K, show_default=True, type=click.IntRange(min=1),
              help="Neighbours that vote.")
@click.option("--temperature", default=KNN_TEMPERATURE, show_default=True, type=float,
              help="Vote weight exp(similarity / T).")
def knn_command(run_dir: Path | None, teacher_spec: str | None, data: str, val_fraction: float, seed: int,
                per_class: int | None, resolution: str | None, batch_size: int, device: str, json_path: Path | None,
                no_record: bool, head: str | None, k: int, temperature: float) -> None:
    """Weighted k-NN top-1/top-5 (DINO's protocol) of a run's student or of a teacher."""
    from zoo.evaluate import evaluate_knn, load_labelled, update_record

    _check_target(run_dir, teacher_spec)
    if teacher_spec is not None and head is not None:
        raise ConfigError("--head applies to a run's student, not to --teacher")
    labelled = load_labelled(data, val_fraction, seed, per_class)
    if run_dir is not None:
        run, embedder, size_hw, _ = _student(run_dir, device, resolution, head)
        who, random = f"{run.record.get('backbone')} ({head or 'backbone'} summary)", run.record.get("random_teacher")
    else:
        teacher, embedder, size_hw = _teacher(teacher_spec, device)
        who, random = f"teacher {teacher_spec}", teacher.is_random
    with _progress(f"k-NN {who}", len(labelled.train) + len(labelled.val)) as advance:
        result = evaluate_knn(labelled, embedder, size_hw, k, temperature, batch_size, advance)
    result.update(target=who, head=head, teacher=teacher_spec)
    console.print(_result_table(f"k-NN: {who}", result))
    _random_note(bool(random))
    _write_json(json_path, result)
    if run_dir is not None and not no_record:
        prefix = "knn" if head is None else f"knn_{head}"  # knn_top1 is always the backbone's own summary
        update_record(run_dir, {f"{prefix}_top1": result["top1"], f"{prefix}_top5": result["top5"]},
                      {"kind": "knn", "head": head or "backbone", **_settings(result)})
        err_console.print(f"added {prefix}_top1/{prefix}_top5 to {run_dir / 'summary.json'}", highlight=False)


@eval_group.command("zeroshot")
@_common
@click.option("--classes", default=None, metavar="NAMES|FILE",
              help="Class names for the prompts: comma-separated or a file, one per line "
                   "(default: folder names; digits: zero..nine).")
@click.option("--templates", default="simple", show_default=True, type=click.Choice(TEMPLATE_SETS),
              help="Prompt templates: 'a photo of a {}.' + open_clip's simple set, open_clip's 80, or one.")
@click.option("--head", default=None, metavar="NAME", help="The CLIP head to use (default: the run's CLIP teacher).")
def zeroshot_command(run_dir: Path | None, teacher_spec: str | None, data: str, val_fraction: float, seed: int,
                     per_class: int | None, resolution: str | None, batch_size: int, device: str,
                     json_path: Path | None, no_record: bool, classes: str | None, templates: str,
                     head: str | None) -> None:
    """Zero-shot top-1/top-5 through the CLIP text tower, for a run's CLIP head or a CLIP teacher."""
    from zoo.evaluate import (build_run_teacher, evaluate_zeroshot, load_labelled, parse_class_names,
                              read_record, update_record, zeroshot_templates)

    _check_target(run_dir, teacher_spec)
    if run_dir is not None:
        head = clip_head_name(read_record(run_dir), head)  # fail before loading anything heavy
    elif head is not None:
        raise ConfigError("--head applies to a run's student, not to --teacher")
    labelled = load_labelled(data, val_fraction, seed, per_class)
    names = parse_class_names(classes, labelled.class_names, len(labelled.classes))
    if run_dir is not None:
        run, embedder, size_hw, dev = _student(run_dir, device, resolution, head)
        clip = build_run_teacher(run.record, head, dev)
        who, random = f"{run.record.get('backbone')} (head {head})", run.record.get("random_teacher")
    else:
        clip, embedder, size_hw = _teacher(teacher_spec, device)
        if clip.kind != "clip":
            raise ConfigError(f"zero-shot needs a CLIP teacher (clip:...), got '{teacher_spec}'")
        who, random = f"teacher {teacher_spec}", clip.is_random
    with _progress(f"zero-shot {who}", len(labelled.val)) as advance:
        result = evaluate_zeroshot(labelled, embedder, clip, size_hw, names, zeroshot_templates(templates),
                                   batch_size, advance)
    result.update(target=who, head=head, teacher=teacher_spec, template_set=templates)
    console.print(_result_table(f"zero-shot: {who}", result))
    _random_note(bool(random))
    _write_json(json_path, result)
    if run_dir is not None and not no_record:
        update_record(run_dir, {"zeroshot_top1": result["top1"], "zeroshot_top5": result["top5"]},
                      {"kind": "zeroshot", "head": head, "template_set": templates, **_settings(result)})
        err_console.print(f"added zeroshot_top1/zeroshot_top5 to {run_dir / 'summary.json'}", highlight=False)


def _settings(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("top1", "top5", "dataset", "split", "classes", "train_images", "val_images", "resolution", "k",
            "temperature", "templates")
    return {key: result[key] for key in keys if key in result}


@eval_group.command("export-digits")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--val-fraction", default=VAL_FRACTION, show_default=True, type=float)
@click.option("--seed", default=SPLIT_SEED, show_default=True, type=int)
@click.option("--size", default=32, show_default=True, type=click.IntRange(min=8), help="Side of each PNG.")
def export_digits_command(folder: Path, val_fraction: float, seed: int, size: int) -> None:
    """Write scikit-learn's digits as FOLDER/train/<digit>/*.png and FOLDER/val/<digit>/*.png."""
    from zoo.evaluate import export_digits

    if folder.exists() and any(folder.iterdir()):
        raise ZooError(f"{folder} is not empty; choose a new folder")
    counts = export_digits(folder, val_fraction, seed, size)
    console.print(f"wrote {counts['train']} train and {counts['val']} val images to {folder}", highlight=False)
