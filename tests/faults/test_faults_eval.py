"""Faults met by ``zoo eval``: a folder that is no run, a corrupt record or checkpoint, a full disk.

Each case: exit status 2, one line naming the file, and the files on disk as they were.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo.cli import cli

RESOLUTION = 32


@pytest.fixture(scope="module")
def made_run(tmp_path_factory) -> Path:
    """A run folder as zoo distill lays it out (resnet-18 at 32 px, tiny teachers), built without training."""
    from zoo.checkpoints import atomic_torch_save
    from zoo.heads import AdaptorHeads
    from zoo.recipe import load_recipe
    from zoo.registry import create_backbone
    from zoo.runs import RunRecord, write_record
    from zoo.teachers import build_teacher

    root = tmp_path_factory.mktemp("runs") / "resnet-18-smoke-made"
    root.mkdir()
    teachers = [build_teacher("clip:tiny@32"), build_teacher("dinov2:tiny@28")]
    backbone = create_backbone("resnet-18", (RESOLUTION, RESOLUTION))
    heads = AdaptorHeads(backbone.summary_dim, backbone.feature_dim, teachers)
    recipe = load_recipe("smoke", [f"train.resolution={RESOLUTION}"])
    atomic_torch_save({"backbone": backbone.state_dict(), "heads": heads.state_dict(), "recipe": recipe.to_dict()},
                      root / "checkpoint.pt")
    write_record(root, RunRecord(run_id=root.name, backbone="resnet-18", run_dir=str(root),
                                 resolution=[RESOLUTION, RESOLUTION], teachers=[t.describe() for t in teachers],
                                 random_teacher=True))
    return root


@pytest.fixture
def run_dir(made_run, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(made_run, tmp_path / made_run.name))


def _knn(run_dir: Path, *extra: str):
    return CliRunner().invoke(cli, ["eval", "knn", str(run_dir), "--per-class", "2", "--device", "cpu", *extra])


def _one_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_made_run_evaluates(run_dir):
    """The control: the same folder, untouched, is scored and recorded."""
    result = _knn(run_dir)
    assert result.exit_code == 0, result.output
    assert "knn_top1" in json.loads((run_dir / "summary.json").read_text())


def test_folder_without_a_run_record(run_dir, tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    assert "no summary.json in" in _one_line(_knn(empty))
    assert _files(empty) == {"notes.txt": b"hello"}
    (run_dir / "summary.json").unlink()  # a checkpoint alone is no run
    assert "no summary.json in" in _one_line(_knn(run_dir))


@pytest.mark.parametrize("content, message", [
    (b'{"run_id": "x", "backbone": "resnet-', "is not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not UTF-8 text"),
    (b"[1, 2, 3]", "is not a JSON object"),
])
def test_corrupt_summary_json(run_dir, content, message):
    (run_dir / "summary.json").write_bytes(content)
    before = _files(run_dir)
    line = _one_line(_knn(run_dir))
    assert message in line and "summary.json" in line
    assert _files(run_dir) == before


def test_truncated_checkpoint(run_dir):
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 3])
    before = _files(run_dir)
    line = _one_line(_knn(run_dir))
    assert "checkpoint.pt" in line and "truncated" in line
    assert _files(run_dir) == before


def test_missing_checkpoint(run_dir):
    (run_dir / "checkpoint.pt").unlink()
    assert "has no checkpoint.pt" in _one_line(_knn(run_dir))


def test_pickled_checkpoint_is_refused(run_dir):
    import torch

    torch.save({"backbone": {}, "heads": {}, "payload": Path("x")}, run_dir / "checkpoint.pt")  # a pickled object
    assert "refused" in _one_line(_knn(run_dir))


class _FullDisk:
    """A file whose writes stop half-way with ENOSPC (what a full disk does mid-file)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def test_disk_full_while_writing_the_record(run_dir, monkeypatch):
    import builtins

    import zoo.atomic

    before = _files(run_dir)
    real_open = builtins.open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return _FullDisk(handle) if "w" in mode and ".summary.json." in str(file) else handle

    monkeypatch.setattr(zoo.atomic, "open", open_on_a_full_disk, raising=False)
    result = _knn(run_dir)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # one line, after the scores (not lost)
    assert "resnet-18 (backbone summary)" in result.output
    line = errors[0]
    assert "disk full while writing" in line and str(run_dir / "summary.json") in line and "bytes needed" in line
    assert _files(run_dir) == before  # the old record intact, no temp file left beside it
