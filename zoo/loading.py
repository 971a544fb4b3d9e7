"""Load a distilled run back: the student, its adaptor heads, its teachers, recipe and record.

:func:`load_run` is the one way every later command (``zoo eval``, ``zoo viz``,
exports) gets a trained student from a run folder::

    run = load_run("runs/resnet-18-smoke-20260101-120000")
    out, adaptors = run(images)            # images [B, 3, H, W] in [0, 1]
    out.summary, out.features              # the backbone's own outputs
    adaptors["clip"].summary               # the CLIP head's prediction, in CLIP's space

The student is rebuilt from the registry name in the record (or pass the built
``backbone``) and loaded from ``checkpoint.pt`` with ``weights_only=True``.
When the run trained its heads against PHI-S standardised targets (a
``standardizer`` entry in the checkpoint), :meth:`LoadedRun.adaptors` and
:meth:`LoadedRun.summary` return de-standardised outputs: the teacher's own
space, where k-NN, zero-shot and any downstream use expect them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from zoo.backbone import Backbone, BackboneOutput, as_hw
from zoo.devices import inference_autocast, resolve_device
from zoo.errors import ZooError, unknown_name
from zoo.runs import CHECKPOINT_FILE, DEFAULT_OUT, RunPaths, RunRecord, find_run_dir, read_record
from zoo.teachers import TeacherOutput

STANDARDIZER_KEY = "standardizer"  # checkpoint entry: per teacher, the PHI-S statistics (zoo.standardize)


@dataclass
class LoadedRun:
    """A run's trained student in eval mode on :attr:`device`, ready for inference.

    ``teachers`` are :class:`~zoo.heads.TeacherDims` unless the run was loaded
    with ``build_teachers=True`` (then built teachers, from the recorded specs
    and weights files). ``standardizer`` is the run's PHI-S
    :class:`~zoo.standardize.TeacherStandardizer` (None when the heads were
    trained on raw targets); outputs of :meth:`adaptors`, :meth:`summary` and
    :meth:`__call__` are always in each teacher's own space.
    """

    backbone: Backbone
    heads: nn.Module
    teachers: list[Any]
    recipe: Any
    record: RunRecord
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    standardizer: Any = None  # zoo.standardize.TeacherStandardizer, or None (heads trained on raw targets)

    # ----------------------------------------------------------------- preprocessing

    @property
    def resolution(self) -> tuple[int, int]:
        """The input size the student was trained at."""
        return as_hw(self.record.resolution) if self.record.resolution else tuple(self.recipe.resolution)

    @property
    def mean(self) -> tuple[float, ...]:
        from timm.data.constants import IMAGENET_DEFAULT_MEAN

        return tuple(IMAGENET_DEFAULT_MEAN)  # what zoo.data.student_view normalises with

    @property
    def std(self) -> tuple[float, ...]:
        from timm.data.constants import IMAGENET_DEFAULT_STD

        return tuple(IMAGENET_DEFAULT_STD)

    @property
    def head_names(self) -> list[str]:
        return list(self.heads.names) if hasattr(self.heads, "names") else []

    def preprocess(self, images: torch.Tensor, size_hw: Sequence[int] | None = None) -> torch.Tensor:
        """[0, 1] images -> the student's input at ``size_hw`` (default: its resolution), normalised, on device."""
        from zoo.data import student_view

        size_hw = as_hw(tuple(size_hw)) if size_hw is not None else self.resolution
        self.backbone.check_resolution(*size_hw)
        x = student_view(images.to(self.device), size_hw)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ----------------------------------------------------------------- inference

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, size_hw: Sequence[int] | None = None,
                 ) -> tuple[BackboneOutput, dict[str, TeacherOutput]]:
        """The backbone's outputs and every adaptor's prediction (teacher space) for [0, 1] images."""
        with inference_autocast(self.device):
            out = self.backbone(self.preprocess(images, size_hw))
            predictions = self.heads(out)
        out = BackboneOutput(out.summary.float(), out.features.float())
        return out, self.to_teacher_space(predictions)

    def adaptors(self, out: BackboneOutput) -> dict[str, TeacherOutput]:
        """Every head's prediction from backbone outputs, in each teacher's space."""
        return self.to_teacher_space(self.heads(out))

    @torch.no_grad()
    def summary(self, images: torch.Tensor, head: str | None = None,
                size_hw: Sequence[int] | None = None) -> torch.Tensor:
        """The backbone's summary (``head=None``) or one head's summary in its teacher's space, float32."""
        if head is not None:
            self.check_head(head)
        with inference_autocast(self.device):
            summary = self.backbone(self.preprocess(images, size_hw))[0]
            if head is not None:
                summary = self.heads.summary_heads[head](summary)  # only the head asked for
        summary = summary.float()
        if head is not None and self.standardizer is not None:
            summary = self.standardizer.summary[head].inverse(summary)
        return summary

    def to_teacher_space(self, predictions: Mapping[str, TeacherOutput]) -> dict[str, TeacherOutput]:
        """Heads' predictions -> each teacher's space (PHI-S de-standardised when the run standardised)."""
        predictions = {name: TeacherOutput(None if p.summary is None else p.summary.float(), p.features.float())
                       for name, p in predictions.items()}
        if self.standardizer is None:
            return predictions
        return self.standardizer.destandardize(predictions)

    def check_head(self, head: str) -> None:
        """A one-line error unless ``head`` is a teacher head of this run with a summary."""
        teacher_info(self.record, head)
        if head in self.heads.summary_heads:
            return
        raise ZooError(f"head '{head}' has no summary (its teacher gives features only)")


# --------------------------------------------------------------------------- the record's teachers


def teacher_info(record: RunRecord, name: str) -> dict[str, Any]:
    """The record's entry for teacher ``name``; a one-line error listing the run's heads otherwise."""
    teachers = {t["name"]: t for t in record.teachers}
    if name not in teachers:
        raise unknown_name("head", name, teachers)
    return teachers[name]


def teacher_spec(info: Mapping[str, Any]) -> Any:
    """The spec a record's teacher entry was built from, pointing at its recorded weights file."""
    from zoo.teachers import parse_teacher_spec

    spec = parse_teacher_spec(info["spec"])
    weights = info.get("weights_file")
    if weights and not spec.is_tiny and spec.weights_file is None and Path(weights).is_file():
        spec = replace(spec, weights_file=weights)  # the exact file the run used, no hub lookup
    return spec


def build_run_teacher(record: RunRecord, name: str, device: torch.device | str = "cpu",
                      offline: bool | None = True) -> Any:
    """Rebuild the teacher ``name`` of a run (``clip:tiny`` rebuilds bit-exactly from its fixed seed)."""
    from zoo.teachers import build_teacher

    return build_teacher(teacher_spec(teacher_info(record, name)), device, offline, name=name)


# --------------------------------------------------------------------------- loading


def load_run(run: str | os.PathLike, device: str | torch.device = "cpu", build_teachers: bool = False,
             backbone: Backbone | None = None, offline: bool | None = True,
             out_dir: str | os.PathLike = DEFAULT_OUT) -> LoadedRun:
    """The run ``run`` names (a folder, or a run id under ``out_dir``) as a :class:`LoadedRun`.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a :class:`torch.device`.
        build_teachers: also rebuild the teachers from the recorded specs and weights files.
        backbone: the built student, for a backbone outside the registry.
        offline: passed to the teacher builder (``True``: never contact a hub).
    """
    from zoo.checkpoints import load_checkpoint

    root = find_run_dir(run, out_dir)
    record = read_record(root)
    paths = RunPaths(root)
    if not paths.checkpoint.is_file():
        raise ZooError(f"run {root} has no {CHECKPOINT_FILE} (search trials keep none unless --keep-checkpoints); "
                       "nothing to load")
    state = load_checkpoint(paths.checkpoint, map_location="cpu")
    for key in ("backbone", "heads"):
        if not isinstance(state, dict) or key not in state:
            raise ZooError(f"{paths.checkpoint} has no '{key}' state (not a zoo distill checkpoint)")
    recipe = _recipe(state, paths)
    if backbone is None:
        resolution = as_hw(record.resolution) if record.resolution else as_hw(recipe.resolution)
        backbone = _rebuild_backbone(record, resolution, paths)
    _load_state(backbone, state["backbone"], "backbone", paths.checkpoint)
    heads = _build_heads(backbone, record)
    _load_state(heads, state["heads"], "heads", paths.checkpoint)
    device = resolve_device(device)
    backbone.to(device).eval()
    heads.to(device).eval()
    names = [t["name"] for t in record.teachers]
    teachers = ([build_run_teacher(record, name, device, offline) for name in names] if build_teachers
                else list(heads.teachers))
    standardizer = _standardizer(state.get(STANDARDIZER_KEY), heads, paths.checkpoint, device)
    return LoadedRun(backbone, heads, teachers, recipe, record, root, device, standardizer)


def _recipe(state: Mapping[str, Any], paths: RunPaths) -> Any:
    from zoo.recipe import recipe_from_dict

    if not state.get("recipe"):
        return None
    try:
        return recipe_from_dict(state["recipe"])
    except ZooError as err:
        raise ZooError(f"the recipe saved in {paths.checkpoint} does not load: {err}") from None


def _build_heads(backbone: Backbone, record: RunRecord) -> nn.Module:
    from zoo.heads import AdaptorHeads, TeacherDims

    try:
        dims = [TeacherDims(t["name"], int(t.get("summary_dim") or 0), int(t["feature_dim"])) for t in record.teachers]
    except (KeyError, TypeError, ValueError) as err:
        raise ZooError(f"the teachers in the record of {record.run_id} lack their dimensions ({err})") from None
    return AdaptorHeads(backbone.summary_dim, backbone.feature_dim, dims)


def _rebuild_backbone(record: RunRecord, resolution: tuple[int, int], paths: RunPaths) -> Backbone:
    """The run's student, untrained: from its copied backbone file when it trained one, else by registry name."""
    from zoo.errors import UnknownNameError
    from zoo.registry import create_backbone

    try:
        if paths.backbone_file.is_file():
            return create_backbone(str(paths.backbone_file), resolution)
        return create_backbone(str(record.backbone), resolution)
    except UnknownNameError:
        raise ZooError(f"the run's backbone '{record.backbone}' is not in the registry; rebuild it yourself and pass "
                       "it (zoo.loading.load_run(run, backbone=...))") from None


def _load_state(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, checkpoint: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        lines = str(err).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(err)
        raise ZooError(f"the {what} weights in {checkpoint} do not fit the rebuilt model: {first}") from None


def _standardizer(state: Any, heads: nn.Module, checkpoint: Path, device: torch.device) -> Any:
    """The PHI-S transforms the heads were trained against (None when the run trained on raw targets).

    ``state`` is :meth:`zoo.standardize.TeacherStandardizer.state_dict` (``<part>.<teacher>.<buffer>``).
    """
    if not state:
        return None
    from zoo.standardize import TeacherStandardizer

    try:
        standardizer = TeacherStandardizer.from_state_dict(state)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ZooError(f"{checkpoint}: its '{STANDARDIZER_KEY}' entry is not PHI-S statistics ({err})") from None
    missing = [d.name for d in heads.teachers if d.name not in standardizer.features
               or (d.name in heads.summary_heads and d.name not in standardizer.summary)]
    if missing:
        raise ZooError(f"{checkpoint}: PHI-S statistics missing for teacher(s) {', '.join(missing)} "
                       f"(have {', '.join(standardizer.names) or 'none'})")
    return standardizer.to(device).eval()
