"""E-RADIO behind the backbone contract, and its registry entries.

``summary`` is the pooled stage-4 vector (8d); ``features`` the neck output at
stride 16, or stage 4 at stride 32 for variants without a neck. The attention
window is picked from the input size (:func:`eradio.pick_window_size`): at
build time from ``resolution`` (``create_backbone("eradio-b", resolution=512)``
runs with window 16) and again whenever a forward sees a new input size.

The architecture search builds arbitrary configurations either through the
registry (``create_backbone("eradio-b", config=dict(depths=[1, 1, 1, 1]))``:
a dict changes fields of the named variant, an ``ERadioConfig`` replaces it)
or with :func:`build_eradio_backbone`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from eradio import ERADIO_VARIANTS, ERadio, ERadioConfig, as_config, pick_window_size
from eradio import DEFAULT_WINDOW_CAP, SIZE_RULE
from eradio import timm_name as eradio_timm_name
from eradio.blocks import Window
from zoo.backbone import Backbone, BackboneOutput, as_hw
from zoo.registry import BackboneEntry, register

FAMILY = "eradio"

ConfigLike = ERadioConfig | Mapping[str, Any] | None


class ERadioBackbone(Backbone):
    """An :class:`eradio.ERadio` (no classifier) returning :class:`BackboneOutput`.

    Args:
        name: registry name (for messages).
        config: the architecture.
        resolution: input size to build for; picks the attention window.
        window_cap: largest window :func:`eradio.pick_window_size` may choose.
        auto_window: re-pick the window when the input size changes (else the
            window stays as built or as set with :meth:`set_window_size`, and
            maps it does not divide are reflect-padded).
        pretrained_file: a local state dict (of this wrapper or of the bare ERadio).
    """

    size_rule = SIZE_RULE

    def __init__(
        self,
        name: str,
        config: ConfigLike = None,
        resolution: int | tuple[int, int] = 224,
        window_cap: int = DEFAULT_WINDOW_CAP,
        auto_window: bool = True,
        pretrained_file: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = ERadio(as_config(config), num_classes=0, name=name)
        self.summary_dim = self.model.summary_dim
        self.feature_dim = self.model.feature_dim
        self.stride = self.model.stride
        self.window_cap = window_cap
        self.auto_window = auto_window
        self._window_for: tuple[int, int] | None = None
        height, width = as_hw(resolution)
        self.check_resolution(height, width)
        self._adapt_window(height, width, force=True)
        if pretrained_file:
            self._load(pretrained_file)

    @property
    def config(self) -> ERadioConfig:
        return self.model.config

    @property
    def window_size(self) -> tuple[Window, Window]:
        return self.model.window_size

    def _load(self, path: str) -> None:
        from zoo.checkpoints import load_state_dict_file

        state = load_state_dict_file(path)
        if all(key.startswith("model.") for key in state):
            self.load_state_dict(state)
        else:
            self.model.load_state_dict(state)

    @torch.compiler.disable  # runs eagerly under torch.compile; a new window then triggers a recompile
    def _adapt_window(self, height: int, width: int, force: bool = False) -> None:
        """Pick the window for ``height x width`` (once per new size)."""
        if (height, width) == self._window_for or not (self.auto_window or force):
            return
        self.check_resolution(height, width)
        self.model.set_window_size(pick_window_size((height, width), cap=self.window_cap))
        self._window_for = (height, width)

    def set_window_size(self, stage3: int | Sequence[int], stage4: int | Sequence[int] | None = None) -> None:
        """Fix the window by hand; turns automatic picking off."""
        self.auto_window = False
        self.model.set_window_size(stage3, stage4)

    def first_layer_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.stem.conv1.parameters())

    def fuse(self) -> "ERadioBackbone":
        """Deploy mode (:meth:`eradio.ERadio.fuse`): BatchNorms folded, position bias cached."""
        self.model.fuse()
        return self

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        self._adapt_window(int(x.shape[-2]), int(x.shape[-1]))
        summary, features = self.model.forward_features(x)
        return BackboneOutput(summary, features)


def _resolve_config(variant: str | None, config: ConfigLike, fields: Mapping[str, Any]) -> ERadioConfig:
    """Variant config, then ``config`` (a dict changes fields, an ERadioConfig replaces), then ``fields``."""
    if isinstance(config, ERadioConfig) or variant is None:
        base = as_config(config)
    else:
        base = as_config(ERADIO_VARIANTS[variant], **dict(config or {}))
    return as_config(base, **fields) if fields else base


def build_eradio_backbone(
    config: ConfigLike = None,
    resolution: int | tuple[int, int] = 224,
    name: str = "eradio-custom",
    **kwargs: Any,
) -> ERadioBackbone:
    """Build any E-RADIO configuration behind the backbone contract (for the search).

    ``kwargs``: ``window_cap``, ``auto_window``, ``pretrained_file``, or config fields.
    """
    wrapper_keys = {"window_cap", "auto_window", "pretrained_file"}
    wrapper_args = {k: kwargs.pop(k) for k in list(kwargs) if k in wrapper_keys}
    return ERadioBackbone(name=name, config=_resolve_config(None, config, kwargs), resolution=resolution,
                          **wrapper_args)


def _builder(
    name: str, resolution: tuple[int, int], variant: str, config: ConfigLike = None, **kwargs: Any
) -> ERadioBackbone:
    wrapper_keys = {"window_cap", "auto_window", "pretrained_file"}
    wrapper_args = {k: kwargs.pop(k) for k in list(kwargs) if k in wrapper_keys}
    cfg = _resolve_config(variant, config, kwargs)
    return ERadioBackbone(name=name, config=cfg, resolution=resolution, **wrapper_args)


def _describe(variant: str, cfg: ERadioConfig) -> str:
    neck = f"neck {cfg.neck_dim} at stride 16" if cfg.neck_dim else "no neck, stride 32"
    return f"E-RADIO d={cfg.dim}, depths {'-'.join(map(str, cfg.depths))}, {neck}"


# Table 7 lists E-RADIO-B (118M), B w/o upsample (113M) and L (265M), counted with a head.
_TABLE7 = {"b": 118.0, "b-noup": 113.0, "l": 265.0}

ENTRIES: list[BackboneEntry] = [
    register(
        BackboneEntry(
            name=f"eradio-{variant}",
            family=FAMILY,
            builder=_builder,
            timm_name=eradio_timm_name(variant),
            paper_params_m=_TABLE7.get(variant),
            in_table7=variant in _TABLE7,
            kwargs=dict(variant=variant),
            description=_describe(variant, cfg),
        ),
        overwrite=True,  # re-importing the plugin (e.g. importlib.reload) must not fail
    )
    for variant, cfg in ERADIO_VARIANTS.items()
]

__all__ = ["ERadioBackbone", "build_eradio_backbone", "ENTRIES", "FAMILY"]
