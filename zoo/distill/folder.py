"""Writing into the run folder: the checkpoint, the metrics lines, what a killed write left behind."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


from zoo.atomic import atomic_write_text, remove_files
from zoo.runs import RunPaths


def remove_killed_writes(paths: RunPaths) -> list[Path]:
    """Remove the temp files of writes killed mid-way (``.checkpoint.pt.*.tmp`` and the like)."""
    return remove_files(paths.stale_temp_files())


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
