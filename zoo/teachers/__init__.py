"""Frozen teachers for multi-teacher distillation (paper Sections 3.4 and 4), as plug-in kinds.

A teacher is built from a spec string ``kind:model[:tag-or-file][@res]``::

    clip:ViT-H-14:laion2b_s32b_b79k            open_clip model + pretrained tag
    clip:ViT-B-16:/path/to/weights.bin         open_clip model + local file
    dinov2:vit_giant_patch14_reg4_dinov2       timm DINOv2 (weights from the caches)
    dinov2:vit_small_patch14_reg4_dinov2:/path/file.safetensors
    sam:samvit_huge_patch16                    timm SAM image encoder (features only, 1024 px)
    clip:tiny  dinov2:tiny  sam:tiny           small random teachers (tests, smoke)

An optional ``@N`` or ``@HxW`` suffix sets the teacher's input resolution
(``dinov2:vit_large_patch14_dinov2@448``); without it each kind runs at its
own default (CLIP: its config's ``image_size``; DINOv2: 224; SAM: 1024).

Every teacher returns :class:`TeacherOutput` ``(summary, features)``;
``summary`` is None for a teacher without one (``has_summary`` False,
``summary_dim`` 0: SAM). Each kind is one module of this package that
registers a :class:`TeacherKind` (:mod:`zoo.teachers.clip`,
:mod:`~zoo.teachers.dinov2`, :mod:`~zoo.teachers.sam`); weights lookup and the
offline rules live in :mod:`zoo.teachers.hub`, each teacher's own evaluation
preprocessing in :mod:`zoo.teachers.transforms`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from zoo.errors import ConfigError
from zoo.teachers import factory as _factory
from zoo.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TINY,
    TINY_SEED,
    Teacher,
    TeacherKind,
    TeacherOutput,
    TeacherSpec,
    fixed_seed_build,
    get_teacher_kind,
    register_teacher_kind,
    teacher_kinds,
    unregister_teacher_kind,
)
from zoo.teachers.clip import TINY_CLIP_PATCH_SIZE, TINY_CLIP_RESOLUTION, ClipTeacher
from zoo.teachers.dinov2 import DINOV2_DEFAULT_RESOLUTION, DINOV2_PATCH_SIZE, TINY_DINOV2_RESOLUTION, Dinov2Teacher
from zoo.teachers.factory import build_teacher, parse_teacher_spec, teacher_names
from zoo.teachers.hub import (
    HUB_PROBE_TIMEOUT_S,
    RemoteWeights,
    file_sha256,
    find_local_weights,
    hub_reachable,
    offline_reason,
    resolve_weights,
)
from zoo.teachers.sam import SAM_NATIVE_RESOLUTION, SamTeacher
from zoo.teachers.transforms import EvalTransform, apply_eval_transform, eval_batch


def build_teachers(
    specs: Sequence[str | TeacherSpec],
    device: str | torch.device = "cpu",
    offline: bool | None = None,
) -> list[Teacher]:
    """Build every teacher (all specs are parsed first, so a typo fails before any loading).

    Unique names: the kind, then ``kind-2``, ``kind-3``... for repeats (:func:`teacher_names`).
    """
    return _factory.build_teachers(specs, device, offline)


def prepare_teachers(
    teachers: Sequence[str | TeacherSpec | Teacher] | None,
    specs: Sequence[str | TeacherSpec],
    device: str | torch.device = "cpu",
    offline: bool | None = None,
) -> list[Teacher]:
    """The teachers a run uses: ``teachers`` when given, else built from ``specs`` (the recipe's).

    ``teachers`` may be all spec strings (built here) or all built :class:`Teacher`
    objects (moved to ``device``, so several runs can share one set); a mix is a
    :class:`~zoo.errors.ConfigError`. It calls this package's :func:`build_teachers`
    by name, so code that wraps that one function sees every build.
    """
    if teachers is None:
        return build_teachers(list(specs), device, offline)
    teachers = list(teachers)
    if all(isinstance(t, (str, TeacherSpec)) for t in teachers):
        return build_teachers(teachers, device, offline)
    if not all(isinstance(t, Teacher) for t in teachers):
        raise ConfigError("teachers must be all spec strings or all built Teacher objects")
    return [t.to(device) for t in teachers]


__all__ = [
    "ClipTeacher", "DINOV2_DEFAULT_RESOLUTION", "DINOV2_PATCH_SIZE", "Dinov2Teacher", "EvalTransform",
    "HUB_PROBE_TIMEOUT_S", "IMAGENET_MEAN", "IMAGENET_STD", "RemoteWeights", "SAM_NATIVE_RESOLUTION", "SamTeacher",
    "TINY", "TINY_CLIP_PATCH_SIZE", "TINY_CLIP_RESOLUTION", "TINY_DINOV2_RESOLUTION", "TINY_SEED", "Teacher",
    "TeacherKind", "TeacherOutput", "TeacherSpec", "apply_eval_transform", "build_teacher", "build_teachers",
    "eval_batch", "file_sha256", "find_local_weights", "fixed_seed_build", "get_teacher_kind", "hub_reachable",
    "offline_reason", "parse_teacher_spec", "prepare_teachers", "register_teacher_kind", "resolve_weights",
    "teacher_kinds", "teacher_names", "unregister_teacher_kind",
]
