"""The one place a device string becomes a :class:`torch.device`."""

from __future__ import annotations

import contextlib

import torch

from zoo.errors import ConfigError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the current CUDA device when there is one, else the CPU; a requested GPU must exist."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device '{spec}'; use {DEVICE_HELP}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device '{spec}' is not supported; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but no CUDA GPU is available here; use --device cpu")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)


def inference_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as in training), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
