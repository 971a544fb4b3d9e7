"""E-RADIO: the efficient hybrid CNN-transformer student of AM-RADIO.

``import eradio`` registers one timm entry point per variant, so
``timm.create_model("eradio_b")`` works (timm convention: a 1000-class head
by default, the count Table 7 uses; ``num_classes=0`` gives the bare
backbone). Config fields pass through as keyword arguments
(``timm.create_model("eradio_b", depths=[1, 1, 1, 1], drop_path_rate=0.1)``).

Variants (``ERADIO_VARIANTS``): ``xt``, ``t``, ``s``, ``b-noup`` (no neck),
``b`` (neck 1024), ``l`` (neck 1536), and the neck versions ``xt-up``,
``t-up``, ``s-up`` (neck 8d = 512 / 640 / 768, the width rule of B and L).
timm names use underscores: ``eradio_b_noup``, ``eradio_xt_up``...

The package is standalone (torch, timm, ultralytics' C2f; nothing from
``zoo``). Errors are :mod:`eradio.errors` types (``ValueError`` subclasses
with one-line messages). Weights: :func:`eradio.checkpoint.load_weights` takes a
state dict in this package's layout or the reference implementation's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from eradio import blocks, checkpoint, errors
from eradio.checkpoint import load_weights
from eradio.config import ERADIO_VARIANTS, ERadioConfig, as_config, variant_config
from eradio.errors import ERadioConfigError, ERadioError, ERadioResolutionError, StateDictError, WeightsNotFoundError
from eradio.model import (
    DEFAULT_WINDOW_CAP,
    MIN_SIDE,
    MIN_WINDOW,
    STRIDE,
    ERadio,
    as_hw,
    check_input_size,
    pick_window_size,
)

__all__ = [
    "ERADIO_VARIANTS",
    "ERadio",
    "ERadioConfig",
    "ERadioConfigError",
    "ERadioError",
    "ERadioResolutionError",
    "DEFAULT_WINDOW_CAP",
    "MIN_SIDE",
    "MIN_WINDOW",
    "STRIDE",
    "StateDictError",
    "WeightsNotFoundError",
    "as_config",
    "as_hw",
    "blocks",
    "check_input_size",
    "checkpoint",
    "create_eradio",
    "errors",
    "load_weights",
    "pick_window_size",
    "timm_name",
    "variant_config",
]

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ERadioConfig))
# Keywords timm.create_model always passes; E-RADIO has no use for them.
_TIMM_PASSTHROUGH = ("cache_dir", "pretrained_model_args")  # timm.create_model's own bookkeeping


def timm_name(variant: str) -> str:
    """``"b-noup"`` -> ``"eradio_b_noup"``."""
    return "eradio_" + variant.replace("-", "_")


def create_eradio(variant: str, pretrained: bool = False, num_classes: int = 1000, **kwargs: Any) -> ERadio:
    """Build variant ``variant`` (timm-style keyword arguments; config fields override the variant).

    ``pretrained=True`` needs a local file: ``pretrained_cfg_overlay=dict(file=PATH)``
    (no E-RADIO weights are downloaded), in this package's key layout or the
    reference implementation's (:func:`eradio.checkpoint.load_weights`), read with
    timm's loader (weights only).
    """
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    for key in _TIMM_PASSTHROUGH:
        kwargs.pop(key, None)
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONFIG_FIELDS}
    if kwargs:
        raise ERadioConfigError(
            f"{timm_name(variant)}: unknown argument(s) {', '.join(sorted(kwargs))}; "
            f"E-RADIO takes num_classes and the ERadioConfig fields {', '.join(sorted(_CONFIG_FIELDS))}"
        )
    model = ERadio(variant_config(variant, **fields), num_classes=num_classes, name=timm_name(variant))
    if pretrained:
        file = overlay.get("file") or _local_dir_weights(pretrained_cfg)
        if not file:
            raise WeightsNotFoundError(
                f"{timm_name(variant)}: no published weights; pass pretrained_cfg_overlay=dict(file=PATH) "
                "with a local checkpoint"
            )
        load_weights(model, _read_weights(str(file)), name=timm_name(variant))
    return model


def _local_dir_weights(pretrained_cfg: Any) -> str | None:
    """The weights file of a ``timm.create_model("local-dir:FOLDER", pretrained=True)`` call, if this is one."""
    if pretrained_cfg is None:
        return None
    get = pretrained_cfg.get if isinstance(pretrained_cfg, dict) else lambda k: getattr(pretrained_cfg, k, None)
    if get("source") != "local-dir" or not get("file"):
        return None
    import os

    folder = str(get("file"))
    if not os.path.isdir(folder):
        return folder
    for name in ("model.safetensors", "pytorch_model.bin"):  # timm's names for a folder's weights
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return os.path.join(folder, "model.safetensors")  # missing: the error names the file timm looks for first


def _read_weights(path: str) -> dict[str, Any]:
    """A state dict from a local file with timm's reader (weights only); one-line errors."""
    import os

    from timm.models import load_state_dict

    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        state = load_state_dict(path, weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for garbage; the user needs one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StateDictError(f"{path} is not a readable weights file ({first})") from None
    if not isinstance(state, dict):
        raise StateDictError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return state


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({timm_name(v): _cfg() for v in ERADIO_VARIANTS})


@register_model
def eradio_xt(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-XT: d=64, depths 1-3-4-5, no neck (24.6M params without head)."""
    return create_eradio("xt", pretrained, **kwargs)


@register_model
def eradio_t(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-T: d=80, depths 1-3-4-5, no neck (38.3M)."""
    return create_eradio("t", pretrained, **kwargs)


@register_model
def eradio_s(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-S: d=96, depths 3-3-5-5, no neck (59.0M)."""
    return create_eradio("s", pretrained, **kwargs)


@register_model
def eradio_b_noup(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-B without the up-sampling neck (Table 7 "w/o upsample", 112.7M)."""
    return create_eradio("b-noup", pretrained, **kwargs)


@register_model
def eradio_b(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-B: d=128, depths 3-3-5-5, neck 1024 at stride 16 (117.4M)."""
    return create_eradio("b", pretrained, **kwargs)


@register_model
def eradio_l(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-L (Table 7): d=192, depths 3-3-5-5, neck 1536 (263.9M)."""
    return create_eradio("l", pretrained, **kwargs)


@register_model
def eradio_xt_up(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-XT with a neck of width 512 (8d) at stride 16."""
    return create_eradio("xt-up", pretrained, **kwargs)


@register_model
def eradio_t_up(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-T with a neck of width 640 (8d) at stride 16."""
    return create_eradio("t-up", pretrained, **kwargs)


@register_model
def eradio_s_up(pretrained: bool = False, **kwargs: Any) -> ERadio:
    """E-RADIO-S with a neck of width 768 (8d) at stride 16."""
    return create_eradio("s-up", pretrained, **kwargs)
