"""User-facing errors.

Anything raised as a :class:`ZooError` is a user mistake or an environment
problem the user can fix; the CLI prints its message on one line and exits 2.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class ZooError(Exception):
    """A problem the user can fix; shown as one line, exit status :attr:`exit_code` (2)."""

    exit_code = 2


class UnknownNameError(ZooError, KeyError):
    """An unknown backbone, teacher, recipe or metric name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ResolutionError(ZooError, ValueError):
    """An input size the architecture cannot accept."""


class ConfigError(ZooError, ValueError):
    """A bad recipe key/value or model configuration field."""


class WeightsNotFoundError(ZooError, FileNotFoundError):
    """Pretrained weights are not available locally."""


class BadFileError(ZooError, ValueError):
    """A file that exists but cannot be used: truncated, corrupt, of the wrong kind, or refused as unsafe."""


class DivergedError(ZooError):
    """A training run whose loss or gradient norm became non-finite; exit status 3.

    ``record`` is the run record written with ``status: "diverged"``; the message names the last good
    checkpoint and how to resume from it with a lower learning rate.
    """

    exit_code = 3

    def __init__(self, message: str, record: dict | None = None) -> None:
        super().__init__(message)
        self.record = record or {}


class DiskFullError(ZooError, OSError):
    """The disk filled up during a write; the message names the path and the bytes needed."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name``, best first (for 'did you mean')."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not found:  # fall back to substring matches ("vit" -> "vit-b16-cpe", ...)
        found = [c for c in candidates if name.lower() in c.lower()][:n]
    return found


def unknown_name(kind: str, name: str, candidates: Iterable[str]) -> UnknownNameError:
    """Build the standard 'unknown X' error with the closest valid names."""
    candidates = sorted(candidates)
    near = closest(name, candidates)
    hint = f"; closest: {', '.join(near)}" if near else f"; valid: {', '.join(candidates[:12])}"
    return UnknownNameError(f"unknown {kind} '{name}'{hint}")
