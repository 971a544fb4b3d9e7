"""What is trained: the student with its adaptor heads and loss balancer, the optimiser, its schedule, AMP."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from zoo.backbone import Backbone
from zoo.errors import ConfigError
from zoo.recipe import Recipe


class StepLosses(NamedTuple):
    """One forward pass: the balanced total, the terms (batch means), the weights used, the FD-teacher term."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]  # detached, read at the logging cadence
    fd_term: torch.Tensor | None  # the FD teacher's feature loss, unweighted (γ = 1), detached
    fd_prediction: torch.Tensor | None  # the FD teacher's predicted features, detached (for PHI-S runs)


class DistillModel(nn.Module):
    """Backbone + adaptor heads + loss balancer: one module, so DDP syncs all gradients."""

    def __init__(self, backbone: Backbone, heads: nn.Module, balancer: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.backbone, self.heads, self.balancer = backbone, heads, balancer
        self.loss = recipe.loss
        # eq. 6 weights each image by its own b: the uncertainty balancer needs per-image terms
        self.reduction = "none" if recipe.loss.balancing == "uncertainty" else "mean"
        self.fd_teacher = fd_teacher_name(recipe)

    def forward(self, x: torch.Tensor, targets: dict) -> StepLosses:
        from zoo.losses import FEATURES, distillation_losses, term_name

        out = self.backbone(x)
        predictions = self.heads(out)
        losses = distillation_losses(predictions, targets, self.loss.summary_weights, self.loss.feature_weights,
                                     self.loss.alpha, self.loss.beta, reduction=self.reduction)
        total, weights = self.balancer(losses, out[0])
        terms = {k: v.mean() for k, v in losses.items()}
        fd_term = None
        gamma = float(self.loss.feature_weights.get(self.fd_teacher, 1.0))
        fd_key = term_name(self.fd_teacher, FEATURES)
        if fd_key in terms and gamma:
            fd_term = terms[fd_key].detach() / gamma
        fd_prediction = predictions[self.fd_teacher].features.detach() if self.fd_teacher in predictions else None
        return StepLosses(total, terms, weights, fd_term, fd_prediction)


def fd_teacher_name(recipe: Recipe) -> str:
    """The teacher whose feature term is the FD loss (recipe key ``loss.fd_teacher``, paper Table 7: DINOv2)."""
    return str(getattr(recipe.loss, "fd_teacher", "dinov2"))


def lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up to 1, then cosine down to ``min_lr / lr`` at the last step (``optim.schedule_steps``
    when set, e.g. a search rung that stops early on a longer schedule)."""
    warmup, total = recipe.optim.warmup_steps, (getattr(recipe.optim, "schedule_steps", 0) or recipe.train.steps)
    floor = recipe.optim.min_lr / recipe.optim.lr
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and other 1-D parameters (timm's convention)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.optim.lr, betas=tuple(recipe.optim.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, recipe))


def apply_optim_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                         recipe: Recipe, step: int) -> None:
    """Put a resumed optimiser on the recipe's (changed) ``optim`` settings, e.g. a lower LR after divergence.

    A loaded scheduler keeps the old base LR and a loaded optimiser the old LR, decay and betas; both
    are set from the recipe, and the LR of the next step is the schedule's value at ``step``.
    """
    scheduler.base_lrs = [recipe.optim.lr for _ in optimizer.param_groups]
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = recipe.optim.lr
        group["lr"] = recipe.optim.lr * lr_factor(step, recipe)
        group["betas"] = tuple(recipe.optim.betas)
        group["weight_decay"] = recipe.optim.weight_decay if i == 0 else 0.0


def amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA by default, none (fp32) on CPU by default."""
    mode = recipe.train.amp
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if mode == "off":
        return None
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("recipe key 'train.amp' fp16 needs a CUDA device; use bf16 or off on CPU")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], contextlib.AbstractContextManager]:
    """A function returning the step's autocast context (a no-op in fp32)."""
    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    return autocast


def seed_step(seed: int, step: int, rank: int) -> None:
    """Re-seed the global RNGs (dropout, drop-path) from (seed, step, rank): exact resume."""
    torch.manual_seed((int(seed) * 1_000_003 + int(step) * 101 + int(rank)) % (2**63 - 1))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
