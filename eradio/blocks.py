"""E-RADIO building blocks: stem, down-sampling, windows, attention with a
continuous position bias, multi-resolution attention (MRA) and the neck.

Feature maps travel between stages as NCHW tensors; attention runs on window
tokens ``[B * windows, wh * ww, C]``. A window is an ``(height, width)`` pair
so non-square inputs get non-square windows.

Attention is computed with ``F.scaled_dot_product_attention`` when fused
attention is on, and with explicit ``q @ k^T`` / softmax / ``@ v`` otherwise,
so that FLOP counters without an SDPA handler (fvcore) see it. Fused
attention follows :data:`FUSED_ATTN` (``None``: follow timm, i.e.
``TIMM_FUSED_ATTN`` and ``timm.layers.set_fused_attn``), read at every forward
so switching it on a built model works.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, use_fused_attn
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from eradio.config import LARGE_WINDOW_MODES, RESAMPLE_MODES

Window = tuple[int, int]

# None: follow timm.layers.use_fused_attn(); True/False: force SDPA / explicit matmuls.
FUSED_ATTN: bool | None = None

BIAS_SCALE = 16.0  # SwinV2: bias = 16 * sigmoid(mlp(coords))
LOG_COORD_SCALE = 8.0  # SwinV2: normalised offsets are scaled to [-8, 8] before the log


def fused_attn_enabled() -> bool:
    return use_fused_attn() if FUSED_ATTN is None else bool(FUSED_ATTN)


def as_window(window: int | Sequence[int]) -> Window:
    """``7`` -> ``(7, 7)``; ``(10, 16)`` stays."""
    if isinstance(window, int):
        return (window, window)
    height, width = (int(v) for v in window)
    return (height, width)


def fit_window(window: Window, height: int, width: int, large_window: str = "clamp") -> Window:
    """The window used on a ``height x width`` map.

    ``large_window="clamp"``: a window larger than the map shrinks to the map
    (one window, global attention, no padding tokens); ``"pad"``: it stays, and
    :func:`window_partition` zero-pads the map up to it (the reference).

    ``int()`` makes the map size concrete under torch.compile: with symbolic
    sizes the window (and every table derived from it) would be symbolic too,
    which makes dynamic-shape tracing crawl. A new input size recompiles instead.
    """
    if large_window == "pad":
        return (int(window[0]), int(window[1]))
    if large_window != "clamp":
        raise ValueError(f"large_window must be one of {LARGE_WINDOW_MODES}, got {large_window!r}")
    return (min(window[0], int(height)), min(window[1], int(width)))


# --------------------------------------------------------------------------- convolutions


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm; :meth:`fuse` folds the norm into the conv."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def fold_conv_bn(module: nn.Module) -> bool:
    """Fold ``module.bn`` (applied after ``module.conv``) into the conv; ``True`` if done.

    Works for :class:`ConvBN` and ultralytics' ``Conv`` (``act(bn(conv(x)))``):
    the norm becomes ``nn.Identity`` and the conv gets the bias.
    """
    conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return False
    module.conv = fuse_conv_bn_eval(conv.eval(), bn.eval())
    module.bn = nn.Identity()
    return True


class Stem(nn.Module):
    """Two 3x3 stride-2 ConvBN + ReLU: ``in_chans`` -> ``in_dim`` -> ``dim`` at stride 4."""

    def __init__(self, in_chans: int, in_dim: int, dim: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_chans, in_dim, 3, 2, 1)
        self.act1 = nn.ReLU()
        self.conv2 = ConvBN(in_dim, dim, 3, 2, 1)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))))


class Downsample(ConvBN):
    """3x3 stride-2 ConvBN, no activation and no norm before it (paper Appendix A)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim, 3, 2, 1)


class NormConv(nn.Module):
    """BatchNorm then 1x1 conv (with bias); :meth:`fuse` folds the norm into the conv."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """``W (s x + t) + b = (W s) x + (W t + b)``, exact for a 1x1 conv without padding."""
        if not isinstance(self.norm, nn.BatchNorm2d):
            return
        norm, conv = self.norm, self.conv
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        weight = conv.weight  # [out, in, 1, 1]
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 1, device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight * scale[None, :, None, None])
        fused.bias.copy_(conv.bias + weight[:, :, 0, 0] @ shift)
        self.conv, self.norm = fused, nn.Identity()


class Neck(nn.Module):
    """The paper's "upsample": stage 3 (stride 16) plus a learned 2x up-sampling of stage 4.

    ``NormConv(4d -> neck)(stage3) + PixelShuffle(2)(NormConv(8d -> 4 neck)(stage4))``.
    """

    def __init__(self, stage3_dim: int, stage4_dim: int, neck_dim: int) -> None:
        super().__init__()
        self.proj3 = NormConv(stage3_dim, neck_dim)
        self.proj4 = NormConv(stage4_dim, 4 * neck_dim)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, stage3: torch.Tensor, stage4: torch.Tensor) -> torch.Tensor:
        return self.proj3(stage3) + self.shuffle(self.proj4(stage4))


# --------------------------------------------------------------------------- windows


def window_partition(x: torch.Tensor, window: Window) -> tuple[torch.Tensor, Window]:
    """``[B, C, H, W]`` -> tokens ``[B * windows, wh * ww, C]`` and the padded size.

    A map that is not a multiple of the window is zero-padded at the bottom
    and right, as the reference implementation does (its weights only give
    its outputs that way); :func:`window_reverse` crops back.
    """
    batch, channels = x.shape[:2]
    height, width = int(x.shape[-2]), int(x.shape[-1])  # concrete under torch.compile (see fit_window)
    win_h, win_w = window
    pad_h, pad_w = (-height) % win_h, (-width) % win_w
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.reshape(batch, channels, padded_h // win_h, win_h, padded_w // win_w, win_w)
    tokens = x.permute(0, 2, 4, 3, 5, 1).reshape(-1, win_h * win_w, channels)
    return tokens, (padded_h, padded_w)


def window_reverse(tokens: torch.Tensor, window: Window, size: Window, padded: Window) -> torch.Tensor:
    """Inverse of :func:`window_partition`: tokens -> ``[B, C, H, W]`` cropped to ``size``."""
    win_h, win_w = window
    padded_h, padded_w = padded
    channels = tokens.shape[-1]
    x = tokens.reshape(-1, padded_h // win_h, padded_w // win_w, win_h, win_w, channels)
    x = x.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, padded_h, padded_w)
    if (padded_h, padded_w) != tuple(size):
        x = x[:, :, : size[0], : size[1]]
    return x


# --------------------------------------------------------------------------- attention


def relative_coords_table(window: Window, reference: Window, device: torch.device | None = None) -> torch.Tensor:
    """SwinV2 log-spaced relative offsets of a window, ``[(2wh-1) * (2ww-1), 2]``.

    Offsets are divided by ``reference - 1`` (``reference = window``: they span
    [-1, 1] of the window in use; the build-time window: they keep one meaning
    at every window), then scaled by 8 and mapped to
    ``sign(x) log2(1 + |x|) / log2(8)``.
    """
    axes = []
    for size, ref in zip(window, reference):
        offsets = torch.arange(-(size - 1), size, dtype=torch.float32, device=device)
        axes.append(offsets / max(ref - 1, 1))  # a 1-wide reference window has no offsets to normalise
    table = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1).reshape(-1, 2) * LOG_COORD_SCALE
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(LOG_COORD_SCALE)


def relative_position_index(window: Window, device: torch.device | None = None) -> torch.Tensor:
    """For each (query, key) pair of a window, the row of its offset in the coords table, ``[N * N]``."""
    win_h, win_w = window
    coords = torch.stack(
        torch.meshgrid(torch.arange(win_h, device=device), torch.arange(win_w, device=device), indexing="ij")
    ).flatten(1)  # [2, N]
    relative = coords[:, :, None] - coords[:, None, :]  # [2, N, N]
    return ((relative[0] + win_h - 1) * (2 * win_w - 1) + (relative[1] + win_w - 1)).flatten()


class ContinuousPositionBias(nn.Module):
    """SwinV2 continuous relative position bias: an MLP over log-spaced offsets.

    ``forward(window)`` returns ``[heads, N, N]`` (``N = wh * ww``) for any
    window. In deploy mode the table of one window is cached (computed without
    grad, so the module holds no graph and deep-copies cleanly); asking for any
    other window, or training, computes it afresh.
    """

    def __init__(self, num_heads: int, hidden: int = 512, reference_window: Window = (7, 7),
                 norm_window: str = "current") -> None:
        super().__init__()
        if norm_window not in ("current", "build"):
            raise ValueError(f"norm_window must be 'current' or 'build', got {norm_window!r}")
        self.num_heads = num_heads
        self.reference_window = as_window(reference_window)
        self.norm_window = norm_window
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_heads, bias=False))
        self.register_buffer("cached_bias", None, persistent=False)
        self.cached_window: Window | None = None

    def compute(self, window: Window) -> torch.Tensor:
        device = self.mlp[0].weight.device
        reference = window if self.norm_window == "current" else self.reference_window
        table = relative_coords_table(window, reference, device)
        index = relative_position_index(window, device)
        bias = self.mlp(table)[index]  # [N * N, heads]
        tokens = window[0] * window[1]
        bias = bias.reshape(tokens, tokens, self.num_heads).permute(2, 0, 1)
        return BIAS_SCALE * torch.sigmoid(bias)

    def forward(self, window: Window) -> torch.Tensor:
        if self.cached_bias is not None and self.cached_window == window and not self.training:
            return self.cached_bias
        return self.compute(window)

    @torch.no_grad()
    def cache(self, window: Window) -> None:
        """Store the table of ``window`` (deploy mode)."""
        self.cached_bias = self.compute(window).float().detach()
        self.cached_window = window

    def clear_cache(self) -> None:
        self.cached_bias, self.cached_window = None, None


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a continuous position bias.

    One bias-free linear for q, k, v, scaled dot product plus the position bias,
    bias-free output projection.
    """

    def __init__(self, dim: int, num_heads: int, cpb_hidden: int = 512, reference_window: Window = (7, 7),
                 cpb_norm_window: str = "current") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.pos_bias = ContinuousPositionBias(num_heads, cpb_hidden, reference_window, cpb_norm_window)

    def forward(self, x: torch.Tensor, window: Window) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, N, head_dim]
        bias = self.pos_bias(window).to(q.dtype).unsqueeze(0)  # [1, heads, N, N]
        if fused_attn_enabled():
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:  # explicit matmuls: visible to FLOP counters without an SDPA handler
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class WindowBlock(nn.Module):
    """Pre-norm transformer block on window tokens: LN -> attention -> residual, LN -> MLP -> residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        cpb_hidden: int = 512,
        reference_window: Window = (7, 7),
        cpb_norm_window: str = "current",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, cpb_hidden, reference_window, cpb_norm_window)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, bias=False)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, window: Window) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), window))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def half_mix(out: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``0.5 out + 0.5 in``: keeps a residual path through the down/up-sampling of MRA blocks."""
    return 0.5 * out + 0.5 * skip


# --------------------------------------------------------------------------- stages 3 and 4


class MRABlock(nn.Module):
    """One attention block of an MRA layer, at ``1 / ratio`` of the stage resolution.

    ``ratio > 1`` with ``resample="conv"`` (E-RADIO B, L): ``ratio x ratio``
    stride-``ratio`` conv down, window attention, transposed conv back up.
    ``resample="pool"`` (the reference XT, T, S): average pooling + 1x1
    ConvBN down, 1x1 ConvBN + nearest up-sampling back (the 1x1 conv runs
    before the up-sampling, which gives the same result for less work).
    A map that is not a multiple of the ratio is edge-padded (replicate:
    unlike reflection it works when the pad exceeds the map, e.g. ratio 4 on a
    2x2 map) and cropped back; the reference never meets this case (its
    ratio 2 always divides the stage-3 map). ``ratio == 1``: window attention
    at full resolution. Either way the block ends with :func:`half_mix`.
    """

    def __init__(self, dim: int, num_heads: int, ratio: int, mlp_ratio: float, drop_path: float,
                 cpb_hidden: int, reference_window: Window, resample: str = "conv",
                 cpb_norm_window: str = "current", large_window: str = "clamp") -> None:
        super().__init__()
        self.ratio = ratio
        self.large_window = large_window
        if ratio == 1:
            self.down = self.up = nn.Identity()
        elif resample == "conv":
            self.down = nn.Conv2d(dim, dim, ratio, ratio)
            self.up = nn.ConvTranspose2d(dim, dim, ratio, ratio)
        elif resample == "pool":
            self.down = nn.Sequential(nn.AvgPool2d(ratio, ratio), ConvBN(dim, dim, 1, 1, 0))
            self.up = nn.Sequential(ConvBN(dim, dim, 1, 1, 0), nn.Upsample(scale_factor=ratio, mode="nearest"))
        else:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        self.block = WindowBlock(dim, num_heads, mlp_ratio, drop_path, cpb_hidden, reference_window, cpb_norm_window)

    def forward(self, x: torch.Tensor, window: Window) -> torch.Tensor:
        skip = x
        height, width = int(x.shape[-2]), int(x.shape[-1])  # concrete under torch.compile (see fit_window)
        if self.ratio > 1:
            pad_h, pad_w = (-height) % self.ratio, (-width) % self.ratio
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        y = self.down(x)
        size = (int(y.shape[-2]), int(y.shape[-1]))
        window = fit_window(window, *size, self.large_window)
        tokens, padded = window_partition(y, window)
        y = window_reverse(self.block(tokens, window), window, size, padded)
        y = self.up(y)
        if (int(y.shape[-2]), int(y.shape[-1])) != (height, width):
            y = y[:, :, :height, :width]
        return half_mix(y, skip)


class MRALayer(nn.Module):
    """Multi-resolution attention: one :class:`MRABlock` per sub-sampling ratio, in order."""

    def __init__(self, dim: int, num_heads: int, ratios: Sequence[int], mlp_ratio: float, drop_path: float,
                 cpb_hidden: int, reference_window: Window, resample: str = "conv",
                 cpb_norm_window: str = "current", large_window: str = "clamp") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MRABlock(dim, num_heads, r, mlp_ratio, drop_path, cpb_hidden, reference_window, resample,
                     cpb_norm_window, large_window)
            for r in ratios
        )

    def forward(self, x: torch.Tensor, window: Window) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, window)
        return x


class AttentionStage(nn.Module):
    """Base of the attention stages: holds the run-time window and the deploy-mode bias caches."""

    window: Window

    def pos_bias_modules(self) -> list[ContinuousPositionBias]:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_window(self, window: int | Sequence[int], cache: bool = False) -> None:
        """Use ``window`` from now on; with ``cache`` (deploy mode) recompute the cached bias tables."""
        self.window = as_window(window)
        for module in self.pos_bias_modules():
            if cache:
                module.cache(self.window)
            else:
                module.clear_cache()


class MRAStage(AttentionStage):
    """Stage 3: ``depth`` MRA layers, every block with the same run-time window."""

    def __init__(self, dim: int, depth: int, num_heads: int, ratios: Sequence[int], window: Window,
                 mlp_ratio: float, drop_path: Sequence[float], cpb_hidden: int, resample: str = "conv",
                 cpb_norm_window: str = "current", large_window: str = "clamp") -> None:
        super().__init__()
        self.window = as_window(window)
        self.layers = nn.ModuleList(
            MRALayer(dim, num_heads, ratios, mlp_ratio, drop_path[i], cpb_hidden, self.window, resample,
                     cpb_norm_window, large_window)
            for i in range(depth)
        )

    def pos_bias_modules(self) -> list[ContinuousPositionBias]:
        return [b.block.attn.pos_bias for layer in self.layers for b in layer.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, self.window)
        return x


class WindowStage(AttentionStage):
    """Stage 4: the map is split into windows once and every block runs on the window tokens."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Window, mlp_ratio: float,
                 drop_path: Sequence[float], cpb_hidden: int, cpb_norm_window: str = "current",
                 large_window: str = "clamp") -> None:
        super().__init__()
        self.window = as_window(window)
        self.large_window = large_window
        self.blocks = nn.ModuleList(
            WindowBlock(dim, num_heads, mlp_ratio, drop_path[i], cpb_hidden, self.window, cpb_norm_window)
            for i in range(depth)
        )

    def pos_bias_modules(self) -> list[ContinuousPositionBias]:
        return [b.attn.pos_bias for b in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.blocks):
            return x
        size = (int(x.shape[-2]), int(x.shape[-1]))
        window = fit_window(self.window, *size, self.large_window)
        tokens, padded = window_partition(x, window)
        for block in self.blocks:
            # Same even mix as the MRA blocks (the reference applies it in every attention block).
            tokens = half_mix(block(tokens, window), tokens)
        return window_reverse(tokens, window, size, padded)
