"""The E-RADIO latency table: stage configurations and their input shapes, the file keyed by the
environment, the fitted overhead, validation figures, and the predicted throughput of a search trial."""

from __future__ import annotations

import json
import random

import pytest
import torch

from eradio import ERadio
from eradio.config import ERadioConfig
from zoo.errors import ConfigError, ZooError
from zoo.search.latency import (Fit, LatencySettings, LatencyTable, Stage, Validation, build_stage, environment,
                                fingerprint, least_squares, predicted_throughput_record, stage_entries, table_path)
from zoo.search.space import make_space, parse_limits

RES = 64
FAST = dict(resolution=RES, batch_size=1, threads=1, warmup=0, repeats=1, steps_per_repeat=1)
# 64 px, narrow: every stage configuration times in milliseconds on a CPU.
SMALL = ERadioConfig(dim=32, in_dim=32, depths=(1, 2, 2, 1), num_heads=(1, 1, 2, 4), window_size=(4, 2),
                     mra_ratios=(2, 1), mra_resample="pool", mlp_ratio=2.0, neck_dim=64)


def tiny_space():
    return make_space("eradio", (RES,), parse_limits(["dim=32", "depth1=1", "depth2=1", "depth3=1,2", "depth4=1",
                                                     "mlp_ratio=2.0", "heads3=2", "heads4=4"]))


def test_stage_entries_follow_the_network():
    entries = dict((s.key, n) for s, n in stage_entries(SMALL, RES))
    kinds = [Stage.key.fget(s).split(":")[0] for s, _ in stage_entries(SMALL, RES)]
    assert kinds == ["stem", "c2f", "down", "c2f", "down", "mra", "mra", "down", "partition", "window", "head", "neck"]
    # stage 3: two MRA layers, each a ratio-2 (pooled) and a ratio-1 block; stage 4: one block
    assert entries["mra:dim=128:heads=2:ratio=2:resample=pool:window=4x4:mlp=2.0"] == 2
    assert entries["mra:dim=128:heads=2:ratio=1:resample=-:window=4x4:mlp=2.0"] == 2
    assert entries["window:dim=256:heads=4:window=2x2:mlp=2.0"] == 1
    no_neck = [s.kind for s, _ in stage_entries(SMALL.replace(neck_dim=None, depths=(1, 2, 0, 0)), RES)]
    assert "neck" not in no_neck and "mra" not in no_neck and "window" not in no_neck
    # stages that do not depend on a field are shared between configs that differ in it
    other = {s.key for s, _ in stage_entries(SMALL.replace(mlp_ratio=3.0), RES)}
    assert {"stem:in_dim=32:dim=32", "c2f:dim=32:depth=1:stride=4"} <= other
    assert "window:dim=256:heads=4:window=2x2:mlp=2.0" not in other


def test_stage_inputs_have_the_shapes_the_network_gives_them():
    """Each timed stage runs on exactly the tensor shape it meets inside the full model."""
    model = ERadio(SMALL).eval()
    seen = {}

    def hook(name):
        def record(module, args):
            seen[name] = tuple(args[0].shape)
        return record

    for name in ("stem", "stage1", "down1", "stage2", "down2", "down3", "norm"):
        getattr(model, name).register_forward_pre_hook(hook(name))
    model.stage3.layers[0].blocks[0].register_forward_pre_hook(hook("mra"))
    model.stage4.blocks[0].register_forward_pre_hook(hook("window"))
    model.neck.proj3.register_forward_pre_hook(hook("neck"))
    with torch.no_grad():
        model.forward_features(torch.randn(2, 3, RES, RES))
    names = ["stem", "stage1", "down1", "stage2", "down2", "mra", "mra", "down3", None, "window", "norm", "neck"]
    for (stage, _), name in zip(stage_entries(SMALL, RES), names):
        if name is None:
            continue
        module, call = build_stage(stage, RES, 2, torch.device("cpu"))
        captured = {}

        def keep(module, args):
            captured.setdefault("shape", tuple(args[0].shape))

        (module.proj3 if stage.kind == "neck" else module).register_forward_pre_hook(keep)
        with torch.no_grad():
            call()
        if stage.kind == "head":
            assert captured["shape"] == seen["norm"], stage.key
        else:
            assert captured["shape"] == seen[name], stage.key


def test_table_file_is_keyed_by_the_environment_and_reused(tmp_path):
    settings = LatencySettings(**FAST)
    table = LatencyTable.open(settings, folder=tmp_path)
    assert table.path == table_path(settings.resolved(), tmp_path)
    assert table.path.name.startswith("cpu-64px-b1-fp32-") and fingerprint(table.env) in table.path.name
    total = table.stage_sum_ms(SMALL)
    assert total > 0 and table.measured_now == len(stage_entries(SMALL, RES))
    data = json.loads(table.path.read_text())
    assert data["kind"] == "latency-table" and data["environment"] == environment(settings.resolved())
    assert set(data["entries"]) == {s.key for s, _ in stage_entries(SMALL, RES)}
    again = LatencyTable.open(settings, folder=tmp_path)
    assert again.stage_sum_ms(SMALL) == pytest.approx(total) and again.measured_now == 0  # nothing re-timed
    # another batch size is another environment: another file
    assert LatencyTable.open(LatencySettings(**{**FAST, "batch_size": 2}), folder=tmp_path).path != table.path


def test_a_table_of_another_environment_or_garbage_is_refused(tmp_path):
    settings = LatencySettings(**FAST)
    table = LatencyTable.open(settings, folder=tmp_path)
    table.measure([stage_entries(SMALL, RES)[0][0]])
    data = json.loads(table.path.read_text())
    data["environment"]["torch"] = "0.0.1"
    table.path.write_text(json.dumps(data))
    with pytest.raises(ZooError, match="another environment \\(torch: '0.0.1'"):
        LatencyTable.open(settings, folder=tmp_path)
    table.path.write_text("{not json")
    with pytest.raises(ZooError, match="unreadable"):
        LatencyTable.open(settings, folder=tmp_path)
    with pytest.raises(ConfigError, match="multiple of 32"):
        LatencySettings(resolution=70)


def test_workers_merge_their_entries(tmp_path):
    settings = LatencySettings(**FAST)
    first, second = LatencyTable.open(settings, folder=tmp_path), LatencyTable.open(settings, folder=tmp_path)
    a, b = stage_entries(SMALL, RES)[0][0], stage_entries(SMALL, RES)[1][0]
    first.measure([a])
    second.measure([b])  # saved after the first: merges, does not overwrite
    merged = json.loads(first.path.read_text())["entries"]
    assert set(merged) == {a.key, b.key}


def test_least_squares_fit():
    sums = [10.0, 20.0, 30.0, 40.0, 50.0]
    measured = [1.5 * s + 4.0 for s in sums]
    assert least_squares(sums, measured) == pytest.approx((1.5, 4.0))
    # few models: the overhead alone, as the median residual (robust to one contended timing)
    assert least_squares([10.0, 20.0, 30.0], [13.0, 23.0, 60.0]) == pytest.approx((1.0, 3.0))
    # a scale that noise made absurd falls back to the overhead
    assert least_squares(sums, [50.0, 10.0, 40.0, 20.0, 30.0])[0] == 1.0
    assert Fit(2.0, 1.0).predict(3.0) == pytest.approx(7.0)


def test_validation_figures():
    rows = [{"key": str(i), "predicted_ms": p, "measured_ms": 10.0, "deviation": (p - 10.0) / 10.0}
            for i, p in enumerate([10.5, 9.5, 12.0, 5.0])]
    check = Validation(rows)
    assert check.mape == pytest.approx((5 + 5 + 20 + 50) / 4)
    assert check.within == pytest.approx(0.5)
    assert "4 held-out models" in check.line() and "50% within +-10%" in check.line()


def test_fit_predict_and_validate_on_full_models(tmp_path):
    """End to end on this CPU: fit on three tiny models, predict two others. The machine is shared,
    so only sanity is asserted here; benchmarks/latency_table.py reports the accuracy."""
    space = tiny_space()
    rng = random.Random(3)
    configs = [space.params_to_candidate(space.random_params(rng)).config for _ in range(5)]
    table = LatencyTable.open(LatencySettings(**{**FAST, "repeats": 2, "steps_per_repeat": 2}), folder=tmp_path)
    fit = table.fit_overhead(configs[:3])
    assert len(fit.models) == 3 and fit.scale == 1.0  # three models: the overhead alone
    assert json.loads(table.path.read_text())["fit"]["overhead_ms"] == pytest.approx(fit.overhead_ms)
    check = table.validate(configs[3:])
    for row in check.rows:
        assert row["measured_ms"] > 0 and 1 / 3 < row["predicted_ms"] / row["measured_ms"] < 3
    block = predicted_throughput_record(table, configs[3])
    assert block["source"] == "predicted" and block["median"] == pytest.approx(1000.0 / table.predict_ms(configs[3]),
                                                                              rel=1e-3)
    assert block["batch_size"] == 1 and block["resolution"] == [RES, RES]
    assert block["latency_table"]["fit"]["models"] == 3
