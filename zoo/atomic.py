"""Atomic file writes without heavy imports (no torch), for results and figures.

Every write goes to a temporary file in the destination folder, is flushed to
disk and renamed into place, so a crash or Ctrl-C never leaves a half-written
file and an existing file is either the old or the new version.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from zoo.errors import DiskFullError


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp's files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def finish_temp(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temp file the usual permissions and rename it into place."""
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)


def temp_path_for(path: Path) -> str:
    """A new temp file beside ``path`` named ``.<name>.<random>.tmp`` (what :func:`remove_stale_temps` cleans)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temp files a write of ``path`` killed mid-way left beside it (``.<name>.*.tmp``); returns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return remove_files(path.parent.glob(f".{path.name}.*.tmp"))


def remove_files(paths: Iterable[Path]) -> list[Path]:
    """Delete ``paths`` (one already gone is fine); returns those removed."""
    removed = []
    for stale in paths:
        try:
            stale.unlink()
            removed.append(stale)
        except FileNotFoundError:
            pass
    return removed


def disk_full_error(path: str | os.PathLike, needed: int | None) -> DiskFullError:
    """The one-line error for ENOSPC while writing ``path``: the path, the bytes needed and free."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    except OSError:
        free = None
    need = f"{needed:,} bytes needed" if needed is not None else "bytes needed unknown"
    have = f", {free:,} free" if free is not None else ""
    return DiskFullError(f"disk full while writing {path} ({need}{have}); the previous version of the file, "
                         "if any, is intact. Free some space and run the command again")


def write_via_temp(path: str | os.PathLike, write: Callable[[str], None], size_hint: int | None = None) -> Path:
    """Run ``write(tmp_path)`` then rename the temp file onto ``path``; on any failure the temp file is removed.

    A full disk (ENOSPC, EDQUOT) becomes a :class:`~zoo.errors.DiskFullError` naming ``path`` and the bytes
    needed (``size_hint``, or what was written when it failed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        write(tmp)
        finish_temp(tmp, path)
    except OSError as err:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else None
        Path(tmp).unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(path, size_hint if size_hint is not None else written) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file + rename."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    return write_via_temp(path, write, size_hint=len(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (non-JSON values through ``str``)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
