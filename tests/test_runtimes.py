"""zoo.runtimes (eager, compile, onnxruntime, tensorrt) and zoo bench --runtime / --latency."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from zoo.bench import BenchSettings, bench_models
from tests.tiny_backbone import TinyNet, registered
from zoo.cli import cli
from zoo.errors import ConfigError, ZooError
from zoo.runtimes import (LatencySamples, Prepared, RuntimeOptions, get_runtime, latency_summary, percentile,
                          runtime_names)

FAST = dict(device="cpu", batch_size=2, warmup=1, repeats=2, steps_per_repeat=1, flops=False, threads=1)


@pytest.fixture(scope="module", autouse=True)
def tiny_entry():
    """``tiny-runtime`` in the registry for these tests only."""
    yield from registered("tiny-runtime")


def test_registry_lists_the_four_runtimes_and_refuses_unknown_names():
    assert runtime_names()[:4] == ["eager", "compile", "onnxruntime", "tensorrt"]
    with pytest.raises(ZooError, match="unknown runtime 'onnx'; closest: onnxruntime"):
        get_runtime("onnx")
    with pytest.raises(ZooError, match="unknown runtime"):
        BenchSettings(device="cpu", runtime="eager,trt").resolved()


def test_tensorrt_without_cuda_or_packages_is_one_line(monkeypatch):
    runtime = get_runtime("tensorrt")
    with pytest.raises(ZooError, match="needs a CUDA GPU") as err:
        runtime.check(torch.device("cpu"), "fp16")
    assert "\n" not in str(err.value)
    # a GPU machine without torch-tensorrt / tensorrt: the error says which packages are missing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("zoo.runtimes._missing", lambda module: True)
    with pytest.raises(ZooError, match="needs torch-tensorrt or tensorrt, and neither is installed"):
        runtime.check(torch.device("cuda:0"), "fp16")


def test_settings_check_runtime_combinations():
    settings = BenchSettings(device="cpu", compile=True).resolved()
    assert settings.runtimes == ["compile"] and settings.compile == "default"  # --compile alone
    assert BenchSettings(device="cpu", runtime="eager,compile").resolved().compile == "default"
    with pytest.raises(ConfigError, match="--compile applies to the compile runtime"):
        BenchSettings(device="cpu", compile="default", runtime="onnxruntime").resolved()
    with pytest.raises(ConfigError, match="onnxruntime is measured in fp32"):
        BenchSettings(device="cpu", dtype="bf16", runtime="onnxruntime").resolved()
    with pytest.raises(ConfigError, match="listed twice"):
        BenchSettings(device="cpu", runtime="eager,eager").resolved()


def test_percentiles_match_numpy_and_latency_summary():
    values = list(np.random.default_rng(0).exponential(0.01, 37))
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    summary = latency_summary(values)
    assert summary["latency_p50"] == pytest.approx(float(np.percentile(values, 50)) * 1000, abs=1e-3)
    assert summary["latency_p50"] <= summary["latency_p90"] <= summary["latency_p99"]
    assert summary["latency_samples"] == 37 and summary["latency_batch_size"] == 1 and summary["latency_unit"] == "ms"


def test_latency_samples_time_each_forward():
    ticks = iter(range(100))

    class Counting(Prepared):
        calls = 0

        def run(self, inputs):
            Counting.calls += 1

    samples = LatencySamples()
    samples.add(Counting(torch.device("cpu")), None, 5, clock=lambda: float(next(ticks)))
    assert Counting.calls == 5 and samples.values == [1.0] * 5  # one clock pair per forward


def test_onnxruntime_runtime_matches_eager():
    model = TinyNet().eval()
    options = RuntimeOptions(torch.device("cpu"), "fp32", threads=1, max_batch=3, resolution=(16, 16))
    prepared = get_runtime("onnxruntime").prepare(model, options)
    try:
        x = torch.randn(3, 3, 16, 16)
        summary, features = prepared.run(prepared.inputs(x))
        with torch.no_grad():
            expected = model(x)
        np.testing.assert_allclose(summary, expected.summary.numpy(), atol=1e-5)
        np.testing.assert_allclose(features, expected.features.numpy(), atol=1e-5)
        assert prepared.info["export_max_abs_diff"] < 1e-5 and prepared.info["ort_threads"] == 1
        assert isinstance(prepared.inputs(x), np.ndarray)  # converted once, outside the timed step
    finally:
        prepared.close()


def test_bench_measures_each_runtime_interleaved_with_latency():
    settings = BenchSettings(resolution=16, runtime="eager,onnxruntime", latency=True, latency_steps=3, **FAST)
    results = bench_models({"tiny": TinyNet()}, settings, progress=False)
    assert [(r.backbone, r.throughput.get("runtime", "eager")) for r in results] == [("tiny", "eager"),
                                                                                    ("tiny", "onnxruntime")]
    eager, ort = (r.throughput for r in results)
    assert "runtime" not in eager  # eager results look like every result before runtimes existed
    assert ort["runtime_version"] and ort["runtime_info"]["export_max_abs_diff"] < 1e-4
    for tp in (eager, ort):
        assert len(tp["values"]) == 2 and tp["latency_samples"] == 6 and tp["latency_batch_size"] == 1
        assert 0 < tp["latency_p50"] <= tp["latency_p90"] <= tp["latency_p99"]


def test_cli_onnxruntime_next_to_eager_in_one_table(tmp_path):
    results = tmp_path / "bench.jsonl"
    out = CliRunner().invoke(cli, ["bench", "-b", "tiny-runtime", "-r", "16", "--runtime", "eager,onnxruntime",
                                   "--latency", "--latency-steps", "2", "--batch-size", "2", "--repeats", "2",
                                   "--warmup", "1", "--steps", "1", "--threads", "1", "--no-flops",
                                   "--results", str(results), "--csv", str(tmp_path / "b.csv"), "-q"])
    assert out.exit_code == 0, out.output
    table = out.output
    assert "× eager" in table and "latency ms p50 / p90 / p99" in table
    rows = [line for line in table.splitlines() if "tiny-runtime" in line]
    assert len(rows) == 2 and "eager" in rows[0] and "onnxruntime" in rows[1] and "1.00" in rows[0]
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["throughput"].get("runtime", "eager") for line in lines] == ["eager", "onnxruntime"]
    csv_text = (tmp_path / "b.csv").read_text()
    assert "runtime" in csv_text.splitlines()[0] and "onnxruntime" in csv_text


def test_cli_tensorrt_on_cpu_is_one_line():
    out = CliRunner().invoke(cli, ["bench", "-b", "tiny-runtime", "--runtime", "tensorrt", "--device", "cpu",
                                   "--no-save", "-q"])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and "runtime tensorrt needs a CUDA GPU" in lines[0]
