"""Shared terminal output: one rich console for tables, one for messages."""

from __future__ import annotations

import sys

from rich.console import Console

# Tables piped to a file keep their full width instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)  # tables and results (stdout)
err_console = Console(stderr=True)  # progress and notes (stderr)
