"""The live view of a running search: the study's current front as a small rich table, on stderr.

:func:`front_table` is a pure function (trials in, :class:`rich.table.Table` out): a worker builds
it from the shared storage after each finished trial, so other workers' trials show too.
:class:`LiveFront` shows it under the per-trial lines with :class:`rich.live.Live` (which prints
those lines, and anything written to stdout/stderr meanwhile, above the table). It is on when
stderr is a terminal and the environment is not CI, or when asked (``--live``).

Rows: every evaluated trial (COMPLETE, or PRUNED by the rung schedule with its record) that no
other feasible one dominates in (throughput, FD loss), each at the highest rung it reached;
infeasible, failed and skipped trials are never rows. Throughput says whether it was measured
or predicted (latency table; "measured" once the front was re-measured), the FD loss whether it
came from a proxy distillation or the dry-run surrogate.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from zoo.ui import duration, img_rate

MAX_ROWS = 10  # a small table: the rest of the front is counted in the caption
REFRESH_PER_SECOND = 1  # elapsed time ticks; the storage is read only when a trial finishes


@dataclass
class Point:
    """One evaluated trial as the table shows it."""

    number: int
    throughput: float
    throughput_source: str  # measured | predicted
    fd_loss: float
    fd_loss_source: str  # proxy | surrogate
    params_m: float | None
    rung: int | None  # 0-based highest rung reached (multi-fidelity), else None
    rung_steps: int | None
    feasible: bool
    complete: bool


@dataclass
class Progress:
    """The footer: the study's trials against the budget, and time."""

    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None


def trial_point(trial: Any, measured: Mapping[str, Any] | None = None) -> Point | None:
    """The point of an evaluated trial (from its record), or None (failed, skipped, nothing recorded yet)."""
    state = trial.state.name
    record = trial.user_attrs.get("record")
    if state not in ("COMPLETE", "PRUNED") or "skipped" in trial.user_attrs or not isinstance(record, dict):
        return None
    throughput = (record.get("throughput") or {}).get("median")
    if not isinstance(throughput, (int, float)) or not isinstance(record.get("fd_loss"), (int, float)):
        return None
    search = record.get("search") or {}
    source = "predicted" if search.get("throughput_source") == "predicted" else "measured"
    later = (measured or {}).get(str(trial.number)) if isinstance(measured, Mapping) else None
    if isinstance(later, Mapping) and isinstance(later.get("throughput"), Mapping):
        throughput, source = later["throughput"].get("median", throughput), "measured"
    rung = search.get("rung")
    return Point(number=trial.number, throughput=float(throughput), throughput_source=source,
                 fd_loss=float(record["fd_loss"]), fd_loss_source=fd_loss_source(record),
                 params_m=record.get("params_m"), rung=rung if isinstance(rung, int) else None,
                 rung_steps=search.get("rung_steps"), feasible=bool(search.get("feasible", True)),
                 complete=state == "COMPLETE")


def fd_loss_source(record: Mapping[str, Any]) -> str:
    """``surrogate`` (dry run) or ``proxy`` (a proxy distillation), from a trial record of any version."""
    source = record.get("fd_loss_source")
    if source is None and str(record.get("note") or "").startswith("dry run"):
        source = "surrogate"  # records written before fd_loss_source existed said it in their note
    return "surrogate" if source == "surrogate" else "proxy"


def front_points(points: Sequence[Point], single_objective: bool = False) -> list[Point]:
    """The feasible points no other feasible point dominates (max throughput, min FD loss), best FD loss first;
    ``single_objective``: the lowest FD loss alone."""
    feasible = [p for p in points if p.feasible]
    if single_objective:
        best = min((p.fd_loss for p in feasible), default=None)
        front = [p for p in feasible if p.fd_loss == best]
    else:
        front = [p for p in feasible if not any(_dominates(o, p) for o in feasible)]
    return sorted(front, key=lambda p: (p.fd_loss, -p.throughput, p.number))


def _dominates(a: Point, b: Point) -> bool:
    return (a.throughput >= b.throughput and a.fd_loss <= b.fd_loss
            and (a.throughput > b.throughput or a.fd_loss < b.fd_loss))


def front_table(trials: Sequence[Any], progress: Progress, rungs: Sequence[int] | None = None,
                measured: Mapping[str, Any] | None = None, single_objective: bool = False,
                title: str = "current front", max_rows: int = MAX_ROWS) -> Any:
    """The table of the current front of ``trials`` (Optuna ``FrozenTrial``s of one study) and its footer.

    ``rungs``: the study's rung schedule (proxy steps), adds the "rung" column; ``measured``: the study's
    ``zoo_measured`` attribute (front trials whose predicted throughput was measured afterwards).
    """
    from rich.table import Table

    points = [p for p in (trial_point(t, measured) for t in trials) if p is not None]
    front = front_points(points, single_objective)
    table = Table(title=f"{title} ({len(front)} of {len(points)} evaluated)", title_justify="left",
                  caption=footer(progress, hidden=max(0, len(front) - max_rows)), caption_justify="left")
    for name in ("#", "trial", "img/s", "speed", "FD loss", "FD from", "params M"):
        table.add_column(name, justify="right" if name in ("#", "trial", "img/s", "FD loss", "params M") else "left")
    if rungs:
        table.add_column("rung", justify="right")
    for rank, point in enumerate(front[:max_rows], start=1):
        cells = [str(rank), str(point.number), img_rate(point.throughput), point.throughput_source,
                 f"{point.fd_loss:.4f}", point.fd_loss_source,
                 f"{point.params_m:.2f}" if isinstance(point.params_m, (int, float)) else "—"]
        if rungs:
            cells.append(_rung_cell(point, rungs))
        table.add_row(*cells)
    return table


def _rung_cell(point: Point, rungs: Sequence[int]) -> str:
    if point.rung is None:
        return "—"
    steps = point.rung_steps if point.rung_steps is not None else rungs[min(point.rung, len(rungs) - 1)]
    return f"{point.rung + 1}/{len(rungs)} ({steps} steps)"


def footer(progress: Progress, hidden: int = 0) -> str:
    """``trials 5/20: 3 done, 1 pruned, 0 failed, 1 running; elapsed 2 min, ETA ~6 min``."""
    finished = progress.complete + progress.pruned
    text = (f"trials {finished + progress.running}/{progress.n_trials}: {progress.complete} done, {progress.pruned} "
            f"pruned, {progress.failed} failed, {progress.running} running")
    times = []
    if progress.elapsed_s is not None:
        times.append(f"elapsed {duration(progress.elapsed_s)}")
    if progress.eta_s is not None:
        times.append(f"ETA ~{duration(progress.eta_s)}")
    if times:
        text += "; " + ", ".join(times)
    if hidden:
        text += f"; {hidden} more on the front (zoo search best)"
    return text


def eta_seconds(n_trials: int, finished: int, running: int, finished_here: int, elapsed_s: float,
                seconds_per_trial: float | None) -> float | None:
    """Seconds until the budget is done: at the pace seen since this worker started (all workers' trials),
    else from an estimate per trial (the sweep preview's) for one worker; None when neither is known."""
    left = max(0, n_trials - finished)
    if left == 0:
        return 0.0
    if finished_here > 0 and elapsed_s > 0:
        return left * elapsed_s / finished_here
    if seconds_per_trial is not None:
        return max(0.0, left * seconds_per_trial - (elapsed_s if running else 0.0))
    return None





def live_wanted(requested: bool | None, console: Any, quiet: bool = False) -> bool:
    """``--live``/``--no-live`` when given; else on when stderr is a terminal, not in CI, and not ``--quiet``."""
    if requested is not None:
        return requested
    if quiet or os.environ.get("CI"):
        return False
    return bool(console.is_terminal) and not console.is_dumb_terminal


class LiveFront:
    """The table kept under the worker's output while it runs (a context manager; :meth:`update` after each trial).

    The storage is read in :meth:`update` only; between updates the display re-renders the last
    snapshot with the elapsed time moving on. The table is transient: the final front is printed
    by the command when the worker ends.
    """

    def __init__(self, study: Any, n_trials: int, console: Any, seconds_per_trial: float | None = None,
                 rungs: Sequence[int] | None = None, clock: Any = time.monotonic) -> None:
        self.study = study
        self.n_trials = n_trials
        self.console = console
        self.seconds_per_trial = seconds_per_trial
        self.rungs = list(rungs) if rungs else None
        self.clock = clock
        self.start = clock()
        self.finished_at_start: int | None = None
        self.snapshot: tuple[list[Any], Any, Any] = ([], None, None)
        self.single_objective = len(study.directions) == 1
        self.title = f"study {study.study_name!r}: current front"
        self.live: Any = None
        self._streams: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> "LiveFront":
        from rich.live import Live

        self.update()
        streams = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
        self.live = Live(console=self.console, get_renderable=self.renderable, refresh_per_second=REFRESH_PER_SECOND,
                         transient=True, redirect_stdout=True, redirect_stderr=True)
        self.live.__enter__()
        self._redirect_logging(streams)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore_logging()
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def update(self) -> None:
        """Read the study's trials from the storage (every worker's) and redraw."""
        from zoo.search.study import trial_counts

        trials = self.study.get_trials(deepcopy=False)
        counts = trial_counts(self.study)
        finished = counts.complete + counts.pruned
        if self.finished_at_start is None:
            self.finished_at_start = finished
        measured = self.study.user_attrs.get("zoo_measured")
        self.snapshot = (trials, counts, measured)
        if self.live is not None:
            self.live.refresh()

    def progress(self) -> Progress:
        _, counts, _ = self.snapshot
        elapsed = self.clock() - self.start
        if counts is None:
            return Progress(self.n_trials, elapsed_s=elapsed)
        finished = counts.complete + counts.pruned
        eta = eta_seconds(self.n_trials, finished, counts.running, finished - (self.finished_at_start or 0), elapsed,
                          self.seconds_per_trial)
        return Progress(self.n_trials, counts.complete, counts.pruned, counts.failed, counts.running, elapsed, eta)

    def renderable(self) -> Any:
        trials, _, measured = self.snapshot
        return front_table(trials, self.progress(), self.rungs, measured, self.single_objective, self.title)

    def _redirect_logging(self, streams: Sequence[Any]) -> None:
        """Log handlers that hold the terminal's stream (Optuna's) write through Live's redirect instead,
        above the table, not through it."""
        for logger in (logging.getLogger(), logging.getLogger("optuna")):
            for handler in logger.handlers:
                if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                        and any(handler.stream is s for s in streams) and handler.stream is not sys.stderr):
                    self._streams.append((handler, handler.setStream(sys.stderr)))

    def _restore_logging(self) -> None:
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._streams.clear()
