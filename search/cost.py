"""What one candidate costs to train, known before training it: memory, and seconds per proxy step.

* :func:`train_memory_bytes`: fp32 weights, gradients and AdamW's two moments (16 bytes per parameter)
  plus the activations a training step keeps for the backward pass, summed over the outputs of every
  leaf module in one forward pass on the meta device (no memory, no compute) at the training batch and
  resolution. An estimate of the student's share (teachers and the adaptor heads come on top; with a
  teacher cache the teachers do not run). It is what ``--max-memory`` compares against, so a laptop
  never builds a candidate it cannot hold.
* :func:`step_seconds`: a real forward + backward + AdamW step of one candidate at the training batch and
  resolution, timed after one warm-up step (the student's share of a proxy step).
* :func:`measure_trial_cost`: what one trial of a candidate costs, piece by piece (:class:`TrialCost`): a
  real distillation step (teachers' forward, or nothing with a teacher cache; student, adaptor heads,
  losses, backward, AdamW) timed after a warm-up step, the model build, one inference forward at the
  bench batch (throughput measurement and held-out evaluation are counted in those), the FLOP count, and
  the checkpoint's size over this disk's fsync'd write rate. :meth:`TrialCost.seconds` adds them up for
  the number of steps, evaluations, checkpoints and measurements a trial makes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

BYTES_PER_PARAM_TRAINING = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq


def train_memory_bytes(candidate: Any, batch_size: int) -> int:
    """Estimated bytes to train ``candidate`` at ``batch_size`` (see the module docstring)."""
    return train_costs(candidate, batch_size)[1]


def train_costs(candidate: Any, batch_size: int) -> tuple[int, int]:
    """``(parameters, estimated training bytes)`` of ``candidate`` from one meta-device build."""
    import torch

    model = candidate.build(device="meta").eval()  # eval: BatchNorm accepts one value per channel (batch 1)
    params = sum(p.numel() for p in model.parameters())
    saved = 0

    def count(module: Any, args: Any, output: Any) -> None:
        nonlocal saved
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                saved += tensor.numel() * tensor.element_size()
            elif hasattr(tensor, "summary"):  # a BackboneOutput
                saved += sum(t.numel() * t.element_size() for t in (tensor.summary, tensor.features))

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        side = candidate.resolution
        model(torch.zeros(batch_size, 3, side, side, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return params, int(params * BYTES_PER_PARAM_TRAINING + saved)


def available_memory_bytes(device: str = "cpu") -> int | None:
    """Memory this worker may use: free CUDA memory, or MemAvailable of /proc/meminfo on a CPU (None if unknown)."""
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = torch.device(device).index or 0
            free, _ = torch.cuda.mem_get_info(index)
            return int(free)
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def step_seconds(candidate: Any, batch_size: int, device: str = "cpu", steps: int = 2) -> float:
    """Seconds of one training step of the student alone (forward, a stand-in loss, backward, AdamW)."""
    import torch

    device_ = torch.device(device)
    model = candidate.build().to(device_).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, candidate.resolution, candidate.resolution, device=device_)

    def step() -> None:
        out = model(x)
        loss = out.summary.float().pow(2).mean() + out.features.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device_.type == "cuda":
            torch.cuda.synchronize(device_)

    step()  # warm-up: allocations, kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


@dataclass
class TrialCost:
    """Seconds of the pieces of one trial of a candidate on this machine (see :func:`measure_trial_cost`)."""

    build_s: float  # one candidate.build()
    step_s: float  # one distillation step, teachers included (or the cache read)
    forward_s: float  # one inference forward at the bench batch
    bench_batch: int
    gmacs_s: float  # one FLOP count (the bench's, and each proxy run's at its end)
    checkpoint_bytes: int  # model + heads + AdamW moments
    write_bytes_per_s: float  # fsync'd writes to the runs' disk

    def checkpoint_s(self) -> float:
        return self.checkpoint_bytes / self.write_bytes_per_s

    def eval_s(self, images: int) -> float:
        """A held-out evaluation: the student (and heads) on ``images`` images."""
        return self.forward_s * max(1, images) / self.bench_batch

    def seconds(self, plan: "TrialPlan") -> float:
        """The trial's seconds: measurement, then each proxy run (build, steps, evaluations, checkpoints, FLOPs)."""
        bench = 0.0
        if plan.bench_forwards:
            bench = self.build_s + self.gmacs_s + plan.bench_forwards * self.forward_s
        runs = plan.runs * (self.build_s + self.gmacs_s)
        return (bench + runs + plan.steps * self.step_s + plan.evaluations * self.eval_s(plan.eval_images)
                + plan.checkpoints * self.checkpoint_s())


@dataclass
class TrialPlan:
    """What an average trial does (from the recipe, the bench settings and the rung schedule)."""

    steps: float  # proxy steps trained
    evaluations: float  # held-out FD-loss evaluations
    eval_images: int
    checkpoints: float  # checkpoint writes
    runs: float  # distill calls (one per rung reached): each builds the student and counts its FLOPs
    bench_forwards: int  # forward passes of the throughput measurement (0: predicted from the latency table)


def measure_trial_cost(candidate: Any, recipe: Any, teachers: Sequence[Any], bench_batch: int, device: str = "cpu",
                       out_dir: str | Path = ".", steps: int = 1) -> TrialCost:
    """Time the pieces of a trial of ``candidate`` under the proxy ``recipe`` with these built ``teachers``.

    The distillation step is the one :class:`zoo.distill.model.DistillModel` takes (backbone, adaptor heads,
    the distillation losses and their balancer; backward, AdamW) on a batch at the teachers' shared
    resolution, after the teachers' forward unless the recipe reads a teacher cache (built here from
    zoo.heads and zoo.losses, not zoo.distill: a preview needs no trainer). One warm-up step, then
    ``steps`` timed ones.
    """
    import contextlib

    import torch

    from zoo.data import shared_resolution, student_view
    from zoo.flops import count_gmacs
    from zoo.heads import AdaptorHeads
    from zoo.losses import LossBalancer, distillation_losses, loss_term_names

    device_ = torch.device(device)
    start = time.perf_counter()
    backbone = candidate.build()
    build_s = time.perf_counter() - start
    hw = tuple(recipe.resolution)
    loss = recipe.loss
    cached = getattr(recipe.data, "teacher_cache", None) is not None
    shared = shared_resolution(hw, *[t.resolution for t in teachers])
    heads = AdaptorHeads(backbone.summary_dim, backbone.feature_dim, teachers)
    balancer = LossBalancer(loss.balancing, loss_term_names(teachers, loss.summary_weights, loss.feature_weights),
                            backbone.summary_dim)
    model = torch.nn.ModuleDict({"backbone": backbone, "heads": heads, "balancer": balancer}).to(device_).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr)
    dtype = _amp_dtype(recipe.train.amp, device_)
    reduction = "none" if loss.balancing == "uncertainty" else "mean"
    batch = torch.rand(int(recipe.train.batch_size), 3, *shared, device=device_)
    with torch.no_grad():
        fixed_targets = {t.name: t(batch) for t in teachers}

    def step() -> None:
        if cached:
            targets = fixed_targets  # read from the cache's memory map: next to nothing
        else:
            with torch.no_grad():
                targets = {t.name: t(batch) for t in teachers}
        with torch.autocast(device_.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            out = backbone(student_view(batch, hw))
            losses = distillation_losses(heads(out), targets, loss.summary_weights, loss.feature_weights,
                                         loss.alpha, loss.beta, reduction=reduction)
            total, _ = balancer(losses, out[0])
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        _sync(device_)

    step()  # warm-up: allocations, kernel selection, AdamW's state
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - start) / steps
    checkpoint_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    checkpoint_bytes += sum(t.numel() * t.element_size() for state in optimizer.state.values()
                            for t in state.values() if isinstance(t, torch.Tensor))
    backbone.eval()
    x = torch.rand(bench_batch, 3, *hw, device=device_)
    with torch.no_grad():
        backbone(x)  # warm-up
        _sync(device_)
        start = time.perf_counter()
        backbone(x)
        _sync(device_)
        forward_s = time.perf_counter() - start
    start = time.perf_counter()
    count_gmacs(backbone, hw, device=device_)
    gmacs_s = time.perf_counter() - start
    return TrialCost(build_s=build_s, step_s=step_s, forward_s=forward_s, bench_batch=bench_batch, gmacs_s=gmacs_s,
                     checkpoint_bytes=int(checkpoint_bytes), write_bytes_per_s=write_rate(out_dir))


WRITE_PROBE_BYTES = 32 * 2**20


def write_rate(folder: str | Path, size: int = WRITE_PROBE_BYTES) -> float:
    """Bytes per second of a ``torch.save`` + fsync to ``folder`` (its nearest existing parent), as checkpoints are
    written; the probe file is removed."""
    import tempfile

    import torch

    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    payload = torch.empty(size // 4, dtype=torch.float32).uniform_()
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".zoo-write-probe-", suffix=".tmp") as handle:
        start = time.perf_counter()
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
        seconds = time.perf_counter() - start
    return size / max(seconds, 1e-6)


def _amp_dtype(mode: str, device: Any) -> Any:
    """The training autocast dtype of recipe key ``train.amp`` (as the trainer: bf16 on CUDA by default)."""
    import torch

    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if mode == "fp16" else torch.bfloat16


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
