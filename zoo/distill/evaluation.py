"""What a run measures: the held-out FD loss, the training FD loss, params/FLOPs/throughput."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from zoo.data import eval_batches, student_view
from zoo.recipe import Recipe

TargetMap = Callable[[dict], dict]


class HeldOut:
    """The held-out images with the teachers' targets computed once (teachers are frozen).

    Losses are computed in each teacher's own space: when the heads learn standardised targets
    (PHI-S), ``to_teacher_space`` maps their predictions back first, so ``fd_loss`` stays comparable
    between runs with and without standardisation.
    """

    def __init__(self, paths: Sequence[Path], shared_hw: tuple[int, int], student_hw: tuple[int, int],
                 teachers: Sequence[Any], batch_size: int, device: torch.device) -> None:
        self.student_hw = student_hw
        self.batches: list[tuple[torch.Tensor, dict]] = []
        with torch.no_grad():
            for images in eval_batches(list(paths), shared_hw, student_hw, batch_size):
                images = images.to(device)
                targets = {t.name: t(images) for t in teachers}
                self.batches.append((student_view(images, student_hw), targets))

    @torch.no_grad()
    def evaluate(self, backbone: nn.Module, heads: nn.Module, recipe: Recipe, fd_teacher: str,
                 autocast: Callable[[], contextlib.AbstractContextManager],
                 to_teacher_space: TargetMap | None = None) -> tuple[float | None, dict[str, float]]:
        """``(fd_loss, {"<teacher>/summary": ..., "<teacher>/features": ...})``, unweighted (λ = γ = 1)."""
        from zoo.losses import FEATURES, distillation_losses, term_name

        was_training = backbone.training, heads.training
        backbone.eval(), heads.eval()
        sums: dict[str, float] = {}
        count = 0
        try:
            for x, targets in self.batches:
                with autocast():
                    predictions = heads(backbone(x))
                if to_teacher_space is not None:
                    predictions = to_teacher_space(predictions)
                n = x.shape[0]
                losses = distillation_losses(predictions, targets, alpha=recipe.loss.alpha, beta=recipe.loss.beta)
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * n
                count += n
        finally:
            backbone.train(was_training[0]), heads.train(was_training[1])
        losses = {k: v / count for k, v in sums.items()} if count else {}
        return losses.get(term_name(fd_teacher, FEATURES)), losses


class RecentMean:
    """The mean of a per-step scalar over the last ``size`` steps, kept on the device (no sync per step).

    Used for ``fd_loss_train``: Table 7's FD loss is the DINOv2 feature term of the *training* loss.
    """

    def __init__(self, size: int, device: torch.device) -> None:
        self.values = torch.zeros(int(size), dtype=torch.float32, device=device)
        self.next = 0
        self.count = 0

    def add(self, value: torch.Tensor) -> None:
        self.values[self.next] = value.detach().float()
        self.next = (self.next + 1) % self.values.numel()
        self.count = min(self.count + 1, self.values.numel())

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.detach().cpu(), "next": self.next, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = state["values"]
        if values.numel() != self.values.numel():  # a resumed run with another window: keep what fits
            kept = torch.roll(values, -int(state["next"]))[-min(int(state["count"]), self.values.numel()):]
            self.values.zero_()
            self.values[:kept.numel()] = kept.to(self.values.device)
            self.next, self.count = kept.numel() % self.values.numel(), kept.numel()
            return
        self.values.copy_(values.to(self.values.device))
        self.next, self.count = int(state["next"]), int(state["count"])

    def mean(self, world_size: int = 1) -> float | None:
        """The mean over the filled slots (averaged over ranks under DDP), or None before any step."""
        if self.count == 0:
            return None
        total = self.values.sum() / self.count
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
            total = total / world_size
        return float(total)


def measure_backbone(backbone: nn.Module, name: str, family: str | None, recipe: Recipe,
                     device: torch.device) -> tuple[float, float | None, dict | None]:
    """``(params_m, gmacs, throughput)`` of a copy of the trained backbone (eval mode, recipe resolution)."""
    from zoo.bench import BenchSettings, bench_model, count_params_m
    from zoo.flops import count_gmacs

    model = copy.deepcopy(backbone).eval()
    params_m = count_params_m(model)
    if not recipe.bench.enabled:
        return params_m, count_gmacs(model, recipe.resolution, device="cpu").gmacs, None
    chosen = {key: getattr(recipe.bench, key) for key in ("batch_size", "warmup", "repeats", "steps_per_repeat")}
    settings = BenchSettings(resolution=recipe.resolution, device=str(device), flops=True,
                             **{key: value for key, value in chosen.items() if value is not None})
    result = bench_model(model, settings, name=name, family=family)
    return params_m, result.gmacs, dict(result.throughput)
