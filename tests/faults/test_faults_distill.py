"""Faults of `zoo distill`: what the user sees (exit status, one line) and what is on disk before and after.

A diverging run (exit 3, the last good checkpoint kept), unusable checkpoints given to --resume,
a full disk while writing the checkpoint or summary.json, refused starts (no run folder left),
temp files of killed writes, SIGTERM (143) and Ctrl-C (130), unreadable training images.
"""

from __future__ import annotations

import errno
import fractions
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from zoo.checkpoints import load_checkpoint
from zoo.cli import cli

TINY = ["--teacher", "clip:tiny@32", "--set", "train.resolution=32", "--set", "train.batch_size=2",
        "--set", "bench.enabled=false", "--set", "eval.every=0", "--offline", "--no-progress"]


def _distill(*args: str):
    return CliRunner().invoke(cli, ["distill", *args])


def _one_line(result, exit_code: int, *fragments: str) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for part in ("backbone", "heads") for v in state[part].values()
               if v.is_floating_point())


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A resnet-18 run interrupted at step 2 of 4 (checkpoint + summary), copied afresh by each test."""
    from zoo.distill import DistillInterrupted, distill
    from zoo.recipe import load_recipe

    out = tmp_path_factory.mktemp("runs")
    recipe = load_recipe("smoke", ["teachers=[clip:tiny@32]", "train.resolution=32", "train.batch_size=2",
                                   "train.steps=4", "bench.enabled=false", "eval.every=0"])

    def stop(step: int, metrics: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(DistillInterrupted):
        distill("resnet-18", recipe, out_dir=out, run_name="cut", progress=False, on_step=stop)
    return out / "cut"


@pytest.fixture
def run_copy(stopped_run, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(stopped_run, tmp_path / "cut"))


# --------------------------------------------------------------------------- divergence


def test_divergence_exits_3_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr 1e6 drives the loss to NaN within a few steps; checkpoints every 2 steps.
    result = _distill("--backbone", "resnet-18", "--recipe", "smoke", *TINY, "--set", "optim.lr=1e6",
                      "--set", "optim.warmup_steps=0", "--steps", "6", "--set", "train.checkpoint_every=2",
                      "--out", str(tmp_path), "--run-name", "nan")
    run = tmp_path / "nan"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] >= 3
    saved = load_checkpoint(run / "checkpoint.pt")
    good = saved["step"]
    assert 2 <= good < summary["diverged_step"] and _all_finite(saved)
    _one_line(result, 3, f"diverged at step {summary['diverged_step']}/6",
              f"Last good checkpoint: {run / 'checkpoint.pt'} (step {good})",
              f"zoo distill --resume {run} --set optim.lr=100000")
    assert summary["fd_loss"] is None and summary["train_loss_last"] is None  # valid JSON, no NaN
    assert "NaN" not in (run / "metrics.jsonl").read_text()
    assert _temps(run) == []
    # The kept checkpoint resumes; with a lower learning rate the run then finishes.
    again = _distill("--resume", str(run), "--set", "optim.lr=1e-4", "--no-progress", "--offline")
    assert again.exit_code == 0, again.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 6 and summary["diverged_step"] is None
    final = load_checkpoint(run / "checkpoint.pt")
    assert final["step"] == 6 and _all_finite(final) and final["recipe"]["optim"]["lr"] == 1e-4


# --------------------------------------------------------------------------- unusable checkpoints


@pytest.mark.parametrize("damage, fragments", [
    ("truncate", ["is not a readable torch checkpoint", "checkpoint.pt"]),
    ("garbage", ["checkpoint.pt"]),
    ("pickled", ["refused:", "not a plain weights file", "--trust-checkpoint"]),
    ("foreign", ["is not a zoo distill checkpoint"]),
])
def test_resume_of_an_unusable_checkpoint_is_one_line(run_copy, damage, fragments):
    checkpoint = run_copy / "checkpoint.pt"
    data = checkpoint.read_bytes()
    if damage == "truncate":
        checkpoint.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        checkpoint.write_bytes(b"not a zip file at all\n" * 100)
    elif damage == "pickled":
        state = torch.load(checkpoint, weights_only=True)
        state["note"] = fractions.Fraction(1, 3)  # an object weights-only loading refuses to build
        torch.save(state, checkpoint)
    else:
        torch.save({"weights": torch.zeros(3)}, checkpoint)
    before = _files(run_copy)
    result = _distill("--resume", str(run_copy), "--no-progress", "--offline")
    _one_line(result, 2, *fragments)
    assert _files(run_copy) == before  # nothing changed, nothing added


def test_trust_checkpoint_resumes_a_pickled_checkpoint(run_copy):
    checkpoint = run_copy / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["note"] = fractions.Fraction(1, 3)
    torch.save(state, checkpoint)
    result = _distill("--resume", str(run_copy), "--trust-checkpoint", "--no-progress", "--offline")
    assert result.exit_code == 0, result.output
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 4


# --------------------------------------------------------------------------- full disk


def _enospc_after(n_bytes: int):
    """A writer (of a path or an open file) that writes ``n_bytes`` and then finds the disk full."""
    def write(target) -> None:
        handle = open(target, "wb") if isinstance(target, (str, os.PathLike)) else target
        try:
            handle.write(b"x" * n_bytes)
            handle.flush()
        finally:
            if handle is not target:
                handle.close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_disk_full_while_writing_the_checkpoint(run_copy, monkeypatch):
    before = run_copy.joinpath("checkpoint.pt").read_bytes()
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: _enospc_after(4096)(f))
    result = _distill("--resume", str(run_copy), "--no-progress", "--offline")
    monkeypatch.setattr(torch, "save", real_save)
    _one_line(result, 2, "disk full while writing", str(run_copy / "checkpoint.pt"), "bytes needed",
              "previous version of the file, if any, is intact")
    assert run_copy.joinpath("checkpoint.pt").read_bytes() == before  # still the step-2 checkpoint
    assert load_checkpoint(run_copy / "checkpoint.pt")["step"] == 2
    assert _temps(run_copy) == []


def test_disk_full_while_writing_summary_json(run_copy, monkeypatch):
    import zoo.atomic

    summary_before = (run_copy / "summary.json").read_bytes()
    real = zoo.atomic.atomic_write_bytes

    def full_for_summary(path, data):
        if Path(path).name == "summary.json":
            return zoo.atomic.write_via_temp(path, _enospc_after(len(data) // 2), size_hint=len(data))
        return real(path, data)

    monkeypatch.setattr(zoo.atomic, "atomic_write_bytes", full_for_summary)
    result = _distill("--resume", str(run_copy), "--no-progress", "--offline")
    _one_line(result, 2, "disk full while writing", str(run_copy / "summary.json"), "bytes needed")
    assert (run_copy / "summary.json").read_bytes() == summary_before  # the interrupted run's record, whole
    assert load_checkpoint(run_copy / "checkpoint.pt")["step"] == 4  # the finished training is saved
    assert _temps(run_copy) == []


# --------------------------------------------------------------------------- refused starts


@pytest.mark.parametrize("args, fragment", [
    (["--backbone", "vit-t16-cpe", "--set", "train.resolution=40"], "cannot take 40x40"),
    (["--backbone", "resnet-18", "--set", "train.resolution=0"], "train.resolution"),
    (["--backbone", "resnet-18", "--set", "optim.lrr=1"], "optim.lrr"),
    (["--backbone", "resnet-1"], "unknown backbone 'resnet-1'"),
    (["--backbone", "resnet-18", "--teacher", "clip:ViT-B-16:/nonexistent/weights.bin"], "/nonexistent/weights.bin"),
    (["--backbone", "resnet-18", "--teacher-cache", "{out}/no-cache"], "no-cache"),
    (["--backbone", "{out}/missing-net.yaml"], "missing-net.yaml"),
])
def test_a_refused_start_leaves_no_run_folder(tmp_path, args, fragment):
    out = tmp_path / "runs"
    args = [a.replace("{out}", str(tmp_path)) for a in args]
    result = _distill(*args, "--recipe", "smoke", "--set", "train.steps=1", "--set", "bench.enabled=false",
                      "--out", str(out), "--run-name", "refused", "--offline", "--no-progress")
    _one_line(result, 2, fragment)
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


# --------------------------------------------------------------------------- killed writes, signals


def test_temp_files_of_killed_writes_are_removed_at_resume(run_copy):
    stale = [run_copy / ".checkpoint.pt.k1ll3d.tmp", run_copy / ".summary.json.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 50_000)  # what a write killed mid-way leaves
    result = _distill("--resume", str(run_copy), "--no-progress", "--offline")
    assert result.exit_code == 0, result.output
    assert _temps(run_copy) == [] and load_checkpoint(run_copy / "checkpoint.pt")["step"] == 4


def test_ctrl_c_saves_and_exits_130(tmp_path, monkeypatch):
    import zoo.distill

    real = zoo.distill.distill

    def interrupted(*args, **kwargs):
        def ctrl_c(step: int, metrics: dict) -> None:
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # the handler sets a flag; the loop saves and stops

        return real(*args, on_step=ctrl_c, **kwargs)

    monkeypatch.setattr(zoo.distill, "distill", interrupted)
    result = _distill("--backbone", "resnet-18", "--recipe", "smoke", *TINY, "--steps", "50",
                      "--out", str(tmp_path), "--run-name", "c")
    assert result.exit_code == 130, result.output
    assert "interrupted at step 2/50" in result.output and f"zoo distill --resume {tmp_path / 'c'}" in result.output
    assert load_checkpoint(tmp_path / "c" / "checkpoint.pt")["step"] == 2
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["status"] == "interrupted"


def test_sigterm_saves_and_exits_143(tmp_path):
    run = tmp_path / "t"
    command = [sys.executable, "-m", "zoo.cli", "distill", "--backbone", "resnet-18", "--recipe", "smoke", *TINY,
               "--steps", "100000", "--out", str(tmp_path), "--run-name", "t"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert (run / "metrics.jsonl").is_file(), process.communicate(timeout=10)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-2000:]
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == step >= 1
    assert f"interrupted at step {step}/100000" in err and f"--resume {run}" in err


# --------------------------------------------------------------------------- data


def test_unreadable_training_images_are_counted_in_the_record(tmp_path):
    from tests.conftest import write_smooth_images
    from zoo.distill import distill
    from zoo.recipe import load_recipe

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    write_smooth_images(images, count=6, seed=0)
    (images / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (images / "empty.jpg").write_bytes(b"")
    recipe = load_recipe("smoke", ["teachers=[clip:tiny@32]", "data.source=folder", f"data.path={images}",
                                   "data.workers=0", "train.resolution=32", "train.batch_size=2", "train.steps=1",
                                   "bench.enabled=false", "eval.every=0"])
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        record = distill("resnet-18", recipe, out_dir=tmp_path / "runs", run_name="d", progress=False)
    saved = json.loads((tmp_path / "runs" / "d" / "summary.json").read_text())
    assert saved["data_skipped"] == record["data_skipped"] == 2
    assert sorted(saved["data_skipped_examples"]) == ["empty.jpg", "sub/broken.png"]


# --------------------------------------------------------------------------- a refused start says one line only


@pytest.mark.parametrize("args, fragment", [
    (["--backbone", "vit-t16-cpe", "--set", "train.resolution=40"], "cannot take 40x40"),
    (["--backbone", "resnet-18", "--teacher-cache", "{out}/no-cache"], "no-cache"),
    (["--backbone", "resnet-18", "--set", "data.source=webdataset", "--set", "data.path={out}/shards"], "shard"),
    (["--backbone", "resnet-18", "--run-name", "taken"], "already holds a run"),
])
def test_a_refused_start_prints_only_its_error_line(tmp_path, args, fragment):
    # The smoke recipe's teachers are random: that warning belongs to a run that starts, never before a refusal.
    out = tmp_path / "runs"
    (out / "taken").mkdir(parents=True)
    (out / "taken" / "summary.json").write_text("{}")
    args = [a.replace("{out}", str(tmp_path)) for a in args]
    result = _distill(*args, "--recipe", "smoke", "--set", "train.steps=1", "--set", "bench.enabled=false",
                      "--out", str(out), "--offline", "--no-progress")
    line = _one_line(result, 2, fragment)
    assert result.output.strip().splitlines() == [line]
    assert sorted(p.name for p in out.iterdir()) == ["taken"]


# --------------------------------------------------------------------------- resuming a run that already ended


def test_resume_of_a_complete_run_says_so_and_changes_nothing(run_copy):
    from zoo.distill import distill
    from zoo.recipe import recipe_from_dict

    assert _distill("--resume", str(run_copy), "--no-progress", "--offline").exit_code == 0  # ends it: 4/4
    before = _files(run_copy)
    result = _distill("--resume", str(run_copy), "--no-progress", "--offline")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "already complete (4/4 steps" in lines[0] and "--set train.steps=N" in lines[0]
    assert _files(run_copy) == before  # not evaluated, measured or rewritten again
    # The library does the same: the stored record, unchanged.
    saved = load_checkpoint(run_copy / "checkpoint.pt")["recipe"]
    record = distill("resnet-18", recipe_from_dict(saved), out_dir=run_copy.parent, run_name=run_copy.name,
                     resume=True, progress=False)
    assert record == json.loads(before["summary.json"]) and _files(run_copy) == before
    # Asking for more steps trains on.
    result = _distill("--resume", str(run_copy), "--steps", "5", "--no-progress", "--offline")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run_copy / "checkpoint.pt")["step"] == 5
    assert json.loads((run_copy / "summary.json").read_text())["steps"] == 5
