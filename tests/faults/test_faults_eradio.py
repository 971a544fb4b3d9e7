"""Faults for E-RADIO: bad input sizes and bad weight files are one line (exit 2 from the CLI),
from the zoo wrapper (zoo's errors) and from the standalone ``eradio`` package (its own errors)."""

from __future__ import annotations

import json
import re
import zipfile

import pytest
import timm
import torch
from click.testing import CliRunner

import eradio
from eradio.errors import ERadioResolutionError, StateDictError
from eradio.errors import WeightsNotFoundError as ERadioWeightsNotFoundError
from zoo.cli import cli
from zoo.errors import BadFileError, ResolutionError, WeightsNotFoundError, ZooError
from zoo.registry import create_backbone

TINY = dict(dim=8, in_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], cpb_hidden=16)


def error_line(result) -> str:
    """The one ``Error:`` line of a failed command: exit 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exc_info[0] is SystemExit
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# --------------------------------------------------------------------------- sizes, from the CLI


@pytest.mark.parametrize(
    "resolution,match",
    [
        ("0", "must be positive"),
        ("-64", "must be positive"),
        ("64x0", "must be positive"),
        ("200", "eradio-xt cannot take 200x200: height 200 is not a multiple of 32 \\(try 192 or 224\\)"),
        ("544", "no good window for 544x544.*use 512 or 576"),
    ],
)
def test_bench_refuses_bad_eradio_sizes_in_one_line(resolution, match, tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--backbone", "eradio-xt", "--resolution", resolution,
                                      "--device", "cpu", "--json", str(tmp_path / "out.json")])
    assert re.search(match, error_line(result))
    assert not (tmp_path / "out.json").exists()  # nothing written for a refused size


def test_list_shows_every_eradio_entry_with_its_contract():
    result = CliRunner().invoke(cli, ["list", "--family", "eradio", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert len(rows) == 9
    assert (rows["eradio-xt"]["stride"], rows["eradio-xt"]["feature_dim"], rows["eradio-xt"]["summary_dim"]) == (32, 512, 512)
    assert (rows["eradio-b"]["stride"], rows["eradio-b"]["feature_dim"], rows["eradio-b"]["summary_dim"]) == (16, 1024, 1024)


# --------------------------------------------------------------------------- sizes, from the Python API


@pytest.mark.parametrize("resolution", [0, -32, (64, 0), "0x64"])
def test_zero_and_negative_sizes_are_one_line_everywhere(resolution):
    with pytest.raises(ResolutionError) as info, torch.device("meta"):
        create_backbone("eradio-xt", resolution=resolution)
    assert "\n" not in str(info.value)
    with pytest.raises(ERadioResolutionError) as info:
        eradio.pick_window_size(resolution)
    assert "\n" not in str(info.value) and "positive" in str(info.value)


# --------------------------------------------------------------------------- weight files


def _garbage_files(tmp_path):
    files = {
        "text.pt": b"not a checkpoint at all\n" * 10,
        "garbage.safetensors": b"\x00\x01\x02 definitely not safetensors",
        "empty.pth": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"w": torch.zeros(2)}, tmp_path / "full.pt")  # a real zip, cut in half below
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    assert not zipfile.is_zipfile(tmp_path / "truncated.pt")
    return [tmp_path / name for name in (*files, "truncated.pt")]


def test_garbage_pretrained_file_is_one_line_bad_file_error(tmp_path):
    for path in _garbage_files(tmp_path):
        with pytest.raises(BadFileError) as info:
            create_backbone("eradio-xt", resolution=64, config=TINY, pretrained_file=str(path))
        message = str(info.value)
        assert "\n" not in message and str(path) in message, message
        assert isinstance(info.value, ZooError) and info.value.exit_code == 2
    with pytest.raises(WeightsNotFoundError, match="missing.pt"):
        create_backbone("eradio-xt", resolution=64, config=TINY, pretrained_file=str(tmp_path / "missing.pt"))


def test_a_foreign_state_dict_is_one_line(tmp_path):
    """A readable file with another model's weights: named keys, not a load_state_dict traceback."""
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(BadFileError, match=r"linear.pt: .*unexpected key\(s\), e.g. 'weight'") as info:
        create_backbone("eradio-xt", resolution=64, config=TINY, pretrained_file=str(tmp_path / "linear.pt"))
    assert "\n" not in str(info.value)


def test_standalone_eradio_reports_bad_files_in_its_own_one_line_errors(tmp_path):
    for path in _garbage_files(tmp_path):
        with pytest.raises(StateDictError) as info:
            timm.create_model("eradio_xt", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ERadioWeightsNotFoundError, match="missing.pt"):
        timm.create_model("eradio_xt", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "missing.pt")),
                          **TINY)
    with pytest.raises(ERadioWeightsNotFoundError, match="no published weights"):
        timm.create_model("eradio_xt", pretrained=True, **TINY)
