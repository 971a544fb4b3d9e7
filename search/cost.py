"""What one candidate costs to train, known before training it: memory, and seconds per proxy step.

* :func:`train_memory_bytes`: fp32 weights, gradients and AdamW's two moments (16 bytes per parameter)
  plus the activations a training step keeps for the backward pass, summed over the outputs of every
  leaf module in one forward pass on the meta device (no memory, no compute) at the training batch and
  resolution. An estimate of the student's share (teachers and the adaptor heads come on top; with a
  teacher cache the teachers do not run). It is what ``--max-memory`` compares against, so a laptop
  never builds a candidate it cannot hold.
* :func:`step_seconds`: a real forward + backward + AdamW step of one candidate at the training batch and
  resolution, timed after one warm-up step (the student's share of a proxy step).
"""

from __future__ import annotations

import os
import time
from typing import Any

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


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
