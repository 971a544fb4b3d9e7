"""The divergence guard: a non-finite loss or gradient norm stops the run before it can overwrite a good checkpoint.

Reading a GPU value every step would synchronise the GPU every step, so each step only ORs
``~isfinite`` into a flag that stays on the device (with the first bad step beside it); the flag is
read where the loop synchronises anyway (the logging cadence) and before every checkpoint write,
where the parameters themselves are checked too. Under DDP the ranks agree through one all-reduce.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

from zoo.distill.parallel import DistContext

_NO_STEP = float(2**53)  # "no bad step yet" in the all-reduce (exact in float64)


class DivergenceGuard:
    """Watch a run for non-finite values without a per-step sync.

    ``check_grad_norm`` is false under fp16 loss scaling: there an inf/NaN gradient is a step the
    scaler skips (and lowers its scale for), not a divergence; a non-finite loss still is.
    """

    def __init__(self, device: torch.device, check_grad_norm: bool = True) -> None:
        self.check_grad_norm = check_grad_norm
        self._bad = torch.zeros((), dtype=torch.bool, device=device)
        self._first = torch.full((), -1, dtype=torch.long, device=device)
        self.diverged_step: int | None = None  # set by check() once divergence is confirmed

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """Record step ``step`` (1-based: the step that produced ``loss``); device ops only, no sync."""
        bad = ~torch.isfinite(loss.detach().float())
        if self.check_grad_norm and grad_norm is not None:
            bad = bad | ~torch.isfinite(grad_norm.detach().float())
        self._first.masked_fill_(bad & ~self._bad, step)
        self._bad |= bad

    def check(self, ctx: DistContext, step: int, parameters: Iterable[torch.Tensor] | None = None) -> bool:
        """True (on every rank) when the run has diverged; syncs. ``parameters``: also check these are finite."""
        if self.diverged_step is not None:
            return True
        bad = self._bad.clone()
        first = self._first.clone()
        if parameters is not None:
            params_bad = torch.zeros((), dtype=torch.bool, device=bad.device)
            for p in parameters:
                params_bad |= ~torch.isfinite(p.detach()).all()
            first = torch.where(params_bad & ~bad, torch.full_like(first, step), first)
            bad = bad | params_bad
        values = torch.stack([bad.double(), torch.where(first >= 0, -first.double(),
                                                        torch.full_like(first, 0).double() - _NO_STEP)])
        if ctx.active:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)  # any rank bad; the earliest bad step
        flag, neg_first = values.tolist()
        if flag <= 0:
            return False
        self.diverged_step = int(-neg_first) if -neg_first < _NO_STEP else step
        return True
