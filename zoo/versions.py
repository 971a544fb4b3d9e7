"""Library versions recorded with every result (bench figures, run records, cache manifests)."""

from __future__ import annotations

import importlib.metadata
import platform

# Packages whose version can change a result; a missing optional one is recorded as None.
RECORDED_PACKAGES = ("torch", "timm", "open_clip_torch", "numpy")


def versions() -> dict[str, str | None]:
    """``{"torch": ..., "timm": ..., "open_clip": ..., "numpy": ..., "zoo": ..., "python": ...}`` (no imports of them)."""
    from zoo import __version__

    info: dict[str, str | None] = {}
    for package in RECORDED_PACKAGES:
        key = "open_clip" if package == "open_clip_torch" else package
        try:
            info[key] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[key] = None
    info["zoo"] = __version__
    info["python"] = platform.python_version()
    return info
