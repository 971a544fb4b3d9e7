"""``zoo.load(path)``: a distilled student from a run folder or an exported timm/hf folder.

Both give a :class:`zoo.loading.LoadedRun` in eval mode::

    student = zoo.load("runs/resnet-18-smoke-20260101-120000")   # or an exported folder
    out, adaptors = student(images)        # images [B, 3, H, W] in [0, 1]
    out.summary, out.features              # the backbone's own outputs
    adaptors["clip"].summary               # the CLIP head's prediction, in CLIP's space
    student.mean, student.std, student.resolution, student.backbone.size_rule   # preprocessing

An exported folder (``zoo export --format timm|hf``) is rebuilt from the
``zoo`` block of its ``config.json`` (registry name or backbone-file document,
trained resolution) and ``model.safetensors``; ``adaptors.safetensors`` (hf
format) brings the heads and the PHI-S statistics back. Files whose sha256
differs from the export's ``export.json`` are refused in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from zoo.backbone import Backbone, as_hw
from zoo.errors import BadFileError, ZooError
from zoo.export.source import is_run_dir, run_backbone
from zoo.export.timm_folder import CONFIG_FILE, REPORT_FILE, WEIGHTS_FILE
from zoo.runs import RunRecord

ADAPTORS_FILE = "adaptors.safetensors"
RECORD_FILE = "run_record.json"
HEADS_PREFIX = "heads."
STANDARDIZER_PREFIX = "standardizer."


class NoHeads(nn.Module):
    """The heads of a student exported without any: no teacher, no prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.teachers: list[Any] = []
        self.summary_heads = nn.ModuleDict()
        self.feature_heads = nn.ModuleDict()

    @property
    def names(self) -> list[str]:
        return []

    def forward(self, out: Any) -> dict[str, Any]:
        return {}


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """The student at ``path`` (a run folder, or a folder written by ``zoo export --format timm|hf``)."""
    from zoo.runs import read_record

    path = Path(path)
    if is_run_dir(path):
        from zoo.loading import load_run

        record = read_record(path)
        size = as_hw(record.resolution) if record.resolution else None
        backbone, _ = run_backbone(path, record, size)
        return load_run(path, device=device, backbone=backbone)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return load_exported(path, device)
    if path.suffix == ".onnx":
        raise ZooError(f"{path} is an ONNX file: run it with onnxruntime (zoo.export.onnx.read_onnx), "
                       "zoo.load takes a run folder or an exported timm/hf folder")
    raise ZooError(f"{path} is neither a run folder (summary.json) nor an exported folder (config.json); "
                   "give a folder written by zoo distill or zoo export")


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` with its ``zoo`` block; one line for anything else."""
    file = folder / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BadFileError(f"{file} is not readable JSON ({type(err).__name__})") from None
    if not isinstance(config, dict) or not isinstance(config.get("zoo"), dict):
        raise BadFileError(f"{file} has no 'zoo' block: not a zoo export (a plain timm folder loads with "
                           "timm.create_model('local-dir:...'))")
    return config


def load_exported(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """A :class:`~zoo.loading.LoadedRun` for an exported timm/hf folder."""
    from zoo.checkpoints import load_state_dict_file
    from zoo.devices import resolve_device
    from zoo.export.verify import check_files, read_report
    from zoo.loading import LoadedRun

    folder = Path(folder)
    config = read_config(folder)
    if (folder / REPORT_FILE).is_file():
        check_files(folder, read_report(folder / REPORT_FILE))
    doc = config["zoo"]
    resolution = as_hw(tuple(doc["resolution"]))
    backbone = rebuild_backbone(doc, resolution, folder)
    weights = load_state_dict_file(folder / WEIGHTS_FILE)
    target = backbone.model if config["zoo"].get("weights_layout", "timm") == "timm" else backbone
    _load(target, weights, folder / WEIGHTS_FILE)
    heads, standardizer = _adaptors(folder, doc, backbone)
    record = _record(folder, doc)
    device = resolve_device(device)
    backbone.to(device).eval()
    heads.to(device).eval()
    if standardizer is not None:
        standardizer.summary.to(device)  # per part: TeacherStandardizer shadows nn.Module._apply
        standardizer.features.to(device)
        standardizer.eval()
    return LoadedRun(backbone, heads, list(heads.teachers), None, record, folder, device, standardizer)


def rebuild_backbone(doc: Mapping[str, Any], resolution: tuple[int, int], folder: Path) -> Backbone:
    """The architecture the ``zoo`` block names, with random weights, built for ``resolution``."""
    from zoo.backbones.files import check_document
    from zoo.registry import create_backbone

    if doc.get("backbone_file"):
        backbone_file = check_document(doc["backbone_file"], str(folder / CONFIG_FILE))
        return backbone_file.build(resolution)
    try:
        return create_backbone(str(doc["backbone"]), resolution)
    except ZooError as err:
        raise ZooError(f"{folder}: cannot rebuild its backbone '{doc.get('backbone')}': {err}") from None


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise BadFileError(f"{file} does not fit the exported architecture: {detail[:240]}") from None


def _adaptors(folder: Path, doc: Mapping[str, Any], backbone: Backbone) -> tuple[nn.Module, Any]:
    """The heads and PHI-S statistics of ``adaptors.safetensors`` (``NoHeads()``, None without the file)."""
    file = folder / ADAPTORS_FILE
    if not file.is_file() or not doc.get("heads"):
        return NoHeads(), None
    from zoo.checkpoints import load_state_dict_file
    from zoo.heads import AdaptorHeads, TeacherDims

    state = load_state_dict_file(file)
    dims = [TeacherDims(str(h["name"]), int(h["summary_dim"]), int(h["feature_dim"])) for h in doc["heads"]]
    heads = AdaptorHeads(backbone.summary_dim, backbone.feature_dim, dims)
    _load(heads, {k[len(HEADS_PREFIX):]: v for k, v in state.items() if k.startswith(HEADS_PREFIX)}, file)
    phi_s = {k[len(STANDARDIZER_PREFIX):]: v for k, v in state.items() if k.startswith(STANDARDIZER_PREFIX)}
    if not phi_s:
        return heads, None
    from zoo.standardize import TeacherStandardizer

    try:
        return heads, TeacherStandardizer.from_state_dict(phi_s)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise BadFileError(f"{file}: its PHI-S statistics do not load ({err})") from None


def _record(folder: Path, doc: Mapping[str, Any]) -> RunRecord:
    """The run record saved with the export, or one made from the ``zoo`` block."""
    file = folder / RECORD_FILE
    if file.is_file():
        try:
            return RunRecord.from_dict(json.loads(file.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, ValueError) as err:
            raise BadFileError(f"{file} is not a readable run record ({type(err).__name__})") from None
    return RunRecord(run_id=str(doc.get("run_id") or folder.name), backbone=str(doc.get("backbone")),
                     family=doc.get("family"), resolution=list(doc["resolution"]),
                     teachers=list(doc.get("teachers") or []), random_teacher=bool(doc.get("random_teacher")))
