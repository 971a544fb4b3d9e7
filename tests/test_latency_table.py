"""The E-RADIO latency table: stage configurations and their input shapes, the file keyed by the
environment, the fitted overhead, validation figures, and the predicted throughput of a search trial."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch
from zoo.search.latency import (
    TABLE_FORMAT,
    Fit,
    LatencySettings,
    LatencyTable,
    Stage,
    Validation,
    build_stage,
    environment,
    fingerprint,
    fit_candidates,
    fit_kinds,
    predicted_throughput_record,
    profile_model,
    stage_entries,
    table_path,
)
from zoo.search.space import make_space, parse_limits

from eradio import ERadio
from eradio.config import ERadioConfig
from zoo.errors import ConfigError, ZooError

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
    # a table of an older format: one line saying what to do (it has another file name, so only a path given
    # by hand meets it)
    assert environment(settings.resolved())["format"] == TABLE_FORMAT
    data["environment"]["torch"] = torch.__version__
    table.path.write_text(json.dumps({**data, "format": 1}))
    with pytest.raises(ZooError, match="has format 1, this zoo reads format 2; delete it"):
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


def _model(table, factors, glue, scale=1.0):
    """A profiled fit model whose stages run ``factors[kind]`` times their table time in context."""
    context = {kind: factors[kind] * ms * scale for kind, ms in table.items()}
    return {"key": "m", "kinds": table, "context": context, "measured_ms": sum(context.values()) + glue}


def test_fit_kinds_recovers_known_per_kind_costs():
    factors = {"stem": 2.0, "c2f": 1.1, "down": 1.0, "mra": 1.3, "window": 0.9, "head": 3.0}
    rng = random.Random(0)
    models = [_model({k: rng.uniform(0.1, 50.0) for k in factors}, factors, glue=0.4) for _ in range(4)]
    # one model measured while the machine was busy (everything 1.8x slower) moves no median
    models.append(_model({k: rng.uniform(0.1, 50.0) for k in factors}, factors, glue=0.4, scale=1.8))
    fit = fit_kinds(models)
    assert fit.kinds == pytest.approx(factors)
    assert fit.overhead_ms == pytest.approx(0.4)
    # end-to-end times 5 % over the stages in context (long calls cut by the scheduler) plus 0.4 ms: the
    # coefficients carry the 5 %, the overhead stays the constant
    stretched = [{**m, "measured_ms": 1.05 * sum(m["context"].values()) + 0.4} for m in models[:4]]
    fit_stretched = fit_kinds(stretched)
    assert fit_stretched.kinds == pytest.approx({k: 1.05 * v for k, v in factors.items()})
    assert fit_stretched.overhead_ms == pytest.approx(0.4)
    # a network is each kind's table time times its coefficient, plus the overhead
    kinds = {"stem": 1.0, "c2f": 10.0, "down": 5.0, "mra": 20.0, "window": 10.0, "head": 0.1}
    assert fit.predict(kinds) == pytest.approx(2.0 + 11.0 + 5.0 + 26.0 + 9.0 + 0.3 + 0.4)
    # a kind no fit model ran (no neck) gets the pooled coefficient; a plain stage sum is scaled alone
    assert "neck" not in fit.kinds and fit.coefficient("neck") == pytest.approx(fit.scale)
    assert 0.9 < fit.scale < 2.0
    assert Fit(2.0, 1.0).predict(3.0) == pytest.approx(7.0)
    # a negative overhead never drives a tiny network to zero or below
    assert Fit(1.0, -50.0, kinds={"stem": 1.0}).predict({"stem": 2.0}) == pytest.approx(0.2)
    assert fit_kinds([]).predict({"stem": 2.0}) == pytest.approx(2.0)
    # the fit survives its file
    assert Fit.from_dict(json.loads(json.dumps(fit.__dict__))) == fit


class _Spin(torch.nn.Module):
    """Burns a known amount of CPU time per call."""

    def __init__(self, ms):
        super().__init__()
        self.ms = ms

    def forward(self, x, *rest):
        _spin(self.ms)
        return x


def _spin(ms):
    start = time.process_time()
    while time.process_time() - start < ms / 1000.0:
        pass


class _Network(torch.nn.Module):
    """Stands for an ERadio: the stage modules by name, plus 1 ms of glue between them."""

    def __init__(self):
        super().__init__()
        for name, ms in (("stem", 1.0), ("stage1", 2.0), ("down1", 1.0), ("stage2", 3.0), ("down2", 1.0),
                         ("stage3", 4.0), ("down3", 1.0), ("stage4", 5.0), ("norm", 0.5)):
            setattr(self, name, _Spin(ms))
        self.neck = None

    def forward(self, x):
        _spin(1.0)
        for name in ("stem", "stage1", "down1", "stage2", "down2", "stage3", "down3", "stage4", "norm"):
            x = getattr(self, name)(x)
        return x


def test_profile_model_times_each_kind_in_context():
    """Stage modules are charged to their kind (both C2f stages to c2f, the three down-samplings to down)
    and the glue between them shows only in the end-to-end time."""
    settings = LatencySettings(**{**FAST, "clock": "cpu", "repeats": 2, "steps_per_repeat": 2})
    total, kinds = profile_model(_Network(), torch.zeros(1), settings, torch.device("cpu"))
    expected = {"stem": 1.0, "c2f": 5.0, "down": 3.0, "mra": 4.0, "window": 5.0, "head": 0.5}
    assert set(kinds) == set(expected)
    for kind, ms in expected.items():
        assert ms <= kinds[kind] < ms + 1.0, kind  # a busy loop is never shorter; a shared CPU may add a little
    assert 19.5 <= total < 19.5 + 3.0 and total - sum(kinds.values()) >= 0.5


def test_fit_candidates_span_the_widths_and_skip_held_out():
    space = make_space("eradio", (RES,))
    held = [space.params_to_candidate(space.random_params(random.Random(5))) for _ in range(3)]
    chosen = fit_candidates(space, 5, random.Random(7), exclude=[c.key() for c in held])
    dims = [c.config.dim for c in chosen]
    assert len(chosen) == 5 and dims == sorted(dims)
    assert dims[0] <= 64 and dims[-1] >= 224  # narrowest and widest of a 100-candidate pool
    assert not {c.key() for c in chosen} & {c.key() for c in held}
    held_keys = {c.key() for c in fit_candidates(space, 5, random.Random(7))}
    assert {c.key() for c in fit_candidates(space, 5, random.Random(7), exclude=held_keys)}.isdisjoint(held_keys)


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
    assert len(fit.models) == 3 and set(fit.kinds) == {k for m in fit.models for k in m["kinds"]} >= {
        "stem", "c2f", "down", "mra", "window", "head"}
    for model in fit.models:  # every stage kind was timed inside the network too
        assert set(model["context"]) == set(model["kinds"]) and all(v > 0 for v in model["context"].values())
        assert 1 / 3 < sum(model["context"].values()) / model["measured_ms"] < 3
    saved = json.loads(table.path.read_text())["fit"]
    assert saved["overhead_ms"] == pytest.approx(fit.overhead_ms) and saved["kinds"] == pytest.approx(fit.kinds)
    assert LatencyTable.open(table.settings, path=table.path).fit == fit
    check = table.validate(configs[3:])
    for row in check.rows:
        assert row["measured_ms"] > 0 and 1 / 3 < row["predicted_ms"] / row["measured_ms"] < 3
    block = predicted_throughput_record(table, configs[3])
    assert block["source"] == "predicted" and block["median"] == pytest.approx(1000.0 / table.predict_ms(configs[3]),
                                                                              rel=1e-3)
    assert block["batch_size"] == 1 and block["resolution"] == [RES, RES]
    assert block["latency_table"]["fit"]["models"] == 3 and block["latency_table"]["fit"]["kinds"] == fit.kinds
