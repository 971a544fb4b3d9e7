"""``zoo distill``: train backbones against CLIP + DINOv2 teachers under one recipe."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import click
from rich.table import Table

from zoo.commands.options import recipe_options
from zoo.errors import ConfigError


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def _table(records: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="zoo distill", title_justify="left")
    for name, justify in [("backbone", "left"), ("steps", "right"), ("train loss first → last", "right"),
                          ("FD loss", "right"), ("img/s", "right"), ("params (M)", "right"), ("GMACs", "right"),
                          ("wall (s)", "right"), ("run", "left")]:
        table.add_column(name, justify=justify)
    for r in records:
        tp = r.get("throughput") or {}
        table.add_row(
            r["backbone"] + (" (interrupted)" if r["status"] != "complete" else ""), str(r["steps"]),
            f"{_fmt(r['train_loss_first'])} → {_fmt(r['train_loss_last'])}", _fmt(r["fd_loss"]),
            _fmt(tp.get("median"), ".1f"), _fmt(r["params_m"], ".2f"), _fmt(r["gmacs"], ".3f"),
            _fmt(r["wall_time_s"], ".1f"), r["run_dir"],
        )
    return table


@click.command("distill")
@click.option("--backbone", "backbones", default=None, metavar="NAME[,NAME...]",
              help="Backbone(s) from `zoo list`; several run one after another (teachers built once).")
@recipe_options
@click.option("--steps", type=int, default=None, help="Shortcut for --set train.steps=N.")
@click.option("--out", "out_dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Parent folder of the run folders.")
@click.option("--run-name", default=None, help="Run folder name (default <backbone>-<recipe>-<UTC time>).")
@click.option("--resume", default=None, metavar="RUN_DIR|NAME",
              help="Continue a stopped run from its checkpoint (its saved recipe is used).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--offline", is_flag=True, help="Never contact a model hub for teacher weights.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--teacher-cache", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Read the teachers' outputs from a `zoo cache build` folder instead of running them.")
def distill_command(backbones: str | None, recipe: str, overrides: tuple[str, ...], teacher_specs: tuple[str, ...],
                    steps: int | None, out_dir: str, run_name: str | None, resume: str | None, device: str,
                    offline: bool, no_progress: bool, teacher_cache: str | None) -> None:
    """Distill backbones from CLIP + DINOv2 teachers (AM-RADIO recipe).

    Writes runs/<run-id>/{recipe.yaml, metrics.jsonl, checkpoint.pt,
    summary.json}. Ctrl-C saves a checkpoint; --resume continues it.
    Under torchrun, one model trains over all processes (DDP).

    \b
    Examples:
      zoo distill --backbone resnet-18 --recipe smoke
      zoo distill --backbone resnet-18,vit-t16-cpe --recipe smoke --set train.steps=100
      zoo distill --backbone eradio-b --recipe table7 --set data.path=/data/imagenet21k
      zoo distill --backbone resnet-18 --resume runs/resnet-18-smoke-20250101-120000
      zoo distill --backbone resnet-18,vit-t16-cpe --recipe smoke --teacher-cache caches/smoke
      torchrun --nproc_per_node 8 -m zoo.cli distill --backbone convnext-b --recipe table7 --set data.path=/data/in21k
    """
    from zoo.distill import DistillInterrupted, distill, find_run_dir
    from zoo.recipe import load_recipe, recipe_from_dict
    from zoo.registry import parse_backbone_list
    from zoo.teachers import build_teachers
    from zoo.ui import console, err_console

    overrides = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    if resume:
        run_dir = find_run_dir(resume, out_dir)
        names = parse_backbone_list(backbones) if backbones else []
        if len(names) > 1:
            raise ConfigError("--resume continues one run: give at most one --backbone")
        from zoo.checkpoints import load_checkpoint

        saved = load_checkpoint(run_dir / "checkpoint.pt")
        if overrides or teacher_specs:
            raise ConfigError("--resume uses the run's saved recipe and teachers; drop --set/--steps/--teacher")
        name = saved.get("backbone_name")
        if names and names[0] != name:
            raise ConfigError(f"run {run_dir} trained '{name}', not '{names[0]}'; drop --backbone to resume it")
        jobs = [(name, str(run_dir.parent), run_dir.name, True)]
        loaded = recipe_from_dict(saved["recipe"])
    else:
        if not backbones:
            raise ConfigError("give --backbone NAME[,NAME...] (see `zoo list`)")
        names = parse_backbone_list(backbones)
        if not names:
            raise ConfigError("--backbone got no names (e.g. --backbone resnet-18)")
        if teacher_specs:
            overrides.append("teachers=[" + ", ".join(f'"{s}"' for s in teacher_specs) + "]")
        loaded = load_recipe(recipe, overrides)
        if run_name and len(names) > 1:
            raise ConfigError("--run-name names one run: use it with a single --backbone")
        jobs = [(n, out_dir, run_name, False) for n in names]

    from zoo.bench import resolve_device

    if loaded.data.source in ("folder", "list") and not loaded.data.path:  # fail before loading big teachers
        raise ConfigError(f"recipe '{loaded.name}' needs its images: --set data.path=/path/to/images")
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks
    teachers = build_teachers(loaded.teachers, resolve_device(device), offline or None)
    if main_process and any(t.is_random for t in teachers):
        err_console.print("[bold red]random teacher[/]: tiny random teachers make a smoke test, "
                          "not a real distillation result")
    records = []
    for name, parent, run, is_resume in jobs:
        try:
            record = distill(name, loaded, out_dir=parent, run_name=run, resume=is_resume, device=device,
                             progress=not no_progress, teachers=teachers, offline=offline or None,
                             teacher_cache=teacher_cache)
        except DistillInterrupted as stop:
            records.append(stop.record)
            if main_process:
                console.print(_table(records))
                # One unwrapped line: the resume command must stay copy-pasteable.
                err_console.print(str(stop), style="bold yellow", markup=False, soft_wrap=True)
            sys.exit(130)
        records.append(record)
        if main_process and record.get("random_teacher"):
            err_console.print(f"[bold red]{record['note']}[/] ({record['run_dir']})")
    if main_process:
        console.print(_table(records))

