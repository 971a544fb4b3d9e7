"""Click options shared by the commands that run a recipe's teachers (distill, cache)."""

from __future__ import annotations

from typing import Callable

import click


def recipe_options(command: Callable) -> Callable:
    """``--recipe``, ``--set KEY=VALUE`` (repeatable) and ``--teacher SPEC`` (repeatable)."""
    options = [
        click.option("--recipe", default="smoke", show_default=True, metavar="NAME|PATH",
                     help="A shipped recipe (smoke, table7, search-proxy) or a YAML file."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a recipe value (YAML-parsed), e.g. --set optim.lr=5e-4. Repeatable."),
        click.option("--teacher", "teacher_specs", multiple=True, metavar="SPEC",
                     help="Replace the recipe's teachers (repeatable), e.g. --teacher dinov2:vit_small_patch14_dinov2."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
