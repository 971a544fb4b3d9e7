"""Faults of teacher specs and weights files, from the command line: one line, exit status 2, no run folder left.

Garbage, truncated and pickled weights files for every teacher kind, unknown kinds and models (the
closest names suggested), and missing SAM weights offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from zoo.cli import cli

DISTILL = ["distill", "--backbone", "resnet-18", "--recipe", "smoke", "--steps", "1", "--offline", "--no-progress"]


def _distill(out: Path, *teachers: str):
    args = [*DISTILL, "--out", str(out)]
    for teacher in teachers:
        args += ["--teacher", teacher]
    return CliRunner().invoke(cli, args)


def _one_line_exit_2(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _nothing_left(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


@pytest.fixture
def garbage(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 4)  # an 8-byte header length far beyond the file
    return path


@pytest.mark.parametrize("spec", [
    "dinov2:vit_small_patch14_dinov2:{file}@56",
    "sam:samvit_base_patch16:{file}@64",
    "clip:ViT-S-32:{file}@64",
])
def test_garbage_safetensors_teacher_file(tmp_path, garbage, spec):
    out = tmp_path / "runs"
    result = _distill(out, spec.format(file=garbage))
    _one_line_exit_2(result, str(garbage), "not a readable .safetensors file")
    _nothing_left(out)


def test_truncated_safetensors_teacher_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 384), "pos_embed": torch.zeros(1, 17, 384)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])  # a download cut short
    result = _distill(tmp_path / "runs", f"dinov2:vit_small_patch14_dinov2:{path}@56")
    _one_line_exit_2(result, str(path))
    _nothing_left(tmp_path / "runs")


def test_pickled_teacher_file_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.nn.ReLU()}, path)  # a module: not plain weights
    result = _distill(tmp_path / "runs", f"sam:samvit_base_patch16:{path}@64")
    _one_line_exit_2(result, str(path), "refused")


def test_a_weights_file_for_another_model(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"something.else": torch.zeros(3)}, str(path))
    result = _distill(tmp_path / "runs", f"sam:samvit_base_patch16:{path}@64")
    _one_line_exit_2(result, "do not fit samvit_base_patch16", "missing")


@pytest.mark.parametrize("spec,fragments", [
    ("dinov3:tiny", ("unknown teacher kind 'dinov3'", "closest: dinov2")),
    ("samm:tiny", ("unknown teacher kind 'samm'", "sam")),
    ("sam:samvit_hueg_patch16", ("unknown timm SAM model 'samvit_hueg_patch16'", "samvit_huge_patch16")),
    ("sam:samvit_base_patch16:sa1b", ("after a dot", "sam:samvit_base_patch16.sa1b")),
    ("sam:tiny@100", ("multiple of 16",)),
    ("sam:tiny:/some/file.bin", ("takes no weights",)),
    ("clip", ("names no model", "clip:tiny")),
])
def test_bad_teacher_specs(tmp_path, spec, fragments):
    result = _distill(tmp_path / "runs", "clip:tiny", spec)
    _one_line_exit_2(result, *fragments)
    _nothing_left(tmp_path / "runs")


def test_missing_sam_weights_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = _distill(tmp_path / "runs", "sam:samvit_large_patch16@64")
    _one_line_exit_2(result, "timm/samvit_large_patch16.sa1b", "--teacher sam:samvit_large_patch16:/path/to/model.safetensors",
                     "offline mode requested (--offline)")
    _nothing_left(tmp_path / "runs")
