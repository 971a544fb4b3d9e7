"""YOLOv8's C2f block, imported from ultralytics without its import-time side effects.

``import ultralytics.nn.modules.block`` runs ``ultralytics/__init__.py`` and
``ultralytics.utils`` first, which (ultralytics 8.4):

* resolves two DNS names to decide whether it is online (``is_online()``),
* writes a settings file to ``~/.config/Ultralytics/settings.json`` if none
  exists (and logs "Creating new Ultralytics Settings" to stdout),
* sets ``OMP_NUM_THREADS=1`` in the environment if it is unset, which every
  subprocess started later (e.g. one benchmark process per model) inherits.

So the import runs with ``YOLO_OFFLINE=1`` (no DNS) and, when the user has no
ultralytics settings of their own, ``YOLO_CONFIG_DIR`` pointing at a private
scratch folder (``$TMPDIR/eradio-ultralytics-<uid>``, reused by every process
so nothing piles up; ``YOLO_VERBOSE=False`` keeps the "Creating new settings"
notice off stdout); the environment is restored afterwards. A user who
already has ultralytics settings (or sets ``YOLO_CONFIG_DIR``) keeps them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_ENV_KEYS = ("OMP_NUM_THREADS", "YOLO_OFFLINE", "YOLO_CONFIG_DIR", "YOLO_VERBOSE")


def _user_settings_file() -> Path:
    """Where ultralytics keeps its settings when ``YOLO_CONFIG_DIR`` is unset (Linux/macOS/Windows)."""
    if sys.platform.startswith("win"):
        base = Path.home() / "AppData" / "Roaming"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "Ultralytics" / "settings.json"


def _scratch_dir() -> str:
    """A folder only this user owns, the same for every process (else a fresh one)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"eradio-ultralytics-{uid}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if os.path.isdir(path) and not os.path.islink(path) and info.st_uid == uid:
            return path
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="eradio-ultralytics-")


def _import_c2f() -> type:
    if "ultralytics" in sys.modules:  # already imported by someone else: nothing left to guard
        from ultralytics.nn.modules.block import C2f

        return C2f
    saved = {key: os.environ.get(key) for key in _ENV_KEYS}
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if saved["YOLO_CONFIG_DIR"] is None and not _user_settings_file().exists():
        os.environ["YOLO_CONFIG_DIR"] = _scratch_dir()
        os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        from ultralytics.nn.modules.block import C2f
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return C2f


C2f = _import_c2f()

__all__ = ["C2f"]
