"""FLOPs of a backbone with fvcore, stated in GMACs.

fvcore counts one multiply-add as one "flop", so its numbers are MACs (half
of what ``torch.utils.flop_counter`` reports): everything here says GMACs.
fvcore skips element-wise ops (add, GELU, softmax, ...) by design and has no
handler for ``aten::scaled_dot_product_attention``, the fused attention timm
uses by default. We register one: ``q @ k^T`` and ``attn @ v`` are counted
like the two matmuls of unfused attention, so a ViT counts the same with
fused attention on or off. (Switching fused attention off while counting
would not be enough: timm's ``Attention`` reads ``use_fused_attn()`` once,
when the module is built.)
"""

from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from zoo.backbone import as_hw

MAC_UNIT = "GMACs"

# The fused attention op and the kernels it may be traced as; all take (q, k, v, ...).
SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)


@dataclass
class FlopCount:
    """Multiply-accumulates of one forward pass of one image."""

    gmacs: float
    skipped_ops: dict[str, int] = field(default_factory=dict)  # op name -> times skipped
    by_operator: dict[str, float] = field(default_factory=dict)  # op name -> GMACs
    unit: str = MAC_UNIT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sdpa_macs(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int]) -> int:
    """MACs of ``softmax(q k^T) v`` for ``q [..., L, E]``, ``k [..., S, E]``, ``v [..., S, Ev]``."""
    *batch, length, embed = query_shape
    source = key_shape[-2]
    value_embed = value_shape[-1]
    # Broadcast batch dims (grouped-query attention repeats k/v heads).
    batch_size = prod(max(a, b) for a, b in zip(batch, key_shape[:-2])) if batch else 1
    return batch_size * length * source * (embed + value_embed)


def _sdpa_handle(inputs: list[Any], outputs: list[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(v) for v in inputs[:3])
    return sdpa_macs(query, key, value)


class _TupleOutput(nn.Module):
    """Return a plain tuple of tensors: jit tracing does not keep NamedTuples."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, dict):
            return tuple(v for v in out.values() if isinstance(v, torch.Tensor))
        return tuple(v for v in out if isinstance(v, torch.Tensor))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence fvcore's skipped-op log lines and jit tracer warnings (we report skipped ops)."""
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None


def count_gmacs(model: nn.Module, resolution: int | Sequence[int], device: str | torch.device = "cpu") -> FlopCount:
    """GMACs of one forward pass of ``model`` on one ``resolution`` image (fp32, eval mode).

    ``model`` is left as it was (mode and device); when it lives elsewhere than
    ``device``, a copy is counted.
    """
    height, width = as_hw(resolution)
    device = torch.device(device)
    current = _model_device(model)
    if current is not None and current != device:
        model = copy.deepcopy(model).to(device)
    was_training = model.training
    model.eval()
    inputs = torch.zeros(1, 3, height, width, device=device)
    try:
        with _quiet(), torch.no_grad():
            from fvcore.nn import FlopCountAnalysis  # imported quietly: it warns about torch.jit

            analysis = FlopCountAnalysis(_TupleOutput(model), inputs)
            analysis.set_op_handle(**{op: _sdpa_handle for op in SDPA_OPS})
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = analysis.total()
            by_operator = {op: macs / 1e9 for op, macs in analysis.by_operator().items()}
            skipped = dict(sorted(analysis.unsupported_ops().items()))
    finally:
        model.train(was_training)
    return FlopCount(gmacs=total / 1e9, skipped_ops=skipped, by_operator=by_operator)
