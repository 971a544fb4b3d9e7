"""Adaptor heads (paper Section 3.2).

Per teacher, two 2-layer MLPs on top of the student: one maps the student's
summary to the teacher's summary, one maps every feature location to the
teacher's feature channels. Each is ``Linear -> LayerNorm -> GELU -> Linear``
with the hidden width set to the largest teacher dimension (summary and
feature dims over all teachers). A teacher without a summary (SAM: features
only, ``summary_dim`` 0 / ``has_summary`` False) gets no summary head and its
prediction's ``summary`` is None.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import torch
from torch import nn

from zoo.backbone import BackboneOutput
from zoo.errors import ConfigError
from zoo.teachers import TeacherOutput


class TeacherDims(NamedTuple):
    """What the heads need to know about a teacher (a :class:`~zoo.teachers.Teacher` also works).

    ``summary_dim`` 0: the teacher has no summary (no summary head, no summary loss term).
    """

    name: str
    summary_dim: int
    feature_dim: int

    @property
    def has_summary(self) -> bool:
        return self.summary_dim > 0


class _HasDims(Protocol):
    name: str
    summary_dim: int
    feature_dim: int


class MLPHead(nn.Module):
    """``Linear -> LayerNorm -> GELU -> Linear`` on the last dimension."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


class FeatureHead(MLPHead):
    """The same MLP applied at every location of an NCHW map: ``[B, C, h, w] -> [B, out, h, w]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"FeatureHead expects NCHW features, got shape {tuple(x.shape)}")
        # NHWC view so the Linear layers act per location; the result keeps NCHW shape
        # (channels_last memory), which every consumer handles.
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def as_teacher_dims(teacher: _HasDims | Sequence) -> TeacherDims:
    if isinstance(teacher, TeacherDims):
        dims = teacher
    elif hasattr(teacher, "summary_dim") and hasattr(teacher, "feature_dim"):
        # has_summary False wins over a stale summary_dim (a features-only teacher may report its width)
        summary_dim = int(teacher.summary_dim) if getattr(teacher, "has_summary", True) else 0
        dims = TeacherDims(str(teacher.name), summary_dim, int(teacher.feature_dim))
    else:
        name, summary_dim, feature_dim = teacher  # a plain (name, summary_dim, feature_dim) tuple
        dims = TeacherDims(str(name), int(summary_dim), int(feature_dim))
    if dims.summary_dim < 0 or dims.feature_dim < 1:
        raise ConfigError(f"teacher '{dims.name}' needs feature_dim >= 1 and summary_dim >= 0 (0: no summary), "
                          f"got {dims.summary_dim} and {dims.feature_dim}")
    return dims


def hidden_width(teachers: Sequence[TeacherDims]) -> int:
    """The adaptor MLPs' hidden width: the largest teacher dimension (paper Section 3.2)."""
    return max(max(t.summary_dim, t.feature_dim) for t in teachers)


class AdaptorHeads(nn.Module):
    """A summary head and a feature head per teacher, keyed by the teacher's name."""

    def __init__(self, summary_dim: int, feature_dim: int, teachers: Sequence[TeacherDims | _HasDims]) -> None:
        super().__init__()
        dims = [as_teacher_dims(t) for t in teachers]
        if not dims:
            raise ConfigError("adaptor heads need at least one teacher")
        names = [d.name for d in dims]
        if len(set(names)) != len(names):
            raise ConfigError(f"teacher names must be unique, got {names}")
        if any("." in n or not n for n in names):
            raise ConfigError(f"teacher names must be non-empty and contain no '.', got {names}")
        self.teachers = dims
        self.hidden_dim = hidden_width(dims)
        self.summary_heads = nn.ModuleDict(
            {d.name: MLPHead(summary_dim, self.hidden_dim, d.summary_dim) for d in dims if d.has_summary}
        )
        self.feature_heads = nn.ModuleDict(
            {d.name: FeatureHead(feature_dim, self.hidden_dim, d.feature_dim) for d in dims}
        )

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.teachers]

    def forward(self, out: BackboneOutput) -> dict[str, TeacherOutput]:
        """Student output -> ``{teacher name: predicted TeacherOutput}`` (``summary`` None without a summary head)."""
        summary, features = out[0], out[1]
        return {
            name: TeacherOutput(self.summary_heads[name](summary) if name in self.summary_heads else None,
                                self.feature_heads[name](features))
            for name in self.names
        }
