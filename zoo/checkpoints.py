"""Safe, atomic file I/O for checkpoints and results.

Checkpoints load with ``weights_only=True`` unless the caller explicitly
trusts the file; every write goes to a temporary file in the same folder and
is renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from zoo.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, finish_temp  # noqa: F401 (re-exported)
from zoo.errors import WeightsNotFoundError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        finish_temp(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, trust: bool = False, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch checkpoint; ``weights_only=True`` unless ``trust`` is set."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=not trust)


def load_state_dict_file(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, ``.pt``/``.pth``/``.bin`` (or a ``{'model': ...}`` checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = load_checkpoint(path, trust=trust)
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj
