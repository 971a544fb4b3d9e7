"""zoo export (onnx, timm, hf) and zoo.load: every export loaded back the way users load it and compared
with the eager student (a real 2-step smoke distillation of resnet-18 at 64 px, and a PHI-S run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from zoo.cli import cli
from zoo.export.verify import compare
from zoo.loading import load_run

RESOLUTION = 64
RUN_SETTINGS = ["train.steps=2", "train.batch_size=2", f"train.resolution={RESOLUTION}", "eval.every=0",
                "eval.images=1", "train.checkpoint_every=100", "bench.repeats=1", "bench.batch_size=1",
                "bench.warmup=1", "bench.steps_per_repeat=1"]
TINY_ERADIO = """name: tiny-eradio
family: eradio
resolution: 64
config: {dim: 16, in_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], window_size: [2, 2], cpb_hidden: 16,
         neck_dim: 32}
"""


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A real zoo distill run: resnet-18, 2 steps at 64 px, tiny random teachers."""
    from zoo.distill import distill
    from zoo.recipe import load_recipe

    out = tmp_path_factory.mktemp("runs")
    record = distill("resnet-18", load_recipe("smoke", RUN_SETTINGS), out_dir=out, run_name="smoke", progress=False,
                     device="cpu")
    return Path(record["run_dir"] if isinstance(record, dict) else record.run_dir)


@pytest.fixture(scope="module")
def phi_s_run(tmp_path_factory) -> Path:
    """A run folder laid out as zoo distill writes it, whose heads were trained on PHI-S targets."""
    from zoo.checkpoints import atomic_torch_save
    from zoo.heads import AdaptorHeads
    from zoo.recipe import load_recipe
    from zoo.registry import create_backbone
    from zoo.runs import RunRecord, write_record
    from zoo.standardize import StandardizerEstimator
    from zoo.teachers import TeacherOutput, build_teacher

    root = tmp_path_factory.mktemp("phi") / "phi-s"
    root.mkdir()
    teachers = [build_teacher("clip:tiny@32"), build_teacher("dinov2:tiny@28")]
    backbone = create_backbone("resnet-18", RESOLUTION)
    heads = AdaptorHeads(backbone.summary_dim, backbone.feature_dim, teachers)
    estimator = StandardizerEstimator()
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):  # far from standardised: offsets and stretched channels
        estimator.update({t.name: TeacherOutput(
            5.0 + 3.0 * torch.randn(16, t.summary_dim, generator=generator).cumsum(1),
            -2.0 + torch.randn(2, t.feature_dim, 4, 4, generator=generator).cumsum(1)) for t in teachers})
    state = {"backbone": backbone.state_dict(), "heads": heads.state_dict(),
             "recipe": load_recipe("smoke", [f"train.resolution={RESOLUTION}"]).to_dict(),
             "standardizer": estimator.finalize().state_dict()}
    atomic_torch_save(state, root / "checkpoint.pt")
    throughput = {"median": 123.4, "min": 120.0, "max": 125.0, "values": [123.4], "unit": "img/s", "device": "cpu",
                  "device_name": "Test CPU", "batch_size": 8, "resolution": [RESOLUTION, RESOLUTION],
                  "dtype": "fp32", "threads": 1, "compile": False, "channels_last": False, "fuse": False}
    write_record(root, RunRecord(run_id="phi-s", backbone="resnet-18", run_dir=str(root), family="resnet",
                                 resolution=[RESOLUTION, RESOLUTION], teachers=[t.describe() for t in teachers],
                                 random_teacher=True, steps=30, fd_loss=0.4321, fd_loss_train=0.5432, recipe="smoke",
                                 throughput=throughput))
    return root


def _images(batch: int = 3, size: tuple[int, int] = (80, 96), seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _export(*args: str) -> str:
    result = CliRunner().invoke(cli, ["export", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _close(a, b, atol: float = 1e-4) -> None:
    diff = compare("x", a, b)
    assert diff.max_abs_diff <= atol * max(1.0, diff.max_abs_ref) and diff.cosine > 0.9999, diff.describe()


# --------------------------------------------------------------------------- timm


def test_timm_folder_loads_with_timm_create_model(smoke_run, tmp_path):
    import timm
    from safetensors.torch import load_file

    out = tmp_path / "timm-student"
    output = _export(str(smoke_run), "--format", "timm", "--out", str(out))
    assert "random teacher" in output and "max abs diff" in output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    run = load_run(smoke_run)
    x = run.preprocess(_images())
    with torch.no_grad():
        expected = run.backbone(x)
        feats = model.forward_features(x)
        summary = model.forward_head(feats, pre_logits=True)
    _close(summary, expected.summary, atol=1e-6)
    _close(feats, expected.features, atol=1e-6)
    # weights under timm's own names, the trained input size and normalisation in pretrained_cfg
    assert set(load_file(str(out / "model.safetensors"))) == set(model.state_dict())
    config = json.loads((out / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    assert cfg["input_size"] == [3, RESOLUTION, RESOLUTION] and cfg["mean"] == list(run.mean)
    assert cfg["std"] == list(run.std) and cfg["crop_pct"] == 1.0
    assert tuple(model.pretrained_cfg["input_size"]) == (3, RESOLUTION, RESOLUTION)
    report = json.loads((out / "export.json").read_text())
    assert report["check"]["ok"] and report["check"]["runtime"].startswith("timm.create_model('local-dir")
    assert report["source"]["run_id"] == "smoke" and set(report["files"]) == {"config.json", "model.safetensors"}


def test_timm_folder_of_an_eradio_backbone_file(tmp_path):
    """E-RADIO (a backbone file: not a registry entry) as a timm model with its config and window."""
    import eradio  # noqa: F401 - registers eradio_* in timm

    from zoo.export.timm_folder import create_from_folder
    from zoo.registry import create_backbone

    spec = tmp_path / "tiny-eradio.yaml"
    spec.write_text(TINY_ERADIO)
    out = tmp_path / "eradio-timm"
    output = _export(str(spec), "--format", "timm", "--out", str(out))
    assert "random init" in output and "set_window_for_resolution" in output
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"].startswith("eradio_") and config["model_args"]["dim"] == 16
    assert config["model_args"]["window_size"] == [2, 2] and config["zoo"]["backbone_file"]["family"] == "eradio"
    model = create_from_folder(out)
    # the exported weights: equal to a backbone rebuilt by zoo.load from the folder
    loaded = zoo.load(out)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        summary, features = model.forward_features(x)
        expected = loaded.backbone(x)
    _close(summary, expected.summary, atol=1e-6)
    _close(features, expected.features, atol=1e-6)
    fresh = create_backbone(str(spec), 64)  # different random init: the weights really came from the file
    with torch.no_grad():
        assert compare("s", fresh(x).summary, expected.summary).max_abs_diff > 1e-3


def test_vit_cpe_is_refused_for_timm_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["export", "vit-t16-cpe", "--format", "timm", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not a timm architecture" in lines[0] and "--format hf" in lines[0]
    assert not (tmp_path / "v").exists()


# --------------------------------------------------------------------------- onnx


def test_onnx_export_with_heads_matches_the_student_in_onnxruntime(smoke_run, tmp_path):
    from zoo.export.onnx import read_onnx, run_onnx

    path = tmp_path / "student.onnx"
    output = _export(str(smoke_run), "--format", "onnx", "--with-heads", "--out", str(path))
    assert "onnxruntime vs eager" in output and "dynamic: batch, height, width" in output
    report = json.loads((tmp_path / "student.onnx.json").read_text())
    assert report["check"]["ok"] and report["check"]["max_abs_diff"] < 1e-3 and report["check"]["min_cosine"] > 0.9999
    assert report["outputs"] == ["summary", "features", "clip.summary", "clip.features", "dinov2.summary",
                                 "dinov2.features"]
    assert report["dynamic_axes"] == {"batch": True, "height": True, "width": True}
    assert report["preprocessing"]["resolution"] == [RESOLUTION, RESOLUTION]
    session, _ = read_onnx(path)
    run = load_run(smoke_run)
    # another batch size and size than the export's example: the graph is dynamic
    x = run.preprocess(_images(3), size_hw=(96, 128))
    got = run_onnx(session, x)
    with torch.no_grad():
        out = run.backbone(x)
        adaptors = run.adaptors(out)
    assert got["features"].shape == (3, 512, 3, 4)
    _close(got["summary"], out.summary)
    _close(got["features"], out.features)
    for name in ("clip", "dinov2"):
        _close(got[f"{name}.summary"], adaptors[name].summary)
        _close(got[f"{name}.features"], adaptors[name].features)


def test_eradio_onnx_is_fused_and_exported_per_resolution(tmp_path):
    from zoo.export.onnx import read_onnx, run_onnx

    spec = tmp_path / "tiny-eradio.yaml"
    spec.write_text(TINY_ERADIO)
    output = _export(str(spec), "--format", "onnx", "--resolution", "96", "--out", str(tmp_path / "e.onnx"))
    assert "deploy mode" in output and "exported for 96x96 only" in output and "height x width fixed" in output
    report = json.loads((tmp_path / "e.onnx.json").read_text())
    assert report["fused"] and report["dynamic_axes"] == {"batch": True, "height": False, "width": False}
    assert report["source"]["random_init"] and report["check"]["ok"]
    session, _ = read_onnx(tmp_path / "e.onnx")
    assert session.get_inputs()[0].shape[1:] == [3, 96, 96]
    x = torch.randn(4, 3, 96, 96)
    assert run_onnx(session, x)["features"].shape == (4, 32, 6, 6)


# --------------------------------------------------------------------------- hf and zoo.load


def test_hf_folder_loads_with_zoo_load_in_teacher_space(phi_s_run, tmp_path):
    out = tmp_path / "hf"
    output = _export(str(phi_s_run), "--format", "hf", "--out", str(out))
    assert "upload_folder" in output and "nothing was uploaded" in output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adaptors.safetensors", "config.json",
                                                     "export.json", "model.safetensors", "run_record.json"]
    student = zoo.load(out)
    run = load_run(phi_s_run)
    assert student.standardizer is not None and student.head_names == ["clip", "dinov2"]
    assert student.resolution == (RESOLUTION, RESOLUTION) and student.mean == run.mean and student.std == run.std
    assert not student.backbone.training and student.record.fd_loss == pytest.approx(0.4321)
    images = _images()
    out_loaded, adaptors = student(images)
    out_run, expected = run(images)
    _close(out_loaded.summary, out_run.summary, atol=1e-6)
    _close(out_loaded.features, out_run.features, atol=1e-6)
    for name in ("clip", "dinov2"):
        _close(adaptors[name].summary, expected[name].summary, atol=1e-5)
        _close(adaptors[name].features, expected[name].features, atol=1e-5)
    with torch.no_grad():  # the heads' own outputs are standardised: zoo.load de-standardises them
        raw = student.heads(student.backbone(student.preprocess(images)))
    assert (raw["clip"].summary - adaptors["clip"].summary).abs().max() > 1.0
    card = (out / "README.md").read_text()
    assert card.index("Random teacher") < card.index("## Teachers")  # the warning comes first
    for text in ("`clip:tiny@32`", "`dinov2:tiny@28`", "steps: 30", "0.4321", "0.5432", "123.4 img/s",
                 "Test CPU", "batch 8", "PHI-S standardised targets: yes", "library_name: timm"):
        assert text in card, text
    # the same folder is a timm model too
    import timm

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        _close(model(run.preprocess(images)), out_run.summary, atol=1e-6)


def test_hf_without_heads_and_vit_cpe(tmp_path):
    """--no-heads: no adaptors; ViT-CPE (not a timm architecture) is an hf folder zoo.load reads."""
    out = tmp_path / "vit"
    output = _export("vit-t16-cpe", "--format", "hf", "--resolution", "32", "--out", str(out))
    assert "random init" in output and "not a timm architecture" in output
    config = json.loads((out / "config.json").read_text())
    assert "architecture" not in config and config["zoo"]["weights_layout"] == "zoo"
    assert not (out / "adaptors.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "Random initialisation: never trained" in card and "library_name: zoo" in card
    student = zoo.load(out)
    out1, adaptors = student(_images(2, (48, 64)))
    assert adaptors == {} and out1.features.shape == (2, 192, 2, 2)  # its training size: 32 px


def test_zoo_load_run_folder_equals_load_run(smoke_run):
    student = zoo.load(smoke_run)
    run = load_run(smoke_run)
    images = _images()
    (a, adaptors_a), (b, adaptors_b) = student(images), run(images)
    assert torch.equal(a.summary, b.summary) and sorted(adaptors_a) == ["clip", "dinov2"]
    assert torch.equal(adaptors_a["clip"].features, adaptors_b["clip"].features)


def test_import_zoo_stays_light():
    code = "import sys, zoo; print(callable(zoo.load), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_default_targets(smoke_run, tmp_path, monkeypatch):
    from zoo.export import default_out
    from zoo.export.source import open_source

    monkeypatch.chdir(tmp_path)
    run_source = open_source(smoke_run)
    assert default_out(run_source, "onnx") == smoke_run / "export" / "model.onnx"
    assert default_out(run_source, "hf") == smoke_run / "export" / "hf"
    eradio = open_source("eradio-xt", 256)
    assert default_out(eradio, "onnx") == Path("exports/eradio-xt/model-256x256.onnx")  # one graph per size
