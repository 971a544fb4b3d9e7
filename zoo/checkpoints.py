"""Safe, atomic file I/O for checkpoints and results.

Checkpoints load with ``weights_only=True`` unless the caller explicitly
trusts the file; every write goes to a temporary file in the same folder and
is renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from zoo.atomic import (atomic_write_bytes, atomic_write_json, atomic_write_text,  # noqa: F401 (re-exported)
                        finish_temp, remove_stale_temps, write_via_temp)
from zoo.errors import BadFileError, WeightsNotFoundError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temp file + rename; temp files of earlier killed writes of ``path`` are removed.

    A full disk raises :class:`~zoo.errors.DiskFullError` (path and bytes needed) and leaves the old file intact.
    """
    def write(tmp: str) -> None:
        # Through a Python file object: torch.save(obj, path) writes from C++ and reports ENOSPC as a
        # RuntimeError, while the file object's write raises the OSError that becomes a DiskFullError.
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())

    remove_stale_temps(path)  # a write killed mid-way left a temp file up to the checkpoint's size
    return write_via_temp(path, write)


TRUST_HINT = "pass it only if you trust it, with --trust-checkpoint (or trust=True in Python)"


def load_checkpoint(path: str | os.PathLike, trust: bool = False, map_location: str | torch.device = "cpu",
                    trust_hint: str = TRUST_HINT) -> Any:
    """Load a torch checkpoint; ``weights_only=True`` unless ``trust`` is set.

    A missing file raises :class:`WeightsNotFoundError`; a truncated or foreign file, or one whose pickled
    payload weights-only loading refuses, raises :class:`BadFileError` with one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as err:
        # only a well-formed torch file (a zip archive) can hold a payload that weights-only loading refuses
        if not trust and zipfile.is_zipfile(path) and "weights_only" in str(err).lower().replace(" ", "_"):
            raise BadFileError(f"refused: {path} is not a plain weights file (it holds pickled Python objects "
                               f"that weights-only loading does not run); {trust_hint}") from None
        raise BadFileError(f"{path} is not a readable torch checkpoint (truncated or corrupt: "
                           f"{_first_line(err)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError, IndexError,
            KeyError, TypeError) as err:
        if isinstance(err, OSError) and err.errno is not None and not isinstance(err, EOFError):
            raise BadFileError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
        raise BadFileError(f"{path} is not a readable torch checkpoint (truncated, corrupt or not a torch file: "
                           f"{_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0][:160] if text else ""
    return f"{type(err).__name__}: {line}" if len(line) < 12 else line


def load_state_dict_file(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, ``.pt``/``.pth``/``.bin`` (or a ``{'model': ...}`` checkpoint).

    Garbage files raise :class:`BadFileError` naming the file, never a library traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise BadFileError(f"{path} is not a readable .safetensors file ({_first_line(err)})") from None
    obj = load_checkpoint(path, trust=trust)
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise BadFileError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return obj
