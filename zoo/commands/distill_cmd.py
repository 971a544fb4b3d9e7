"""``zoo distill``: train backbones against CLIP + DINOv2 teachers under one recipe."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import click
from rich.table import Table

from zoo.commands.options import device_option, recipe_options
from zoo.errors import ConfigError


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def _table(records: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="zoo distill", title_justify="left")
    for name, justify in [("backbone", "left"), ("steps", "right"), ("train loss first → last", "right"),
                          ("FD loss", "right"), ("FD loss (train)", "right"), ("img/s", "right"),
                          ("params (M)", "right"), ("GMACs", "right"), ("wall (s)", "right"), ("run", "left")]:
        table.add_column(name, justify=justify)
    for r in records:
        tp = r.get("throughput") or {}
        table.add_row(
            r["backbone"] + (f" ({r['status']})" if r["status"] != "complete" else ""), str(r["steps"]),
            f"{_fmt(r['train_loss_first'])} → {_fmt(r['train_loss_last'])}", _fmt(r["fd_loss"]),
            _fmt(r.get("fd_loss_train")), _fmt(tp.get("median"), ".1f"), _fmt(r["params_m"], ".2f"),
            _fmt(r["gmacs"], ".3f"), _fmt(r["wall_time_s"], ".1f"), r["run_dir"],
        )
    return table


def _resume_job(resume: str, out_dir: str, backbones: str | None, overrides: list[str],
                teacher_specs: Sequence[str], trust: bool) -> tuple[tuple[str, str, str, bool], Any]:
    """The one job of ``--resume`` and the recipe it continues under (saved recipe + resumable ``--set``)."""
    from zoo.checkpoints import load_checkpoint
    from zoo.distill import continue_recipe
    from zoo.distill.resume import check_state
    from zoo.distill.student import run_name_of
    from zoo.recipe import recipe_from_dict
    from zoo.runs import BACKBONE_FILE, CHECKPOINT_FILE, find_run_dir

    run_dir = find_run_dir(resume, out_dir, needs=CHECKPOINT_FILE)
    names = [n.strip() for n in backbones.split(",") if n.strip()] if backbones else []
    if len(names) > 1:
        raise ConfigError("--resume continues one run: give at most one --backbone")
    if teacher_specs:
        raise ConfigError("--resume uses the run's saved teachers; drop --teacher")
    saved = check_state(load_checkpoint(run_dir / CHECKPOINT_FILE, trust=trust), run_dir / CHECKPOINT_FILE)
    name = saved.get("backbone_name")
    if names and run_name_of(names[0]) != name:
        raise ConfigError(f"run {run_dir} trained '{name}', not '{names[0]}'; drop --backbone to resume it")
    # A backbone file's run resumes from its copy in the run folder (the record names it by its stem).
    spec = str(run_dir / BACKBONE_FILE) if (run_dir / BACKBONE_FILE).is_file() else (saved.get("backbone_spec") or name)
    given = recipe_from_dict(saved["recipe"], overrides) if overrides else None
    recipe = continue_recipe(saved["recipe"], given)  # one line naming a key that cannot change
    _exit_if_finished(run_dir, int(saved["step"]), recipe.train.steps)
    return (spec, str(run_dir.parent), run_dir.name, True), recipe


def _exit_if_finished(run_dir: Any, step: int, steps: int) -> None:
    """A run that already ended complete has nothing to resume: say so in one line and exit 0.

    Resuming it would only evaluate and measure it again and write over its record.
    """
    from zoo.distill.resume import finished_record
    from zoo.ui import console

    record = finished_record(run_dir, step, steps)
    if record is None:
        return
    loss = f", FD loss {record.fd_loss:.4f}" if isinstance(record.fd_loss, (int, float)) else ""
    console.print(f"run {run_dir} is already complete ({step}/{step} steps{loss}): nothing to resume, its record "
                  f"is unchanged; to train it longer add --set train.steps=N (N > {step})",
                  highlight=False, markup=False, soft_wrap=True)
    sys.exit(0)


@click.command("distill")
@click.option("--backbone", "backbones", default=None, metavar="NAME[,NAME...]",
              help="Backbone(s) from `zoo list`, or a backbone file (my-net.yaml); several run one after another "
                   "(teachers built once).")
@recipe_options
@click.option("--steps", type=int, default=None, help="Shortcut for --set train.steps=N.")
@click.option("--out", "out_dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Parent folder of the run folders.")
@click.option("--run-name", default=None, help="Run folder name (default <backbone>-<recipe>-<UTC time>).")
@click.option("--resume", default=None, metavar="RUN_DIR|NAME",
              help="Continue a stopped run from its checkpoint, under its saved recipe; --set may change optim.*, "
                   "train.steps, cadences, eval and bench keys (e.g. a lower optim.lr after a divergence). A run that already ended complete is left as it is "
                   "(said in one line, exit 0) unless --set train.steps asks for more.")
@click.option("--trust-checkpoint", is_flag=True,
              help="With --resume: load a checkpoint holding pickled Python objects (only a file you trust).")
@device_option()
@click.option("--offline", is_flag=True, help="Never contact a model hub for teacher weights.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--teacher-cache", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Read the teachers' outputs from a `zoo cache build` folder instead of running them.")
def distill_command(backbones: str | None, recipe: str, overrides: tuple[str, ...], teacher_specs: tuple[str, ...],
                    steps: int | None, out_dir: str, run_name: str | None, resume: str | None,
                    trust_checkpoint: bool, device: str, offline: bool, no_progress: bool,
                    teacher_cache: str | None) -> None:
    """Distill backbones from CLIP + DINOv2 teachers (AM-RADIO recipe).

    Writes runs/<run-id>/{recipe.yaml, metrics.jsonl, checkpoint.pt,
    summary.json}. Ctrl-C or SIGTERM saves a checkpoint (exit 130 / 143);
    --resume continues it. A diverging run (NaN/inf loss) stops with exit 3,
    keeping its last good checkpoint. Under torchrun, one model trains over
    all processes (DDP).

    \b
    Examples:
      zoo distill --backbone resnet-18 --recipe smoke
      zoo distill --backbone resnet-18,vit-t16-cpe --recipe smoke --set train.steps=100
      zoo distill --backbone eradio-b --recipe table7 --set data.path=/data/imagenet21k
      zoo distill --resume runs/resnet-18-smoke-20250101-120000
      zoo distill --resume runs/resnet-18-smoke-20250101-120000 --set optim.lr=1e-4
      zoo distill --backbone resnet-18,vit-t16-cpe --recipe smoke --teacher-cache caches/smoke
      torchrun --nproc_per_node 8 -m zoo.cli distill --backbone convnext-b --recipe table7 --set data.path=/data/in21k
    """
    from zoo.devices import resolve_device
    from zoo.distill import DistillInterrupted, distill
    from zoo.errors import DivergedError
    from zoo.recipe import load_recipe
    from zoo.registry import parse_backbone_list
    from zoo.teachers import build_teachers
    from zoo.ui import console, err_console

    overrides = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    if resume:
        job, loaded = _resume_job(resume, out_dir, backbones, overrides, teacher_specs, trust_checkpoint)
        jobs = [job]
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

    if loaded.data.source in ("folder", "list") and not loaded.data.path:  # fail before loading big teachers
        raise ConfigError(f"recipe '{loaded.name}' needs its images: --set data.path=/path/to/images")
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks
    teachers = build_teachers(loaded.teachers, resolve_device(device), offline or None)
    warned = []

    def started(run: dict[str, Any]) -> None:
        # Said once a run is accepted, never before a refusal: a refused start prints only its Error: line.
        if main_process and run["random_teacher"] and not warned:
            warned.append(run["run_dir"])
            err_console.print("[bold red]random teacher[/]: tiny random teachers make a smoke test, "
                              "not a real distillation result")

    records = []
    for name, parent, run, is_resume in jobs:
        try:
            record = distill(name, loaded, out_dir=parent, run_name=run, resume=is_resume, device=device,
                             progress=not no_progress, teachers=teachers, offline=offline or None,
                             teacher_cache=teacher_cache, trust_checkpoint=trust_checkpoint, on_start=started)
        except DistillInterrupted as stop:
            records.append(stop.record)
            if main_process:
                console.print(_table(records))
                # One unwrapped line: the resume command must stay copy-pasteable.
                err_console.print(str(stop), style="bold yellow", markup=False, soft_wrap=True)
            sys.exit(stop.exit_code)
        except DivergedError as diverged:
            records.append(diverged.record)
            if main_process:
                console.print(_table(records))
            raise  # one line (the last good checkpoint and the resume command), exit status 3
        records.append(record)
        if main_process and record.get("random_teacher"):
            err_console.print(f"[bold red]{record['note']}[/] ({record['run_dir']})")
    if main_process:
        console.print(_table(records))
