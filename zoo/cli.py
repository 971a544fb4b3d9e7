"""The ``zoo`` command line.

Subcommands live in :mod:`zoo.commands` and are imported only when used, so
``zoo --help`` stays fast. A :class:`~zoo.errors.ZooError` (a user mistake)
prints one line and exits 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import click

from zoo import __version__
from zoo.errors import ZooError

# name -> (module:attribute, one-line help). One source for the command list.
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("zoo.commands.list_cmd:list_command", "List the registered backbones."),
    "bench": ("zoo.commands.bench_cmd:bench_command", "Measure throughput, params and FLOPs of backbones."),
    "distill": ("zoo.commands.distill_cmd:distill_command", "Distill backbones from CLIP + DINOv2 teachers."),
    "pareto": ("zoo.commands.pareto_cmd:pareto_command", "The speed/quality Pareto front of runs and benches."),
    "search": ("zoo.commands.search_cmd:search_command", "Optuna architecture search: run, space, best, export."),
    "eval": ("zoo.commands.eval_cmd:eval_group", "Quality of students and teachers: k-NN, zero-shot, segmentation probe."),
    "viz": ("zoo.commands.viz_cmd:viz_command", "PCA pictures of spatial features."),
    "cache": ("zoo.commands.cache_cmd:cache_group", "Teacher feature cache: build once, reuse for every student."),
    "export": ("zoo.commands.export_cmd:export_command", "Export a student as ONNX, a timm folder or a Hugging Face folder."),
}


class UserError(click.ClickException):
    """A :class:`ZooError` shown as ``Error: <one line>`` with the error's exit status (2; 3 for a diverged run)."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def format_message(self) -> str:
        return " ".join(str(self.message).split())  # always one line


class ZooGroup(click.Group):
    """A group that loads subcommands lazily and turns ZooErrors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._available(name):
            return None
        module_name, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table, so listing commands imports nothing heavy.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.BadParameter as err:  # a value our option types refused: one line, like every user mistake
            if (ctx.obj or {}).get("debug"):
                raise
            raise UserError(err.format_message()) from err
        except ZooError as err:
            if (ctx.obj or {}).get("debug"):
                raise
            raise UserError(str(err), getattr(err, "exit_code", 2)) from err


@click.group(cls=ZooGroup, context_settings=dict(help_option_names=["-h", "--help"], max_content_width=100))
@click.version_option(__version__, "--version", prog_name="zoo")
@click.option("--debug", is_flag=True, default=bool(os.environ.get("ZOO_DEBUG")),
              help="Show full tracebacks for errors (or set ZOO_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """zoo: which vision backbone gives the most quality per unit of speed
    once distilled from CLIP and DINOv2 (the AM-RADIO recipe as a tool).

    \b
    Examples:
      zoo list --family vit-cpe
      zoo bench --backbone convnext-atto,resnet-18,vit-t16-cpe --resolution 128
      zoo distill --backbone resnet-18 --recipe smoke
      zoo pareto runs/ --png front.png
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="zoo")


if __name__ == "__main__":
    main()
