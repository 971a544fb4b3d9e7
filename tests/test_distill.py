"""The distillation engine: run record, metrics, loss falls, exact resume, clean stop, DDP, CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from zoo.backbone import Backbone, BackboneOutput, SizeRule
from zoo.checkpoints import load_checkpoint
from zoo.distill import DistillInterrupted, distill, lr_factor
from zoo.recipe import load_recipe

RECORD_KEYS = {
    "kind", "run_id", "run_dir", "backbone", "family", "backbone_config", "params_m", "gmacs", "resolution",
    "throughput", "fd_loss", "losses", "train_loss_first", "train_loss_last", "steps", "wall_time_s", "teachers",
    "random_teacher", "note", "recipe", "balancing", "device", "world_size", "versions", "created", "status",
    "fd_loss_train", "diverged_step", "data_skipped", "data_skipped_examples", "standardize", "evaluations",
    "schema_version", "data",
}
TINY_TEACHERS = '["clip:tiny@32", "dinov2:tiny@28"]'


class TinyBackbone(Backbone):
    """Two strided convolutions, no BatchNorm (so a 2-process run equals a 1-process run)."""

    name = "tiny-test"
    summary_dim, feature_dim, stride = 24, 16, 4
    size_rule = SizeRule(multiple=4, minimum=8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, 16, 3, 2, 1), nn.GELU())
        self.pool = nn.Linear(16, 24)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        features = self.stem(x)
        return BackboneOutput(self.pool(features.mean(dim=(2, 3))), features)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    from tests.conftest import write_smooth_images

    folder = tmp_path_factory.mktemp("images")
    write_smooth_images(folder, count=8, seed=0)
    return folder


def tiny_recipe(image_dir: Path, *extra: str):
    return load_recipe("smoke", [
        f"teachers={TINY_TEACHERS}", "data.source=folder", f"data.path={image_dir}", "data.workers=0",
        "train.resolution=32", "train.batch_size=4", "train.steps=6", "train.checkpoint_every=100",
        "optim.lr=3e-3", "optim.warmup_steps=1", "optim.min_lr=3e-4", "eval.images=2", "eval.every=0",
        "bench.enabled=false", *extra,
    ])


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warms_up_then_decays():
    recipe = load_recipe("smoke", ["optim.warmup_steps=4", "train.steps=20", "optim.lr=1e-3", "optim.min_lr=1e-4"])
    factors = [lr_factor(s, recipe) for s in range(21)]
    assert factors[0] == pytest.approx(0.25) and factors[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert factors[20] == pytest.approx(0.1)


def test_run_writes_record_and_metrics_and_loss_falls(image_dir, tmp_path):
    recipe = tiny_recipe(image_dir, "train.steps=10", "bench.enabled=true", "bench.batch_size=2", "bench.repeats=2",
                         "bench.warmup=0", "bench.steps_per_repeat=1", "eval.every=5", "eval.fd_loss_train_steps=4")
    evals = []
    record = distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="r1", progress=False,
                     on_eval=lambda step, fd: evals.append((step, fd)))
    run_dir = tmp_path / "r1"
    saved = json.loads((run_dir / "summary.json").read_text())
    assert set(saved) == RECORD_KEYS and saved == json.loads(json.dumps(record))
    assert record["kind"] == "distill" and record["status"] == "complete" and record["steps"] == 10
    assert record["resolution"] == [32, 32] and record["world_size"] == 1 and record["device"] == "cpu"
    assert set(record["losses"]) == {"clip/summary", "clip/features", "dinov2/summary", "dinov2/features"}
    assert record["fd_loss"] == pytest.approx(record["losses"]["dinov2/features"])
    assert record["random_teacher"] and "random teacher" in record["note"]
    assert record["params_m"] > 0 and record["gmacs"] > 0
    assert record["throughput"]["median"] > 0 and record["throughput"]["resolution"] == [32, 32]
    assert {t["name"] for t in record["teachers"]} == {"clip", "dinov2"}
    assert {"torch", "timm", "open_clip", "zoo", "python"} <= set(record["versions"])
    assert record["train_loss_last"] < 0.8 * record["train_loss_first"]
    assert [step for step, _ in evals] == [5, 10]
    lines = _metrics(run_dir)
    train_lines = [m for m in lines if not m.get("eval")]
    assert [m["step"] for m in train_lines] == list(range(1, 11))
    assert {"step", "lr", "loss", "total", "img_per_s", "time"} <= set(train_lines[0])
    assert {"clip/summary", "dinov2/features"} <= set(train_lines[0]["loss"])
    # Table 7's FD loss: the DINOv2 feature term of the last eval.fd_loss_train_steps training steps
    last4 = [m["loss"]["dinov2/features"] for m in train_lines[-4:]]
    assert record["fd_loss_train"] == pytest.approx(sum(last4) / 4, rel=1e-5)
    assert record["fd_loss_train"] != pytest.approx(record["fd_loss"], rel=1e-3)  # a different number
    assert record["diverged_step"] is None and record["data_skipped"] == 0 and record["standardize"] is None
    assert load_recipe(run_dir / "recipe.yaml") == recipe
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")  # weights_only=True
    assert checkpoint["step"] == 10
    assert {"backbone", "heads", "balancer", "optimizer", "scheduler", "rng", "recipe"} <= set(checkpoint)
    with pytest.raises(Exception, match="already holds a run"):
        distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="r1", progress=False)


def test_resume_gives_the_same_weights(image_dir, tmp_path):
    recipe = tiny_recipe(image_dir, "train.steps=6", "loss.balancing=adaloss", "augment.hflip=true")
    straight = distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="straight", progress=False)

    def stop_at_3(step: int, metrics: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(DistillInterrupted, match="--resume") as err:
        distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="split", progress=False, on_step=stop_at_3)
    assert err.value.record["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 3
    torch.manual_seed(123)  # the global RNG state at resume must not matter
    record = distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="split", resume=True, progress=False)
    assert record["status"] == "complete" and record["steps"] == 6
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for part in ("backbone", "heads", "balancer"):
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, atol=1e-5, rtol=1e-5, msg=f"{part}.{key}")
    assert [m["step"] for m in _metrics(tmp_path / "split") if not m.get("eval")] == list(range(1, 7))
    assert record["train_loss_first"] == pytest.approx(a["train_loss_first"])
    assert record["fd_loss_train"] == pytest.approx(straight["fd_loss_train"], rel=1e-5)  # window kept across resume


def test_sigterm_saves_a_checkpoint_and_stops(image_dir, tmp_path):
    recipe = tiny_recipe(image_dir, "train.steps=50")

    def send_sigterm(step: int, metrics: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(DistillInterrupted, match="interrupted at step 2/50"):
        distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="term", progress=False, on_step=send_sigterm)
    assert signal.getsignal(signal.SIGTERM) == previous  # handler restored
    assert load_checkpoint(tmp_path / "term" / "checkpoint.pt")["step"] == 2
    summary = json.loads((tmp_path / "term" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 2 and set(summary) == RECORD_KEYS


def test_no_dinov2_teacher_means_no_fd_loss(image_dir, tmp_path):
    recipe = tiny_recipe(image_dir, 'teachers=["clip:tiny@32"]', "train.steps=2")
    record = distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="clip-only", progress=False)
    assert record["fd_loss"] is None and "no dinov2 teacher" in record["note"]
    assert set(record["losses"]) == {"clip/summary", "clip/features"}


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_distill import TinyBackbone, tiny_recipe
from zoo.distill import distill
from pathlib import Path
torch.manual_seed(0)
recipe = tiny_recipe(Path({images!r}), "train.steps=3")
distill(TinyBackbone(), recipe, out_dir={out!r}, run_name={name!r}, progress=False, device="cpu")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_equals_one_process(image_dir, tmp_path):
    script = tmp_path / "ddp.py"
    tests = str(Path(__file__).parent)
    script.write_text(DDP_SCRIPT.format(tests=tests, images=str(image_dir), out=str(tmp_path), name="ddp"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "complete" and summary["steps"] == 3
    # One process with the same global batch reaches the same weights (no BatchNorm in the tiny backbone).
    torch.manual_seed(0)
    distill(TinyBackbone(), tiny_recipe(image_dir, "train.steps=3"), out_dir=tmp_path, run_name="single",
            progress=False, device="cpu")
    a = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["backbone"]
    b = load_checkpoint(tmp_path / "single" / "checkpoint.pt")["backbone"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4, msg=key)


# --------------------------------------------------------------------------- CLI


def _cli(args: list[str]):
    from zoo.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_distill_resnet18_smoke(tmp_path):
    result = _cli(["distill", "--backbone", "resnet-18", "--recipe", "smoke", "--set", "train.steps=3",
                   "--set", "train.resolution=32", "--set", "train.batch_size=4", "--set", "bench.repeats=1",
                   "--set", "bench.warmup=0", "--set", "bench.steps_per_repeat=1", "--set", "bench.batch_size=2",
                   "--out", str(tmp_path), "--run-name", "cli", "--no-progress", "--offline"])
    assert result.exit_code == 0, result.output
    assert "random teacher" in result.output and "resnet-18" in result.output
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["backbone"] == "resnet-18" and summary["family"] and summary["steps"] == 3
    assert summary["throughput"]["median"] > 0 and summary["recipe"] == "smoke"


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet-18", "--set", "optim.lrr=1"], "optim.lrr"),
    (["--backbone", "resnet-1"], "unknown backbone 'resnet-1'"),
    (["--backbone", "resnet-18", "--teacher", "clip:nonexistent-model"], "clip"),
    (["--backbone", "resnet-18", "--recipe", "nosuchrecipe"], "unknown recipe"),
    (["--resume", "no-such-run"], "no checkpoint.pt in 'no-such-run'"),
])
def test_cli_bad_input_exits_2(tmp_path, args, message):
    result = _cli(["distill", *args, "--out", str(tmp_path), "--offline"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_folder_without_images_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _cli(["distill", "--backbone", "resnet-18", "--set", "data.source=folder",
                   "--set", f"data.path={tmp_path / 'empty'}", "--out", str(tmp_path), "--offline", "--no-progress"])
    assert result.exit_code == 2 and "no usable images" in result.output


def test_cli_several_backbones_share_teachers(image_dir, tmp_path, monkeypatch):
    import zoo.teachers

    built = []
    original = zoo.teachers.build_teachers
    monkeypatch.setattr(zoo.teachers, "build_teachers", lambda *a, **k: built.append(1) or original(*a, **k))
    result = _cli(["distill", "--backbone", "resnet-18,vit-t16-cpe", "--recipe", "smoke", "--steps", "2",
                   "--teacher", "clip:tiny@32", "--teacher", "dinov2:tiny@28", "--set", "train.resolution=32",
                   "--set", "train.batch_size=2", "--set", "bench.enabled=false", "--out", str(tmp_path),
                   "--no-progress", "--offline"])
    assert result.exit_code == 0, result.output
    assert len(built) == 1  # built once, reused for both backbones
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert sorted(r["backbone"] for r in records) == ["resnet-18", "vit-t16-cpe"]
    assert all(r["steps"] == 2 and r["throughput"] is None for r in records)
    assert "resnet-18" in result.output and "vit-t16-cpe" in result.output


def test_cli_resumes_an_interrupted_run(image_dir, tmp_path):
    recipe = tiny_recipe(image_dir, "train.steps=4")

    def stop_at_2(step: int, metrics: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(DistillInterrupted):
        distill("resnet-18", recipe, out_dir=tmp_path, run_name="cut", progress=False, on_step=stop_at_2)
    result = _cli(["distill", "--resume", "cut", "--out", str(tmp_path), "--no-progress", "--offline"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 4 and summary["backbone"] == "resnet-18"
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4


def test_cli_interrupt_saves_and_says_how_to_resume(image_dir, tmp_path, monkeypatch):
    import zoo.distill

    real = zoo.distill.distill

    def interrupted(*args, **kwargs):
        def stop(step: int, metrics: dict) -> None:
            if step == 2:
                raise KeyboardInterrupt

        return real(*args, on_step=stop, **kwargs)

    monkeypatch.setattr(zoo.distill, "distill", interrupted)
    result = CliRunner().invoke(__import__("zoo.cli", fromlist=["cli"]).cli, [
        "distill", "--backbone", "resnet-18", "--steps", "5", "--teacher", "clip:tiny@32", "--set",
        "train.resolution=32", "--set", "train.batch_size=2", "--out", str(tmp_path), "--run-name", "stop",
        "--no-progress", "--offline"])
    assert result.exit_code == 130, result.output
    assert "interrupted at step 2/5" in result.output and f"--resume {tmp_path / 'stop'}" in result.output
    assert load_checkpoint(tmp_path / "stop" / "checkpoint.pt")["step"] == 2


def test_run_ids_stay_unique_within_one_second(tmp_path, monkeypatch):
    import zoo.runs

    class FrozenClock:
        @staticmethod
        def now(tz=None):
            import datetime as dt

            return dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(zoo.runs, "datetime", FrozenClock)
    first = zoo.runs.new_run_id("resnet-18", "smoke", tmp_path)
    assert first == "resnet-18-smoke-20260102-030405"
    (tmp_path / first).mkdir()
    assert zoo.runs.new_run_id("resnet-18", "smoke", tmp_path) == first + "-2"
    assert zoo.runs.new_run_id("picked/best.yaml", "smoke", tmp_path) == "best-smoke-20260102-030405"


# --------------------------------------------------------------------------- divergence guard


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient: a finite loss whose gradient norm is not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class PoisonedBackbone(TinyBackbone):
    """TinyBackbone whose training step ``at`` gets a NaN loss (``kind="loss"``) or an infinite gradient."""

    def __init__(self, at: int | None, kind: str = "loss") -> None:
        super().__init__()
        self.at, self.kind, self.calls = at, kind, 0

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        out = super().forward(x)
        if not self.training:
            return out
        self.calls += 1
        if self.calls != self.at:
            return out
        summary = out.summary * float("nan") if self.kind == "loss" else _InfGrad.apply(out.summary)
        return BackboneOutput(summary, out.features)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_divergence_stops_keeps_the_good_checkpoint_and_resumes_with_a_lower_lr(image_dir, tmp_path, kind):
    from zoo.errors import ConfigError, DivergedError

    # Checked every 3rd step (logging) and before every checkpoint: NaN at step 7 is caught at step 9.
    recipe = tiny_recipe(image_dir, "train.steps=12", "train.log_every=3", "train.checkpoint_every=5",
                         "train.grad_clip=null")
    run = tmp_path / "div"
    with pytest.raises(DivergedError) as err:
        distill(PoisonedBackbone(at=7, kind=kind), recipe, out_dir=tmp_path, run_name="div", progress=False)
    message = str(err.value)
    assert err.value.exit_code == 3 and "\n" not in message
    assert f"diverged at step 7/12" in message and f"{run / 'checkpoint.pt'} (step 5)" in message
    assert f"zoo distill --resume {run} --set optim.lr=0.0003" in message
    summary = json.loads((run / "summary.json").read_text())
    assert summary == err.value.record and summary["status"] == "diverged"
    assert summary["diverged_step"] == 7 and summary["steps"] == 9 and "diverged at step 7" in summary["note"]
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["step"] == 5 and all(torch.isfinite(v).all() for v in saved["backbone"].values())
    if kind == "gradient":
        return
    # A key that changes what the run trains is refused on resume; nothing on disk changes.
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ConfigError, match="'train.batch_size' cannot change when resuming"):
        distill(TinyBackbone(), tiny_recipe(image_dir, "train.batch_size=2"), out_dir=tmp_path, run_name="div",
                resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # A lower learning rate is a resumable change: the run continues from step 5 under it and finishes.
    lower = tiny_recipe(image_dir, "train.steps=12", "train.log_every=3", "train.checkpoint_every=5",
                        "train.grad_clip=null", "optim.lr=3e-4", "optim.min_lr=3e-5")
    seen = []
    record = distill(TinyBackbone(), lower, out_dir=tmp_path, run_name="div", resume=True, progress=False,
                     on_step=lambda step, m: seen.append((step, m["lr"])))
    assert record["status"] == "complete" and record["steps"] == 12 and record["diverged_step"] is None
    assert seen[0] == (6, pytest.approx(3e-4 * lr_factor(5, lower)))
    assert load_checkpoint(run / "checkpoint.pt")["recipe"]["optim"]["lr"] == 3e-4


def test_guard_reads_the_device_flag_only_when_asked_and_leaves_scaler_skips_alone():
    from zoo.distill.guard import DivergenceGuard
    from zoo.distill.parallel import DistContext

    finite, inf, nan = torch.tensor(1.0), torch.tensor(float("inf")), torch.tensor(float("nan"))
    guard = DivergenceGuard(torch.device("cpu"))
    guard.observe(1, finite, finite)
    guard.observe(2, finite, inf)  # a finite loss with an infinite gradient norm
    guard.observe(3, nan, nan)
    assert guard.diverged_step is None  # nothing is read before check()
    assert guard.check(DistContext(), step=3) and guard.diverged_step == 2
    # fp16 loss scaling: an inf gradient is a step the scaler skips, not a divergence; a NaN loss still is
    scaled = DivergenceGuard(torch.device("cpu"), check_grad_norm=False)
    scaled.observe(1, finite, inf)
    assert not scaled.check(DistContext(), step=1)
    assert scaled.check(DistContext(), step=1, parameters=[torch.tensor([1.0, float("nan")])])
    assert scaled.diverged_step == 1
    scaled = DivergenceGuard(torch.device("cpu"), check_grad_norm=False)
    scaled.observe(4, nan, finite)
    assert scaled.check(DistContext(), step=5) and scaled.diverged_step == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 loss scaling needs a CUDA device")
def test_fp16_scaler_skips_are_not_divergence(image_dir, tmp_path):
    recipe = tiny_recipe(image_dir, "train.amp=fp16", "train.steps=6", "train.grad_clip=null")
    record = distill(PoisonedBackbone(at=3, kind="gradient").cuda(), recipe, out_dir=tmp_path, run_name="fp16",
                     progress=False, device="cuda")
    assert record["status"] == "complete" and record["steps"] == 6 and record["diverged_step"] is None
    saved = load_checkpoint(tmp_path / "fp16" / "checkpoint.pt")
    assert saved["scaler"]["scale"] < 65536.0  # the scaler met the infinite gradient and lowered its scale
    assert all(torch.isfinite(v).all() for v in saved["backbone"].values())


DDP_DIVERGE_SCRIPT = """
import os, sys, json, torch
sys.path.insert(0, {tests!r})
from test_distill import PoisonedBackbone, tiny_recipe
from zoo.distill import distill
from zoo.errors import DivergedError
from pathlib import Path
rank = int(os.environ["RANK"])
recipe = tiny_recipe(Path({images!r}), "train.steps=8", "train.log_every=4", "train.checkpoint_every=2")
try:
    distill(PoisonedBackbone(at=3 if rank == 1 else None), recipe, out_dir={out!r}, run_name="ddp-nan",
            progress=False, device="cpu")
except DivergedError as err:
    print("RANK", rank, json.dumps(err.record.get("diverged_step")), flush=True)
    sys.exit(3)
"""


def test_ddp_ranks_agree_on_divergence(image_dir, tmp_path):
    # Only rank 1's loss turns NaN (step 3); both ranks stop at the next check, nobody hangs in a collective.
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_DIVERGE_SCRIPT.format(tests=str(Path(__file__).parent), images=str(image_dir),
                                                out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    ranks = sorted(line.split()[1:] for line in result.stdout.splitlines() if line.startswith("RANK"))
    assert ranks == [["0", "3"], ["1", "3"]], (result.stdout, result.stderr[-3000:])
    summary = json.loads((tmp_path / "ddp-nan" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 3 and summary["world_size"] == 2
    assert load_checkpoint(tmp_path / "ddp-nan" / "checkpoint.pt")["step"] == 2


# --------------------------------------------------------------------------- AMP modes, backbone files, PHI-S


class DtypeBackbone(TinyBackbone):
    """Records the dtype its convolutions compute in during training."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        out = super().forward(x)
        if self.training:
            self.seen.add(out.features.dtype)
        return out


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("off", torch.float32), ("auto", torch.float32)])
def test_amp_modes_on_cpu(image_dir, tmp_path, amp, dtype):
    backbone = DtypeBackbone()
    record = distill(backbone, tiny_recipe(image_dir, f"train.amp='{amp}'", "train.steps=2"), out_dir=tmp_path,
                     run_name=amp, progress=False, device="cpu")
    assert backbone.seen == {dtype}
    assert record["status"] == "complete" and record["train_loss_last"] is not None
    saved = load_checkpoint(tmp_path / amp / "checkpoint.pt")
    assert all(v.dtype == torch.float32 for v in saved["backbone"].values())  # master weights stay fp32


def test_amp_fp16_on_cpu_is_refused_without_a_run_folder(image_dir, tmp_path):
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        distill(TinyBackbone(), tiny_recipe(image_dir, "train.amp=fp16"), out_dir=tmp_path, run_name="fp16",
                progress=False, device="cpu")
    assert not (tmp_path / "fp16").exists()


TINY_NET_YAML = """name: searched-trial-7
family: vit-cpe
resolution: 32
config: {embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0, patch_size: 16, cpe_grid: 8}
"""


def test_cli_distill_a_backbone_file_is_named_by_its_stem(tmp_path):
    picked = tmp_path / "picked"
    picked.mkdir()
    (picked / "tiny-net.yaml").write_text(TINY_NET_YAML)
    out = tmp_path / "runs"
    common = ["--no-progress", "--offline"]
    result = _cli(["distill", "--backbone", str(picked / "tiny-net.yaml"), "--recipe", "smoke", "--steps", "2",
                   "--teacher", "clip:tiny@32", "--set", "train.resolution=32", "--set", "train.batch_size=2",
                   "--set", "bench.enabled=false", "--out", str(out), *common])
    assert result.exit_code == 0, result.output
    (run,) = list(out.iterdir())
    assert run.name.startswith("tiny-net-smoke-")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backbone"] == "tiny-net" and summary["family"] == "vit-cpe" and summary["run_id"] == run.name
    assert (run / "backbone.yaml").read_text() == TINY_NET_YAML  # the run keeps its architecture
    (picked / "tiny-net.yaml").unlink()
    result = _cli(["distill", "--resume", str(run), "--steps", "3", *common])  # train.steps may grow on resume
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backbone"] == "tiny-net" and summary["steps"] == 3 and summary["status"] == "complete"
    from zoo.loading import load_run  # the student loads from the run's own copy of its backbone file

    loaded = load_run(run)
    out, adaptors = loaded(torch.rand(1, 3, 32, 32))
    assert out.features.shape[1] == 32 and set(adaptors) == {"clip"}


def test_phi_s_statistics_live_in_the_checkpoint_and_resume_exactly(image_dir, tmp_path):
    from zoo.standardize import TeacherStandardizer

    recipe = tiny_recipe(image_dir, "train.steps=4", "loss.standardize=phi-s", "loss.standardize_batches=2")
    straight = distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="straight", progress=False)
    assert straight["standardize"]["method"] == "phi-s" and straight["standardize"]["source"] == "estimated"
    assert set(straight["standardize"]["teachers"]) == {"clip", "dinov2"}
    assert straight["fd_loss"] is not None and straight["fd_loss_train"] is not None

    def stop_at_2(step: int, metrics: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt

    torch.manual_seed(0)  # the built TinyBackbone takes its initial weights from the global RNG, as above
    with pytest.raises(DistillInterrupted):
        distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="split", progress=False, on_step=stop_at_2)
    resumed = distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name="split", resume=True, progress=False)
    assert resumed["standardize"]["source"] == "estimated"  # restored from the checkpoint, not re-estimated
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for key, value in a["standardizer"].items():
        torch.testing.assert_close(b["standardizer"][key], value, msg=key)
    for part in ("backbone", "heads"):
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, atol=1e-5, rtol=1e-5, msg=f"{part}.{key}")
    # The heads learn standardised targets: their outputs map back to the teacher's space with the saved inverse.
    standardizer = TeacherStandardizer.from_state_dict(a["standardizer"])
    y = torch.randn(3, 96, 2, 2)
    torch.testing.assert_close(standardizer.features["dinov2"].inverse(standardizer.features["dinov2"](y)), y,
                               atol=1e-4, rtol=1e-4)


def test_teacher_cache_folder_is_recorded_in_the_run_recipe(image_dir, tmp_path, monkeypatch):
    """--teacher-cache DIR (relative here) goes into recipe.yaml and the checkpoint as an absolute path,
    so the run says which cache made it, and a resumed run reads the same cache without being told."""
    import yaml

    monkeypatch.chdir(tmp_path)
    common = ["--recipe", "smoke", "--set", "data.source=folder", "--set", f"data.path={image_dir}",
              "--set", "train.resolution=32", "--set", "train.batch_size=2", "--teacher", "clip:tiny@32"]
    assert _cli(["cache", "build", *common, "--out", "caches/c", "--views", "1", "--no-progress"]).exit_code == 0
    result = _cli(["distill", "--backbone", "resnet-18", *common, "--steps", "2", "--set", "bench.enabled=false",
                   "--out", "runs", "--run-name", "cached", "--no-progress", "--teacher-cache", "caches/c"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "cached"
    used = yaml.safe_load((run / "recipe.yaml").read_text())["data"]["teacher_cache"]
    assert used and Path(used).is_absolute() and Path(used).resolve() == (tmp_path / "caches" / "c").resolve()
    assert load_checkpoint(run / "checkpoint.pt")["recipe"]["data"]["teacher_cache"] == used
    # Resumed for one more step without --teacher-cache: it still trains on the cache.
    result = _cli(["distill", "--resume", "runs/cached", "--steps", "3", "--no-progress", "--offline"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and Path(summary["teacher_cache"]).resolve() == Path(used).resolve()
