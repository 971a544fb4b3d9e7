"""Distillation losses and loss balancing (paper Sections 3.4, 3.4.1, 4, Appendix E).

* summary: cosine distance ``1 - cos`` between the student's summary head and
  the teacher summary, averaged over the batch (eq. 2);
* features: ``alpha * (1 - cos) + beta * smooth-L1`` (eq. 3, alpha 0.9, beta 0.1),
  cosine over channels at every location, smooth-L1 (torch's default
  ``beta=1``) over every element, both averaged; the smaller grid is first
  resized bilinearly to the larger one (Section 4, "Student/Teacher
  Resolution Mismatch");
* the per-teacher weights lambda (summary) and gamma (features), default 1,
  are applied in :func:`distillation_losses`; a term whose weight is 0 is
  left out (not computed);
* :class:`LossBalancer` then sums the terms: ``naive`` (plain sum),
  ``uncertainty`` (Appendix E eq. 6) or ``adaloss`` (eq. 7).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.teachers import TeacherOutput

FEATURE_ALPHA = 0.9  # weight of the cosine distance in the feature loss (paper eq. 3)
FEATURE_BETA = 0.1  # weight of smooth-L1 in the feature loss
SMOOTH_L1_BETA = 1.0  # smooth-L1's own threshold (torch's default)
ADALOSS_MOMENTUM = 0.99  # paper Section 3.4.1
BALANCING_METHODS = ("naive", "uncertainty", "adaloss")
SUMMARY, FEATURES = "summary", "features"


def term_name(teacher: str, part: str) -> str:
    """The loss-term key: ``"<teacher>/summary"`` or ``"<teacher>/features"``."""
    return f"{teacher}/{part}"


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of ``1 - cos(student, teacher)`` along ``dim`` (computed in float32)."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=dim, eps=1e-8)
    return (1.0 - cos).mean()


def summary_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cosine distance between summaries ``[B, D]``."""
    if student.shape != teacher.shape:
        raise ValueError(f"summary shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    return cosine_distance(student, teacher, dim=-1)


def match_grids(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two NCHW maps to one grid: the larger one (paper Section 4).

    Each map smaller than the target is resized bilinearly (``align_corners=False``);
    the target is the elementwise max of the two grids, which is the larger grid
    whenever one contains the other (16x16 vs 4x4 -> 16x16, either way round).
    """
    if student.ndim != 4 or teacher.ndim != 4:
        raise ValueError(f"match_grids expects NCHW maps, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    size = (max(student.shape[-2], teacher.shape[-2]), max(student.shape[-1], teacher.shape[-1]))

    def resize(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    return resize(student), resize(teacher)


def feature_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    alpha: float = FEATURE_ALPHA,
    beta: float = FEATURE_BETA,
    smooth_l1_beta: float = SMOOTH_L1_BETA,
) -> torch.Tensor:
    """``alpha * (1 - cos over channels) + beta * smooth-L1`` after :func:`match_grids`."""
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"feature maps differ in batch/channels: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
        )
    student, teacher = match_grids(student.float(), teacher.float())
    cos = cosine_distance(student, teacher, dim=1)
    smooth = F.smooth_l1_loss(student, teacher, beta=smooth_l1_beta)
    return alpha * cos + beta * smooth


def distillation_losses(
    predictions: Mapping[str, TeacherOutput],
    targets: Mapping[str, TeacherOutput],
    summary_weights: Mapping[str, float] | None = None,
    feature_weights: Mapping[str, float] | None = None,
    alpha: float = FEATURE_ALPHA,
    beta: float = FEATURE_BETA,
) -> dict[str, torch.Tensor]:
    """Weighted loss terms ``{"<teacher>/summary": λ·L, "<teacher>/features": γ·L}``.

    ``summary_weights`` (λ) and ``feature_weights`` (γ) map teacher names to
    weights, default 1; a weight of 0 drops the term (e.g. λ_SAM = 0).
    """
    summary_weights = dict(summary_weights or {})
    feature_weights = dict(feature_weights or {})
    unknown = (set(summary_weights) | set(feature_weights)) - set(targets)
    if unknown:
        raise ConfigError(f"loss weights for unknown teachers {sorted(unknown)}; teachers: {sorted(targets)}")
    missing = set(targets) - set(predictions)
    if missing:
        raise ConfigError(f"no adaptor-head predictions for teachers {sorted(missing)}")
    losses: dict[str, torch.Tensor] = {}
    for name, target in targets.items():
        pred = predictions[name]
        lam = float(summary_weights.get(name, 1.0))
        gamma = float(feature_weights.get(name, 1.0))
        if lam:
            losses[term_name(name, SUMMARY)] = lam * summary_loss(pred.summary, target.summary)
        if gamma:
            losses[term_name(name, FEATURES)] = gamma * feature_loss(pred.features, target.features, alpha, beta)
    return losses


def loss_term_names(
    teachers: Sequence[str],
    summary_weights: Mapping[str, float] | None = None,
    feature_weights: Mapping[str, float] | None = None,
) -> list[str]:
    """The keys :func:`distillation_losses` produces for these teachers and weights."""
    summary_weights, feature_weights = summary_weights or {}, feature_weights or {}
    names = []
    for teacher in teachers:
        if summary_weights.get(teacher, 1.0):
            names.append(term_name(teacher, SUMMARY))
        if feature_weights.get(teacher, 1.0):
            names.append(term_name(teacher, FEATURES))
    return names


class LossBalancer(nn.Module):
    """Combine loss terms into one scalar.

    * ``naive``: ``Σ L_k`` (weights 1; λ/γ were applied already);
    * ``uncertainty`` (Appendix E eq. 6): ``b = Linear(student summary)``,
      averaged over the batch, one value per term; ``λ_k = exp(-b_k)``,
      ``total = Σ λ_k L_k + softplus(b_k)``. The linear layer is zero-initialised
      so every weight starts at 1; its parameters must join the optimizer;
    * ``adaloss`` (eq. 7): ``λ_k = 1 / E[L_k]`` with ``E`` a bias-corrected
      exponential moving average (momentum 0.99) of the detached losses,
      updated in training mode before weighting (so the first step weights
      every term to 1). The averages are buffers: they are checkpointed and, under
      torch.distributed, averaged over ranks.

    ``forward`` accepts any subset of ``term_names``.
    """

    def __init__(
        self,
        method: str,
        term_names: Sequence[str],
        summary_dim: int,
        momentum: float = ADALOSS_MOMENTUM,
    ) -> None:
        super().__init__()
        if method not in BALANCING_METHODS:
            raise ConfigError(f"unknown loss balancing method '{method}'; valid: {', '.join(BALANCING_METHODS)}")
        if not term_names or len(set(term_names)) != len(term_names):
            raise ConfigError(f"loss balancing needs unique term names, got {list(term_names)}")
        self.method = method
        self.term_names = list(term_names)
        self.index = {name: i for i, name in enumerate(self.term_names)}
        self.momentum = float(momentum)
        if method == "uncertainty":
            self.log_variance = nn.Linear(summary_dim, len(self.term_names))
            nn.init.zeros_(self.log_variance.weight)
            nn.init.zeros_(self.log_variance.bias)
        if method == "adaloss":
            self.register_buffer("loss_ema", torch.zeros(len(self.term_names)))
            self.register_buffer("loss_steps", torch.zeros(len(self.term_names), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"method={self.method!r}, terms={self.term_names}"

    def _indices(self, losses: Mapping[str, torch.Tensor]) -> list[int]:
        unknown = [k for k in losses if k not in self.index]
        if unknown:
            raise ConfigError(f"loss terms {unknown} are not among the balanced terms {self.term_names}")
        return [self.index[k] for k in losses]

    def forward(
        self, losses: Mapping[str, torch.Tensor], summary: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(total loss, {term: weight used})``."""
        if not losses:
            raise ValueError("no loss terms to balance")
        idx = self._indices(losses)
        values = torch.stack([v.float().reshape(()) for v in losses.values()])
        if self.method == "naive":
            weights = torch.ones_like(values)
            total = values.sum()
        elif self.method == "uncertainty":
            if summary is None:
                raise ValueError("the 'uncertainty' balancer needs the student summary")
            with torch.autocast(summary.device.type, enabled=False):  # b in float32 even under AMP
                b = self.log_variance(summary.float()).mean(dim=0)[idx]
            weights = torch.exp(-b)
            total = (weights * values + F.softplus(b)).sum()
        else:
            if self.training:
                self._update_ema(values.detach(), idx)
            weights = 1.0 / self.expected_losses()[idx].clamp_min(1e-12)
            total = (weights * values).sum()
        return total, dict(zip(losses.keys(), weights.detach().tolist()))

    @torch.no_grad()
    def _update_ema(self, values: torch.Tensor, idx: list[int]) -> None:
        if dist.is_available() and dist.is_initialized():  # one estimate across ranks
            values = values.clone()
            dist.all_reduce(values)
            values /= dist.get_world_size()
        where = torch.tensor(idx, device=self.loss_ema.device)
        self.loss_ema[where] = self.momentum * self.loss_ema[where] + (1.0 - self.momentum) * values
        self.loss_steps[where] += 1

    def expected_losses(self) -> torch.Tensor:
        """AdaLoss' bias-corrected ``E[L_k]`` per term (1 for a term never seen: weight 1, as naive)."""
        steps = self.loss_steps.to(self.loss_ema.dtype)
        correction = (1.0 - self.momentum**steps).clamp_min(1e-12)
        return torch.where(steps > 0, self.loss_ema / correction, torch.ones_like(self.loss_ema))
