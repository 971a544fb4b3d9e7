"""Loading a timm model from a local weights file, for the timm-based kinds (dinov2, sam).

Built on the meta device (a ViT-g's or SAM-H's random init would take ~half
a minute on CPU only to be overwritten), then the checkpoint's tensors are
assigned in place. The file is read by :func:`zoo.checkpoints.load_state_dict_file`
(weights-only; garbage files are one-line :class:`~zoo.errors.BadFileError`\\ s),
and a file that does not fit is a one-line :class:`~zoo.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from zoo.checkpoints import load_state_dict_file
from zoo.errors import ConfigError, unknown_name
from zoo.teachers.base import TeacherSpec, looks_like_path


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """A one-line summary of why ``given`` does not load into a model with ``expected`` (None: it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(getattr(given[k], "shape", ())) != tuple(v.shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})")
    return "; ".join(parts) or None


def load_timm_model(
    spec: TeacherSpec,
    weights_file: str,
    model_class: type[nn.Module],
    filter_fn: Callable[[dict[str, Any], nn.Module], dict[str, Any]],
    what: str,
    **create_kwargs: Any,
) -> nn.Module:
    """``timm.create_model(spec.model, **create_kwargs)`` with ``weights_file``'s tensors, strictly.

    ``filter_fn`` is timm's own ``checkpoint_filter_fn`` for the family (it
    converts the original repositories' checkpoints); ``model_class`` the
    class the kind expects (``what`` names it in the error).
    """
    import timm

    kwargs = dict(pretrained=False, num_classes=0, **create_kwargs)
    with torch.device("meta"):
        model = timm.create_model(spec.model, **kwargs)
    if not isinstance(model, model_class):
        raise ConfigError(f"teacher '{spec.spec}': {spec.model} is not a {what}; {spec.kind} teachers are {what}s")
    state = load_state_dict_file(weights_file)  # weights_only=True / safetensors; BadFileError for garbage
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"teacher '{spec.spec}': {weights_file} holds values that are not tensors")
    try:
        state = filter_fn(state, model)
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as err:
        raise ConfigError(f"teacher '{spec.spec}': weights {weights_file} do not fit {spec.model}: "
                          f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}") from None
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # num_classes=0
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise ConfigError(f"teacher '{spec.spec}': weights {weights_file} do not fit {spec.model}: {problem}")
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = timm.create_model(spec.model, **kwargs)  # a non-persistent buffer: build for real
        model.load_state_dict(state, strict=True)
    return model


def check_timm_model(text: str, model: str, candidates_pattern: str, what: str, prefix: str = "") -> None:
    """An unknown timm name (or one outside the kind's ``prefix``) names the closest ``candidates_pattern`` ones."""
    import timm

    if not timm.is_model(model) or not model.startswith(prefix):
        raise unknown_name(what, model, timm.list_models(candidates_pattern))


def file_or_dot_tag(text: str, kind: str, model: str, source: str | None, tag_example: str) -> None:
    """timm tags go after a dot; a third field must be a file."""
    if source is not None and not looks_like_path(source):
        raise ConfigError(
            f"teacher spec '{text}': '{source}' is not a weights file; a timm pretrained tag goes "
            f"after a dot ({kind}:{model}.{tag_example}), a file after a colon ({kind}:{model}:/path/model.safetensors)"
        )
