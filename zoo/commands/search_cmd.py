"""``zoo search``: Optuna architecture search over E-RADIO (see :mod:`search`)."""

from __future__ import annotations

import json
from typing import Any, Sequence

import click
from rich.table import Table

from zoo.errors import ConfigError
from zoo.ui import console, err_console

SAMPLER_CHOICES = ("nsga2", "tpe", "random")


def _space(resolution: int | None, search_resolution: str | None, limits: Sequence[str],
           default_resolution: int | None = None) -> Any:
    from zoo.search.space import DEFAULT_RESOLUTION, SearchSpace, parse_limits, parse_resolutions

    if resolution is not None and search_resolution:
        raise ConfigError("give either --resolution R or --search-resolution R1,R2,..., not both")
    resolutions = parse_resolutions(search_resolution) or (resolution or default_resolution or DEFAULT_RESOLUTION,)
    return SearchSpace(resolutions, limits=parse_limits(limits) or None)


def _recipe_resolution(recipe: str | None, overrides: Sequence[str]) -> int:
    """The proxy recipe's student resolution: the default search resolution (square only)."""
    from zoo.search.objective import DEFAULT_RECIPE
    from zoo.recipe import load_recipe

    height, width = load_recipe(recipe or DEFAULT_RECIPE, overrides=list(overrides)).resolution
    if height != width:
        raise ConfigError(f"the recipe trains at {height}x{width}; the search needs a square resolution: "
                          "give --resolution R")
    return height


def _space_table(space: Any) -> Table:
    table = Table(title=f"E-RADIO search space ({space.size():,} candidates)", title_justify="left")
    for name, justify in (("parameter", "left"), ("kind", "left"), ("values", "left"), ("meaning", "left")):
        table.add_column(name, justify=justify)
    for param in space.params:
        table.add_row(param.name, param.kind, param.describe_values(), param.description)
    return table


def _rate(value: float) -> str:
    return f"{value:.1f}" if value >= 100 else f"{value:.3g}"


def _config_cells(record: dict[str, Any]) -> list[str]:
    cfg = record.get("config", {})
    neck = str(cfg.get("neck_dim")) if cfg.get("neck_dim") else "—"
    ratios = ",".join(str(r) for r in cfg.get("mra_ratios", []))
    return [str(cfg.get("dim")), "-".join(str(d) for d in cfg.get("depths", [])),
            "/".join(str(h) for h in cfg.get("num_heads", [])[2:]),
            "/".join(str(w) for w in cfg.get("window_size", [])), f"{ratios} {cfg.get('mra_resample', '')}",
            f"{cfg.get('mlp_ratio')}", neck]


def _best_table(study: Any, trials: Sequence[Any]) -> Table:
    from zoo.search.study import trial_record

    title = f"Pareto-optimal configurations of study {study.study_name!r} ({len(trials)})"
    table = Table(title=title, title_justify="left")
    columns = ["trial", "img/s", "FD loss", "params (M)", "GMACs", "res", "d", "depths", "heads 3/4",
               "windows", "MRA", "mlp", "neck"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("MRA", "depths") else "right")
    for trial in trials:
        record = trial_record(trial)
        throughput = record.get("throughput") or {}
        resolution = record.get("resolution") or ["?"]
        table.add_row(str(trial.number), _rate(float(throughput.get("median", 0.0))), f"{record['fd_loss']:.4f}",
                      f"{record.get('params_m', 0.0):.2f}",
                      f"{record['gmacs']:.3f}" if record.get("gmacs") is not None else "—",
                      str(resolution[0]), *_config_cells(record))
    return table


def _show_best(storage: Any, study_name: str, as_json: bool) -> None:
    from zoo.search.study import open_study, pareto_trials, trial_record

    study = open_study(storage, study_name, create=False)
    front = pareto_trials(study)
    if as_json:
        click.echo(json.dumps([trial_record(t) for t in front], indent=2))
        return
    if not front:
        console.print(f"study {study_name!r} has no complete feasible trials yet")
        return
    console.print(_best_table(study, front))


def _export(storage: Any, storage_url: str, study_name: str, target: str, trial_number: int | None) -> None:
    from zoo.search.export import backbone_document, export_path, write_backbone_file
    from zoo.search.study import find_trial, open_study, pareto_trials, trial_record

    study = open_study(storage, study_name, create=False)
    if trial_number is None:
        front = pareto_trials(study)
        if not front:
            raise ConfigError(f"study {study_name!r} has no complete feasible trial to export")
        trial = front[0]  # the lowest FD loss on the front
    else:
        trial = find_trial(study, trial_number)
    record = trial_record(trial)
    name, path = export_path(target)
    source = {"storage": storage_url, "study": study_name, "trial": trial.number, "fd_loss": record["fd_loss"],
              "throughput": (record.get("throughput") or {}).get("median"), "params_m": record.get("params_m"),
              "gmacs": record.get("gmacs")}
    document = backbone_document(name, record["config"], record["resolution"][0], source)
    write_backbone_file(path, document)
    err_console.print(f"wrote {path} (trial {trial.number}: FD loss {record['fd_loss']:.4f}); "
                      f"train it with: zoo distill --backbone {path}")


def _trial_line(trial: Any) -> str:
    record = trial.user_attrs.get("record")
    if trial.state.name == "COMPLETE" and record:
        feasible = "" if record.get("feasible", True) else " [infeasible]"
        return (f"trial {trial.number}: {_rate(record['throughput']['median'])} img/s, FD loss "
                f"{record['fd_loss']:.4f}, {record['params_m']:.2f}M params{feasible}")
    return f"trial {trial.number}: {trial.state.name.lower()}"


@click.command("search")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage: sqlite:///runs/search.db (default), postgresql://..., mysql://..., "
                   "or a journal file on a shared disk (path.log, journal:///path/file.log).")
@click.option("--study-name", default=None, metavar="NAME", help="Study (workers of one sweep share it).")
@click.option("--n-trials", default=20, show_default=True, type=int,
              help="Trials of the whole study (all workers together): complete + pruned + in flight.")
@click.option("--recipe", default=None, metavar="NAME_OR_PATH", help="Proxy distillation recipe [search-proxy].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value.")
@click.option("--teacher-cache", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Teacher outputs from a `zoo cache build --recipe search-proxy` cache "
                   "(same as --set data.teacher_cache=DIR).")
@click.option("--teachers", default=None, metavar="SPEC,SPEC",
              help="Teachers of the proxy runs (default: the recipe's).")
@click.option("--out", default="runs/search", show_default=True, help="Folder of the proxy runs.")
@click.option("--device", default="auto", show_default=True, help="Device of this worker (auto, cpu, cuda:N).")
@click.option("--objective", type=click.Choice(["multi", "fd_loss"]), default="multi", show_default=True,
              help="multi: maximise throughput and minimise FD loss; fd_loss: single objective, with pruning.")
@click.option("--sampler", type=click.Choice(SAMPLER_CHOICES), default=None,
              help="nsga2 (multi default), tpe (fd_loss default; constant liar), random.")
@click.option("--population-size", type=int, default=None, help="NSGA-II population [n_trials/5, 8..50].")
@click.option("--seed", type=int, default=None, help="Sampler seed (give each worker its own).")
@click.option("--max-params", type=float, default=None, metavar="M", help="Constraint: at most M million params.")
@click.option("--min-throughput", type=float, default=None, metavar="X", help="Constraint: at least X img/s.")
@click.option("--resolution", type=int, default=None,
              help="Resolution (square) candidates train and are timed at [the recipe's; 224 for --dry-run].")
@click.option("--search-resolution", default=None, metavar="R1,R2", help="Search the resolution among these.")
@click.option("--limit", "limits", multiple=True, metavar="NAME=V1,V2",
              help="Narrow a parameter to some of its values (mra_pattern values separated by ';').")
@click.option("--enqueue-variants", default=None, metavar="xt,s,b|all",
              help="Evaluate these paper variants first (skipped if already queued).")
@click.option("--bench-batch", type=int, default=None, help="Batch size of the throughput measurement.")
@click.option("--bench-repeats", type=int, default=3, show_default=True, help="Timed repeats per candidate.")
@click.option("--bench-steps", type=int, default=5, show_default=True, help="Forward passes per timed repeat.")
@click.option("--dry-run", is_flag=True,
              help="Surrogate FD loss instead of a distillation (tests the sweep; numbers are not quality).")
@click.option("--timeout", type=float, default=None, help="Stop this worker after this many seconds.")
@click.option("--heartbeat-interval", type=int, default=None, help="Heartbeat of running trials, s [30].")
@click.option("--grace-period", type=int, default=None, help="A trial silent this long is failed, s [120].")
@click.option("--show-space", is_flag=True, help="Print the search space and exit.")
@click.option("--best", is_flag=True, help="Print the Pareto-optimal (feasible) configurations and exit.")
@click.option("--export", "export_target", default=None, metavar="NAME_OR_PATH",
              help="Write a configuration (the best FD loss on the front, or --trial N) as a backbone YAML.")
@click.option("--trial", "trial_number", type=int, default=None, help="The trial --export writes.")
@click.option("--json", "as_json", is_flag=True, help="--best / --show-space as JSON.")
@click.option("--quiet", is_flag=True, help="No per-trial lines.")
def search_command(storage: str | None, study_name: str | None, n_trials: int, recipe: str | None,
                   overrides: tuple[str, ...], teacher_cache: str | None, teachers: str | None, out: str, device: str, objective: str,
                   sampler: str | None, population_size: int | None, seed: int | None, max_params: float | None,
                   min_throughput: float | None, resolution: int | None, search_resolution: str | None,
                   limits: tuple[str, ...], enqueue_variants: str | None, bench_batch: int | None,
                   bench_repeats: int, bench_steps: int, dry_run: bool, timeout: float | None,
                   heartbeat_interval: int | None, grace_period: int | None, show_space: bool, best: bool,
                   export_target: str | None, trial_number: int | None, as_json: bool, quiet: bool) -> None:
    """Search E-RADIO configurations for throughput and proxy FD loss.

    \b
    Several processes with the same --storage and --study-name are workers of
    one sweep; re-running the command resumes it.
    \b
    Examples:
      zoo search --show-space
      zoo search --n-trials 40 --recipe search-proxy --out runs/search
      zoo cache build --recipe search-proxy --out runs/proxy-cache && zoo search --teacher-cache runs/proxy-cache
      zoo search --storage journal:///shared/search.log --study-name s1 --n-trials 200
      zoo search --best
      zoo search --export my-eradio --trial 12
    """
    if teacher_cache:
        overrides = (*overrides, f"data.teacher_cache={teacher_cache}")
    from zoo.search import study as runner

    storage_url = storage or runner.DEFAULT_STORAGE
    study_name = study_name or runner.DEFAULT_STUDY
    if sum((show_space, best, export_target is not None)) > 1:
        raise ConfigError("--show-space, --best and --export are separate actions: give one")
    if trial_number is not None and export_target is None:
        raise ConfigError("--trial goes with --export")
    needs_recipe = not (dry_run or show_space or best or export_target is not None)
    default = _recipe_resolution(recipe, overrides) if needs_recipe and not (resolution or search_resolution) else None
    space = _space(resolution, search_resolution, limits, default)
    if show_space:
        if as_json:
            click.echo(json.dumps(space.describe(), indent=2))
        else:
            console.print(_space_table(space))
        return
    if best or export_target is not None:
        runner.require_existing(storage_url)
        handle = runner.open_storage(storage_url, heartbeat_interval=None)
        if best:
            _show_best(handle, study_name, as_json)
        else:
            _export(handle, storage_url, study_name, export_target, trial_number)
        return
    _run(space, storage_url, study_name, n_trials, recipe, overrides, teachers, out, device, objective, sampler,
         population_size, seed, max_params, min_throughput, enqueue_variants, bench_batch, bench_repeats, bench_steps,
         dry_run,
         timeout, heartbeat_interval, grace_period, quiet)


def _run(space: Any, storage_url: str, study_name: str, n_trials: int, recipe: str | None,
         overrides: Sequence[str], teachers: str | None, out: str, device: str, objective: str,
         sampler_name: str | None, population_size: int | None, seed: int | None, max_params: float | None,
         min_throughput: float | None, enqueue: str | None, bench_batch: int | None, bench_repeats: int,
         bench_steps: int, dry_run: bool, timeout: float | None, heartbeat_interval: int | None,
         grace_period: int | None, quiet: bool) -> None:
    import optuna

    from zoo.search import study as runner
    from zoo.search.objective import DEFAULT_RECIPE, ObjectiveSettings, SearchObjective

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial of our own instead

    if n_trials < 1:
        raise ConfigError(f"--n-trials must be at least 1, got {n_trials}")
    if dry_run and (recipe or overrides or teachers):
        raise ConfigError("--dry-run runs no distillation: --recipe, --set and --teachers do not apply")
    settings = ObjectiveSettings(
        recipe=recipe or DEFAULT_RECIPE,
        recipe_overrides=tuple(overrides),
        teachers=[t.strip() for t in teachers.split(",") if t.strip()] if teachers else None,
        out_dir=out, device=device, objective=objective, max_params_m=max_params, min_throughput=min_throughput,
        bench_batch_size=bench_batch, bench_repeats=bench_repeats, bench_steps=bench_steps, dry_run=dry_run,
    )
    storage = runner.open_storage(storage_url, heartbeat_interval=heartbeat_interval or runner.HEARTBEAT_INTERVAL_S,
                                  grace_period=grace_period or runner.GRACE_PERIOD_S)
    sampler = runner.make_sampler(sampler_name, objective, n_trials, seed=seed, population_size=population_size)
    study = runner.open_study(storage, study_name, space, objective, sampler, runner.make_pruner(objective))
    if enqueue:
        names = runner.enqueue_variants(study, space, [n.strip() for n in enqueue.split(",") if n.strip()])
        err_console.print(f"queued variants: {', '.join(names)}")
    search_objective = SearchObjective(space, settings, study_name=study_name)
    on_trial = None if quiet else (lambda trial: err_console.print(_trial_line(trial)))
    report = runner.run_worker(study, search_objective, n_trials, timeout=timeout, on_trial=on_trial)
    counts = report.counts
    err_console.print(
        f"worker done ({report.stopped_because}): ran {report.complete} complete, {report.pruned} pruned, "
        f"{report.failed} failed, skipped {report.skipped}; study {study_name!r}: {counts.counted}/{n_trials} "
        f"trials ({counts.complete} complete, {counts.running} running, {counts.failed} failed)"
    )
    if counts.complete and not quiet:
        front = runner.pareto_trials(study)
        if front:
            console.print(_best_table(study, front))
