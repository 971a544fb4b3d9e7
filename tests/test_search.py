"""zoo search: spaces (E-RADIO, ViT-CPE, a plug-in), the objective and its one record, parallel workers,
constraints, enqueued variants, export, the CLI group, and zoo pareto on a search folder."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from eradio.config import ERADIO_VARIANTS
from zoo.backbones.files import read_backbone_file
from zoo.cli import cli
from zoo.errors import ConfigError, ResolutionError, UnknownNameError
from zoo.registry import create_backbone
from zoo.runs import KIND_SEARCH_TRIAL, read_record
from zoo.search import study as runner
from zoo.search.objective import ObjectiveSettings, SearchObjective
from zoo.search.space import (CATEGORICAL, Candidate, DeclaredSpace, Param, SearchSpace, list_spaces, make_space,
                              parse_limits, register_space)
from zoo.search.spaces.eradio import HEADS3_CHOICES, HEADS4_CHOICES, ERadioSpace, window_choices
from zoo.search.spaces.vit_cpe import VitCpeSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A tiny corner of the E-RADIO space: 64 px, d=32, one block per stage (benchmarks in ~0.1 s on a CPU).
TINY = ["dim=32", "depth1=1", "depth2=1", "depth3=1", "depth4=1"]
TINY_ARGS = [a for item in TINY for a in ("--limit", item)]
BENCH_ARGS = ["--bench-batch", "1", "--bench-repeats", "1", "--bench-steps", "1", "--bench-warmup", "0"]
TINY_BENCH = dict(batch_size=1, warmup=0, repeats=1, steps_per_repeat=1, threads=1)
REPO = Path(__file__).resolve().parents[1]


def tiny_space(extra: list[str] = ()) -> ERadioSpace:
    return ERadioSpace((64,), limits=parse_limits(TINY + list(extra)))


def tiny_settings(tmp_path: Path, **kwargs) -> ObjectiveSettings:
    return ObjectiveSettings(out_dir=tmp_path / "runs", device="cpu", dry_run=kwargs.pop("dry_run", True),
                             bench=TINY_BENCH, **kwargs)


def memory():
    """An in-memory storage: the objective's tests need no database."""
    return optuna.storages.InMemoryStorage()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'search.db'}"


def completed(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


# --------------------------------------------------------------------------- the E-RADIO space


def test_heads_divide_every_width():
    space = ERadioSpace()
    for dim in space.param("dim").values():
        for heads in HEADS3_CHOICES:
            assert (4 * dim) % heads == 0
        for heads in HEADS4_CHOICES:
            assert (8 * dim) % heads == 0


@pytest.mark.parametrize("resolution", [32, 64, 96, 128, 224, 256, 320, 384, 448, 512])
def test_windows_tile_the_stage_maps(resolution):
    stage3, stage4 = window_choices(resolution)
    cells = resolution // 32
    assert stage3 and stage4
    for window in stage4:
        assert cells % window == 0
    for window in stage3:
        assert (2 * cells) % window == 0 and (cells % window == 0 or window >= cells)


def test_bad_search_resolution_is_refused():
    with pytest.raises(ResolutionError):
        ERadioSpace((100,))
    with pytest.raises(ResolutionError):
        ERadioSpace((544,))  # 17 cells: no usable window


def test_random_samples_all_build_on_meta():
    space = ERadioSpace((64, 128, 224))
    rng = random.Random(0)
    for index in range(150):
        candidate = space.params_to_candidate(space.random_params(rng))
        assert candidate.config.window_size[0] in window_choices(candidate.resolution)[0]
        if index % 15:
            continue  # every config validated; one in fifteen built and run (meta tensors: shapes only)
        backbone = candidate.build(device="meta").eval()
        out = backbone(torch.zeros(1, 3, candidate.resolution, candidate.resolution, device="meta"))
        side = candidate.resolution // backbone.stride
        assert tuple(out.features.shape) == (1, backbone.feature_dim, side, side)
        assert tuple(out.summary.shape) == (1, backbone.summary_dim)
        w3, w4 = candidate.config.window_size
        assert backbone.window_size == ((w3, w3), (w4, w4))  # the searched windows, not the automatic ones


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random"])
def test_optuna_samplers_only_propose_valid_configs(sampler):
    space = ERadioSpace((224, 256))
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=runner.make_sampler(sampler, "multi", 12, seed=0))
    told = {}
    for index in range(12):
        trial = study.ask()
        candidate = space.sample(trial)
        told[trial.number] = candidate
        study.tell(trial, (float(candidate.config.dim), float(index)))
    for trial in completed(study):  # each stored trial's parameters rebuild the candidate it was told about
        assert space.params_to_candidate(trial.params) == told[trial.number]
        assert trial.values == [float(told[trial.number].config.dim), float(trial.number)]
    assert sorted(told) == list(range(12))


def test_paper_variants_are_points_of_the_space():
    space = ERadioSpace()
    params = space.variant_params()
    assert set(params) == {f"eradio-{name}" for name in ERADIO_VARIANTS}
    for name, values in params.items():
        assert space.params_to_candidate(values).config == ERADIO_VARIANTS[name.removeprefix("eradio-")]
    assert space.variant_params(["b"]) == {"eradio-b": params["eradio-b"]}  # the family prefix is optional
    with pytest.raises(UnknownNameError, match="eradio-b"):
        space.variant_params(["eradio-bb"])


def test_variants_at_a_searched_resolution():
    space = ERadioSpace((224, 256))
    values = space.variant_params(["b"], resolution=256)["eradio-b"]
    assert values["resolution"] == 256 and values["window3_256"] == 8
    candidate = space.params_to_candidate(values)
    assert candidate.resolution == 256
    assert candidate.config == ERADIO_VARIANTS["b"].replace(window_size=[8, 8])


def test_configs_outside_the_space_are_named():
    space = ERadioSpace()
    with pytest.raises(ConfigError, match="heads3"):
        space.config_to_params(ERADIO_VARIANTS["b"].replace(num_heads=[2, 4, 32, 16]))
    with pytest.raises(ConfigError, match="num_heads"):  # stage 1-2 heads off the space's rule
        space.config_to_params(ERADIO_VARIANTS["b"].replace(num_heads=[1, 1, 8, 16]))
    with pytest.raises(ConfigError, match="cpb_hidden"):
        space.config_to_params(ERADIO_VARIANTS["b"].replace(cpb_hidden=64))


def test_limits():
    space = ERadioSpace((64,), limits=parse_limits(["dim=32,48", "mra_pattern=2,1;1", "mlp_ratio=2"]))
    assert space.param("dim").values() == [32, 48]
    assert space.param("mra_pattern").values() == ["2,1", "1"]
    assert space.param("mlp_ratio").values() == [2.0]
    with pytest.raises(UnknownNameError, match="depth3"):
        ERadioSpace(limits=parse_limits(["depht3=1"]))
    with pytest.raises(ConfigError, match="dim"):
        ERadioSpace(limits=parse_limits(["dim=33"]))
    with pytest.raises(ConfigError):
        parse_limits(["dim"])


def test_eradio_surrogate_follows_its_documented_trends():
    """The dry-run stand-in: lower with more parameters and a neck, higher with the pooling resampler."""
    space = ERadioSpace((64,))
    base = space.params_to_candidate({**space.random_params(random.Random(0)), "neck": 0, "mra_resample": "conv"})
    assert space.surrogate_fd_loss(base, 50.0) < space.surrogate_fd_loss(base, 5.0)
    with_neck = space.params_to_candidate({**base_params(space, base), "neck": 4})
    assert space.surrogate_fd_loss(with_neck, 5.0) == pytest.approx(space.surrogate_fd_loss(base, 5.0) - 0.05)
    pooled = space.params_to_candidate({**base_params(space, base), "mra_resample": "pool"})
    assert space.surrogate_fd_loss(pooled, 5.0) == pytest.approx(space.surrogate_fd_loss(base, 5.0) + 0.02)


def base_params(space: ERadioSpace, candidate: Candidate) -> dict:
    return space.config_to_params(candidate.config, candidate.resolution)


# --------------------------------------------------------------------------- ViT-CPE and plug-in spaces


def test_vit_cpe_space_samples_build_and_variants_round_trip():
    space = VitCpeSpace((64,))
    assert isinstance(space, SearchSpace) and space.family == "vit-cpe"
    assert space.param("patch_size").values() == [8, 16, 32]  # 14 does not tile 64
    rng = random.Random(0)
    for _ in range(4):
        candidate = space.params_to_candidate(space.random_params(rng))
        backbone = candidate.build(device="meta").eval()
        out = backbone(torch.zeros(1, 3, 64, 64, device="meta"))
        side = 64 // candidate.config.patch_size
        assert tuple(out.features.shape) == (1, candidate.config.embed_dim, side, side)
    params = space.variant_params()
    assert set(params) == {"vit-t16-cpe", "vit-s16-cpe", "vit-b16-cpe"}
    small = space.params_to_candidate(params["vit-s16-cpe"]).build(device="meta")
    with torch.device("meta"):
        reference = create_backbone("vit-s16-cpe", resolution=64)
    assert [p.shape for p in small.parameters()] == [p.shape for p in reference.parameters()]
    with pytest.raises(ResolutionError):
        VitCpeSpace((100,))


def test_space_registry_names_the_closest():
    assert {"eradio", "vit-cpe"} <= {entry.name for entry in list_spaces()}
    with pytest.raises(UnknownNameError, match="vit-cpe"):
        make_space("vit_cpe")
    result = invoke(["search", "space", "--space", "eradoi"])
    assert result.exit_code == 2 and "closest: eradio" in result.output and result.output.count("\n") == 1


class TinyExampleSpace(DeclaredSpace):
    """The README's example: a new space in one file (here, in the test)."""

    name = "tiny-example"
    family = "vit-cpe"

    def declare(self):
        return [Param("width", CATEGORICAL, "token width", choices=(96, 192)),
                Param("depth", CATEGORICAL, "blocks", choices=(1,))]

    def params_to_candidate(self, values):
        from zoo.backbones.vit_cpe import VitCpeConfig

        self.check_values(values)
        config = VitCpeConfig(embed_dim=values["width"], depth=values["depth"], num_heads=3, patch_size=16)
        return Candidate(self.family, config, self.resolutions[0])

    def config_to_params(self, config, resolution=None):
        return {"width": config.embed_dim, "depth": config.depth}

    def surrogate_fd_loss(self, candidate, params_m):
        return 1.0 / (1.0 + params_m)


def test_a_registered_space_runs_from_the_cli(tmp_path):
    register_space("tiny-example", TinyExampleSpace, "two widths, two depths", default_resolution=64)
    out = tmp_path / "runs"
    result = invoke(["search", "run", "--space", "tiny-example", "--storage", sqlite_url(tmp_path), "--n-trials", "2",
                     "--dry-run", "--device", "cpu", *BENCH_ARGS, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny-example-search", storage=sqlite_url(tmp_path))
    widths_depths = sorted((t.params["width"], t.params["depth"]) for t in completed(study))
    assert widths_depths == [(96, 1), (192, 1)]  # the whole space, each once
    for trial in completed(study):
        record = read_record(trial.user_attrs["record"]["run_dir"])
        assert record.search.space == "tiny-example" and record.family == "vit-cpe"
        assert record.backbone_config["embed_dim"] == trial.params["width"]
        assert trial.values[1] == pytest.approx(1.0 / (1.0 + record.params_m))


# --------------------------------------------------------------------------- the objective and its record


def test_dry_run_trial_writes_one_record(tmp_path):
    space = tiny_space(["neck=0,8"])
    study = runner.open_study(memory(), "s", space)
    report = runner.run_worker(study, SearchObjective(space, tiny_settings(tmp_path), study_name="s"), 2)
    assert report.complete == 2
    losses = set()
    for trial in completed(study):
        run_dir = Path(trial.user_attrs["record"]["run_dir"])
        assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]  # one record, no trial.json
        record = read_record(run_dir)
        assert record.kind == KIND_SEARCH_TRIAL and record.status == "complete" and record.family == "eradio"
        assert record.search.study_name == "s" and record.search.trial_number == trial.number
        assert record.search.params == trial.params and record.search.space == "eradio"
        assert record.search.feasible is True and record.search.trial_seconds > 0
        assert trial.values == [record.throughput["median"], record.fd_loss]
        assert record.params_m > 0 and record.gmacs > 0 and record.resolution == [64, 64]
        assert record.backbone_config == space.params_to_candidate(trial.params).config.to_dict()
        assert record.extra["fd_loss_source"] == "surrogate" and "surrogate" in record.note
        assert trial.user_attrs["record"] == json.loads(json.dumps(record.to_dict()))
        losses.add(record.fd_loss)
    assert len(losses) == 2  # two different candidates, two different surrogate values


def test_duplicates_are_skipped_and_exhaustion_stops(tmp_path):
    # 2 x 2 = 4 candidates; ask for 6: four run, the repeats are skipped, then the worker stops.
    space = tiny_space(["in_dim=32", "mra_pattern=1", "mra_resample=conv", "heads3=2,4", "heads4=4",
                        "mlp_ratio=2", "neck=0,4"])
    assert space.size() == 4
    study = runner.open_study(memory(), "s", space, sampler=optuna.samplers.RandomSampler(seed=0))
    report = runner.run_worker(study, SearchObjective(space, tiny_settings(tmp_path), study_name="s"), 6,
                               max_skips_in_row=8)
    assert "duplicates" in report.stopped_because
    keys = [t.user_attrs["key"] for t in completed(study)]
    assert len(keys) == len(set(keys)) == 4
    skipped = [t for t in study.get_trials() if runner.is_skipped(t)]
    assert skipped and all(t.state == TrialState.PRUNED and "duplicate" in t.user_attrs["skipped"] for t in skipped)


def _fake_distill_module(losses, calls):
    """A stand-in for zoo.distill: writes the run's record like the real one, reports evaluations."""
    from zoo.runs import RunRecord, write_record

    def distill(backbone, recipe, out_dir, run_name, resume, device, progress, teachers, on_eval):
        calls.append(run_name)
        loss = losses(len(calls))
        run_dir = Path(out_dir) / run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoint.pt").write_bytes(b"0" * 1000)
        if on_eval is not None:
            for step in (10, 20, 30):
                on_eval(step, loss)
        record = RunRecord(run_id=run_name, backbone=backbone.name, fd_loss=loss, steps=30, recipe=recipe.name)
        write_record(run_dir, record)
        return record.to_dict()

    return types.SimpleNamespace(distill=distill)


def test_single_objective_prunes_on_the_fd_loss_curve(tmp_path, monkeypatch):
    calls = []
    # later runs are worse from the first evaluation on
    monkeypatch.setitem(sys.modules, "zoo.distill", _fake_distill_module(lambda n: 0.5 if n <= 3 else 5.0, calls))
    space = tiny_space()
    settings = tiny_settings(tmp_path, objective="fd_loss", dry_run=False)
    study = runner.open_study(memory(), "s", space, "fd_loss",
                              optuna.samplers.RandomSampler(seed=1), runner.make_pruner("fd_loss"))
    report = runner.run_worker(study, SearchObjective(space, settings, study_name="s"), 4)
    assert report.complete == 3 and report.pruned == 1
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned[0].user_attrs["pruned_at"] == {"step": 10, "fd_loss": 5.0}
    assert study.best_value == 0.5
    record = study.best_trial.user_attrs["record"]
    assert record["recipe"] == "search-proxy" and record["fd_loss_source"] == "proxy distillation"
    assert record["kind"] == KIND_SEARCH_TRIAL and record["search"]["trial_number"] == study.best_trial.number
    assert all(name.startswith("s-") for name in calls) and len(set(calls)) == len(calls)
    assert not list((tmp_path / "runs").glob("*/checkpoint.pt"))  # every trial's checkpoint deleted, pruned too


def test_budget_counts_in_flight_trials_and_skips_surplus():
    space = tiny_space()
    study = optuna.create_study(directions=["maximize", "minimize"])
    check = runner.make_trial_check(study, n_trials=2)
    first, second, third = study.ask(), study.ask(), study.ask()  # three workers asking at once
    candidates = [space.params_to_candidate({**space.random_params(random.Random(i)), "heads3": h})
                  for i, h in enumerate((2, 4, 8))]
    for trial, candidate in zip((first, second, third), candidates):
        trial.set_user_attr("key", candidate.key())
    assert check(first, candidates[0]) is None and check(second, candidates[1]) is None
    assert check(third, candidates[2]).startswith("surplus")  # two in flight before it take the budget
    assert check(second, candidates[0]) == f"duplicate of trial {first.number} (running)"
    assert check(first, candidates[1]) is None  # a later in-flight twin skips itself, not the earlier one


def test_constraint_values_and_bench_defaults():
    from zoo.bench import BenchSettings
    from zoo.search.objective import constraint_values

    settings = ObjectiveSettings(max_params_m=5.0, min_throughput=100.0)
    assert constraint_values(settings, params_m=6.0, throughput=150.0) == {"max_params_m": 1.0,
                                                                            "min_throughput": -50.0}
    assert constraint_values(ObjectiveSettings(), 6.0, 1.0) == {}
    with pytest.raises(ConfigError):
        ObjectiveSettings(max_params_m=0)
    # One source for the bench defaults: zoo.bench's, unless the search changes one.
    measured = ObjectiveSettings(device="cpu", bench={"repeats": 2, "batch_size": None}).bench_settings(64)
    defaults = BenchSettings()
    assert (measured.repeats, measured.warmup, measured.steps_per_repeat) == (2, defaults.warmup,
                                                                              defaults.steps_per_repeat)
    assert measured.resolution == (64, 64) and measured.flops
    with pytest.raises(ConfigError, match="compile"):
        ObjectiveSettings(bench={"compile": True})


# --------------------------------------------------------------------------- variants first


def test_enqueue_variants_are_the_first_trials(tmp_path):
    out = tmp_path / "runs"
    result = invoke(["search", "run", "--space", "vit-cpe", "--resolution", "64", "--storage", sqlite_url(tmp_path),
                     "--n-trials", "2", "--dry-run", "--device", "cpu", *BENCH_ARGS, "--out", str(out),
                     "--enqueue-variants", "vit-t16-cpe,s16"])
    assert result.exit_code == 0, result.output
    assert "queued variants: vit-t16-cpe, vit-s16-cpe" in result.output
    study = optuna.load_study(study_name="vit-cpe-search", storage=sqlite_url(tmp_path))
    trials = sorted(completed(study), key=lambda t: t.number)
    assert len(trials) == 2
    expected = VitCpeSpace((64,)).variant_params(["vit-t16-cpe", "vit-s16-cpe"])
    for trial, name in zip(trials, ("vit-t16-cpe", "vit-s16-cpe")):
        assert trial.user_attrs["variant"] == name and trial.params == expected[name]
        record = read_record(trial.user_attrs["record"]["run_dir"])
        with torch.device("meta"):
            reference = create_backbone(name, resolution=64)
        assert record.params_m == pytest.approx(sum(p.numel() for p in reference.parameters()) / 1e6, rel=1e-3)
    again = invoke(["search", "run", "--space", "vit-cpe", "--resolution", "64", "--storage", sqlite_url(tmp_path),
                    "--n-trials", "2", "--dry-run", "--device", "cpu", *BENCH_ARGS, "--out", str(out),
                    "--enqueue-variants", "vit-t16-cpe", "--quiet"])
    assert again.exit_code == 0, again.output
    assert len(study.get_trials()) == 2  # already run: not queued again, and the budget is taken


def test_enqueue_eradio_variants_queue_the_paper_configs():
    space = ERadioSpace((128,))
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert runner.enqueue_variants(study, space, ["xt", "eradio-b"]) == ["eradio-xt", "eradio-b"]
    for name in ("xt", "b"):
        trial = study.ask()
        assert trial.user_attrs["variant"] == f"eradio-{name}"
        candidate = space.sample(trial)
        assert candidate.config == ERADIO_VARIANTS[name].replace(window_size=[4, 4])  # picked for 128 px
        study.tell(trial, (1.0, 1.0))
    with pytest.raises(UnknownNameError, match="eradio-xt"):
        runner.enqueue_variants(study, space, ["xtt"])


# --------------------------------------------------------------------------- workers


def _worker_command(tmp_path: Path, n_trials: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "zoo.cli", "search", "run", "--storage", sqlite_url(tmp_path), "--study-name",
            "par", "--n-trials", str(n_trials), "--dry-run", "--resolution", "64", *TINY_ARGS, *BENCH_ARGS,
            "--device", "cpu", "--sampler", "tpe", "--seed", str(seed), "--out", str(tmp_path / "runs"), "--quiet"]


def test_two_workers_share_one_sqlite_budget(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(_worker_command(tmp_path, 4, seed), cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    outputs = [w.communicate(timeout=240) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="par", storage=sqlite_url(tmp_path))
    counts = runner.trial_counts(study)
    assert counts.counted == 4 and counts.complete == 4 and counts.running == 0 and counts.failed == 0
    keys = [t.user_attrs["key"] for t in completed(study)]
    assert len(set(keys)) == 4
    ran = [int(re.search(r"ran (\d+) complete", " ".join(err.split())).group(1)) for _, err in outputs]
    assert sum(ran) == 4  # each trial ran in exactly one worker
    numbers = sorted(read_record(p.parent).search.trial_number for p in (tmp_path / "runs").glob("*/summary.json"))
    assert numbers == sorted(t.number for t in completed(study))  # one record per complete trial


SLOW_WORKER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {repo!r})
    from zoo.search import study as runner
    from zoo.search.objective import ObjectiveSettings, SearchObjective
    from zoo.search.space import parse_limits
    from zoo.search.spaces.eradio import ERadioSpace

    class Slow(SearchObjective):
        def measure(self, candidate, name):
            time.sleep(120)  # killed in here

    space = ERadioSpace((64,), limits=parse_limits({limits!r}))
    storage = runner.open_storage({url!r}, heartbeat_interval=1, grace_period=2)
    study = runner.open_study(storage, "resume", space)
    settings = ObjectiveSettings(out_dir={out!r}, device="cpu", dry_run=True)
    runner.run_worker(study, Slow(space, settings, study_name="resume"), 2)
''')


def start_slow_worker(tmp_path: Path, url: str) -> subprocess.Popen:
    """A worker that is inside a trial (RUNNING, heartbeat or lease renewed) when this returns."""
    script = tmp_path / "slow_worker.py"
    script.write_text(SLOW_WORKER.format(repo=str(REPO), limits=TINY, url=url, out=str(tmp_path / "runs")))
    worker = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 90
    running = []
    while time.monotonic() < deadline and not running:
        time.sleep(0.5)
        if worker.poll() is not None:
            raise AssertionError(worker.stderr.read())
        try:
            running = optuna.load_study(study_name="resume", storage=runner.open_storage(url, heartbeat_interval=None)
                                        ).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            continue  # the study is not created yet
    assert running, "the worker never started a trial"
    time.sleep(1.5)  # at least one heartbeat written
    return worker


def finish_after_kill(tmp_path: Path, url: str) -> tuple:
    space = tiny_space()
    storage = runner.open_storage(url, heartbeat_interval=1, grace_period=2)
    study = runner.open_study(storage, "resume", space)
    report = runner.run_worker(study, SearchObjective(space, tiny_settings(tmp_path), study_name="resume"), 2)
    return study, report


def test_killed_worker_trial_fails_and_the_study_resumes(tmp_path):
    url = sqlite_url(tmp_path)
    worker = start_slow_worker(tmp_path, url)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    study, report = finish_after_kill(tmp_path, url)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL  # the killed worker's trial, failed by its stale heartbeat
    done = completed(study)
    assert len(done) == 2 and report.complete == 2 and runner.trial_counts(study).running == 0
    retried = [t for t in done if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params  # re-run, not lost


def test_worker_with_another_space_is_refused(tmp_path):
    storage = runner.open_storage(sqlite_url(tmp_path))
    runner.open_study(storage, "s", tiny_space())
    with pytest.raises(ConfigError, match="another search space"):
        runner.open_study(storage, "s", ERadioSpace((64,)))
    with pytest.raises(ConfigError, match="another search space.*eradio"):
        runner.open_study(storage, "s", VitCpeSpace((64,)))
    with pytest.raises(ConfigError, match="another objective"):
        runner.open_study(storage, "s", tiny_space(), "fd_loss")


def test_journal_file_storage(tmp_path):
    log = tmp_path / "j" / "search.log"
    result = invoke(["search", "run", "--storage", str(log), "--study-name", "j", "--n-trials", "2", "--dry-run",
                     "--resolution", "64", *TINY_ARGS, *BENCH_ARGS, "--device", "cpu", "--out", str(tmp_path / "runs"),
                     "--quiet"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="j", storage=runner.open_storage(f"journal://{log}"))
    trials = completed(study)
    assert len(trials) == 2
    for trial in trials:
        record = read_record(trial.user_attrs["record"]["run_dir"])
        assert record.search.trial_number == trial.number and trial.values == [record.throughput["median"],
                                                                               record.fd_loss]
        assert trial.system_attrs.get(runner.LEASE_ATTR) is not None  # the lease was renewed while it ran


# --------------------------------------------------------------------------- constraints, best, export


def test_max_params_constraint_best_and_export(tmp_path):
    space = tiny_space(["dim=32,64"])
    settings = tiny_settings(tmp_path, max_params_m=2.0)
    study = runner.open_study(runner.open_storage(sqlite_url(tmp_path)), "c", space)
    small = {**space.random_params(random.Random(0)), "dim": 32, "neck": 0, "mlp_ratio": 2.0}
    big = {**small, "dim": 64, "neck": 8, "mlp_ratio": 4.0}
    study.enqueue_trial(small)
    study.enqueue_trial(big)
    runner.run_worker(study, SearchObjective(space, settings, study_name="c"), 2)
    small_trial, big_trial = completed(study)
    small_record, big_record = (read_record(t.user_attrs["record"]["run_dir"]) for t in (small_trial, big_trial))
    assert small_record.params_m <= 2.0 < big_record.params_m
    assert big_trial.constraints["max_params_m"] == pytest.approx(big_record.params_m - 2.0)
    assert big_record.search.constraints == big_trial.constraints
    assert big_record.search.feasible is False and small_record.search.feasible is True
    assert big_trial.values[1] < small_trial.values[1]  # better FD loss, but infeasible
    assert [t.number for t in runner.pareto_trials(study)] == [small_trial.number]
    assert [t.number for t in study.best_trials] == [small_trial.number]  # Optuna agrees

    where = ["--storage", sqlite_url(tmp_path), "--study-name", "c"]
    best = invoke(["search", "best", *where, "--json"])
    assert best.exit_code == 0, best.output
    assert [r["search"]["trial_number"] for r in json.loads(best.output)] == [small_trial.number]
    table = invoke(["search", "best", "--storage", sqlite_url(tmp_path)])  # the storage's only study
    assert table.exit_code == 0 and "Pareto-optimal configurations of study 'c'" in table.output

    target = tmp_path / "picked.yaml"
    exported = invoke(["search", "export", str(target), *where])
    assert exported.exit_code == 0, exported.output
    backbone_file = read_backbone_file(target)
    assert backbone_file.name == "picked" and backbone_file.family == "eradio" and backbone_file.resolution == 64
    assert backbone_file.config == small_record.backbone_config
    assert backbone_file.source["trial"] == small_trial.number
    backbone = create_backbone(str(target))
    assert backbone.name == "picked"  # the backbone is named by the file's stem
    w3, w4 = backbone_file.config["window_size"]
    assert backbone.window_size == ((w3, w3), (w4, w4))  # the searched windows at the searched resolution
    out = backbone.eval()(torch.zeros(1, 3, 64, 64))
    assert out.features.shape[1] == backbone.feature_dim
    reference = space.params_to_candidate(small_trial.params).build()
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in reference.parameters())
    assert create_backbone(str(target), resolution=128).window_size != backbone.window_size  # re-picked for 128

    bad = tmp_path / "bad.yaml"
    bad.write_text("family: resnet\nresolution: 64\nconfig: {}\n")
    with pytest.raises(ConfigError, match="resnet.*not supported"):
        create_backbone(str(bad))
    legacy = tmp_path / "legacy.yaml"  # files written before backbone files had families ("base:")
    legacy.write_text(target.read_text().replace("family: eradio", "base: eradio"))
    assert create_backbone(str(legacy)).name == "legacy"


def test_distill_a_backbone_file(tmp_path):
    """``zoo distill --backbone x.yaml``: the run is named by the file's stem (zoo distill is helper C1's)."""
    target = tmp_path / "tiny-vit.yaml"
    target.write_text("family: vit-cpe\nresolution: 64\n"
                      "config: {embed_dim: 96, depth: 1, num_heads: 3, mlp_ratio: 2.0, patch_size: 16}\n")
    out = tmp_path / "runs"
    result = invoke(["distill", "--backbone", str(target), "--recipe", "smoke", "--set", "train.steps=2",
                     "--set", "train.batch_size=2", "--set", "eval.every=0", "--set", "bench.enabled=false",
                     "--device", "cpu", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    (run_dir,) = [p.parent for p in out.glob("*/summary.json")]
    assert run_dir.name.startswith("tiny-vit-smoke-")
    record = read_record(run_dir)
    assert record.backbone == "tiny-vit" and record.family == "vit-cpe" and record.steps == 2


def test_export_of_a_vit_cpe_trial_builds_the_same_model(tmp_path):
    result = invoke(["search", "run", "--space", "vit-cpe", "--resolution", "64", "--storage", sqlite_url(tmp_path),
                     "--n-trials", "1", "--dry-run", "--device", "cpu", *BENCH_ARGS, "--out", str(tmp_path / "runs"),
                     "--limit", "width=96", "--limit", "depth=1,2", "--quiet"])
    assert result.exit_code == 0, result.output
    exported = invoke(["search", "export", str(tmp_path / "v.yaml"), "--storage", sqlite_url(tmp_path)])
    assert exported.exit_code == 0, exported.output
    (trial,) = completed(optuna.load_study(study_name="vit-cpe-search", storage=sqlite_url(tmp_path)))
    backbone = create_backbone(str(tmp_path / "v.yaml"))
    assert backbone.config.embed_dim == 96 and backbone.config.depth == trial.params["depth"]
    assert sum(p.numel() for p in backbone.parameters()) / 1e6 == pytest.approx(
        trial.user_attrs["record"]["params_m"], rel=1e-3)


# --------------------------------------------------------------------------- the command group


def test_search_without_subcommand_prints_the_group_help():
    result = invoke(["search"])
    for command in ("run", "space", "best", "export"):
        assert re.search(rf"^\s+{command}\s", result.output, re.M), result.output
    assert "zoo search run --n-trials 40" in result.output


def test_cli_errors_are_one_line(tmp_path):
    cases = [
        ["search", "space", "--resolution", "100"],
        ["search", "space", "--limit", "dim=7"],
        ["search", "space", "--resolution", "224x256"],
        ["search", "space", "--resolution", "0"],
        ["search", "run", "--storage", "nowhere", "--dry-run"],
        ["search", "run", "--dry-run", "--teacher", "clip:tiny", "--storage", sqlite_url(tmp_path)],
        ["search", "run", "--dry-run", "--device", "gpu0", "--storage", sqlite_url(tmp_path)],
        ["search", "best", "--storage", sqlite_url(tmp_path)],
        ["search", "export", "x", "--storage", str(tmp_path / "none.log")],
    ]
    for args in cases:
        result = invoke(args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(lines) == 1 and "Traceback" not in result.output, (args, result.output)


def test_space_lists_every_parameter():
    result = invoke(["search", "space", "--resolution", "224,256", "--json"])
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    names = [p["name"] for p in described["params"]]
    assert described["space"] == "eradio" and described["resolutions"] == [224, 256]
    assert {"dim", "depth3", "mra_pattern", "heads4", "neck", "resolution", "window3_224", "window4_256"} <= set(names)
    vit = json.loads(invoke(["search", "space", "--space", "vit-cpe", "--json"]).output)
    assert [p["name"] for p in vit["params"]] == ["width", "depth", "heads", "mlp_ratio", "patch_size"]
    listed = invoke(["search", "space", "--list"])
    assert "eradio" in listed.output and "vit-cpe" in listed.output


def test_sweep_preview_is_printed_before_the_first_trial(tmp_path):
    result = invoke(["search", "run", "--storage", sqlite_url(tmp_path), "--n-trials", "1", "--dry-run",
                     "--resolution", "64", *TINY_ARGS, *BENCH_ARGS, "--device", "cpu", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    preview = next(i for i, line in enumerate(lines) if line.startswith("sweep: 1 of 1 trials"))
    first_trial = next(i for i, line in enumerate(lines) if line.startswith("trial 0:"))
    assert preview < first_trial and "disk ~" in " ".join(lines[preview:first_trial])


# --------------------------------------------------------------------------- zoo pareto on a search folder


def test_pareto_draws_a_search_out_folder(tmp_path):
    out = tmp_path / "s"
    result = invoke(["search", "run", "--storage", sqlite_url(tmp_path), "--n-trials", "2", "--dry-run",
                     "--resolution", "64", *TINY_ARGS, *BENCH_ARGS, "--device", "cpu", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    table = tmp_path / "front.json"
    pareto = invoke(["pareto", str(out), "--json", str(table)])
    assert pareto.exit_code == 0, pareto.output
    rows = json.loads(table.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    study = optuna.load_study(study_name="eradio-search", storage=sqlite_url(tmp_path))
    by_loss = {round(t.values[1], 6): t for t in completed(study)}
    assert len(rows) == 2
    for row in rows:
        flat = json.dumps(row)
        assert "search-trial" in flat
        assert any(round(float(v), 6) in by_loss for v in _numbers(row))  # each row is one of the trials


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


# --------------------------------------------------------------------------- the real objective


def test_real_proxy_distillation_trial(tmp_path):
    """One trial through zoo.distill with the search-proxy recipe: the trial's record is the run's record."""
    space = tiny_space()
    settings = tiny_settings(tmp_path, recipe_overrides=("train.steps=3", "train.batch_size=2", "eval.every=0"),
                             dry_run=False)
    study = runner.open_study(memory(), "real", space)
    report = runner.run_worker(study, SearchObjective(space, settings, study_name="real"), 1)
    assert report.complete == 1, report
    (trial,) = completed(study)
    run_dir = Path(trial.user_attrs["record"]["run_dir"])
    record = read_record(run_dir)
    assert record.kind == KIND_SEARCH_TRIAL and record.status == "complete" and record.steps == 3
    assert record.fd_loss > 0 and record.extra["fd_loss_source"] == "proxy distillation"
    assert record.recipe == "search-proxy" and record.resolution == [64, 64] and record.teachers
    assert trial.values == [record.throughput["median"], record.fd_loss]
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "trial.json").exists()
    assert (run_dir / "metrics.jsonl").is_file()


# --------------------------------------------------------------------------- paper variants at a small resolution


def test_enqueue_all_variants_at_64_px_fits_their_windows(tmp_path):
    """At 64 px stage 3's only window is 4: the paper's 2x2 windows are queued as 4/2, not refused."""
    result = invoke(["search", "run", "--storage", sqlite_url(tmp_path), "--n-trials", "1", "--dry-run",
                     "--resolution", "64", *BENCH_ARGS, "--device", "cpu", "--out", str(tmp_path / "r"),
                     "--enqueue-variants", "all", "--quiet", "--no-live"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "queued variants: eradio-xt, eradio-t" in flat
    assert "windows 4/2 instead of the paper's 2/2 (the nearest that tile the 64 px maps)" in flat
    study = optuna.load_study(study_name="eradio-search", storage=sqlite_url(tmp_path))
    (first,) = completed(study)
    assert first.user_attrs["variant"] == "eradio-xt"
    candidate = ERadioSpace((64,)).params_to_candidate(first.params)
    assert candidate.config == ERADIO_VARIANTS["xt"].replace(window_size=[4, 2])
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == len(ERADIO_VARIANTS) - 1  # the rest stay queued for the next trials


def test_variants_outside_a_narrowed_space_are_left_out_with_the_reason():
    space = ERadioSpace((64,), limits=parse_limits(["dim=32,48"]))
    plan = runner.plan_variants(space, ["xt", "b"])
    assert plan.params == {} and set(plan.left_out) == {"eradio-xt", "eradio-b"}
    assert "dim=64 is outside the search space" in plan.left_out["eradio-xt"]
    assert plan.lines()[1] == "  eradio-xt left out: dim=64 is outside the search space (32, 48)"
    with pytest.raises(UnknownNameError):
        runner.plan_variants(space, ["xtt"])  # a typo is still refused
    fitting = runner.plan_variants(ERadioSpace((128,)), ["xt"])  # 2x2 tiles 128 px maps: nothing changed
    assert fitting.adapted == {} and fitting.lines() == ["queued variants: eradio-xt"]
