"""Click parameter types and options shared by every command (one meaning per option).

* ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:data:`DEVICE`; resolved by :func:`zoo.devices.resolve_device`).
* a resolution: ``224`` or ``224x320`` (:data:`RESOLUTION`); a list of them is always comma-separated
  (:data:`RESOLUTIONS`: ``224,448`` or ``224x320,448``).
* ``--teacher SPEC``: repeatable, one teacher spec each (:func:`teacher_option`).

Parsing here imports no torch, so ``zoo --help`` and ``zoo pareto`` stay fast.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import click

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceType(click.ParamType):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether it exists is checked when it is used)."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not DEVICE_PATTERN.fullmatch(text):
            self.fail(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N", param, ctx)
        return text


class ResolutionType(click.ParamType):
    """One input size: ``224`` -> ``(224, 224)``, ``224x320`` -> ``(224, 320)``."""

    name = "resolution"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        from zoo.errors import ZooError
        from zoo.sizes import as_hw

        if isinstance(value, tuple):
            return value
        try:
            return as_hw(str(value))
        except ZooError as err:
            self.fail(str(err), param, ctx)


class ResolutionListType(click.ParamType):
    """Comma-separated sizes: ``224,448`` -> ``[(224, 224), (448, 448)]``; ``224x320,448`` too."""

    name = "resolutions"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[tuple[int, int]]:
        from zoo.errors import ZooError
        from zoo.sizes import as_hw_list

        if isinstance(value, list):
            return value
        try:
            return as_hw_list(str(value))
        except ZooError as err:
            self.fail(str(err), param, ctx)


DEVICE = DeviceType()
RESOLUTION = ResolutionType()
RESOLUTIONS = ResolutionListType()


def device_option(default: str = "auto", help: str = "auto, cpu, cuda or cuda:N.") -> Callable:
    """``--device`` with the shared type."""
    return click.option("--device", type=DEVICE, default=default, show_default=True, help=help)


def teacher_option(help: str = "A teacher spec (repeatable), e.g. --teacher dinov2:vit_small_patch14_dinov2; "
                               "replaces the recipe's teachers.") -> Callable:
    """``--teacher SPEC``, repeatable: the one way every command takes teachers."""
    return click.option("--teacher", "teacher_specs", multiple=True, metavar="SPEC", help=help)


def recipe_options(command: Callable) -> Callable:
    """``--recipe``, ``--set KEY=VALUE`` (repeatable) and ``--teacher SPEC`` (repeatable)."""
    options = [
        click.option("--recipe", default="smoke", show_default=True, metavar="NAME|PATH",
                     help="A shipped recipe (smoke, table7, search-proxy) or a YAML file."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a recipe value (YAML-parsed), e.g. --set optim.lr=5e-4. Repeatable."),
        teacher_option(),
    ]
    for option in reversed(options):
        command = option(command)
    return command
