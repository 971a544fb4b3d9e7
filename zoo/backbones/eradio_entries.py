"""E-RADIO behind the backbone contract, and its registry entries.

``eradio/`` is a standalone timm-style family; this module is zoo's wrapper
around it: it translates eradio's exceptions into zoo's (one line, same
text), declares the zoo :class:`~zoo.sizes.SizeRule`, reads weight files with
:func:`zoo.checkpoints.load_state_dict_file`, and registers the entries.

``summary`` is the pooled stage-4 vector (8d); ``features`` the neck output at
stride 16, or stage 4 at stride 32 for variants without a neck.

:func:`build_eradio_backbone` is the one place an E-RADIO backbone is built and
given its attention window (the registry, the search and backbone files all
call it). ``window="auto"`` (default) picks the window from the input size
(:func:`eradio.pick_window_size`): at build time from ``resolution``
(``create_backbone("eradio-b", resolution=512)`` runs with window 16) and again
whenever a forward sees a new input size; ``window="config"`` runs with the
config's ``window_size`` (what a search trial chose); an int or ``(h, w)`` fixes it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch

import eradio
from eradio import DEFAULT_WINDOW_CAP, ERADIO_VARIANTS, MIN_SIDE, STRIDE, ERadio, ERadioConfig
from eradio import timm_name as eradio_timm_name
from eradio.blocks import Window
from eradio.errors import (
    ERadioConfigError,
    ERadioError,
    ERadioResolutionError,
    StateDictError,
    UnknownVariantError,
    one_line,
)
from eradio.errors import WeightsNotFoundError as ERadioWeightsNotFoundError
from zoo.backbone import Backbone, BackboneOutput, SizeRule
from zoo.errors import BadFileError, ConfigError, ResolutionError, UnknownNameError, WeightsNotFoundError, ZooError
from zoo.registry import BackboneEntry, register

FAMILY = "eradio"
SIZE_RULE = SizeRule(multiple=STRIDE, minimum=MIN_SIDE)
WINDOW_MODES = ("auto", "config")

ConfigLike = ERadioConfig | Mapping[str, Any] | None
WindowSpec = str | int | Sequence[int] | Sequence[Sequence[int]]

# eradio's error types -> zoo's (the CLI prints a ZooError on one line and exits 2).
_TRANSLATION: tuple[tuple[type[ERadioError], type[ZooError]], ...] = (
    (UnknownVariantError, UnknownNameError),
    (ERadioConfigError, ConfigError),
    (ERadioResolutionError, ResolutionError),
    (StateDictError, BadFileError),
    (ERadioWeightsNotFoundError, WeightsNotFoundError),
)


def zoo_error(err: ERadioError, prefix: str = "") -> ZooError:
    """The zoo error for an eradio one: same text (on one line), ``prefix`` in front."""
    for source, target in _TRANSLATION:
        if isinstance(err, source):
            return target(prefix + one_line(err))
    return ConfigError(prefix + one_line(err))


@contextlib.contextmanager
def zoo_errors(prefix: str = "") -> Iterator[None]:
    """Re-raise eradio's exceptions as zoo's (``with zoo_errors(): ERadioConfig(**fields)``)."""
    try:
        yield
    except ERadioError as err:
        raise zoo_error(err, prefix) from None


def eradio_config(config: ConfigLike = None, **fields: Any) -> ERadioConfig:
    """:func:`eradio.as_config` raising zoo's :class:`ConfigError`."""
    with zoo_errors():
        return eradio.as_config(config, **fields)


def pick_window_size(resolution: Any, cap: int = DEFAULT_WINDOW_CAP, minimum: int = eradio.MIN_WINDOW) -> Window:
    """:func:`eradio.pick_window_size` raising zoo's :class:`ResolutionError`."""
    with zoo_errors():
        return eradio.pick_window_size(resolution, cap, minimum)


def _as_hw(resolution: Any) -> tuple[int, int]:
    with zoo_errors():
        return eradio.as_hw(resolution)


class ERadioBackbone(Backbone):
    """An :class:`eradio.ERadio` (no classifier) returning :class:`BackboneOutput`.

    Args:
        name: registry name (for messages).
        config: the architecture.
        resolution: input size to build for.
        window: ``"auto"`` (pick for the input size, see the module docstring),
            ``"config"`` (``config.window_size``, fixed), or a fixed window
            (``7``, ``(10, 16)``, or ``((wh3, ww3), (wh4, ww4))`` per stage).
        window_cap: largest window ``"auto"`` may choose.
        auto_window: with ``window="auto"``, re-pick when the input size
            changes (False: keep the window picked at build time).
        pretrained_file: a local state dict: this wrapper's, the bare ERadio's,
            or the reference implementation's layout (:mod:`eradio.checkpoint`).
    """

    size_rule = SIZE_RULE

    def __init__(
        self,
        name: str,
        config: ConfigLike = None,
        resolution: int | tuple[int, int] = 224,
        window: WindowSpec = "auto",
        window_cap: int = DEFAULT_WINDOW_CAP,
        auto_window: bool = True,
        pretrained_file: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        height, width = _as_hw(resolution)
        self.check_resolution(height, width)
        with zoo_errors(f"{name}: "):
            self.model = ERadio(eradio.as_config(config), num_classes=0, name=name)
        self.summary_dim = self.model.summary_dim
        self.feature_dim = self.model.feature_dim
        self.stride = self.model.stride
        self.window_cap = window_cap
        self.auto_window = False
        self._window_for: tuple[int, int] | None = None
        if isinstance(window, str) and window == "auto":
            self.auto_window = auto_window
            self._adapt_window(height, width, force=True)
        elif isinstance(window, str) and window == "config":
            self.model.set_window_size(*self.config.window_size)
        elif isinstance(window, str):
            raise ConfigError(f"{name}: window must be {' or '.join(WINDOW_MODES)} or a size, got {window!r}")
        else:
            self.set_window_size(*_stage_windows(window))
        if pretrained_file:
            self.load_file(pretrained_file)

    @property
    def config(self) -> ERadioConfig:
        return self.model.config

    @property
    def window_size(self) -> tuple[Window, Window]:
        return self.model.window_size

    def load_file(self, path: str) -> str:
        """Load a weights file (ours, the bare ERadio's or the reference layout); returns the layout read."""
        from zoo.checkpoints import load_state_dict_file

        state = load_state_dict_file(path)
        if state and all(key.startswith("model.") for key in state):  # this wrapper's own state_dict()
            state = {key[len("model."):]: value for key, value in state.items()}
        with zoo_errors(f"{path}: "):
            return eradio.load_weights(self.model, state, name=self.name)

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
        with zoo_errors(f"{self.name}: "):
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


def _stage_windows(window: Any) -> tuple[Any, Any]:
    """``7`` / ``(10, 16)`` -> the same window for both stages; ``((a, b), (c, d))`` -> one per stage."""
    if isinstance(window, Sequence) and len(window) == 2 and all(isinstance(w, Sequence) for w in window):
        return window[0], window[1]
    return window, window


def _resolve_config(variant: str | None, config: ConfigLike, fields: Mapping[str, Any]) -> ERadioConfig:
    """Variant config, then ``config`` (a dict changes fields, an ERadioConfig replaces), then ``fields``."""
    with zoo_errors():
        if isinstance(config, ERadioConfig) or variant is None:
            base = eradio.as_config(config)
        else:
            base = eradio.as_config(ERADIO_VARIANTS[variant], **dict(config or {}))
        return eradio.as_config(base, **fields) if fields else base


_WRAPPER_KEYS = ("window", "window_cap", "auto_window", "pretrained_file")


def build_eradio_backbone(
    config: ConfigLike = None,
    resolution: int | tuple[int, int] = 224,
    name: str | None = None,
    *,
    variant: str | None = None,
    device: Any = None,
    **kwargs: Any,
) -> ERadioBackbone:
    """Build any E-RADIO configuration behind the backbone contract, with its window set.

    The one place E-RADIO is built for zoo (registry entries, search trials, backbone files).

    Args:
        config: an :class:`ERadioConfig` (replaces the variant's), a dict of fields
            (changes the variant's, or the defaults), or None.
        resolution: the input size to build for (``224``, ``(320, 512)``, ``"320x512"``).
        name: shown in messages (default ``eradio-<variant>`` or ``eradio-custom``).
        variant: start from this variant's config (``"b"``, ``"xt-up"``...).
        device: build the parameters directly on this device.
        **kwargs: ``window`` (``"auto"`` default, ``"config"``, or a size), ``window_cap``,
            ``auto_window``, ``pretrained_file`` (see :class:`ERadioBackbone`), or config fields.
    """
    wrapper_args = {k: kwargs.pop(k) for k in _WRAPPER_KEYS if k in kwargs}
    cfg = _resolve_config(variant, config, kwargs)
    name = name or (f"eradio-{variant}" if variant else "eradio-custom")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return ERadioBackbone(name=name, config=cfg, resolution=resolution, **wrapper_args)


def _builder(name: str, resolution: tuple[int, int], variant: str, config: ConfigLike = None,
             **kwargs: Any) -> ERadioBackbone:
    return build_eradio_backbone(config, resolution, name=name, variant=variant, **kwargs)


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

__all__ = [
    "ENTRIES",
    "FAMILY",
    "SIZE_RULE",
    "ERadioBackbone",
    "build_eradio_backbone",
    "eradio_config",
    "pick_window_size",
    "zoo_error",
    "zoo_errors",
]
