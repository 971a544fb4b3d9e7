"""What an export starts from: a run folder (the trained student) or a backbone with random weights.

:func:`open_source` turns ``zoo export``'s argument into an :class:`ExportSource`:

* a run folder (``summary.json`` + ``checkpoint.pt``): the distilled backbone,
  its adaptor heads and, when the run trained on PHI-S targets, the
  standardiser that maps the heads' outputs back to each teacher's space
  (:func:`zoo.loading.load_run`);
* a registry name (``resnet-18``) or a backbone file (``my-net.yaml``): the
  architecture with random initial weights (``random_init``: every output says so).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.backbone import Backbone, BackboneOutput, as_hw
from zoo.errors import ZooError
from zoo.runs import BACKBONE_FILE, CHECKPOINT_FILE, SUMMARY_FILE, RunRecord

RANDOM_INIT_NOTE = "random init: the backbone's weights were never trained (exported from an architecture name)"


@dataclass
class ExportSource:
    """A backbone (eval mode, CPU) with what an export writes beside it.

    ``heads`` / ``standardizer`` are None without a run; ``backbone_file`` is
    the backbone-file document (``name``, ``family``, ``resolution``, ``config``)
    for architectures that are not registry entries.
    """

    backbone: Backbone
    name: str
    family: str | None
    resolution: tuple[int, int]
    record: RunRecord | None = None
    heads: nn.Module | None = None
    standardizer: Any = None
    run_dir: Path | None = None
    backbone_file: dict[str, Any] | None = None
    random_init: bool = False

    @property
    def label(self) -> str:
        return str(self.run_dir) if self.run_dir is not None else self.name

    @property
    def random_teacher(self) -> bool:
        return bool(self.record is not None and self.record.is_random_teacher)

    @property
    def head_names(self) -> list[str]:
        return list(self.heads.names) if self.heads is not None else []

    def teacher_outputs(self, out: BackboneOutput) -> dict[str, Any]:
        """Every head's prediction in its teacher's space (PHI-S de-standardised when the run standardised)."""
        if self.heads is None:
            return {}
        predictions = self.heads(out)
        return self.standardizer.destandardize(predictions) if self.standardizer is not None else predictions

    def notes(self) -> list[str]:
        notes = []
        if self.random_init:
            notes.append(RANDOM_INIT_NOTE)
        if self.random_teacher:
            notes.append("random teacher: this student was distilled from random networks, "
                         "not a real distillation result")
        return notes

    def copy_backbone(self) -> Backbone:
        """A private copy (fusing for deploy mode changes a backbone in place)."""
        return copy.deepcopy(self.backbone).eval()


def is_eradio(backbone: nn.Module) -> bool:
    """An E-RADIO backbone (windows re-picked per input size, a deploy mode)."""
    from zoo.backbones.eradio_entries import ERadioBackbone

    return isinstance(backbone, ERadioBackbone)


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / SUMMARY_FILE).is_file()


def open_source(spec: str | os.PathLike, resolution: Any = None) -> ExportSource:
    """The export source ``spec`` names: a run folder, a registry name or a backbone ``.yaml`` file.

    ``resolution`` (``224``, ``(224, 320)``): the size to build a random-init
    backbone for (default: the entry's); for a run, the size it trained at
    unless given.
    """
    if is_run_dir(spec):
        return _run_source(Path(spec), resolution)
    if Path(spec).is_dir():
        raise ZooError(f"{spec} is a folder without {SUMMARY_FILE}: give a run folder written by zoo distill, "
                       "a registry name (zoo list) or a backbone .yaml file")
    text = str(spec)
    if ("/" in text or os.sep in text) and not text.endswith((".yaml", ".yml")) and not Path(text).exists():
        raise ZooError(f"no run folder {text}: give a run folder written by zoo distill, a registry name "
                       "(zoo list) or a backbone .yaml file")
    return _architecture_source(text, resolution)


def _architecture_source(name: str, resolution: Any) -> ExportSource:
    from zoo.registry import get_entry

    entry = get_entry(name)  # unknown names: one line with the closest ones
    size = as_hw(resolution) if resolution is not None else tuple(entry.default_resolution)
    backbone = entry.build(size).eval()
    document = _file_document(entry)
    return ExportSource(backbone, entry.name, entry.family, size, backbone_file=document, random_init=True)


def _file_document(entry: Any) -> dict[str, Any] | None:
    """The backbone-file document of a registry entry made from a ``.yaml`` file (None for built-in entries)."""
    kwargs = entry.kwargs
    if "config" in kwargs and "searched_resolution" in kwargs and "family" in kwargs:
        return {"name": entry.name, "family": kwargs["family"], "resolution": int(kwargs["searched_resolution"]),
                "config": dict(kwargs["config"])}
    return None


def run_backbone(root: Path, record: RunRecord, size: tuple[int, int] | None) -> tuple[Backbone | None, Any]:
    """A run of a backbone file: its backbone (built from the folder's copy of the file) and the file's document.

    ``(None, None)`` for a registry backbone (:func:`zoo.loading.load_run` rebuilds it by name).
    """
    from zoo.registry import get_entry

    if not (root / BACKBONE_FILE).is_file():
        return None, None
    entry = get_entry(str(root / BACKBONE_FILE))
    backbone = entry.build(size or entry.default_resolution)
    return backbone, {**_file_document(entry), "name": str(record.backbone)}


def _run_source(root: Path, resolution: Any) -> ExportSource:
    from zoo.loading import load_run
    from zoo.registry import get_entry
    from zoo.runs import read_record

    record = read_record(root)
    if not (root / CHECKPOINT_FILE).is_file():
        raise ZooError(f"run {root} has no {CHECKPOINT_FILE} (search trials keep none unless --keep-checkpoints); "
                       "nothing to export")
    trained = as_hw(record.resolution) if record.resolution else None
    size = as_hw(resolution) if resolution is not None else trained
    backbone, document = run_backbone(root, record, size)
    loaded = load_run(root, device="cpu", backbone=backbone)
    size = size or loaded.resolution
    if document is None:
        try:  # a run of a registry entry made from a file path (older runs record the path)
            document = _file_document(get_entry(str(record.backbone)))
        except ZooError:
            document = None
    heads = loaded.heads if loaded.head_names else None
    return ExportSource(loaded.backbone.eval(), str(record.backbone), record.family, tuple(size), record=record,
                        heads=heads, standardizer=loaded.standardizer, run_dir=root, backbone_file=document)


class WithHeads(nn.Module):
    """Backbone (+ adaptor heads) as one module with flat outputs (what an ONNX graph returns).

    Outputs: ``summary``, ``features``, then with ``with_heads`` per teacher
    ``<name>.summary`` (when the teacher has one) and ``<name>.features``, in
    the teacher's space (PHI-S de-standardised when the run standardised).
    """

    def __init__(self, source: ExportSource, backbone: Backbone, with_heads: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = source.heads if with_heads else None
        self.standardizer = source.standardizer if with_heads else None
        self.output_names = ["summary", "features"]
        if self.heads is not None:
            for name in self.heads.names:
                if name in self.heads.summary_heads:
                    self.output_names.append(f"{name}.summary")
                self.output_names.append(f"{name}.features")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.backbone(x)
        outputs = [out[0], out[1]]
        if self.heads is not None:
            predictions = self.heads(out)
            if self.standardizer is not None:
                predictions = self.standardizer.destandardize(predictions)
            for name in self.heads.names:
                if predictions[name].summary is not None:
                    outputs.append(predictions[name].summary)
                outputs.append(predictions[name].features)
        return tuple(outputs)
