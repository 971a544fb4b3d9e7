"""The E-RADIO network (AM-RADIO paper, Section 5.1 and Appendix A).

stem (stride 4) -> C2f stage 1 -> down -> C2f stage 2 -> down -> MRA stage 3
(stride 16) -> down -> windowed stage 4 (stride 32) -> BatchNorm -> pooled
summary; optional neck: stage 3 + 2x up-sampled stage 4 at stride 16.

Inputs must be multiples of 32 on each side (non-square is fine). The window
size is a run-time setting (:meth:`ERadio.set_window_size`); choose it for a
resolution with :func:`pick_window_size`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from timm.layers import trunc_normal_
from torch import nn

from eradio._c2f import C2f
from eradio.blocks import (
    MRAStage,
    Neck,
    NormConv,
    Stem,
    Downsample,
    Window,
    WindowStage,
    as_window,
    fold_conv_bn,
)
from eradio.config import ERadioConfig, as_config
from eradio.errors import ERadioResolutionError as ResolutionError

STRIDE = 32  # input pixels per stage-4 cell; every side must be a multiple of it
MIN_SIDE = STRIDE
DEFAULT_WINDOW_CAP = 16
# A window smaller than this that does not cover the whole map (544 px: 17 cells -> window 1)
# makes attention (nearly) a no-op; pick_window_size refuses it.
MIN_WINDOW = 4


def as_hw(resolution: int | str | Sequence[int]) -> tuple[int, int]:
    """``224`` / ``"224"`` -> ``(224, 224)``; ``"320x512"`` / ``(320, 512)`` -> ``(320, 512)``.

    Anything else (zero, negative, not integers, three sides) is an
    :class:`~eradio.errors.ERadioResolutionError`.
    """
    def bad() -> ResolutionError:
        return ResolutionError(f"resolution {resolution!r} is not N or HxW with positive integers (e.g. 224 or 320x512)")

    if isinstance(resolution, str):
        parts = resolution.strip().lower().replace("×", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise bad() from None
    elif isinstance(resolution, bool):
        raise bad()
    elif isinstance(resolution, int):
        values = [resolution]
    else:
        try:
            values = [int(v) for v in resolution]
        except (TypeError, ValueError):
            raise bad() from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise bad()
    return (values[0], values[-1])


def _nearest_multiples(side: int) -> list[int]:
    below = max(MIN_SIDE, (side // STRIDE) * STRIDE)
    above = max(MIN_SIDE, -(-side // STRIDE) * STRIDE)
    return sorted({below, above})


def check_input_size(height: int, width: int, name: str = "E-RADIO") -> None:
    """Refuse (one line, with the nearest sizes that work) any side that is not a positive multiple of 32."""
    problems = []
    for side_name, side in (("height", height), ("width", width)):
        if side < MIN_SIDE:
            problems.append(f"{side_name} {side} < {MIN_SIDE}")
        elif side % STRIDE:
            near = " or ".join(map(str, _nearest_multiples(side)))
            problems.append(f"{side_name} {side} is not a multiple of {STRIDE} (try {near})")
    if problems:
        raise ResolutionError(
            f"{name} cannot take {height}x{width}: {'; '.join(problems)} "
            f"(sides multiples of {STRIDE}, at least {MIN_SIDE})"
        )


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _window_for_side(cells: int, cap: int, minimum: int) -> int | None:
    """Largest divisor of ``cells`` up to ``cap``; None if it is below ``minimum`` and not the whole map."""
    window = _largest_divisor(cells, cap)
    return window if window >= minimum or window == cells else None


def pick_window_size(
    resolution: int | Sequence[int] | str, cap: int = DEFAULT_WINDOW_CAP, minimum: int = MIN_WINDOW
) -> Window:
    """The attention window for an input of ``resolution``: ``(wh, ww)``.

    Per side, the largest divisor of ``side / 32`` (the stage-4 map) not above
    ``cap``; it then also divides the stage-3 map and its 2x sub-sampled copy,
    so no window is padded. 224 -> 7, 256 -> 8, 512 -> 16, 320x512 -> (10, 16).
    A divisor below ``minimum`` that does not cover the whole map (544, 608,
    736 px give 1) is refused with a :class:`ResolutionError` naming sizes that
    work, rather than silently turning attention into a no-op.
    """
    height, width = as_hw(resolution)
    check_input_size(height, width)
    if cap < 1 or minimum < 1:
        raise ResolutionError(f"window cap ({cap}) and minimum ({minimum}) must be at least 1")
    window, problems = [], []
    for index, side in enumerate((height, width)):
        cells = side // STRIDE
        chosen = _window_for_side(cells, cap, minimum)
        if chosen is None and not (index == 1 and side == height):  # a square size: say it once
            usable = [d for d in range(minimum, cells + 1) if cells % d == 0]
            near = _nearest_working_sizes(side, cap, minimum)
            problems.append(
                f"side {side} gives a {cells}-cell stage-4 map whose largest window divisor up to {cap} is "
                f"{_largest_divisor(cells, cap)} (< {minimum}: attention would barely mix anything); "
                f"use {' or '.join(map(str, near))}" + (f", or cap={usable[0]}" if usable else "")
            )
            chosen = 0
        window.append(chosen)
    if problems:
        raise ResolutionError(f"E-RADIO has no good window for {height}x{width}: {'; '.join(problems)}")
    return (window[0], window[1])


def _nearest_working_sizes(side: int, cap: int, minimum: int, limit: int = 64) -> list[int]:
    """The closest multiples of 32 below and above ``side`` that :func:`pick_window_size` accepts."""
    found = []
    for direction in (-1, 1):
        for step in range(1, limit):
            candidate = side + direction * step * STRIDE
            if candidate < STRIDE:
                break
            if _window_for_side(candidate // STRIDE, cap, minimum) is not None:
                found.append(candidate)
                break
    return found


def _drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rising linearly over all layers, split per stage (plain floats: meta-safe)."""
    total = sum(depths)
    flat = [rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for depth in depths:
        out.append(flat[start : start + depth])
        start += depth
    return out


class ERadio(nn.Module):
    """E-RADIO backbone with an optional linear classifier on the summary.

    Args:
        config: an :class:`ERadioConfig`, a dict of its fields, or None (defaults).
        num_classes: classes of a linear head on the summary (0: no head).
        name: shown in error messages.
        **overrides: config fields to change (``dim=64``, ``depths=[1, 1, 1, 1]``...).

    ``forward_features(x)`` returns ``(summary [B, 8d], features [B, C, h, w])``
    with ``C = neck_dim`` at stride 16 if there is a neck, else ``8d`` at stride
    32; ``forward(x)`` returns ``head(summary)`` (the summary itself without a head).
    """

    def __init__(
        self,
        config: ERadioConfig | Mapping[str, Any] | None = None,
        num_classes: int = 0,
        name: str = "E-RADIO",
        **overrides: Any,
    ) -> None:
        super().__init__()
        cfg = as_config(config, **overrides)
        self.config = cfg
        self.name = name
        self.deployed = False
        d1, d2, d3, d4 = cfg.stage_dims()
        dpr = _drop_path_rates(cfg.drop_path_rate, cfg.depths)
        window3, window4 = cfg.window_size

        self.stem = Stem(cfg.in_chans, cfg.in_dim, d1)
        self.stage1 = C2f(d1, d1, n=cfg.depths[0], shortcut=True, e=0.5)
        self.down1 = Downsample(d1, d2)
        self.stage2 = C2f(d2, d2, n=cfg.depths[1], shortcut=True, e=0.5)
        self.down2 = Downsample(d2, d3)
        self.stage3 = MRAStage(d3, cfg.depths[2], cfg.num_heads[2], cfg.mra_ratios, as_window(window3),
                               cfg.mlp_ratio, dpr[2], cfg.cpb_hidden, cfg.mra_resample,
                               cfg.cpb_norm_window, cfg.large_window)
        self.down3 = Downsample(d3, d4)
        self.stage4 = WindowStage(d4, cfg.depths[3], cfg.num_heads[3], as_window(window4),
                                  cfg.mlp_ratio, dpr[3], cfg.cpb_hidden, cfg.cpb_norm_window, cfg.large_window)
        self.norm = nn.BatchNorm2d(d4)
        self.neck = Neck(d3, d4, cfg.neck_dim) if cfg.neck_dim else None

        self.num_features = self.summary_dim = d4
        self.feature_dim = cfg.neck_dim or d4
        self.stride = STRIDE // 2 if self.neck is not None else STRIDE
        self.num_classes = num_classes
        self.head = nn.Linear(d4, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            if module.weight.is_meta:  # shapes only (cost estimates): torch's meta clamp_ costs ~30 ms a call
                return
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ forward

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`~eradio.errors.ERadioResolutionError` (with the nearest valid sizes) unless both
        sides are positive multiples of 32."""
        check_input_size(height, width, self.name)

    def _prepare_input(self, x: torch.Tensor) -> None:
        """Check the input size (eager) or keep it static (under torch.compile).

        Window sizes, paddings and bias tables all depend on the map size; traced
        with symbolic sizes (dynamo's automatic dynamic shapes after a size change)
        they make compilation crawl, so a new input size recompiles instead, as it
        must anyway when the window changes.
        """
        if torch.compiler.is_compiling():
            torch._dynamo.mark_static(x, x.ndim - 2)  # inside a graph: specialises these sizes
            torch._dynamo.mark_static(x, x.ndim - 1)
        else:
            self.check_input_size(int(x.shape[-2]), int(x.shape[-1]))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(summary [B, 8d], features [B, C, h, w])``."""
        self._prepare_input(x)
        x = self.stage1(self.stem(x))
        x = self.stage2(self.down1(x))
        stage3 = self.stage3(self.down2(x))
        stage4 = self.stage4(self.down3(stage3))
        normed = self.norm(stage4)
        summary = normed.mean(dim=(2, 3))
        features = self.neck(stage3, stage4) if self.neck is not None else normed
        return summary, features

    def forward_head(self, summary: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return summary if pre_logits else self.head(summary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary, _ = self.forward_features(x)
        return self.forward_head(summary)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        return (height // self.stride, width // self.stride)

    # ------------------------------------------------------------------ classifier (timm API)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        device = self.norm.weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    # ------------------------------------------------------------------ windows and deploy mode

    @property
    def window_size(self) -> tuple[Window, Window]:
        """Run-time windows of stage 3 and stage 4."""
        return (self.stage3.window, self.stage4.window)

    def set_window_size(self, stage3: int | Sequence[int], stage4: int | Sequence[int] | None = None) -> "ERadio":
        """Use window ``stage3`` in stage 3 and ``stage4`` (default: the same) in stage 4.

        The position bias comes from an MLP over offsets, so any window works
        with the trained weights. In deploy mode the cached bias tables are
        recomputed for the new window.
        """
        for stage, window in ((self.stage3, stage3), (self.stage4, stage3 if stage4 is None else stage4)):
            window = as_window(window)
            if min(window) < 1:
                raise ResolutionError(f"window {window} must be at least 1")
            stage.set_window(window, cache=self.deployed)
        return self

    def set_window_for_resolution(
        self, resolution: int | Sequence[int] | str, cap: int = DEFAULT_WINDOW_CAP, minimum: int = MIN_WINDOW
    ) -> Window:
        """:func:`pick_window_size` for ``resolution`` and set it on both stages; returns the window."""
        window = pick_window_size(resolution, cap, minimum)
        self.set_window_size(window)
        return window

    @torch.no_grad()
    def fuse(self) -> "ERadio":
        """Deploy mode: fold every BatchNorm into its convolution (stem, C2f, down-sampling,
        neck) and cache the position-bias tables of the current windows. Puts the model in
        eval mode; outputs equal eval-mode outputs up to float rounding. Only the summary
        BatchNorm stays (no convolution to fold it into; in eval it is one affine map)."""
        self.eval()
        for module in list(self.modules()):
            if isinstance(module, NormConv):
                module.fuse()
            else:
                fold_conv_bn(module)
        self.deployed = True
        self.set_window_size(self.stage3.window, self.stage4.window)
        return self
