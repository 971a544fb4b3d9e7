"""``zoo search run|space|best|export``: Optuna architecture search (see :mod:`zoo.search`).

Parsing and printing only: each subcommand fills a settings dataclass and calls one small function.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click

from zoo.commands.options import RESOLUTIONS, device_option, teacher_option
from zoo.errors import ConfigError

from zoo.search.space import DEFAULT_SPACE
from zoo.search.study import DEFAULT_STORAGE, GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, SAMPLERS
from zoo.ui import img_rate

SAMPLER_CHOICES = SAMPLERS


# --------------------------------------------------------------------------- settings


@dataclass
class SpaceSettings:
    """Which space, at which resolutions (None: the proxy recipe's, or the space's default), narrowed how."""

    space: str = DEFAULT_SPACE
    resolutions: tuple[int, ...] | None = None
    limits: Sequence[str] = ()

    def build(self) -> Any:
        from zoo.search.space import make_space, parse_limits

        return make_space(self.space, self.resolutions, parse_limits(self.limits) or None)


@dataclass
class StudySettings:
    """Where the study lives."""

    storage: str = DEFAULT_STORAGE
    study_name: str | None = None  # run: "<space>-search"; best/export: the storage's only study, or that one
    space: str = DEFAULT_SPACE

    @property
    def name(self) -> str:
        from zoo.search.study import default_study

        return self.study_name or default_study(self.space)

    def open_existing(self) -> Any:
        """The stored study (read-only use: no heartbeats or leases)."""
        from zoo.search import study as runner

        runner.require_existing(self.storage)
        storage = runner.open_storage(self.storage, heartbeat_interval=None)
        return runner.open_study(storage, runner.pick_study(storage, self.study_name), create=False)


@dataclass
class WorkerSettings:
    """How this worker runs the study."""

    n_trials: int = 20
    sampler: str | None = None
    population_size: int | None = None
    seed: int | None = None
    enqueue: Sequence[str] = ()
    timeout: float | None = None
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    quiet: bool = False
    live: bool | None = None  # the live front table: None = when stderr is a terminal (not CI, not --quiet)


@dataclass
class FidelitySettings:
    """Multi-fidelity rungs and where throughput comes from (see :mod:`zoo.search.fidelity`)."""

    steps: str | None = None  # "10,30,90"; None: one full-length proxy per trial
    eta: int = 3
    promotion: str = "crowding"
    throughput: str = "measured"  # or "predicted" (the latency table)
    latency_folder: str | None = None  # default: zoo.search.latency.default_folder()
    latency_clock: str = "wall"

    def fidelity(self, objective: Any) -> Any:
        """The schedule (None: single fidelity); predicted throughput alone runs one rung of the recipe's length."""
        from zoo.search.fidelity import Fidelity

        if self.steps:
            return Fidelity.parse(self.steps, self.eta, self.promotion)
        if self.throughput == "predicted":
            steps = 1 if objective.dry_run else _recipe_steps(objective.recipe, objective.recipe_overrides)
            return Fidelity((steps,), self.eta, self.promotion)
        return None

    def tables(self, space: Any, objective: Any) -> dict[int, Any] | None:
        """One latency table per searched resolution, measured under the objective's bench settings."""
        if self.throughput != "predicted":
            return None
        from zoo.search.latency import LatencySettings, LatencyTable

        tables = {}
        for resolution in space.resolutions:
            bench = objective.bench_settings(resolution)
            threads = bench.threads if bench.threads is not None else (1 if self.latency_clock == "cpu" else None)
            # at least a little warm-up and repetition: first calls allocate (not part of the fingerprint)
            settings = LatencySettings(resolution=resolution, batch_size=bench.batch_size, dtype=bench.dtype,
                                       device=bench.device, threads=threads, warmup=max(2, bench.warmup),
                                       repeats=max(3, bench.repeats), steps_per_repeat=max(2, bench.steps_per_repeat),
                                       clock=self.latency_clock)
            tables[resolution] = LatencyTable.open(settings, folder=self.latency_folder)
        return tables


# --------------------------------------------------------------------------- helpers


def _square_resolutions(values: Sequence[tuple[int, int]] | None) -> tuple[int, ...] | None:
    if not values:
        return None
    for height, width in values:
        if height != width:
            raise ConfigError(f"search resolutions are square: got {height}x{width}; give {height} or {width}")
    return tuple(height for height, _ in values)


def _recipe_resolution(recipe: str, overrides: Sequence[str]) -> int:
    """The proxy recipe's student resolution: the default search resolution (square only)."""
    from zoo.recipe import load_recipe

    height, width = load_recipe(recipe, overrides=list(overrides)).resolution
    if height != width:
        raise ConfigError(f"the recipe trains at {height}x{width}; the search needs a square resolution: "
                          "give --resolution R")
    return height


def _recipe_steps(recipe: str, overrides: Sequence[str]) -> int:
    from zoo.recipe import load_recipe

    return load_recipe(recipe, overrides=list(overrides)).train.steps


def _memory_cap(text: str | None, device: str, dry_run: bool) -> float | None:
    """``--max-memory``: GB, ``none``, or ``auto`` (half the memory available now; off for dry runs)."""
    if text is None or text.lower() == "auto":
        if dry_run:
            return None
        from zoo.devices import resolve_device
        from zoo.search.cost import available_memory_bytes

        available = available_memory_bytes(str(resolve_device(device)))
        return None if available is None else round(available / 2 / 1e9, 1)
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--max-memory takes GB (e.g. 4), auto or none, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"--max-memory must be positive, got {text}")
    return value



def _space_table(space: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"{space.name} search space ({space.size():,} candidates at "
                        f"{', '.join(map(str, space.resolutions))} px)", title_justify="left")
    for name in ("parameter", "kind", "values", "meaning"):
        table.add_column(name)
    for param in space.params:
        table.add_row(param.name, param.kind, param.describe_values(), param.description)
    return table


def _best_table(study: Any, trials: Sequence[Any], space: Any | None) -> Any:
    from rich.table import Table

    from zoo.search.objective import SURROGATE
    from zoo.search.study import trial_candidate, trial_record

    title = f"Pareto-optimal configurations of study {study.study_name!r} ({len(trials)})"
    table = Table(title=title, title_justify="left")
    rows = []
    measured = study.user_attrs.get("zoo_measured")
    for trial in trials:
        record = trial_record(trial, measured)
        throughput = record.get("throughput") or {}
        search = record.get("search") or {}
        cells = {"trial": str(trial.number), "img/s": img_rate(float(throughput.get("median", 0.0))),
                 "speed": search.get("throughput_source", "measured"),
                 "FD loss": f"{record['fd_loss']:.4f}",
                 "FD from": "surrogate" if record.get("fd_loss_source") == SURROGATE else "proxy",
                 "params (M)": f"{record.get('params_m') or 0.0:.2f}",
                 "GMACs": f"{record['gmacs']:.3f}" if record.get("gmacs") is not None else "—",
                 "res": str((record.get("resolution") or ["?"])[0])}
        if space is not None:
            cells.update(space.describe_candidate(trial_candidate(space, trial)))
        rows.append(cells)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    for name in columns:
        table.add_column(name, justify="right" if name in ("img/s", "FD loss", "params (M)", "GMACs") else "left")
    for row in rows:
        table.add_row(*[row.get(c, "") for c in columns])
    return table


def _trial_line(trial: Any, eta: str = "") -> str:
    record = trial.user_attrs.get("record")
    if "diverged" in trial.user_attrs:
        return f"trial {trial.number}: diverged (FAIL): {trial.user_attrs['diverged']}"
    if trial.state.name == "COMPLETE" and record:
        search = record.get("search") or {}
        feasible = "" if search.get("feasible", True) else " [infeasible]"
        feasible += " (predicted)" if search.get("throughput_source") == "predicted" else ""
        return (f"trial {trial.number}: {img_rate(record['throughput']['median'])} img/s, FD loss "
                f"{record['fd_loss']:.4f}, {record['params_m']:.2f}M params{feasible}{eta}")
    if trial.state.name == "PRUNED" and record and (record.get("search") or {}).get("pruned"):
        search = record["search"]
        source = " (predicted)" if search.get("throughput_source") == "predicted" else ""
        return (f"trial {trial.number}: stopped at rung {search['rung']} ({search['rung_steps']} steps): "
                f"{img_rate(record['throughput']['median'])} img/s{source}, FD loss {record['fd_loss']:.4f}{eta}")
    if trial.state.name == "PRUNED" and "skipped" in trial.user_attrs:
        return f"trial {trial.number}: skipped ({trial.user_attrs['skipped']}){eta}"
    return f"trial {trial.number}: {trial.state.name.lower()}{eta}"


class _HideDiverged(logging.Filter):
    """Optuna logs a caught TrialDiverged (with its traceback, then "failed with value None"); our one line
    per trial says it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "TrialDiverged" not in message and not re.search(r"Trial \d+ failed with value None", message)


_HIDE_DIVERGED = _HideDiverged()


# --------------------------------------------------------------------------- actions


def show_space(space: Any, as_json: bool) -> None:
    from zoo.ui import console

    if as_json:
        click.echo(json.dumps(space.describe(), indent=2))
    else:
        console.print(_space_table(space))


def show_best(where: StudySettings, as_json: bool) -> None:
    from zoo.search import study as runner
    from zoo.ui import console

    study = where.open_existing()
    front = runner.pareto_trials(study)
    if as_json:
        measured = study.user_attrs.get("zoo_measured")
        click.echo(json.dumps([runner.trial_record(t, measured) for t in front], indent=2))
        return
    if not front:
        console.print(f"study {study.study_name!r} has no complete feasible trials yet")
        return
    console.print(_best_table(study, front, runner.study_space(study)))


def export_trial(where: StudySettings, target: str, trial_number: int | None) -> Path:
    from zoo.search.export import export_study_trial
    from zoo.ui import err_console

    study = where.open_existing()
    path, trial, record = export_study_trial(study, target, trial_number, storage_url=where.storage)
    err_console.print(f"wrote {path} (trial {trial.number}: FD loss {record['fd_loss']:.4f}); "
                      f"train it with: zoo distill --backbone {path}")
    return path


def run_search(space_settings: SpaceSettings, where: StudySettings, worker: WorkerSettings, objective: Any,
               rungs: FidelitySettings | None = None) -> None:
    """Join (or create) the study and run trials until its budget is taken.

    Everything a start can refuse (space, variants, schedule, recipe, teachers, latency table) is checked
    before the study is created; a study this worker created is deleted again when its start is refused
    after all, so the same command with a corrected argument starts afresh.
    """
    import optuna

    from zoo.search import study as runner
    from zoo.search.fidelity import check_study_fidelity
    from zoo.ui import console, err_console

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial of our own instead
    for name in ("optuna.study._optimize", "optuna.study._tell"):
        logging.getLogger(name).addFilter(_HIDE_DIVERGED)
    if worker.n_trials < 1:
        raise ConfigError(f"--n-trials must be at least 1, got {worker.n_trials}")
    if space_settings.resolutions is None and not objective.dry_run:
        space_settings.resolutions = (_recipe_resolution(objective.recipe, objective.recipe_overrides),)
    space = space_settings.build()
    variants = runner.plan_variants(space, list(worker.enqueue)) if worker.enqueue else None
    rungs = rungs or FidelitySettings()
    fidelity = rungs.fidelity(objective)
    storage = runner.open_storage(where.storage,
                                  heartbeat_interval=worker.heartbeat_interval or runner.HEARTBEAT_INTERVAL_S,
                                  grace_period=worker.grace_period or runner.GRACE_PERIOD_S)
    # NSGA-II grows its population from COMPLETE trials only: with rungs, size it by those reaching the last one
    completes = worker.n_trials
    if rungs.steps and fidelity is not None:
        completes = max(1, round(worker.n_trials / rungs.eta ** (fidelity.rungs - 1)))
    sampler = runner.make_sampler(worker.sampler, objective.objective, completes, seed=worker.seed,
                                  population_size=worker.population_size, space=space)

    def join() -> Any:
        study = runner.open_study(storage, where.name, space, objective.objective, sampler,
                                  runner.make_pruner(objective.objective))
        check_study_fidelity(study, fidelity)
        return study

    created = not runner.study_exists(storage, where.name)
    study = None if created else join()  # another space, objective or schedule is refused before any work
    search_objective = _search_objective(space, objective, where.name, rungs, fidelity)
    search_objective.prepare()  # recipe, teacher specs, latency table fit: refused before a study is created
    try:
        study = study or join()
        if variants is not None:
            runner.enqueue_variants(study, space, list(worker.enqueue), plan=variants)
            for line in variants.lines():
                err_console.print(line)
        preview = _preview(space, objective, worker.n_trials, study, search_objective,
                           fidelity if rungs.steps else None)
    except BaseException:
        if created:  # nothing ran: the same command with a corrected argument must start afresh
            runner.discard_new_study(storage, where.name)
        raise
    err_console.print(preview.line())
    report = _run_trials(study, search_objective, worker, preview, fidelity if rungs.steps else None)
    counts = report.counts
    diverged = f", {report.diverged} diverged" if report.diverged else ""
    err_console.print(
        f"worker done ({report.stopped_because}): ran {report.complete} complete, {report.pruned} pruned, "
        f"{report.failed} failed{diverged}, skipped {report.skipped}; study {where.name!r}: "
        f"{counts.counted}/{worker.n_trials} trials ({counts.complete} complete, {counts.running} running, "
        f"{counts.failed} failed)"
    )
    if counts.complete and rungs.throughput == "predicted":
        _measure_front(study, space, objective, worker.quiet)
    if counts.complete and not worker.quiet:
        front = runner.pareto_trials(study)
        if front:
            console.print(_best_table(study, front, space))


def _search_objective(space: Any, objective: Any, study_name: str, rungs: FidelitySettings, fidelity: Any) -> Any:
    """One trial's scoring: single fidelity, or rung by rung (with predicted throughput when asked)."""
    from zoo.search.fidelity import MultiFidelityObjective
    from zoo.search.objective import SearchObjective

    if fidelity is None:
        return SearchObjective(space, objective, study_name=study_name)
    return MultiFidelityObjective(space, objective, study_name=study_name, fidelity=fidelity,
                                  latency_table=rungs.tables(space, objective))


def _preview(space: Any, objective: Any, n_trials: int, study: Any, search_objective: Any, fidelity: Any) -> Any:
    from zoo.search.preview import sweep_preview

    return sweep_preview(space, objective, n_trials, study, objective=search_objective, fidelity=fidelity,
                         time_steps=not objective.dry_run)


def _run_trials(study: Any, search_objective: Any, worker: WorkerSettings, preview: Any, fidelity: Any) -> Any:
    """The worker's trials: one line each (unless --quiet), under the live front table when it is on."""
    from zoo.search import study as runner
    from zoo.search.live import LiveFront, live_wanted
    from zoo.ui import err_console

    live = live_wanted(worker.live, err_console, worker.quiet)
    rungs = list(fidelity.steps) if fidelity is not None else None
    view = LiveFront(study, worker.n_trials, err_console, preview.per_trial_seconds(), rungs) if live else None

    def on_trial(trial: Any) -> None:
        if not worker.quiet:
            err_console.print(_trial_line(trial, preview.eta_after(study, worker.n_trials)))
        if view is not None:
            view.update()
            if not err_console.is_terminal:  # asked for with --live, into a file or pipe: the table after each trial
                err_console.print(view.renderable())

    if view is None or not err_console.is_terminal:
        return runner.run_worker(study, search_objective, worker.n_trials, timeout=worker.timeout, on_trial=on_trial)
    with view:
        return runner.run_worker(study, search_objective, worker.n_trials, timeout=worker.timeout, on_trial=on_trial)


def _measure_front(study: Any, space: Any, objective: Any, quiet: bool) -> None:
    """The front was found with predicted throughput: measure its candidates for real (once per trial)."""
    from zoo.search.fidelity import remeasure_front
    from zoo.ui import err_console

    def said(trial: Any, predicted: float, measured: float) -> None:
        if not quiet:
            err_console.print(f"front trial {trial.number}: predicted {img_rate(predicted)} img/s, measured "
                              f"{img_rate(measured)} img/s ({100 * (predicted - measured) / measured:+.1f}%)")

    remeasure_front(study, space, objective, on_trial=said)


# --------------------------------------------------------------------------- the commands

_storage_option = click.option(
    "--storage", default=DEFAULT_STORAGE, show_default=True, metavar="URL",
    help="Optuna storage: sqlite:///file.db, postgresql://..., mysql://..., or a journal file on a shared "
         "disk (path.log, journal:///path/file.log).")
_study_option = click.option("--study-name", default=None, metavar="NAME",
                             help="Study (workers of one sweep share it) [run: <space>-search; best/export: the "
                                  f"storage's only study, or {DEFAULT_SPACE}-search].")
_space_option = click.option("--space", default=DEFAULT_SPACE, show_default=True, metavar="NAME",
                             help="Search space (zoo search space --list): eradio, vit-cpe.")
_resolution_option = click.option(
    "--resolution", "resolutions", type=RESOLUTIONS, default=None, metavar="R[,R2,...]",
    help="Square resolution(s) candidates train and are timed at; several = the resolution is searched "
         "[the recipe's; the space's default for --dry-run].")
_limit_option = click.option("--limit", "limits", multiple=True, metavar="NAME=V1,V2",
                             help="Narrow a parameter to some of its values (values holding commas, such "
                                  "as mra_pattern's 2,1, separated by ';'). Repeatable.")


@click.group("search")
def search_command() -> None:
    """Architecture search: throughput and proxy FD loss of sampled backbones.

    \b
    Several `zoo search run` processes with the same --storage and --study-name
    are workers of one sweep; re-running the command resumes it.
    \b
    Examples:
      zoo search space
      zoo search space --space vit-cpe --resolution 224
      zoo search run --n-trials 40 --out runs/search --enqueue-variants all
      zoo search run --n-trials 40 --fidelity 30,90 --throughput predicted --limit dim=32,48,64,80,96
      zoo search run --space vit-cpe --resolution 64 --n-trials 12 --dry-run --out runs/vit-search
      zoo search run --storage journal:///shared/search.log --study-name s1 --n-trials 200
      zoo pareto runs/search
      zoo search best
      zoo search export my-eradio --trial 12
    """


@search_command.command("run")
@_space_option
@_storage_option
@_study_option
@click.option("--n-trials", default=20, show_default=True, type=int,
              help="Trials of the whole study (all workers together): complete + pruned + in flight.")
@click.option("--recipe", default=None, metavar="NAME|PATH", help="Proxy distillation recipe [search-proxy].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value. Repeatable.")
@teacher_option(help="A teacher of the proxy runs (repeatable), e.g. --teacher dinov2:vit_small_patch14_dinov2 "
                     "[the recipe's].")
@click.option("--teacher-cache", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Teacher outputs from `zoo cache build --recipe search-proxy` (= --set data.teacher_cache=DIR).")
@click.option("--out", default="runs/search", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the trials' runs (one summary.json each; `zoo pareto OUT` draws them).")
@device_option(help="Device of this worker: auto, cpu, cuda or cuda:N.")
@click.option("--objective", type=click.Choice(["multi", "fd_loss"]), default="multi", show_default=True,
              help="multi: maximise throughput and minimise FD loss; fd_loss: single objective, with pruning.")
@click.option("--sampler", type=click.Choice(SAMPLER_CHOICES), default=None,
              help="guided (multi default: models of both objectives on the candidates' analytic cost), nsga2, "
                   "nsga3, tpe (fd_loss default; constant liar), gp, random.")
@click.option("--population-size", type=int, default=None, help="NSGA-II/III population [n_trials/5, 8..50].")
@click.option("--seed", type=int, default=None, help="Sampler seed (give each worker its own).")
@click.option("--max-params", type=float, default=None, metavar="M", help="Constraint: at most M million params.")
@click.option("--min-throughput", type=float, default=None, metavar="X", help="Constraint: at least X img/s.")
@_resolution_option
@_limit_option
@click.option("--enqueue-variants", "enqueue", default=None, metavar="NAME,NAME|all",
              help="Evaluate these reference backbones first (eradio: xt,s,b...; vit-cpe: vit-t16-cpe...).")
@click.option("--bench-batch", type=int, default=None, help="Batch of the throughput measurement [zoo bench's].")
@click.option("--bench-repeats", type=int, default=None, help="Timed repeats per candidate [zoo bench's].")
@click.option("--bench-steps", type=int, default=None, help="Forward passes per timed repeat [zoo bench's].")
@click.option("--bench-warmup", type=int, default=None, help="Untimed passes before timing [zoo bench's].")
@click.option("--dry-run", is_flag=True,
              help="Surrogate FD loss instead of a distillation (tests the sweep; numbers are not quality).")
@click.option("--keep-checkpoints", is_flag=True,
              help="Keep each proxy run's checkpoint.pt (deleted when its trial ends otherwise).")
@click.option("--timeout", type=float, default=None, help="Stop this worker after this many seconds.")
@click.option("--heartbeat-interval", type=int, default=None,
              help=f"Heartbeat (RDB) / lease renewal (journal) of running trials, s [{HEARTBEAT_INTERVAL_S}].")
@click.option("--grace-period", type=int, default=None,
              help=f"A trial silent this long is failed and retried, s [{GRACE_PERIOD_S}].")
@click.option("--fidelity", "fidelity_steps", default=None, metavar="S1,S2,...",
              help="Multi-fidelity: proxy steps of each rung, e.g. 30,90 (`default`: 30,90, the README says why). "
                   "A trial trains to the first rung, goes on (resuming its run) only when in the top 1/eta of "
                   "the trials at that rung by non-dominated rank, else is pruned [one full-length proxy per trial].")
@click.option("--eta", type=int, default=3, show_default=True, help="Rung reduction factor (with --fidelity).")
@click.option("--promotion", type=click.Choice(["crowding", "hypervolume"]), default="crowding", show_default=True,
              help="Tie-break within a non-dominated rank at a rung: crowding distance or hypervolume contribution.")
@click.option("--throughput", "throughput_source", type=click.Choice(["measured", "predicted"]), default="measured",
              show_default=True,
              help="measured: zoo.bench per candidate; predicted: the per-device latency table of E-RADIO stages "
                   "(measured once per device/resolution/batch/dtype; the final front is measured for real).")
@click.option("--latency-table", "latency_folder", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Folder of latency tables [~/.cache/zoo/latency].")
@click.option("--latency-clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="cpu: time the table with this process's CPU time (one thread; on a machine shared with "
                   "other jobs).")
@click.option("--max-memory", default="auto", show_default=True, metavar="GB|auto|none",
              help="Skip candidates whose training would need more memory (estimated on the meta device); auto: "
                   "half the memory available now (off for --dry-run).")
@click.option("--quiet", is_flag=True, help="No per-trial lines.")
@click.option("--live/--no-live", "live", default=None,
              help="The study's current front as a table under the per-trial lines, updated after each trial "
                   "(every worker's) [on when stderr is a terminal, off in CI and with --quiet].")
def run_command(space: str, storage: str, study_name: str | None, n_trials: int, recipe: str | None,
                overrides: tuple[str, ...], teacher_specs: tuple[str, ...], teacher_cache: str | None, out: str,
                device: str, objective: str, sampler: str | None, population_size: int | None, seed: int | None,
                max_params: float | None, min_throughput: float | None, resolutions: Any, limits: tuple[str, ...],
                enqueue: str | None, bench_batch: int | None, bench_repeats: int | None, bench_steps: int | None,
                bench_warmup: int | None, dry_run: bool, keep_checkpoints: bool, timeout: float | None,
                heartbeat_interval: int | None, grace_period: int | None, fidelity_steps: str | None, eta: int,
                promotion: str, throughput_source: str, latency_folder: str | None, latency_clock: str,
                max_memory: str, quiet: bool, live: bool | None) -> None:
    """Run (or join) a search: each trial measures a sampled backbone and distills it briefly.

    \b
    Every trial writes one run folder under --out whose summary.json (kind
    search-trial) holds the candidate, its throughput, params, GMACs and FD
    loss; `zoo pareto OUT` draws the front. Checkpoints are deleted when a
    trial ends (--keep-checkpoints keeps them); the disk and time a sweep will
    use are printed before it starts. A trial whose proxy run diverges is
    FAIL, not a point of the front. With --fidelity, trials stopped at a
    lower rung are PRUNED (their records say so).
    \b
    Examples:
      zoo search run --n-trials 40 --fidelity 30,90 --throughput predicted --limit dim=32,48,64,80,96
      zoo search run --n-trials 40 --out runs/search --enqueue-variants all
      zoo search run --space vit-cpe --resolution 64 --teacher clip:tiny --teacher dinov2:tiny
      zoo search run --dry-run --resolution 64 --limit dim=32,48 --n-trials 8
    """
    from zoo.search.objective import DEFAULT_RECIPE, ObjectiveSettings

    if teacher_cache:
        overrides = (*overrides, f"data.teacher_cache={teacher_cache}")
    if dry_run and (recipe or overrides or teacher_specs):
        raise ConfigError("--dry-run runs no distillation: --recipe, --set, --teacher and --teacher-cache do not apply")
    bench = {"batch_size": bench_batch, "repeats": bench_repeats, "steps_per_repeat": bench_steps,
             "warmup": bench_warmup}
    settings = ObjectiveSettings(recipe=recipe or DEFAULT_RECIPE, recipe_overrides=tuple(overrides),
                                 teachers=list(teacher_specs) or None, out_dir=Path(out), device=device,
                                 objective=objective, max_params_m=max_params, min_throughput=min_throughput,
                                 bench=bench, dry_run=dry_run, keep_checkpoints=keep_checkpoints,
                                 max_memory_gb=_memory_cap(max_memory, device, dry_run))
    worker = WorkerSettings(n_trials=n_trials, sampler=sampler, population_size=population_size, seed=seed,
                            enqueue=[n.strip() for n in (enqueue or "").split(",") if n.strip()], timeout=timeout,
                            heartbeat_interval=heartbeat_interval, grace_period=grace_period, quiet=quiet,
                            live=live)
    rungs = FidelitySettings(fidelity_steps, eta, promotion, throughput_source, latency_folder, latency_clock)
    run_search(SpaceSettings(space, _square_resolutions(resolutions), limits),
               StudySettings(storage, study_name, space), worker, settings, rungs)


@search_command.command("space")
@_space_option
@_resolution_option
@_limit_option
@click.option("--list", "list_all", is_flag=True, help="List the registered spaces.")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def space_command(space: str, resolutions: Any, limits: tuple[str, ...], list_all: bool, as_json: bool) -> None:
    """Print a search space's parameters (or, with --list, every space).

    \b
    Examples:
      zoo search space
      zoo search space --resolution 224,256 --limit dim=64,96
      zoo search space --space vit-cpe --json
    """
    from zoo.search.space import list_spaces
    from zoo.ui import console

    if list_all:
        entries = list_spaces()
        if as_json:
            click.echo(json.dumps([{"name": e.name, "description": e.description,
                                    "default_resolution": e.default_resolution} for e in entries], indent=2))
        else:
            for entry in entries:
                console.print(f"{entry.name:10s} {entry.description} (default {entry.default_resolution} px)")
        return
    show_space(SpaceSettings(space, _square_resolutions(resolutions), limits).build(), as_json)


@search_command.command("best")
@_storage_option
@_study_option
@click.option("--json", "as_json", is_flag=True, help="The trials' records as JSON.")
def best_command(storage: str, study_name: str | None, as_json: bool) -> None:
    """Print the Pareto-optimal (feasible) configurations of a study.

    \b
    Example:
      zoo search best --storage sqlite:///runs/search.db --study-name eradio-search
    """
    show_best(StudySettings(storage, study_name), as_json)


@search_command.command("export")
@click.argument("target", metavar="NAME|PATH.yaml")
@_storage_option
@_study_option
@click.option("--trial", "trial_number", type=int, default=None,
              help="The trial to write [the lowest FD loss on the front].")
def export_command(target: str, storage: str, study_name: str | None, trial_number: int | None) -> None:
    """Write a trial's configuration as a backbone file that zoo distill/bench accept.

    \b
    Examples:
      zoo search export my-eradio                 # -> my-eradio.yaml, the best FD loss on the front
      zoo search export nets/pick.yaml --trial 12
      zoo distill --backbone nets/pick.yaml --recipe smoke
    """
    export_trial(StudySettings(storage, study_name), target, trial_number)
