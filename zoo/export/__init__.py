"""Export a distilled student (or a backbone) for deployment: ONNX, a timm folder, a Hugging Face folder.

::

    from zoo.export import export
    result = export("runs/resnet-18-smoke-...", "onnx")     # -> runs/.../export/model.onnx (+ model.onnx.json)
    result.report.summary_line()                            # onnxruntime vs eager: max abs diff, cosine

Formats (one module each):

* ``onnx`` (:mod:`zoo.export.onnx`): the backbone, optionally with its
  adaptor heads, through ``torch.onnx.export`` (dynamo), checked in onnxruntime;
* ``timm`` (:mod:`zoo.export.timm_folder`): a folder ``timm.create_model("local-dir:...")`` loads;
* ``hf`` (:mod:`zoo.export.hf`): the Hugging Face Hub layout with a model card.

Every export is loaded back and compared with the eager student on the same
input before it is moved into place; beyond the tolerance
(:mod:`zoo.export.verify`) it is refused and nothing is written.
:func:`zoo.load` (:mod:`zoo.export.load`) reads run folders and timm/hf exports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zoo.errors import unknown_name
from zoo.export.verify import DEFAULT_TOLERANCE, ExportResult

FORMATS = ("onnx", "timm", "hf")
EXPORTS_DIR = "exports"  # default parent of exports of an architecture name (no run folder)

__all__ = ["DEFAULT_TOLERANCE", "EXPORTS_DIR", "FORMATS", "ExportResult", "default_out", "export"]


def default_out(source: Any, fmt: str) -> Path:
    """Where an export goes without ``--out``: ``<run>/export/...`` or ``exports/<name>/...``."""
    from zoo.export.onnx import size_policy
    from zoo.runs import safe_name

    parent = source.run_dir / "export" if source.run_dir is not None else Path(EXPORTS_DIR) / safe_name(source.name)
    if fmt == "onnx":
        dynamic_hw, _ = size_policy(source.backbone, source.resolution)
        size = "" if dynamic_hw else "-" + "x".join(map(str, source.resolution))
        return parent / f"model{size}.onnx"
    return parent / fmt


def export(spec: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, *, resolution: Any = None,
           with_heads: bool | None = None, tolerance: float = DEFAULT_TOLERANCE, force: bool = False) -> ExportResult:
    """Export the run folder / registry name / backbone file ``spec`` as ``fmt`` (see the module docs).

    Args:
        out: the ONNX file or the folder to write (default: :func:`default_out`).
        resolution: the size to export at (default: the run's training size, or the entry's default).
        with_heads: include the adaptor heads (default: hf yes when the run has them, onnx no; timm never).
        tolerance: the allowed max abs difference, relative to ``max(1, max |eager|)``.
        force: replace an existing export.
    """
    from zoo.errors import ConfigError
    from zoo.export.source import open_source

    if fmt not in FORMATS:
        raise unknown_name("export format", fmt, FORMATS)
    if not tolerance > 0:
        raise ConfigError(f"--tolerance must be a positive number, got {tolerance}")
    source = open_source(spec, resolution)
    target = Path(out) if out is not None else default_out(source, fmt)
    if fmt == "onnx":
        from zoo.export.onnx import export_onnx

        return export_onnx(source, target, with_heads=bool(with_heads), tolerance=tolerance, force=force)
    if fmt == "timm":
        if with_heads:
            raise ConfigError("--with-heads: a timm folder holds the backbone only (timm has no adaptor heads); "
                              "use --format hf or onnx for the heads")
        from zoo.export.timm_folder import export_timm

        return export_timm(source, target, tolerance=tolerance, force=force)
    from zoo.export.hf import export_hf

    return export_hf(source, target, with_heads=with_heads, tolerance=tolerance, force=force)
