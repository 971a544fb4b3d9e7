"""``zoo list``: the registered backbones with their facts."""

from __future__ import annotations

import json

import click
from rich.table import Table

from zoo.describe import describe
from zoo.registry import list_backbones
from zoo.ui import console


@click.command("list")
@click.option("--family", default=None, help="Only this family (e.g. convnext, vit-cpe, eradio).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(family: str | None, as_json: bool) -> None:
    """List the registered backbones: family, params, default resolution,
    stride, summary and feature dims.

    \b
    Examples:
      zoo list
      zoo list --family vit-cpe
      zoo list --json > backbones.json
    """
    facts = [describe(entry) for entry in list_backbones(family)]
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in facts], indent=2))
        return
    table = Table(title="zoo backbones", title_justify="left")
    for column, justify in [("name", "left"), ("family", "left"), ("params (M)", "right"),
                            ("Table 7 (M)", "right"), ("resolution", "right"), ("stride", "right"),
                            ("summary dim", "right"), ("feature dim", "right"), ("timm / notes", "left")]:
        table.add_column(column, justify=justify)
    for f in facts:
        table.add_row(
            f.name, f.family, f"{f.params_m:.1f}",
            f"{f.paper_params_m:g}" if f.paper_params_m else "—",
            "x".join(str(v) for v in f.default_resolution), str(f.stride),
            str(f.summary_dim), str(f.feature_dim),
            " · ".join(v for v in (f.timm_name, f.description) if v),
        )
    console.print(table)
