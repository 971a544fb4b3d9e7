"""The zoo CLI: help, version, zoo list, and one-line errors for user mistakes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zoo import __version__
from zoo.cli import COMMANDS, cli


@pytest.fixture
def runner():
    return CliRunner()


def test_help_and_version(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Examples" in result.output and "list" in result.output
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_every_subcommand_has_help_with_an_example(runner):
    names = cli.list_commands(None)
    assert {"list", "bench", "distill", "pareto"} <= set(names)
    for name in names:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example" in result.output, name
        assert COMMANDS[name][1]


def test_list_json_has_every_backbone_with_dims(runner):
    result = runner.invoke(cli, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    by_name = {row["name"]: row for row in rows}
    for name in ["efficientnetv2-s", "resnetv2-101", "regnety-064", "efficientvit-l1", "convnext-b", "nfnet-f3",
                 "swinv2-s", "maxvit-b", "poolformerv2-m36", "mvitv2-b", "vit-t16-cpe", "vit-s16-cpe",
                 "vit-b16-cpe", "vit-l16-cpe", "vit-h16-cpe", "convnext-atto", "efficientnetv2-b0", "resnet-18"]:
        row = by_name[name]
        assert row["stride"] in (16, 32) and row["summary_dim"] > 0 and row["feature_dim"] > 0
        assert row["params_m"] > 0 and row["family"]
    assert by_name["vit-b16-cpe"]["stride"] == 16 and by_name["vit-b16-cpe"]["summary_dim"] == 768
    assert by_name["convnext-b"]["feature_dim"] == 1024


def test_list_table_and_family_filter(runner):
    result = runner.invoke(cli, ["list", "--family", "vit-cpe"])
    assert result.exit_code == 0
    assert "vit-h16-cpe" in result.output and "convnext" not in result.output


def test_user_mistakes_are_one_line_exit_2(runner):
    result = runner.invoke(cli, ["list", "--family", "vits"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "vit-cpe" in lines[0]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(runner):
    result = runner.invoke(cli, ["--debug", "list", "--family", "vits"])
    assert result.exit_code != 0 and result.exc_info is not None
    from zoo.errors import UnknownNameError

    assert isinstance(result.exception, UnknownNameError)


def test_unknown_option_is_a_usage_error(runner):
    result = runner.invoke(cli, ["list", "--colour"])
    assert result.exit_code == 2 and "No such option" in result.output


def test_atomic_writes_keep_usual_permissions(tmp_path):
    import os

    from zoo.atomic import atomic_write_text
    from zoo.checkpoints import atomic_torch_save

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_torch_save({"x": 1}, tmp_path / "b.pt")
    finally:
        os.umask(umask)
    for name in ("a.json", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
