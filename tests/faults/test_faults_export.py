"""Faults met by ``zoo export`` and ``zoo.load``: an export that does not match the student, corrupted or
swapped exported files, a full disk, an existing target, bad arguments.

Each case: one line (exit 2 from the CLI), and nothing half-written at the target.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from tests.tiny_backbone import registered
from zoo.cli import cli
from zoo.errors import BadFileError, ZooError


@pytest.fixture(scope="module", autouse=True)
def tiny_entry():
    """``tiny-fault`` in the registry for these tests only."""
    yield from registered("tiny-fault")


def _fails(args: list[str], *expected: str) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _one_line(err: pytest.ExceptionInfo, *expected: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for part in expected:
        assert part in text, text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> Path:
    from zoo.export import export

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export("tiny-fault", "onnx", path)
    return path


@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory) -> dict[str, Path]:
    from zoo.export import export

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(1)
    first = export("resnet-18", "hf", root / "a", resolution=32).path
    torch.manual_seed(2)
    second = export("resnet-18", "hf", root / "b", resolution=32).path
    other = export("convnext-atto", "hf", root / "c", resolution=32).path
    return {"a": first, "b": second, "other": other}


# --------------------------------------------------------------------------- refused exports


def test_onnx_beyond_the_tolerance_is_refused_and_nothing_written(tmp_path):
    target = tmp_path / "out" / "tiny.onnx"
    line = _fails(["export", "tiny-fault", "--format", "onnx", "--tolerance", "1e-12", "--out", str(target)],
                  "refused", "differs from the eager student", "nothing was written")
    assert "max abs diff" in line and "cosine" in line
    assert _leftovers(target.parent) == []  # no file, no report, no hidden staging folder


def test_timm_folder_whose_weights_differ_is_refused(tmp_path, monkeypatch):
    import zoo.export.timm_folder as timm_folder

    real = timm_folder.timm_spec

    def wrong_weights(source, for_timm=True):
        spec = real(source, for_timm)
        key = next(k for k in spec.state_dict if k.endswith("conv1.weight"))
        spec.state_dict[key] = spec.state_dict[key] + 0.5  # as a bad key mapping or a stale file would
        return spec

    monkeypatch.setattr(timm_folder, "timm_spec", wrong_weights)
    target = tmp_path / "timm"
    _fails(["export", "resnet-18", "--format", "timm", "-r", "32", "--out", str(target)],
           "refused: the timm folder", "differs from the eager student")
    assert _leftovers(tmp_path) == []


def test_hf_folder_whose_heads_differ_is_refused(tmp_path, monkeypatch):
    """A run's heads written wrongly: zoo.load of the staged folder disagrees with the run, refused."""
    import zoo.export.hf as hf
    from zoo.checkpoints import atomic_torch_save
    from zoo.heads import AdaptorHeads
    from zoo.registry import create_backbone
    from zoo.runs import RunRecord, write_record
    from zoo.teachers import build_teacher

    run = tmp_path / "run"
    run.mkdir()
    teacher = build_teacher("clip:tiny@32")
    backbone = create_backbone("resnet-18", 32)
    heads = AdaptorHeads(backbone.summary_dim, backbone.feature_dim, [teacher])
    atomic_torch_save({"backbone": backbone.state_dict(), "heads": heads.state_dict()}, run / "checkpoint.pt")
    write_record(run, RunRecord(run_id="run", backbone="resnet-18", resolution=[32, 32],
                                teachers=[teacher.describe()], random_teacher=True))
    real = hf.adaptor_state
    monkeypatch.setattr(hf, "adaptor_state", lambda source: {k: v * 0 if "fc2.weight" in k else v
                                                              for k, v in real(source).items()})
    _fails(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")], "refused: the hf folder",
           "clip.")
    assert not (tmp_path / "hf").exists()


def test_full_disk_while_writing_weights_is_one_line(tmp_path, monkeypatch):
    import zoo.export.hf as hf

    def full(path, state, metadata=None):
        Path(path).write_bytes(b"\0" * 16)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(hf, "write_weights", full)
    monkeypatch.setattr("zoo.export.timm_folder.write_weights", full)
    _fails(["export", "resnet-18", "--format", "hf", "-r", "32", "--out", str(tmp_path / "hf")], "disk full")
    assert _leftovers(tmp_path) == []


def test_existing_target_needs_force_and_a_killed_export_leaves_nothing_behind(tmp_path, onnx_export):
    target = tmp_path / "tiny.onnx"
    shutil.copy(onnx_export, target)
    _fails(["export", "tiny-fault", "--format", "onnx", "--out", str(target)], "exists", "--force")
    assert target.read_bytes() == onnx_export.read_bytes()
    stale = tmp_path / ".tiny.onnx.abc123.tmp"  # what a killed export leaves
    stale.mkdir()
    (stale / "tiny.onnx").write_bytes(b"half")
    result = CliRunner().invoke(cli, ["export", "tiny-fault", "--format", "onnx", "--out", str(target), "--force"])
    assert result.exit_code == 0, result.output
    assert _leftovers(tmp_path) == ["tiny.onnx", "tiny.onnx.json"]


@pytest.mark.parametrize("args, expected", [
    (["resnet-81", "--format", "onnx"], ["unknown backbone 'resnet-81'", "resnet-18"]),
    (["resnet-18", "--format", "timm", "--with-heads"], ["a timm folder holds the backbone only"]),
    (["resnet-18", "--format", "onnx", "--with-heads"], ["has no adaptor heads"]),
    (["resnet-18", "--format", "onnx", "--tolerance", "0"], ["--tolerance must be a positive number"]),
    (["eradio-b", "--format", "onnx", "-r", "200"], ["not a multiple of 32"]),
])
def test_bad_arguments_are_one_line(args, expected, tmp_path):
    _fails(["export", *args, "--out", str(tmp_path / "x.onnx")], *expected)
    assert _leftovers(tmp_path) == []


def test_folder_that_is_no_run_and_run_without_checkpoint(tmp_path):
    from zoo.runs import RunRecord, write_record

    _fails(["export", str(tmp_path), "--format", "onnx"], "folder without summary.json")
    write_record(tmp_path, RunRecord(run_id="r", backbone="resnet-18", resolution=[32, 32]))
    _fails(["export", str(tmp_path), "--format", "hf"], "has no checkpoint.pt")


# --------------------------------------------------------------------------- corrupted or swapped files


def test_corrupted_onnx_file_is_refused(onnx_export, tmp_path):
    from zoo.export.onnx import read_onnx

    folder = Path(shutil.copytree(onnx_export.parent, tmp_path / "copy"))
    path = folder / onnx_export.name
    session, report = read_onnx(path)  # the intact file loads
    assert report["check"]["ok"] and session.get_inputs()[0].name == "images"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BadFileError) as err:
        read_onnx(path)
    _one_line(err, "refused", "sha256 differs")
    path.write_bytes(bytes(data[: len(data) // 3]))  # truncated, checked by onnxruntime alone
    with pytest.raises(BadFileError) as err:
        read_onnx(path, verify=False)
    _one_line(err, "does not load in onnxruntime")
    (folder / (path.name + ".json")).unlink()
    with pytest.raises(BadFileError) as err:
        read_onnx(path)
    _one_line(err, "tiny.onnx.json is missing")


def test_swapped_weights_in_an_hf_folder_are_refused(hf_exports, tmp_path):
    folder = Path(shutil.copytree(hf_exports["a"], tmp_path / "a"))
    zoo.load(folder)  # intact
    shutil.copy(hf_exports["b"] / "model.safetensors", folder / "model.safetensors")  # same shapes, other weights
    with pytest.raises(BadFileError) as err:
        zoo.load(folder)
    _one_line(err, "refused", "model.safetensors is not the file zoo export wrote")
    # without the report: weights of another architecture do not fit, a truncated file does not read
    (folder / "export.json").unlink()
    shutil.copy(hf_exports["other"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(BadFileError) as err:
        zoo.load(folder)
    _one_line(err, "does not fit the exported architecture")
    data = (hf_exports["a"] / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadFileError) as err:
        zoo.load(folder)
    _one_line(err, "not a readable .safetensors file")


def test_bad_config_json_and_odd_paths_are_one_line(hf_exports, tmp_path, onnx_export):
    folder = Path(shutil.copytree(hf_exports["a"], tmp_path / "a"))
    (folder / "export.json").unlink()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(BadFileError) as err:
        zoo.load(folder)
    _one_line(err, "config.json is not readable JSON")
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 0}))
    with pytest.raises(BadFileError) as err:
        zoo.load(folder)
    _one_line(err, "no 'zoo' block", "timm.create_model")
    with pytest.raises(ZooError) as err:
        zoo.load(onnx_export)
    _one_line(err, "is an ONNX file", "onnxruntime")
    with pytest.raises(ZooError) as err:
        zoo.load(tmp_path / "nothing-here")
    _one_line(err, "neither a run folder", "nor an exported folder")
