"""The one progress bar every long job shows (distill, cache build, bench, eval), on stderr."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool = True, eta: bool = True, info: bool = True, transient: bool = False) -> Any:
    """A rich ``Progress``: description, bar, n/N, elapsed, ETA (``eta``) and a ``{task.fields[info]}`` text (``info``).

    Tasks added to it with ``info=True`` need an ``info=""`` field: ``bar.add_task("distill", total=n, info="")``.
    Disabled (no output) when ``enabled`` is false, e.g. on non-zero DDP ranks or with ``--quiet``.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from zoo.ui import err_console

    columns: list[Any] = [TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn()]
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=err_console, transient=transient, disable=not enabled)
