"""zoo.flops, zoo.bench and ``zoo bench``: GMACs that include attention, the
result schema, interleaved measurement, the results file and CLI errors."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from zoo.backbone import Backbone, BackboneOutput, SizeRule
from zoo.bench import (
    DEFAULT_BATCH_SIZE,
    BenchResult,
    BenchSettings,
    append_results,
    bench_backbones,
    bench_model,
    bench_models,
    read_results,
)
from zoo.cli import cli
from zoo.errors import ConfigError, ResolutionError, UnknownNameError, ZooError
from zoo.flops import count_gmacs, sdpa_macs

FAST = dict(batch_size=2, warmup=1, repeats=2, steps_per_repeat=2, device="cpu", threads=1, flops=False)


class TinyConvNet(Backbone):
    """Two bias-free convolutions; MACs are easy to count by hand."""

    size_rule = SizeRule(multiple=2, minimum=8)

    def __init__(self) -> None:
        super().__init__()
        self.name = "tiny"
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.summary_dim = self.feature_dim = 16
        self.stride = 2

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        features = self.conv2(self.conv1(x))
        return BackboneOutput(features.mean((2, 3)), features)


class SpyNet(TinyConvNet):
    """Records its name in a shared log at every forward pass (not while traced)."""

    def __init__(self, label: str, log: list[str], fail_above: int | None = None) -> None:
        super().__init__()
        self.label, self.log, self.fail_above = label, log, fail_above

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        if self.fail_above is not None and x.shape[0] > self.fail_above:
            raise torch.OutOfMemoryError("simulated out of memory")
        self.log.append(self.label)
        return super().forward(x)


class FusableNet(TinyConvNet):
    def __init__(self) -> None:
        super().__init__()
        self.fused_calls = 0

    def fuse(self) -> "FusableNet":
        self.fused_calls += 1
        return self


# --------------------------------------------------------------------------- FLOPs


def test_cnn_gmacs_match_a_hand_count():
    count = count_gmacs(TinyConvNet(), 32)
    conv1 = 32 * 32 * 8 * (3 * 3 * 3)  # output positions x out channels x kernel MACs
    conv2 = 16 * 16 * 16 * (8 * 3 * 3)
    assert round(count.gmacs * 1e9) == conv1 + conv2
    assert count.unit == "GMACs"
    assert "aten::mean" in count.skipped_ops  # reported, not silently dropped


def test_vit_attention_is_in_the_count():
    from zoo.registry import create_backbone

    depth, dim, patches = 12, 192, (224 // 16) ** 2
    tokens = patches + 1  # + CLS
    linear = depth * tokens * 12 * dim * dim  # qkv (3D²) + proj (D²) + MLP (2·4D²) per token
    patch_embed = patches * (3 * 16 * 16) * dim
    attention = 2 * depth * tokens**2 * dim  # q @ k^T and attn @ v
    count = count_gmacs(create_backbone("vit-t16-cpe", resolution=224), 224)
    assert round(count.by_operator["linear"] * 1e9) == linear
    assert round(count.by_operator["conv"] * 1e9) == patch_embed
    assert round(count.by_operator["scaled_dot_product_attention"] * 1e9) == attention
    beyond_linear = count.gmacs * 1e9 - (linear + patch_embed)
    # What remains above the linear layers is attention, plus a little (norms, position-embedding resize).
    assert attention <= beyond_linear < 1.05 * attention
    assert "aten::scaled_dot_product_attention" not in count.skipped_ops


def test_fused_and_unfused_attention_count_the_same():
    import timm.layers.config as timm_config

    from zoo.registry import create_backbone

    fused = count_gmacs(create_backbone("vit-t16-cpe", resolution=64), 64)
    previous = timm_config._USE_FUSED_ATTN
    timm_config.set_fused_attn(False)  # timm's Attention reads it when built
    try:
        unfused_model = create_backbone("vit-t16-cpe", resolution=64)
    finally:
        timm_config._USE_FUSED_ATTN = previous
    assert not unfused_model.vit.blocks[0].attn.fused_attn
    unfused = count_gmacs(unfused_model, 64)
    assert "matmul" in unfused.by_operator and "scaled_dot_product_attention" in fused.by_operator
    assert unfused.gmacs == pytest.approx(fused.gmacs, rel=1e-9)


def test_sdpa_macs_broadcasts_grouped_heads():
    assert sdpa_macs((2, 4, 10, 8), (2, 4, 12, 8), (2, 4, 12, 6)) == 2 * 4 * 10 * 12 * (8 + 6)
    assert sdpa_macs((2, 4, 10, 8), (2, 1, 12, 8), (2, 1, 12, 8)) == 2 * 4 * 10 * 12 * 16


def test_count_leaves_the_model_as_it_was():
    model = TinyConvNet().train()
    count_gmacs(model, 16)
    assert model.training


# --------------------------------------------------------------------------- measurement


def test_settings_resolve_per_device_and_refuse_bad_values():
    settings = BenchSettings(device="cpu").resolved()
    assert settings.device == "cpu" and settings.dtype == "fp32"
    assert settings.batch_size == DEFAULT_BATCH_SIZE["cpu"] and settings.resolution == (224, 224)
    assert BenchSettings(resolution="320x480", compile=True, device="cpu").resolved().compile == "default"
    with pytest.raises(ConfigError, match="fp16"):
        BenchSettings(dtype="fp16", device="cpu").resolved()
    with pytest.raises(ConfigError, match="repeats"):
        BenchSettings(repeats=0, device="cpu").resolved()
    with pytest.raises(ConfigError, match="compile mode"):
        BenchSettings(compile="fastest", device="cpu").resolved()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            BenchSettings(device="cuda:0").resolved()


def test_bench_result_schema():
    model = TinyConvNet().train()
    result = bench_model(model, BenchSettings(resolution=16, **{**FAST, "flops": True}), name="tiny")
    assert model.training  # mode restored
    data = json.loads(json.dumps(result.to_dict()))
    assert data["kind"] == "bench" and data["backbone"] == "tiny" and data["family"] is None
    assert isinstance(data["params_m"], float) and data["params_m"] == pytest.approx(
        sum(p.numel() for p in model.parameters()) / 1e6, abs=1e-4)
    assert isinstance(data["gmacs"], float) and data["gmacs"] > 0
    assert isinstance(data["flops_skipped"], dict)
    assert data["peak_memory_mb"] is None  # CPU: not measured
    tp = data["throughput"]
    assert set(tp) == {"median", "min", "max", "values", "unit", "device", "device_name", "batch_size",
                       "resolution", "dtype", "channels_last", "compile", "fuse", "threads"}
    assert len(tp["values"]) == 2 and all(isinstance(v, float) and v > 0 for v in tp["values"])
    assert tp["min"] <= tp["median"] <= tp["max"]
    assert tp["min"] == min(tp["values"]) and tp["max"] == max(tp["values"])
    assert tp["unit"] == "img/s" and tp["device"] == "cpu" and isinstance(tp["device_name"], str)
    assert tp["batch_size"] == 2 and tp["resolution"] == [16, 16] and tp["dtype"] == "fp32"
    assert tp["channels_last"] is False and tp["compile"] is False and tp["fuse"] is False and tp["threads"] == 1
    from zoo.versions import versions

    assert data["versions"] == versions()  # the one record of library versions
    assert datetime.fromisoformat(data["created"]).tzinfo is not None
    assert BenchResult.from_dict(data).to_dict() == data


def test_threads_are_restored_after_measuring():
    before = torch.get_num_threads()
    bench_model(TinyConvNet(), BenchSettings(resolution=16, **{**FAST, "threads": 1}))
    assert torch.get_num_threads() == before


def test_models_are_measured_interleaved():
    log: list[str] = []
    models = {"a": SpyNet("a", log), "b": SpyNet("b", log)}
    settings = BenchSettings(resolution=16, **{**FAST, "repeats": 3, "warmup": 1, "steps_per_repeat": 2})
    results = bench_models(models, settings, progress=False)
    assert [r.backbone for r in results] == ["a", "b"]
    # Warm-up of each, then repeat k of every model before repeat k+1 of any.
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 3


def test_out_of_memory_halves_the_batch_and_starts_over():
    log: list[str] = []
    settings = BenchSettings(resolution=16, **{**FAST, "batch_size": 8})
    result = bench_model(SpyNet("a", log, fail_above=2), settings, name="spy")
    assert result.throughput["batch_size"] == 2 and len(result.throughput["values"]) == 2
    with pytest.raises(ZooError, match="even at batch size 1"):
        bench_model(SpyNet("a", log, fail_above=0), settings, name="spy")


def test_fuse_applies_only_where_supported():
    fusable = FusableNet()
    settings = BenchSettings(resolution=16, **{**FAST, "fuse": True})
    assert bench_model(fusable, settings).throughput["fuse"] is True and fusable.fused_calls == 1
    assert bench_model(TinyConvNet(), settings).throughput["fuse"] is False


def test_channels_last_and_bf16_run_on_cpu():
    result = bench_model(TinyConvNet(), BenchSettings(resolution=16, dtype="bf16", channels_last=True, **FAST))
    assert result.throughput["dtype"] == "bf16" and result.throughput["channels_last"] is True


def test_bench_backbones_fails_before_measuring(tmp_path):
    results_file = tmp_path / "bench.jsonl"
    settings = BenchSettings(resolution=100, **FAST)
    with pytest.raises(ResolutionError, match="96 or 128"):
        bench_backbones(["resnet-18", "maxvit-b"], settings, progress=False, results_file=results_file)
    with pytest.raises(ResolutionError, match="multiple of 16"):
        bench_backbones(["vit-t16-cpe"], settings, progress=False, results_file=results_file)
    with pytest.raises(UnknownNameError, match="resnet-18"):
        bench_backbones(["resnet-81"], settings, progress=False, results_file=results_file)
    assert not results_file.exists()


def test_subprocess_mode_measures_each_model_in_its_own_process(tmp_path):
    settings = BenchSettings(resolution=32, subprocess=True, **{**FAST, "batch_size": 1})
    results = bench_backbones(["convnext-atto"], settings, progress=False, results_file=tmp_path / "r.jsonl")
    assert results[0].backbone == "convnext-atto" and results[0].family == "convnext"
    assert len(results[0].throughput["values"]) == 2
    assert len(read_results(tmp_path / "r.jsonl")) == 1


# --------------------------------------------------------------------------- results file


def test_append_keeps_existing_lines(tmp_path):
    path = tmp_path / "runs" / "bench.jsonl"
    path.parent.mkdir()
    path.write_text('{"kind": "distill", "keep": 1}')  # no trailing newline
    result = bench_model(TinyConvNet(), BenchSettings(resolution=16, **FAST), name="tiny")
    append_results(path, [result])
    append_results(path, [result, result.to_dict()])
    records = read_results(path)
    assert len(records) == 4 and records[0] == {"kind": "distill", "keep": 1}
    assert [r["backbone"] for r in read_results(path, kind="bench")] == ["tiny"] * 3
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left behind
    path.write_text(path.read_text() + "{oops\n")
    with pytest.raises(ConfigError, match=":5"):
        read_results(path)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exc_info[0] is SystemExit
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def test_cli_bench_two_backbones(runner, tmp_path):
    args = ["bench", "--backbone", "convnext-atto,resnet-18", "--resolution", "64", "--batch-size", "1",
            "--repeats", "2", "--warmup", "1", "--json", "out.json", "--results", "res.jsonl"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out.json").read_text())
    assert [r["backbone"] for r in data] == ["convnext-atto", "resnet-18"]
    for record in data:
        tp = record["throughput"]
        assert len(tp["values"]) == 2 and tp["min"] <= tp["median"] <= tp["max"]
        assert tp["resolution"] == [64, 64] and tp["batch_size"] == 1 and record["gmacs"] > 0
    assert len(read_results(tmp_path / "res.jsonl")) == 2
    assert "convnext-atto" in result.output and "GMACs" in result.output


def test_cli_csv_to_stdout(runner, tmp_path):
    result = runner.invoke(cli, ["bench", "-b", "convnext-atto", "-r", "32", "--batch-size", "1", "--repeats", "1",
                                 "--warmup", "0", "--steps", "1", "--no-flops", "--no-save", "--csv", "-", "-q"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1 and rows[0]["backbone"] == "convnext-atto" and rows[0]["resolution"] == "32x32"
    assert not (tmp_path / "runs").exists()  # --no-save


@pytest.mark.parametrize("args, expected", [
    (["-b", "convnext-atto,resnt-18"], "resnet-18"),
    (["-b", "maxvit-b", "-r", "100"], "96 or 128"),
    (["-b", "mvitv2-b", "-r", "320x480"], "square"),
    (["-b", "resnet-18", "--device", "cpu", "--dtype", "fp16"], "fp16"),
    (["-b", "resnet-18", "--backbone", "resnet-18", "--all"], "exactly one"),
    (["--family", "vits"], "vit-cpe"),
])
def test_cli_bad_input_is_one_line_exit_2(runner, tmp_path, args, expected):
    line = _one_error_line(runner.invoke(cli, ["bench", *args, "--results", "res.jsonl"]))
    assert expected in line
    assert not (tmp_path / "res.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cli_cuda_without_gpu(runner):
    assert "no CUDA GPU" in _one_error_line(runner.invoke(cli, ["bench", "-b", "resnet-18", "--device", "cuda"]))
