"""Exports are written into a hidden folder beside their target and moved into place only once checked.

A refused or interrupted export leaves nothing at the target (an existing
target stays as it was); the hidden ``.<name>.<random>.tmp`` folder is
removed on any failure, and stale ones of killed exports are removed by the
next export of the same target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from zoo.atomic import disk_full_error
from zoo.errors import ZooError


def check_target(path: Path, force: bool) -> None:
    """Refuse (one line) to replace an existing export unless ``force``."""
    if path.exists() and not force:
        kind = "folder" if path.is_dir() else "file"
        raise ZooError(f"{path} exists ({kind}); choose another --out or pass --force to replace it")


def remove_stale(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``path``; removed when the block fails (full disk: one line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(path, None) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if tmp.exists() and not any(tmp.iterdir()):
            tmp.rmdir()


def publish_dir(tmp: Path, path: Path) -> Path:
    """Move the checked folder ``tmp`` onto ``path`` (an existing ``path`` is replaced only now)."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.replace(path, old / path.name)
    os.chmod(tmp, 0o777 & ~_umask())
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def publish_files(tmp: Path, names: list[str], parent: Path, last: str | None = None) -> None:
    """Move files ``names`` of ``tmp`` into ``parent`` (``last`` moved last: the report that vouches for the rest)."""
    ordered = [n for n in names if n != last] + ([last] if last in names else [])
    for name in ordered:
        target = parent / name
        if target.is_dir():
            raise ZooError(f"{target} is a folder; cannot replace it with the exported file")
        os.replace(tmp / name, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
