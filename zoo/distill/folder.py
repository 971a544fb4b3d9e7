"""Writing into the run folder: the checkpoint, the metrics lines, what a killed write left behind."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from zoo.atomic import atomic_write_text, remove_stale_temps, write_via_temp
from zoo.runs import RunPaths


def write_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` atomically; a full disk is one line naming the path and bytes, the old file intact.

    Saved through a Python file object: ``torch.save(obj, path)`` writes from C++ and reports ENOSPC as a
    RuntimeError, while a file object's ``write`` raises the OSError that :func:`write_via_temp` turns
    into a :class:`~zoo.errors.DiskFullError`.
    """
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    remove_stale_temps(path)  # a write killed mid-way left a temp file up to the checkpoint's size
    write_via_temp(path, write)


def remove_killed_writes(paths: RunPaths) -> list[Path]:
    """Remove the temp files of writes killed mid-way (``.checkpoint.pt.*.tmp`` and the like)."""
    removed = []
    for stale in paths.stale_temp_files():
        try:
            stale.unlink()
            removed.append(stale)
        except FileNotFoundError:
            pass
    return removed


def finite_or_none(value: Any) -> Any:
    """NaN/inf as None: metrics and records stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value


def append_metrics(path: Path, line: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(finite_or_none(line)) + "\n")


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines past the checkpoint (they are logged again after resuming)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
