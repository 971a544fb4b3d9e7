"""Shared terminal output: one rich console for tables, one for messages."""

from __future__ import annotations

import sys

from rich.console import Console

# Tables piped to a file keep their full width instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)  # tables and results (stdout)
err_console = Console(stderr=True)  # progress and notes (stderr)


def img_rate(value: float) -> str:
    """img/s with three significant digits at least (slow CPU runs are below 1 img/s)."""
    return f"{value:.1f}" if value >= 100 else f"{value:.3g}"


def duration(seconds: float) -> str:
    """A rough human duration: ``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
