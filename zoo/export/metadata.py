"""What every export records about its source: the student, its teachers, its preprocessing.

:func:`source_document` is the ``zoo`` block of an exported ``config.json``
and of ONNX reports; :func:`zoo.export.load.load` rebuilds the student from it
(registry name or backbone-file document, resolution, heads' dimensions).
"""

from __future__ import annotations

from typing import Any

from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from zoo.export.source import ExportSource

EXPORT_LAYOUT_VERSION = 1
# What zoo.data.student_view does: [0, 1] images resized (bilinear, antialiased, no crop), then normalised.
INTERPOLATION = "bilinear"
CROP_PCT = 1.0


def preprocessing(source: ExportSource) -> dict[str, Any]:
    """Mean/std, the trained input size and the size rule (which other sizes the backbone takes)."""
    rule = source.backbone.size_rule
    return {
        "input_range": [0.0, 1.0],
        "mean": list(IMAGENET_DEFAULT_MEAN),
        "std": list(IMAGENET_DEFAULT_STD),
        "resolution": list(source.resolution),
        "interpolation": INTERPOLATION,
        "antialias": True,
        "crop_pct": CROP_PCT,
        "size_rule": {"multiple": rule.multiple, "minimum": rule.minimum, "maximum": rule.maximum,
                      "square": rule.square},
        "stride": int(source.backbone.stride),
    }


def teacher_entries(source: ExportSource) -> list[dict[str, Any]]:
    """The run's teachers as recorded (spec, dims, weights file hash, random or not)."""
    if source.record is None:
        return []
    keys = ("name", "spec", "kind", "model", "pretrained_tag", "summary_dim", "feature_dim", "resolution",
            "random", "weights", "weights_sha256")
    return [{k: t.get(k) for k in keys if k in t} for t in source.record.teachers]


def head_dims(source: ExportSource) -> list[dict[str, Any]]:
    if source.heads is None:
        return []
    return [{"name": d.name, "summary_dim": int(d.summary_dim), "feature_dim": int(d.feature_dim)}
            for d in source.heads.teachers]


def source_document(source: ExportSource) -> dict[str, Any]:
    """The ``zoo`` block: enough to rebuild the student (and its heads) with :func:`zoo.load`."""
    record = source.record
    return {
        "layout_version": EXPORT_LAYOUT_VERSION,
        "backbone": source.name,
        "family": source.family,
        "backbone_file": source.backbone_file,
        "resolution": list(source.resolution),
        "summary_dim": int(source.backbone.summary_dim),
        "feature_dim": int(source.backbone.feature_dim),
        "stride": int(source.backbone.stride),
        "random_init": source.random_init,
        "random_teacher": source.random_teacher,
        "run_id": record.run_id if record else None,
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "teachers": teacher_entries(source),
        "heads": head_dims(source),
        "standardized": source.standardizer is not None,
    }
