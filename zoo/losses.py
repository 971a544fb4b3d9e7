"""Distillation losses and loss balancing (paper Sections 3.4, 3.4.1, 4, Appendix E).

* summary: cosine distance ``1 - cos`` between the student's summary head and
  the teacher summary (eq. 2);
* features: ``alpha * (1 - cos) + beta * smooth-L1`` (eq. 3, alpha 0.9, beta 0.1),
  cosine over channels at every location, smooth-L1 (torch's default
  ``beta=1``) over every element; the two grids are first brought to one by
  :func:`match_grids` (Section 4, "Student/Teacher Resolution Mismatch");
* every loss can return one value per image (``reduction="none"``: the summary
  distance of each image, the feature loss averaged over that image's
  locations) or the batch mean (``"mean"``, the default; equal to the mean of
  the per-image values, since every image has the same number of locations);
* the per-teacher weights lambda (summary) and gamma (features), default 1,
  are applied in :func:`distillation_losses`; a term whose weight is 0 is
  left out (not computed), and so is the summary term of a teacher without a
  summary (SAM: the paper's λ_SAM = 0);
* :class:`LossBalancer` then sums the terms: ``naive`` (plain sum),
  ``uncertainty`` (Appendix E eq. 6, per image) or ``adaloss`` (eq. 7).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

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
REDUCTIONS = ("mean", "none")
SUMMARY, FEATURES = "summary", "features"


def term_name(teacher: str, part: str) -> str:
    """The loss-term key: ``"<teacher>/summary"`` or ``"<teacher>/features"``."""
    return f"{teacher}/{part}"


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of ``1 - cos(student, teacher)`` along ``dim`` (computed in float32)."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=dim, eps=1e-8)
    return (1.0 - cos).mean()


def summary_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cosine distance between summaries ``[B, D]``: ``[B]`` per image (``"none"``) or their mean."""
    if student.shape != teacher.shape:
        raise ValueError(f"summary shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    return _reduce(1.0 - cos, reduction)


def _resize_axes(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize each spatial axis of ``x`` on its own: area when it shrinks, bilinear when it grows."""
    for axis in (-2, -1):
        current, target = x.shape[axis], size[axis]
        if current == target:
            continue
        shape = list(x.shape[-2:])
        shape[axis] = target
        mode = "area" if target < current else "bilinear"
        extra = {} if mode == "area" else {"align_corners": False}
        # The two axes are separable linear maps, so the order does not change the result.
        x = F.interpolate(x, size=tuple(shape), mode=mode, **extra)
    return x


def match_grids(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two NCHW maps to one grid: the larger one; only the other map is resized.

    The rule (paper Section 4: "interpolate the outputs to match the larger resolution"):

    * same grid: neither map changes;
    * one grid contains the other (``h1 >= h2`` and ``w1 >= w2``, e.g. 16x16 vs
      14x14): the smaller map is upsampled bilinearly (``align_corners=False``)
      to the larger grid, which stays untouched;
    * neither contains the other (e.g. 14x10 vs 10x14, or 4x16 vs 16x4): the
      target is the grid with more locations (``h*w``; on a tie the teacher's,
      the second argument, so the target signal is never resampled) and only
      the other map is resized to it, each axis on its own: area averaging
      along an axis that shrinks (no aliasing, every source location counts),
      bilinear along an axis that grows.

    The previous rule resized both maps to ``(max h, max w)``, which resamples
    the teacher too when the grids are not nested.
    """
    if student.ndim != 4 or teacher.ndim != 4:
        raise ValueError(f"match_grids expects NCHW maps, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    (sh, sw), (th, tw) = student.shape[-2:], teacher.shape[-2:]
    if (sh, sw) == (th, tw):
        return student, teacher
    if th >= sh and tw >= sw:
        return _resize_axes(student, (th, tw)), teacher
    if sh >= th and sw >= tw:
        return student, _resize_axes(teacher, (sh, sw))
    if sh * sw > th * tw:
        return student, _resize_axes(teacher, (sh, sw))
    return _resize_axes(student, (th, tw)), teacher


def feature_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    alpha: float = FEATURE_ALPHA,
    beta: float = FEATURE_BETA,
    smooth_l1_beta: float = SMOOTH_L1_BETA,
    reduction: str = "mean",
) -> torch.Tensor:
    """``alpha * (1 - cos over channels) + beta * smooth-L1`` after :func:`match_grids`.

    ``reduction="none"``: ``[B]``, each image's loss averaged over its locations
    (and channels, for smooth-L1); ``"mean"``: the mean over the batch.
    """
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"feature maps differ in batch/channels: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
        )
    student, teacher = match_grids(student.float(), teacher.float())
    cos = 1.0 - F.cosine_similarity(student, teacher, dim=1, eps=1e-8)  # [B, h, w]
    smooth = F.smooth_l1_loss(student, teacher, beta=smooth_l1_beta, reduction="none")  # [B, C, h, w]
    per_image = alpha * cos.flatten(1).mean(1) + beta * smooth.flatten(1).mean(1)
    return _reduce(per_image, reduction)


def has_summary(teacher: Any) -> bool:
    """Whether a teacher (object, :class:`~zoo.heads.TeacherDims` or name) has a summary vector.

    A name (str) is taken to have one; objects say so by ``has_summary`` or by a
    ``summary_dim`` of 0 (SAM's encoders give features only).
    """
    if isinstance(teacher, str):
        return True
    flag = getattr(teacher, "has_summary", None)
    if flag is not None:
        return bool(flag)
    return int(getattr(teacher, "summary_dim", 1)) > 0


def _teacher_name(teacher: Any) -> str:
    return teacher if isinstance(teacher, str) else str(teacher.name)


def distillation_losses(
    predictions: Mapping[str, TeacherOutput],
    targets: Mapping[str, TeacherOutput],
    summary_weights: Mapping[str, float] | None = None,
    feature_weights: Mapping[str, float] | None = None,
    alpha: float = FEATURE_ALPHA,
    beta: float = FEATURE_BETA,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Weighted loss terms ``{"<teacher>/summary": λ·L, "<teacher>/features": γ·L}``.

    ``summary_weights`` (λ) and ``feature_weights`` (γ) map teacher names to
    weights, default 1; a weight of 0 drops the term (e.g. λ_SAM = 0). A target
    without a summary (``TeacherOutput.summary is None``) has no summary term;
    an explicit non-zero λ for it is a :class:`ConfigError`. ``reduction``:
    ``"mean"`` gives scalars, ``"none"`` one value per image (``[B]``), which
    the ``uncertainty`` balancer needs (eq. 6 weights each image by its own b).
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
        if target.summary is None:
            if summary_weights.get(name):
                raise ConfigError(_no_summary_message(name, summary_weights[name]))
            lam = 0.0
        if lam:
            losses[term_name(name, SUMMARY)] = lam * summary_loss(pred.summary, target.summary, reduction)
        if gamma:
            losses[term_name(name, FEATURES)] = gamma * feature_loss(pred.features, target.features, alpha, beta,
                                                                     reduction=reduction)
    return losses


def _no_summary_message(name: str, weight: float) -> str:
    return (f"recipe key 'loss.summary_weights.{name}' is {weight}, but teacher '{name}' has no summary "
            "(features only); leave it unset or 0")


def loss_term_names(
    teachers: Sequence[Any],
    summary_weights: Mapping[str, float] | None = None,
    feature_weights: Mapping[str, float] | None = None,
) -> list[str]:
    """The keys :func:`distillation_losses` produces for these teachers and weights.

    ``teachers``: names (taken to have a summary) or teacher objects /
    :class:`~zoo.heads.TeacherDims` (a teacher without a summary, see
    :func:`has_summary`, gets no summary term).
    """
    summary_weights, feature_weights = summary_weights or {}, feature_weights or {}
    names = []
    for teacher in teachers:
        name = _teacher_name(teacher)
        if not has_summary(teacher) and summary_weights.get(name):
            raise ConfigError(_no_summary_message(name, summary_weights[name]))
        if has_summary(teacher) and summary_weights.get(name, 1.0):
            names.append(term_name(name, SUMMARY))
        if feature_weights.get(name, 1.0):
            names.append(term_name(name, FEATURES))
    return names


class LossBalancer(nn.Module):
    """Combine loss terms into one scalar.

    Terms are scalars (batch means) or ``[B]`` per-image values
    (:func:`distillation_losses` with ``reduction="none"``).

    * ``naive``: ``Σ_k mean_i L_ik`` (weights 1; λ/γ were applied already);
    * ``uncertainty`` (Appendix E eq. 6, b = b(x') per image):
      ``b = Linear(student summary)``, ``[B, K]``; per image
      ``L(x_i) = Σ_k exp(-b_ik) L_ik + softplus(b_ik)``; total = mean over images.
      Needs per-image terms when the batch has more than one image (batch-mean
      terms would weight the mean loss by the mean weight, not eq. 6). The
      linear layer is zero-initialised so every weight starts at 1; its
      parameters must join the optimizer. The reported weight of a term is the
      batch mean of ``exp(-b_ik)``;
    * ``adaloss`` (eq. 7): ``λ_k = 1 / E[L_k]`` with ``E`` a bias-corrected
      exponential moving average (momentum 0.99) of the detached batch-mean losses,
      updated in training mode before weighting (so the first step weights
      every term to 1). The averages are buffers: they are checkpointed and, under
      torch.distributed, averaged over ranks. λ_k is one number per batch, so
      ``mean_i λ_k L_ik = λ_k · mean_i L_ik``: per-image terms give the same result.

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

    @staticmethod
    def _per_image(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[K, B]`` (per-image terms) or ``[K, 1]`` (scalar terms)."""
        shapes = {tuple(v.shape) for v in losses.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) > 1:
            raise ValueError(f"loss terms must all be scalars or all [B] per-image values, got shapes {sorted(shapes)}")
        return torch.stack([v.float().reshape(-1) for v in losses.values()])

    def forward(
        self, losses: Mapping[str, torch.Tensor], summary: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total loss, {term: weight used})``; the weights are detached 0-d tensors (read them when logging:
        converting here would synchronise an accelerator on every step)."""
        if not losses:
            raise ValueError("no loss terms to balance")
        idx = self._indices(losses)
        per_image = self._per_image(losses)  # [K, B] or [K, 1]
        values = per_image.mean(dim=1)  # batch means [K]
        if self.method == "naive":
            weights = torch.ones_like(values)
            total = values.sum()
        elif self.method == "uncertainty":
            if summary is None:
                raise ValueError("the 'uncertainty' balancer needs the student summary")
            if per_image.shape[1] != summary.shape[0] and not (per_image.shape[1] == 1 and summary.shape[0] == 1):
                raise ValueError(f"the 'uncertainty' balancer weights each image (eq. 6): it needs per-image loss "
                                 f"terms of length {summary.shape[0]} (distillation_losses(..., reduction='none')), "
                                 f"got length {per_image.shape[1]}")
            with torch.autocast(summary.device.type, enabled=False):  # b in float32 even under AMP
                b = self.log_variance(summary.float())[:, idx].t()  # [K, B]
            image_weights = torch.exp(-b)
            total = (image_weights * per_image + F.softplus(b)).sum(dim=0).mean()
            weights = image_weights.mean(dim=1)
        else:
            if self.training:
                self._update_ema(values.detach(), idx)
            weights = 1.0 / self.expected_losses()[idx].clamp_min(1e-12)
            total = (weights * values).sum()
        return total, dict(zip(losses.keys(), weights.detach().unbind()))

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
