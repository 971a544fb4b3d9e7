"""``zoo eval seg``: linear-probe semantic segmentation (mIoU) of a run's frozen student or of a teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from zoo.commands.options import device_option
from zoo.errors import ConfigError
from zoo.ui import console, err_console

SEG_DIR = "seg"  # inside a run folder: seg/<dataset>-<crop>/head.pt (resumable probe heads)


@click.command("seg")
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--teacher", "teacher_spec", default=None, metavar="SPEC",
              help="Probe this teacher instead of a run (e.g. dinov2:vit_small_patch14_dinov2, clip:tiny).")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="The data set's root folder.")
@click.option("--format", "fmt", type=click.Choice(["ade20k", "voc", "folder"]), default="folder", show_default=True,
              help="ade20k (ADEChallengeData2016), voc (VOC2012) or folder (images/, masks/, classes.txt).")
@click.option("--crop", default=None, type=click.IntRange(min=1), metavar="N",
              help="Training/evaluation crop; the backbone's valid size nearest to it is used.  [default: 512]")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Head training steps  [default: 160000 for ade20k/voc, 300 for a folder]")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="  [default: 16]")
@click.option("--lr", default=None, type=float, help="AdamW base learning rate  [default: 1e-3]")
@click.option("--augment/--no-augment", default=None,
              help="Random rescale/crop/flip (default: on for ade20k/voc). Off: features are computed once.")
@click.option("--max-train", default=None, type=click.IntRange(min=1), metavar="N", help="Use the first N train images.")
@click.option("--max-val", default=None, type=click.IntRange(min=1), metavar="N", help="Use the first N val images.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--restart", is_flag=True, help="Train a new head even if a checkpoint of this probe exists.")
@device_option()
@click.option("--json", "json_path", default=None, type=click.Path(path_type=Path), help="Also write the result here.")
@click.option("--no-record", is_flag=True, help="Do not add the result to the run's summary.json.")
def seg_command(run_dir: Path | None, teacher_spec: str | None, data_path: Path, fmt: str, crop: int | None,
                steps: int | None, batch_size: int | None, lr: float | None, augment: bool | None,
                max_train: int | None, max_val: int | None, seed: int, restart: bool, device: str,
                json_path: Path | None, no_record: bool) -> None:
    """Linear-probe segmentation mIoU on frozen features (the paper's Section 5.3).

    A BatchNorm + 1x1-conv head is trained on the frozen spatial features (AdamW, LR 1e-3, batch 16,
    crop 512, 160k steps for ADE20k/VOC) and evaluated with "slide" inference (stride 2/3 of the crop).
    The result goes into the run's record as miou_<dataset> / pixel_acc_<dataset>, so
    `zoo pareto --y miou_ade20k` draws the dense-quality front. The head checkpoints as it trains
    (RUN/seg/<dataset>-<crop>/head.pt) and resumes when run again.

    \b
    Examples:
      zoo eval seg runs/eradio-b-table7-... --data /data/ade --format ade20k
      zoo eval seg runs/resnet-18-smoke-... --data shapes/ --steps 300 --crop 128
      zoo eval seg --teacher dinov2:vit_small_patch14_dinov2 --data /data/VOCdevkit --format voc
    """
    from zoo.evaluations.seg import SegSettings

    if (run_dir is None) == (teacher_spec is None):
        raise ConfigError("give either a RUN_DIR or --teacher SPEC (exactly one)")
    values = {"crop": crop, "steps": steps, "batch_size": batch_size, "lr": lr, "augment": augment,
              "max_train": max_train, "max_val": max_val, "seed": seed}
    settings = SegSettings(**{k: v for k, v in values.items() if v is not None})
    settings.check()
    result = run_seg(run_dir, teacher_spec, data_path, fmt, settings, device, restart, record=not no_record)
    console.print(_table(result))
    if json_path is not None:
        from zoo.atomic import atomic_write_json

        atomic_write_json(json_path, result)
        err_console.print(f"wrote {json_path}", highlight=False)


def run_seg(run_dir: Path | None, teacher_spec: str | None, data_path: Path, fmt: str, settings: Any, device: str,
            restart: bool = False, record: bool = True, progress: bool = True) -> dict[str, Any]:
    """Probe a run's student (result added to its record unless ``record`` is false) or a teacher."""
    import shutil

    from zoo.devices import inference_autocast, resolve_device
    from zoo.evaluations.seg import SegProbe, metric_names, resolve_settings
    from zoo.evaluations.seg_data import load_seg_dataset
    from zoo.progress import progress_bar

    data = load_seg_dataset(data_path, fmt)
    torch_device = resolve_device(device)
    if teacher_spec is not None:
        features, dim, crop, target, random = _teacher_features(teacher_spec, settings.crop, torch_device)
        checkpoint_dir = None
    else:
        features, dim, crop, target, random, run_root = _student_features(run_dir, settings.crop, torch_device)
        checkpoint_dir = run_root / SEG_DIR / f"{metric_names(data.name)[0][5:]}-{crop}"
        if restart and checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir)
    from dataclasses import replace

    settings = resolve_settings(replace(settings, crop=crop), data)

    def run_features(images):
        with inference_autocast(torch_device):
            return features(images)

    bar = progress_bar(progress, info=False)
    tasks: dict[str, Any] = {}
    with bar:
        def advance(kind: str, n: int) -> None:
            if kind not in tasks:
                totals = {"features": len(data.train) if not settings.max_train else settings.max_train,
                          "train": int(settings.steps), "eval": len(data.val) if not settings.max_val
                          else min(settings.max_val, len(data.val))}
                tasks[kind] = bar.add_task(f"seg {kind}", total=totals[kind])
            bar.update(tasks[kind], advance=n)

        probe = SegProbe(run_features, dim, data, settings, torch_device, checkpoint_dir, advance)
        result = probe.run()
    miou_key, acc_key = metric_names(data.name)
    out = {"target": target, "random_teacher": random, miou_key: result.miou, acc_key: result.pixel_acc,
           **result.to_dict()}
    if random:
        err_console.print("[yellow]note:[/yellow] random (untrained) teacher involved: these numbers test the "
                          "machinery, not a model", highlight=False)
    if record and run_dir is not None:
        from zoo.runs import update_record

        evaluation = {"kind": "seg", "data": str(data_path), "format": fmt, "dataset": data.describe(),
                      "settings": result.settings, "miou": result.miou, "pixel_acc": result.pixel_acc,
                      "macc": result.macc, "per_class_iou": result.per_class_iou, "steps": result.steps,
                      "feature_cache": result.feature_cache, "seconds": result.seconds}
        update_record(run_root, {miou_key: result.miou, acc_key: result.pixel_acc}, evaluation)
        err_console.print(f"added {miou_key}, {acc_key} to {run_root / 'summary.json'}", highlight=False)
    return out


def _student_features(run_dir: Path, crop: int, device: Any):
    """``(feature fn, dim, crop, target label, random teacher, run folder)`` of a run's frozen student."""
    from zoo.evaluations.seg import nearest_valid_crop
    from zoo.loading import load_run

    run = load_run(run_dir, device)
    backbone = run.backbone
    rule = backbone.size_rule
    crop = nearest_valid_crop(crop, rule.multiple, rule.minimum, rule.maximum)
    backbone.check_resolution(crop, crop)
    backbone.requires_grad_(False)

    def features(images):
        return backbone(run.preprocess(images, tuple(images.shape[-2:]))).features

    return (features, backbone.feature_dim, crop, f"student {run.record.backbone}", run.record.random_teacher,
            run.run_dir)


def _teacher_features(spec: str, crop: int, device: Any):
    """``(feature fn, dim, crop, target label, random)`` of a frozen teacher at the crop (its patch's multiple)."""
    from zoo.evaluations.seg import nearest_valid_crop
    from zoo.teachers import build_teacher

    teacher = build_teacher(spec, device)  # local files first; the hub only when it answers
    if "@" not in spec:  # run the teacher at the probe's crop, as the paper does (518 for DINOv2 /14)
        crop = nearest_valid_crop(crop, teacher.patch_size, teacher.patch_size)
        if tuple(teacher.resolution) != (crop, crop):
            teacher = build_teacher(f"{spec}@{crop}", device)
    else:
        crop = int(teacher.resolution[0])

    def features(images):
        return teacher(images).features

    return features, int(teacher.feature_dim), crop, f"teacher {spec}", bool(teacher.is_random)


def _table(result: dict[str, Any]) -> Table:
    table = Table(title=f"segmentation probe: {result['target']}", title_justify="left")
    for column in ("mIoU", "pixel acc", "mAcc", "dataset", "classes", "train", "val", "crop", "steps", "cached"):
        table.add_column(column)
    data, settings = result["dataset"], result["settings"]
    table.add_row(f"{result['miou']:.4f}", f"{result['pixel_acc']:.4f}", f"{result['macc']:.4f}", data["name"],
                  str(data["classes"]), str(data["train_images"]), str(data["val_images"]), str(settings["crop"]),
                  str(result["steps"]), "yes" if result["feature_cache"] else "no")
    return table
