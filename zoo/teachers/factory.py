"""Spec strings -> teachers, through the kind registry."""

from __future__ import annotations

from typing import Sequence

import torch

from zoo.errors import ConfigError, WeightsNotFoundError
from zoo.teachers.base import (
    TINY,
    Teacher,
    TeacherSpec,
    check_resolution,
    get_teacher_kind,
    split_resolution,
)
from zoo.teachers.hub import resolve_weights


def parse_teacher_spec(spec: str | TeacherSpec) -> TeacherSpec:
    """Parse and validate ``kind:model[:tag-or-file][@res]``; a :class:`~zoo.errors.ZooError` names the problem."""
    if isinstance(spec, TeacherSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty teacher spec; use e.g. {get_teacher_kind('clip').examples_text()}")
    text = spec.strip()
    body, resolution = split_resolution(text)
    name, _, rest = body.partition(":")
    kind = get_teacher_kind(name.strip().lower())  # an unknown kind names the closest ones
    if not rest:
        raise ConfigError(f"teacher spec '{text}' names no model; use e.g. {kind.examples_text()}")
    model, _, source = rest.partition(":")
    if model == TINY:
        if kind.build_tiny is None:
            raise ConfigError(f"teacher kind '{kind.name}' has no tiny variant; use e.g. {kind.examples_text()}")
        if source:
            raise ConfigError(f"teacher spec '{text}': {kind.name}:tiny is random-initialised and takes no weights")
        if resolution is not None:
            check_resolution(text, resolution, kind.tiny_patch_size)
        return TeacherSpec(text, kind.name, TINY, resolution=resolution)
    return kind.parse(text, model, source or None, resolution)


def build_teacher(
    spec: str | TeacherSpec,
    device: str | torch.device = "cpu",
    offline: bool | None = None,
    name: str | None = None,
) -> Teacher:
    """Build one frozen teacher from a spec string.

    ``offline``: True never contacts a hub, False may download, None decides
    from ``HF_HUB_OFFLINE`` and a 2-second connection probe (see :mod:`zoo.teachers.hub`).
    """
    parsed = parse_teacher_spec(spec)
    kind = get_teacher_kind(parsed.kind)
    if parsed.is_tiny:
        teacher = kind.build_tiny(parsed)
    else:
        weights = parsed.weights_file
        if weights is None:
            if kind.remote is None:
                raise WeightsNotFoundError(
                    f"teacher '{parsed.spec}' needs a weights file: --teacher {parsed.kind}:{parsed.model}:/path/to/weights"
                )
            weights = resolve_weights(parsed, kind.remote(parsed), offline)
        teacher = kind.build(parsed, weights)
    if name:
        teacher.name = name
    return teacher.to(device)


def teacher_names(specs: Sequence[str | TeacherSpec]) -> list[str]:
    """Unique loss-term names: the kind, then ``kind-2``, ``kind-3``... for repeats."""
    counts: dict[str, int] = {}
    names = []
    for spec in specs:
        kind = parse_teacher_spec(spec).kind
        counts[kind] = counts.get(kind, 0) + 1
        names.append(kind if counts[kind] == 1 else f"{kind}-{counts[kind]}")
    return names


def build_teachers(
    specs: Sequence[str | TeacherSpec],
    device: str | torch.device = "cpu",
    offline: bool | None = None,
) -> list[Teacher]:
    """Build every teacher (all specs are parsed first, so a typo fails before any loading)."""
    parsed = [parse_teacher_spec(s) for s in specs]
    if not parsed:
        raise ConfigError(f"no teachers given; use e.g. {get_teacher_kind('clip').examples_text()}")
    return [build_teacher(p, device, offline, name) for p, name in zip(parsed, teacher_names(parsed))]
