"""ONNX export: ``torch.onnx.export`` (dynamo-based, torch's default since 2.9) checked in onnxruntime.

The graph takes ``images`` ``[batch, 3, H, W]`` (ImageNet-normalised, as the
student was trained) and returns ``summary`` and ``features``, and with
``with_heads`` every adaptor head's prediction in its teacher's space
(``<teacher>.summary``, ``<teacher>.features``; PHI-S de-standardisation is
part of the graph).

Sizes: the batch is always dynamic. Height and width are dynamic where one
graph serves every size the architecture accepts (CNNs, ViT-CPE: multiples of
the patch size); models whose buffers depend on the size (SwinV2, MaxViT,
MViTv2) and E-RADIO, whose attention windows are re-picked for each input
size, are exported for one resolution (export once per resolution). Backbones
with a deploy mode (E-RADIO) are exported fused (``backbone.fuse()``); the
check compares against the unfused eager student, so folding is covered too.

Every export runs in onnxruntime on the same inputs as eager PyTorch (two
inputs: another batch size, and another size when the size is dynamic); the
report (:mod:`zoo.export.verify`) is printed and stored as ``<file>.json``,
and an export outside the tolerance is refused: nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from zoo.atomic import atomic_write_json
from zoo.backbone import Backbone
from zoo.errors import ZooError
from zoo.export.source import ExportSource, WithHeads, is_eradio
from zoo.export.staging import check_target, publish_files, staged_dir
from zoo.export.verify import DEFAULT_TOLERANCE, CheckReport, ExportResult, compare, file_hashes, merge
from zoo.runs import now_utc

INPUT_NAME = "images"
MAX_SIDE = 4096  # upper bound of a dynamic height/width
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps one file at 2 GB: larger weights go to <file>.data
CHECK_BATCH = 2
ERADIO_SIZE_NOTE = ("E-RADIO: exported for {size} only: its attention windows are re-picked for each input size, "
                    "which one graph cannot express; export once per resolution (--resolution)")


def require_onnx() -> None:
    """One line when the optional ONNX packages are missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
    if missing:
        raise ZooError(f"ONNX export needs {', '.join(missing)} (not installed): pip install 'zoo[export]' "
                       "(onnx, onnxscript, onnxruntime)")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --------------------------------------------------------------------------- sizes


def size_policy(backbone: Backbone, size: tuple[int, int]) -> tuple[bool, str | None]:
    """``(dynamic height/width, note)`` for ``backbone`` exported at ``size``."""
    text = "x".join(map(str, size))
    if is_eradio(backbone):
        return False, ERADIO_SIZE_NOTE.format(size=text)
    if getattr(backbone, "_built_size", None) is not None:  # timm models with size-dependent buffers
        return False, f"{backbone.name}: exported for {text} only (its buffers depend on the input size)"
    return True, None


def _dynamic_shapes(backbone: Backbone, dynamic_hw: bool) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    axes: dict[int, Any] = {0: Dim("batch", min=1, max=65536)}
    if dynamic_hw:
        rule = backbone.size_rule
        multiple = max(1, int(rule.multiple or 1))
        low = max(1, math.ceil(max(rule.minimum or 1, multiple) / multiple))
        high = max(low + 1, int(rule.maximum or MAX_SIDE) // multiple)
        for axis, name in ((2, "height"), (3, "width")):
            dim = Dim(f"{name}_blocks" if multiple > 1 else name, min=low if multiple > 1 else max(low, 2), max=high)
            axes[axis] = multiple * dim if multiple > 1 else dim
    return {"x": axes}


def check_inputs(backbone: Backbone, size: tuple[int, int], dynamic_hw: bool, seed: int = 0) -> list[torch.Tensor]:
    """The inputs every export is checked on: batch 2 at ``size``; then batch 1 at another size (or the same)."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(CHECK_BATCH, 3, *size, generator=generator)
    second_size = size
    if dynamic_hw:
        step = max(int(backbone.size_rule.multiple or 1), int(backbone.stride))
        candidate = (size[0] + step, size[1] + 2 * step)
        try:
            backbone.check_resolution(*candidate)
            second_size = candidate
        except ZooError:
            second_size = size
    return [first, torch.randn(1, 3, *second_size, generator=generator)]


# --------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints its progress and warns per op; the export prints one summary instead."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:240] if lines else ''}"


def export_graph(model: nn.Module, example: torch.Tensor, path: Path, output_names: Sequence[str],
                 dynamic_shapes: dict[str, Any], external_data: bool) -> None:
    """``torch.onnx.export`` with the dynamo exporter; a failure becomes one line."""
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                              external_data=external_data, verbose=False)
    except (ZooError, OSError):
        raise  # a full disk is the staging folder's to report
    except Exception as err:  # noqa: BLE001 - any exporter failure is reported in one line (--debug: traceback)
        raise ZooError(f"torch.onnx.export could not export this model ({_first_line(err)})") from err


def ort_session(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> Any:
    """An onnxruntime session (all graph optimisations; ``threads`` intra-op threads, one inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        from zoo.errors import BadFileError

        raise BadFileError(f"{path} does not load in onnxruntime ({_first_line(err)})") from None


def check_in_onnxruntime(session: Any, reference: nn.Module, inputs: Sequence[torch.Tensor],
                         names: Sequence[str], tolerance: float) -> CheckReport:
    """Run ``inputs`` through the session and through eager ``reference``; compare every output."""
    reports = []
    for x in inputs:
        with torch.no_grad():
            expected = reference(x)
        got = session.run(None, {INPUT_NAME: x.numpy()})
        if len(got) != len(expected):
            raise ZooError(f"the ONNX graph returns {len(got)} outputs, the eager model {len(expected)}")
        diffs = [compare(name, g, e) for name, g, e in zip(names, got, expected)]
        reports.append(CheckReport(diffs, tolerance, [list(x.shape)], "onnxruntime"))
    return merge(reports)


def onnx_versions() -> dict[str, str | None]:
    import importlib.metadata

    found = {}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def export_onnx(source: ExportSource, path: str | Path, with_heads: bool = False,
                tolerance: float = DEFAULT_TOLERANCE, force: bool = False, fuse: bool = True) -> ExportResult:
    """Export ``source`` to the ONNX file ``path``, check it in onnxruntime, write ``<path>.json``.

    Raises :class:`~zoo.export.verify.ExportMismatchError` (nothing written)
    when onnxruntime's outputs differ from eager PyTorch's beyond ``tolerance``.
    """
    require_onnx()
    path = Path(path)
    if path.suffix != ".onnx":
        path = path.with_suffix(path.suffix + ".onnx") if path.suffix else path.with_suffix(".onnx")
    report_path = path.with_name(path.name + ".json")
    check_target(path, force)
    if with_heads and source.heads is None:
        raise ZooError(f"--with-heads: {source.label} has no adaptor heads (only a run folder has them)")

    notes = list(source.notes())
    reference = WithHeads(source, source.backbone, with_heads).eval()
    deploy_backbone = source.copy_backbone()
    fused = False
    if fuse and deploy_backbone.supports_fuse:
        deploy_backbone = deploy_backbone.fuse() or deploy_backbone
        fused = True
        notes.append(f"{source.name}: exported in deploy mode (backbone.fuse(): BatchNorms folded)")
    deploy = WithHeads(source, deploy_backbone, with_heads).eval()
    dynamic_hw, size_note = size_policy(deploy_backbone, source.resolution)
    if size_note:
        notes.append(size_note)
    names = reference.output_names
    weight_bytes = sum(t.numel() * t.element_size() for t in deploy.state_dict().values())
    external = weight_bytes > EXTERNAL_DATA_BYTES

    with staged_dir(path) as tmp:
        staged = tmp / path.name
        inputs = check_inputs(source.backbone, source.resolution, dynamic_hw)
        with torch.no_grad():
            deploy(inputs[0])  # eager pass at the export size: E-RADIO picks (and caches) its window here
        try:
            export_graph(deploy, inputs[0], staged, names, _dynamic_shapes(deploy_backbone, dynamic_hw), external)
        except ZooError as err:
            if not dynamic_hw:
                raise
            # Some architectures specialise on the size while tracing: one graph per resolution then.
            dynamic_hw = False
            text = "x".join(map(str, source.resolution))
            notes.append(f"{source.name}: exported for {text} only (dynamic height/width failed: {err})")
            inputs = check_inputs(source.backbone, source.resolution, False)
            for leftover in tmp.iterdir():
                leftover.unlink()
            export_graph(deploy, inputs[0], staged, names, _dynamic_shapes(deploy_backbone, False), external)
        session = ort_session(staged)
        report = check_in_onnxruntime(session, reference, inputs, names, tolerance)
        report.notes = notes
        del session
        report.raise_if_bad(f"the ONNX export of {source.label}")
        files = sorted(p.name for p in tmp.iterdir())
        info = {
            "input": INPUT_NAME,
            "outputs": names,
            "dynamic_axes": {"batch": True, "height": dynamic_hw, "width": dynamic_hw},
            "resolution": list(source.resolution),
            "fused": fused,
            "external_data": external,
        }
        atomic_write_json(tmp / report_path.name, _report_document(source, "onnx", files, tmp, report, info))
        publish_files(tmp, files + [report_path.name], path.parent, last=report_path.name)
    return ExportResult("onnx", path, report, files + [report_path.name], notes, info)


def _report_document(source: ExportSource, fmt: str, files: list[str], root: Path, report: CheckReport,
                     info: dict[str, Any]) -> dict[str, Any]:
    from zoo.export.metadata import preprocessing, source_document

    return {
        "format": fmt,
        "created": now_utc(),
        "files": file_hashes(root, files),
        "source": source_document(source),
        "preprocessing": preprocessing(source),
        **info,
        "check": report.to_dict(),
        "versions": onnx_versions(),
    }


def read_onnx(path: str | Path, threads: int | None = None, verify: bool = True) -> tuple[Any, dict[str, Any]]:
    """An onnxruntime session for an exported file and its report; a changed or foreign file is refused (one line)."""
    from zoo.errors import BadFileError
    from zoo.export.verify import check_files, read_report

    require_onnx()
    path = Path(path)
    if not path.is_file():
        raise BadFileError(f"ONNX file not found: {path}")
    report = read_report(path.with_name(path.name + ".json"))
    if verify:
        check_files(path.parent, report)
    return ort_session(path, threads), report


def run_onnx(session: Any, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """``{output name: array}`` for a batch of student inputs."""
    x = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_NAME: x})))
