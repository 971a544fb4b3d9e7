"""A folder ``timm.create_model("local-dir:PATH", pretrained=True)`` loads: ``config.json`` + ``model.safetensors``.

The layout is timm's own (what ``timm.models.push_to_hf_hub`` writes):
``config.json`` holds ``architecture``, ``num_classes`` (0: the student has no
classifier), ``num_features``, ``model_args`` and a ``pretrained_cfg`` with the
mean/std and input size the student was trained at (``bilinear``, crop 1.0:
zoo resizes without cropping); ``model.safetensors`` holds the backbone's
weights under the timm model's own keys (zoo's wrapper prefix ``model.``
stripped). A ``zoo`` block in ``config.json`` (ignored by timm) says where it
came from, for :func:`zoo.load`.

Families:

* timm backbones (ResNet, ConvNeXt, EfficientNetV2, ...): the timm architecture.
* E-RADIO: ``eradio_<variant>`` (``import eradio`` registers them in timm)
  with its full config in ``model_args`` and the attention window picked for
  the trained resolution; at another resolution call
  ``model.set_window_for_resolution((H, W))`` first.
* ViT-CPE is not a timm architecture (timm's ViT has no cropped position
  embeddings): refused for this format; ``--format hf`` + :func:`zoo.load` or
  ``--format onnx`` serve it.

The export is loaded back through ``timm.create_model`` and compared with the
eager student (summary and features) before the folder is moved into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo.atomic import atomic_write_json
from zoo.errors import ConfigError, ZooError
from zoo.export.metadata import CROP_PCT, INTERPOLATION, preprocessing, source_document
from zoo.export.source import ExportSource, is_eradio
from zoo.export.verify import DEFAULT_TOLERANCE, CheckReport, ExportResult, compare, file_hashes, merge

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "export.json"
WRAPPER_PREFIX = "model."  # TimmBackbone / ERadioBackbone keep the network as ``self.model``
LOCAL_DIR = "timm.create_model('local-dir:...')"
ERADIO_FALLBACK_ARCH = "eradio_b"  # any E-RADIO entry point: the full config in model_args replaces its fields


@dataclass
class TimmSpec:
    """How the student is written as a timm model."""

    architecture: str | None  # None: not a timm architecture (zoo.load only)
    model_args: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    layout: str  # "timm": keys of the timm model; "zoo": keys of zoo's backbone wrapper
    fixed_input_size: bool
    notes: list[str] = field(default_factory=list)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # the architecture's own defaults (first_conv...)


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous, unshared CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _strip(state: dict[str, torch.Tensor], prefix: str = WRAPPER_PREFIX) -> dict[str, torch.Tensor]:
    if not all(k.startswith(prefix) for k in state):
        raise ZooError(f"unexpected weight names (not all under '{prefix}'): cannot map them to the timm model")
    return {k[len(prefix):]: v for k, v in state.items()}


def _default_cfg(architecture: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture)
    return cfg.to_dict() if cfg is not None else {}


def timm_spec(source: ExportSource, for_timm: bool = True) -> TimmSpec:
    """The architecture, arguments and re-keyed weights of ``source``'s backbone as a timm model.

    ``for_timm=False`` (the hf format) accepts every family: one that is not a
    timm architecture keeps zoo's own weight names (loaded by :func:`zoo.load`).
    """
    from zoo.backbones.timm_backbone import TimmBackbone

    backbone = source.backbone
    if isinstance(backbone, TimmBackbone):
        args: dict[str, Any] = {}
        if backbone._built_size is not None:
            args["img_size"] = list(backbone._built_size)
        return TimmSpec(backbone.timm_name, args, _plain(_strip(backbone.state_dict())), "timm",
                        fixed_input_size=backbone._built_size is not None,
                        pretrained_cfg=_default_cfg(backbone.timm_name))
    if is_eradio(backbone):
        return _eradio_spec(source)
    if for_timm:
        raise ConfigError(f"--format timm: {source.name} ({source.family or type(backbone).__name__}) is not a timm "
                          "architecture (ViT-CPE's cropped position embeddings are zoo's); use --format hf (loads "
                          "with zoo.load) or --format onnx")
    return TimmSpec(None, {}, _plain(backbone.state_dict()), "zoo", fixed_input_size=False,
                    notes=[f"{source.name} is not a timm architecture: this folder loads with zoo.load, "
                           "not timm.create_model"])


def _eradio_spec(source: ExportSource) -> TimmSpec:
    backbone = source.backbone
    config = backbone.config.to_dict()
    config["drop_path_rate"] = 0.0
    (h3, w3), (h4, w4) = backbone.window_size
    notes = []
    if h3 == w3 and h4 == w4:
        config["window_size"] = [h3, h4]
    else:
        notes.append(f"E-RADIO runs with windows {backbone.window_size} at {source.resolution}, which the config "
                     f"cannot hold: call model.set_window_size({list((h3, w3))}, {list((h4, w4))}) after create_model")
    notes.append("E-RADIO in timm: `import eradio` first (it registers eradio_* in timm); at another resolution call "
                 "model.set_window_for_resolution((H, W))")
    architecture = _eradio_architecture(source)
    return TimmSpec(architecture, config, _plain(_strip(backbone.state_dict())), "timm", fixed_input_size=False,
                    notes=notes, pretrained_cfg=_default_cfg(architecture))


def _eradio_architecture(source: ExportSource) -> str:
    from zoo.registry import get_entry

    if source.backbone_file is None:
        try:
            name = get_entry(source.name).timm_name
            if name:
                return name
        except ZooError:
            pass
    return ERADIO_FALLBACK_ARCH


def timm_config(source: ExportSource, spec: TimmSpec) -> dict[str, Any]:
    """``config.json``: timm's layout (architecture, num_classes, model_args, pretrained_cfg) + a ``zoo`` block."""
    height, width = source.resolution
    keep = ("first_conv", "classifier", "license")
    cfg = {k: v for k, v in spec.pretrained_cfg.items() if k in keep and v is not None}
    cfg.update({
        "tag": "zoo-distilled" if source.record is not None else "zoo-random-init",
        "input_size": [3, height, width],
        "fixed_input_size": spec.fixed_input_size,
        "interpolation": INTERPOLATION,
        "crop_pct": CROP_PCT,
        "crop_mode": "center",
        "mean": preprocessing(source)["mean"],
        "std": preprocessing(source)["std"],
        "num_classes": 0,
    })
    config: dict[str, Any] = {}
    if spec.architecture is not None:
        config["architecture"] = spec.architecture
    config.update({
        "num_classes": 0,
        "num_features": int(source.backbone.feature_dim),
        "model_args": {"num_classes": 0, **spec.model_args},  # the student has no classifier
        "pretrained_cfg": cfg,
        "zoo": {**source_document(source), "weights_layout": spec.layout},
    })
    return config


def write_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A ``.safetensors`` file; a full disk surfaces as ``OSError(ENOSPC)`` (safetensors wraps it in its own error)."""
    import errno

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(state, str(path), metadata={"format": "pt", **(metadata or {})})
    except SafetensorError as err:
        text = str(err)
        if "StorageFull" in text or "No space left" in text or "code: 28" in text:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise


def write_model_files(folder: Path, source: ExportSource, spec: TimmSpec) -> None:
    """``config.json`` and ``model.safetensors`` into ``folder``."""
    write_weights(folder / WEIGHTS_FILE, spec.state_dict)
    atomic_write_json(folder / CONFIG_FILE, timm_config(source, spec))


# --------------------------------------------------------------------------- loading back through timm


def create_from_folder(folder: str | Path, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model("local-dir:<folder>", pretrained=True)`` in eval mode (E-RADIO: ``import eradio`` first)."""
    return _create(Path(folder), **kwargs)[0]


def _create(folder: Path, **kwargs: Any) -> tuple[torch.nn.Module, str]:
    """The timm model of ``folder`` and how it was created (E-RADIO registers itself in timm on ``import eradio``)."""
    import timm

    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if str(config.get("architecture", "")).startswith("eradio"):
        import eradio  # noqa: F401 - registers eradio_* in timm
    return timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True, **kwargs).eval(), LOCAL_DIR


def timm_outputs(model: torch.nn.Module, source: ExportSource, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summary, features [B, C, h, w])`` of a timm model, laid out as zoo's wrapper lays them out."""
    feats = model.forward_features(x)
    if isinstance(feats, tuple):  # E-RADIO's forward_features: (summary, features)
        return feats[0], feats[1]
    summary = model.forward_head(feats, pre_logits=True)
    layout = getattr(source.backbone, "layout", "nchw")
    if layout == "nhwc":
        feats = feats.permute(0, 3, 1, 2)
    elif layout == "tokens":
        grid_h, grid_w = source.backbone.feature_size(int(x.shape[-2]), int(x.shape[-1]))
        feats = feats[:, -grid_h * grid_w:].transpose(1, 2).reshape(feats.shape[0], -1, grid_h, grid_w)
    return summary, feats


def check_inputs(source: ExportSource, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, *source.resolution, generator=generator)]


def check_timm_folder(folder: Path, source: ExportSource, tolerance: float) -> CheckReport:
    """Load ``folder`` with ``timm.create_model`` and compare it with the eager student."""
    try:
        model, route = _create(folder)
    except Exception as err:  # noqa: BLE001 - whatever timm raises, the export is refused in one line
        raise ZooError(f"refused: timm.create_model('local-dir:...') cannot load the exported folder "
                       f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
                       "nothing was written") from err
    reports = []
    for x in check_inputs(source):
        with torch.no_grad():
            expected = source.backbone(x)
            got = timm_outputs(model, source, x)
        diffs = [compare("summary", got[0], expected[0]), compare("features", got[1], expected[1])]
        reports.append(CheckReport(diffs, tolerance, [list(x.shape)], route))
    report = merge(reports)
    if route != LOCAL_DIR:
        report.notes.append(f"this eradio does not load local-dir: folders yet; load with {route}")
    return report


def export_timm(source: ExportSource, out: str | Path, tolerance: float = DEFAULT_TOLERANCE,
                force: bool = False) -> ExportResult:
    """Write the timm folder ``out`` for ``source``; refused (nothing written) when timm's model differs."""
    from zoo.export.staging import check_target, publish_dir, staged_dir

    out = Path(out)
    check_target(out, force)
    spec = timm_spec(source, for_timm=True)
    notes = source.notes() + spec.notes
    with staged_dir(out) as tmp:
        write_model_files(tmp, source, spec)
        report = check_timm_folder(tmp, source, tolerance)
        notes += report.notes
        report.notes = notes
        report.raise_if_bad(f"the timm folder of {source.label}")
        write_report(tmp, source, "timm", [CONFIG_FILE, WEIGHTS_FILE], report, {"architecture": spec.architecture})
        publish_dir(tmp, out)
    return ExportResult("timm", out, report, [CONFIG_FILE, WEIGHTS_FILE, REPORT_FILE], notes,
                        {"architecture": spec.architecture})


def write_report(folder: Path, source: ExportSource, fmt: str, files: list[str], report: CheckReport,
                 info: dict[str, Any]) -> None:
    """``export.json``: the check, the hashes of ``files`` and the source."""
    from zoo.export.onnx import onnx_versions
    from zoo.runs import now_utc
    from zoo.versions import versions

    atomic_write_json(folder / REPORT_FILE, {
        "format": fmt,
        "created": now_utc(),
        "files": file_hashes(folder, files),
        "source": source_document(source),
        "preprocessing": preprocessing(source),
        **info,
        "check": report.to_dict(),
        "versions": {**versions(), **{k: v for k, v in onnx_versions().items() if k != "torch"}},
    })
