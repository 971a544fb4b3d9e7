"""Multi-fidelity search: promotion by non-dominated rank + crowding / hypervolume contribution, rungs
decided against the shared storage (SQLite, journal file, PostgreSQL; three workers), a real proxy run
resumed rung after rung, pruned trials' records and checkpoints, a killed worker's trial recovered."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from zoo.errors import ConfigError
from zoo.runs import read_record
from zoo.search import study as runner
from zoo.search.fidelity import (CROWDING, HYPERVOLUME, Fidelity, MultiFidelityObjective, check_study_fidelity,
                                 crowding_distances, hypervolume_contributions, nondominated_ranks, promotable,
                                 promotion_order, rung_attr, surrogate_at)
from zoo.search.latency import Fit, LatencySettings, LatencyTable
from zoo.search.objective import ObjectiveSettings
from zoo.search.space import make_space, parse_limits

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
TINY = ["dim=32,48", "depth1=1", "depth2=1", "depth4=1", "mlp_ratio=2.0"]
TINY_BENCH = dict(batch_size=1, warmup=0, repeats=1, steps_per_repeat=1, threads=1)
SCHEDULE = Fidelity((2, 6, 18), eta=3)


def tiny_space(limits=TINY):
    return make_space("eradio", (64,), parse_limits(limits))


def settings(tmp_path: Path, **kwargs) -> ObjectiveSettings:
    return ObjectiveSettings(out_dir=tmp_path / "runs", device="cpu", dry_run=kwargs.pop("dry_run", True),
                             bench=TINY_BENCH, **kwargs)


def fitted_table(tmp_path: Path) -> LatencyTable:
    """A latency table whose overhead fit is given (no full model measured: the test is about scheduling)."""
    table = LatencyTable.open(LatencySettings(resolution=64, batch_size=1, warmup=0, repeats=1, steps_per_repeat=1),
                              folder=tmp_path / "latency")  # threads: this process's, as `zoo search run` has them
    table.fit = Fit(1.0, 0.5, [])
    table.save()
    return table


# --------------------------------------------------------------------------- promotion


def test_nondominated_ranks_and_crowding():
    points = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (2.5, 3.5)]
    assert nondominated_ranks(points) == [0, 0, 0, 2, 3, 1]  # (2.5, 3.5) dominates (3, 4)
    crowd = crowding_distances(points, [0, 1, 2])
    assert math.isinf(crowd[0]) and math.isinf(crowd[2])
    assert crowd[1] == pytest.approx((4 - 1) / 3 + (5 - 1) / 4)


def test_hypervolume_contributions_are_exclusive_areas():
    points = [(1, 5), (2, 3), (4, 1)]
    contributions = hypervolume_contributions(points, [0, 1, 2], reference=(6, 6))
    assert contributions == {0: pytest.approx(1 * 1), 1: pytest.approx(2 * 2), 2: pytest.approx(2 * 2)}
    assert hypervolume_contributions([(3,), (1,)], [0, 1], reference=(4,)) == {1: 2, 0: 1}


def test_promotion_order_rank_then_spread_then_feasibility():
    # the middle point of a crowded front goes last on that front; the dominated point after it
    points = [(0, 10), (5, 5), (5.2, 4.8), (10, 0), (6, 6)]
    order = promotion_order(points, rule=CROWDING)
    assert order[:2] == [0, 3] and order[-1] == 4
    assert set(order[2:4]) == {1, 2}
    # an infeasible point is never promoted, whatever its values
    assert promotion_order(points, feasible=[False, True, True, True, True])[-1] == 0
    by_volume = promotion_order(points, rule=HYPERVOLUME)
    assert by_volume[-1] == 4 and set(by_volume[:4]) == {0, 1, 2, 3}


def test_promotable_quota_and_bootstrap():
    points = [(float(i), float(9 - i)) for i in range(9)] + [(9.0, 9.0)] * 3  # 9 on the front, 3 dominated
    promoted = [i for i in range(len(points)) if promotable(i, points, eta=3)]
    assert len(promoted) == len(points) // 3 and all(i < 9 for i in promoted)
    # fewer than eta at the rung: a non-dominated point goes on, a dominated one stops
    assert promotable(1, [(1.0, 1.0), (0.5, 2.0)], eta=3) and not promotable(1, [(1.0, 1.0), (2.0, 2.0)], eta=3)
    assert not promotable(0, [(0.0, 0.0)], eta=3, feasible=[False])


def test_schedule_parsing_and_expected_cost():
    fidelity = Fidelity.parse("10,30,90")
    assert fidelity.steps == (10, 30, 90) and fidelity.final == 90
    assert fidelity.expected_steps() == pytest.approx(10 + 20 / 3 + 60 / 9)
    default = Fidelity.parse("default")  # 30,90: a 10-step rung ranks like chance (README, proxy_fidelity.py)
    assert default.steps == (30, 90) and default.expected_steps() == pytest.approx(50)
    for bad, message in (("30,10", "must increase"), ("10,x", "step counts such as"), ("0,5", "positive")):
        with pytest.raises(ConfigError, match=message):
            Fidelity.parse(bad)
    with pytest.raises(ConfigError, match="eta"):
        Fidelity((1, 2), eta=1)


def test_surrogate_learning_curve_converges_to_the_space_surrogate():
    space = tiny_space()
    candidate = space.params_to_candidate(space.random_params(__import__("random").Random(0)))
    final = space.surrogate_fd_loss(candidate, 1.0)
    low, high = surrogate_at(space, candidate, 1.0, 2, 18), surrogate_at(space, candidate, 1.0, 18, 18)
    assert abs(high - final) < 0.05 and low > high  # 9x fewer steps: higher loss, same candidate
    assert surrogate_at(space, candidate, 1.0, 2, 18) == low  # deterministic


# --------------------------------------------------------------------------- one study, checked decision by decision


def _replay(study, fidelity: Fidelity) -> None:
    """Every rung decision of a sequential study, recomputed from the trials that had reached the rung
    before (lower numbers) plus the trial itself: the trial went on exactly when it was promotable."""
    trials = [t for t in study.get_trials(deepcopy=False) if "skipped" not in t.user_attrs]
    for trial in trials:
        reached = trial.user_attrs.get("rung")
        assert reached is not None
        for rung in range(min(reached + 1, fidelity.rungs - 1)):
            rivals = [t for t in trials if t.number <= trial.number and rung_attr(rung) in t.user_attrs]
            points = [(-t.user_attrs[rung_attr(rung)]["values"][0], t.user_attrs[rung_attr(rung)]["values"][1])
                      for t in rivals]
            index = [t.number for t in rivals].index(trial.number)
            assert promotable(index, points, fidelity.eta, rule=fidelity.promotion) == (reached > rung), \
                f"trial {trial.number} at rung {rung}"
        if trial.state == TrialState.COMPLETE:
            assert reached == fidelity.rungs - 1
            assert trial.values == trial.user_attrs[rung_attr(reached)]["values"]
        else:
            assert trial.state == TrialState.PRUNED and reached < fidelity.rungs - 1
            record = trial.user_attrs["record"]
            assert record["search"]["pruned"] is True and record["search"]["rung"] == reached
            assert record["fd_loss"] == pytest.approx(trial.user_attrs[rung_attr(reached)]["fd_loss"])


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_dry_multi_fidelity_study(tmp_path, storage):
    url = f"sqlite:///{tmp_path}/s.db" if storage == "sqlite" else str(tmp_path / "s.log")
    space = tiny_space()
    study = runner.open_study(runner.open_storage(url), "mf", space)
    check_study_fidelity(study, SCHEDULE)
    objective = MultiFidelityObjective(space, settings(tmp_path), "mf", fidelity=SCHEDULE,
                                       latency_table=fitted_table(tmp_path))
    report = runner.run_worker(study, objective, 10)
    counts = runner.trial_counts(study)
    assert counts.counted == 10 and counts.failed == 0 and counts.running == 0
    assert counts.pruned > 0 and counts.complete > 0 and report.pruned == counts.pruned
    _replay(study, SCHEDULE)
    reached = [t.user_attrs["rung"] for t in study.get_trials() if "rung" in t.user_attrs]
    assert [sum(r >= k for r in reached) for k in range(3)] == sorted(
        [sum(r >= k for r in reached) for k in range(3)], reverse=True)
    # one record per trial in its run folder; pruned ones say so (zoo pareto leaves them out)
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "skipped" in trial.user_attrs:
            continue
        record = read_record(trial.user_attrs["record"]["run_dir"])
        assert record.search.trial_number == trial.number
        assert bool(record.search.extra.get("pruned")) == (trial.state == TrialState.PRUNED)
        assert record.search.extra["fidelity"] == SCHEDULE.describe()


def test_a_worker_with_another_schedule_is_refused(tmp_path):
    study = runner.open_study(runner.open_storage(f"sqlite:///{tmp_path}/s.db"), "mf", tiny_space())
    check_study_fidelity(study, SCHEDULE)
    check_study_fidelity(study, Fidelity((2, 6, 18), eta=3))  # the same: fine
    with pytest.raises(ConfigError, match="runs with fidelity 2,6,18 eta 3 crowding, this worker with 2,6 eta 3"):
        check_study_fidelity(study, Fidelity((2, 6)))
    with pytest.raises(ConfigError, match="this worker with none"):
        check_study_fidelity(study, None)


# --------------------------------------------------------------------------- a real proxy run, resumed


def test_rungs_resume_the_proxy_run_and_pruned_checkpoints_go(tmp_path, monkeypatch):
    import zoo.distill
    import zoo.search.fidelity as fidelity_module

    calls = []
    real = zoo.distill.distill

    def spy(*args, **kwargs):
        calls.append((kwargs["run_name"], kwargs["resume"], args[1].train.steps))
        return real(*args, **kwargs)

    monkeypatch.setattr(zoo.distill, "distill", spy)
    space = tiny_space(["dim=32", "depth1=1", "depth2=1", "depth3=1", "depth4=1", "mlp_ratio=2.0", "neck=0"])
    schedule = Fidelity((2, 4), eta=2)
    study = runner.open_study(optuna.storages.InMemoryStorage(), "real", space)
    check_study_fidelity(study, schedule)
    objective = MultiFidelityObjective(space, settings(tmp_path, dry_run=False,
                                                       recipe_overrides=("train.batch_size=2",
                                                                         "train.checkpoint_every=100",
                                                                         "train.log_every=1")),
                                       "real", fidelity=schedule, latency_table=fitted_table(tmp_path))
    runner.run_worker(study, objective, 1)
    trial = study.get_trials()[0]
    assert trial.state == TrialState.COMPLETE  # alone at its rung: non-dominated, promoted
    run = calls[0][0]
    assert calls == [(run, False, 2), (run, True, 4)]  # rung 2 resumed the run of rung 1
    folder = tmp_path / "runs" / run
    steps = [json_line["step"] for json_line in map(__import__("json").loads,
                                                    (folder / "metrics.jsonl").read_text().splitlines())
             if "step" in json_line and "loss" in json_line]
    assert sorted(set(steps)) == [1, 2, 3, 4] and len(steps) == len(set(steps))  # each step trained once
    record = read_record(folder)
    assert record.steps == 4 and record.search.extra["rung"] == 1 and not (folder / "checkpoint.pt").exists()
    assert trial.values[1] == pytest.approx(record.fd_loss)
    assert trial.user_attrs[rung_attr(0)]["steps"] == 2
    # ... and resuming rung by rung is training straight: one schedule (the last rung's), seeded weights
    from zoo.search.objective import seeded_build

    candidate = runner.trial_candidate(space, trial)
    straight_recipe = objective.rung_recipe(candidate.resolution, 4)
    assert straight_recipe.optim.schedule_steps == 4
    straight = real(seeded_build(candidate, "straight", straight_recipe), straight_recipe,
                    out_dir=str(tmp_path / "straight"), run_name="straight", device="cpu",
                    teachers=objective.teachers(straight_recipe))
    assert straight["fd_loss"] == pytest.approx(record.fd_loss, rel=1e-5)

    # a trial that is not promoted: PRUNED after its first rung, its checkpoint deleted ...
    monkeypatch.setattr(fidelity_module, "decide_promotion", lambda *a: False)
    space2 = tiny_space(["dim=48", "depth1=1", "depth2=1", "depth3=1", "depth4=1", "mlp_ratio=2.0", "neck=0"])
    study2 = runner.open_study(optuna.storages.InMemoryStorage(), "real2", space2)
    objective2 = MultiFidelityObjective(space2, objective.settings, "real2", fidelity=schedule,
                                        latency_table=objective.latency_table)
    runner.run_worker(study2, objective2, 1)
    pruned = study2.get_trials()[0]
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs["rung"] == 0
    folder2 = Path(pruned.user_attrs["record"]["run_dir"])
    assert read_record(folder2).steps == 2 and read_record(folder2).search.extra["pruned"] is True
    assert not (folder2 / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- workers sharing one study


WORKER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {repo!r})
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from zoo.search import study as runner
    from zoo.search.fidelity import Fidelity, MultiFidelityObjective, check_study_fidelity
    from zoo.search.latency import LatencySettings, LatencyTable
    from zoo.search.objective import ObjectiveSettings
    from zoo.search.space import make_space, parse_limits

    SLOW = {slow!r}

    class Worker(MultiFidelityObjective):
        def rung_value(self, candidate, name, steps, params_m):
            if SLOW and steps == SLOW:
                print("in-rung", flush=True)
                time.sleep(300)  # killed in here
            return super().rung_value(candidate, name, steps, params_m)

    space = make_space("eradio", (64,), parse_limits({limits!r}))
    storage = runner.open_storage({url!r}, heartbeat_interval=1, grace_period=3)
    study = runner.open_study(storage, "mf", space, sampler=runner.make_sampler("nsga2", "multi", {n}, seed={seed}))
    fidelity = Fidelity({steps!r}, eta=3)
    check_study_fidelity(study, fidelity)
    table = LatencyTable.open(LatencySettings(resolution=64, batch_size=1, threads=1, warmup=0, repeats=1,
                                              steps_per_repeat=1), folder={table!r})
    settings = ObjectiveSettings(out_dir={out!r}, device="cpu", dry_run=True)
    objective = Worker(space, settings, "mf", fidelity=fidelity, latency_table=table, fit_models=2)
    report = runner.run_worker(study, objective, {n})
    print("done", report.complete, report.pruned, report.failed, flush=True)
''')


def _worker(tmp_path: Path, url: str, n: int, seed: int, slow: int = 0) -> subprocess.Popen:
    script = tmp_path / f"worker{seed}.py"
    script.write_text(WORKER.format(repo=str(REPO), limits=TINY, url=url, n=n, seed=seed, slow=slow,
                                    steps=SCHEDULE.steps, table=str(tmp_path / "latency"), out=str(tmp_path / "runs")))
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _check_shared_study(url: str, n: int) -> optuna.Study:
    study = optuna.load_study(study_name="mf", storage=runner.open_storage(url, heartbeat_interval=None))
    counts = runner.trial_counts(study)
    assert counts.counted == n and counts.running == 0
    live = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and "skipped" not in t.user_attrs]
    assert len({t.user_attrs["key"] for t in live}) == len(live)  # no candidate evaluated twice
    assert any(t.state == TrialState.PRUNED for t in live) and any(t.state == TrialState.COMPLETE for t in live)
    for trial in live:
        reached = trial.user_attrs["rung"]
        assert all(rung_attr(k) in trial.user_attrs for k in range(reached + 1))
        assert (trial.state == TrialState.COMPLETE) == (reached == SCHEDULE.rungs - 1)
        record = trial.user_attrs["record"]
        assert record["search"]["throughput_source"] == "predicted"
        assert record["throughput"]["latency_table"]["fit"]["models"] == 2  # one fit shared by the workers
    return study


def _three_workers(tmp_path: Path, url: str, n: int = 7) -> optuna.Study:
    workers = [_worker(tmp_path, url, n, seed) for seed in range(3)]
    outputs = [w.communicate(timeout=400) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        assert "done" in out
    return _check_shared_study(url, n)


def test_three_workers_share_one_sqlite_study(tmp_path):
    _three_workers(tmp_path, f"sqlite:///{tmp_path}/s.db")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server in a temporary folder (initdb + pg_ctl); skipped where they are missing."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("initdb/pg_ctl (PostgreSQL server binaries) are not on PATH")
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver (pip install psycopg2-binary)")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="zoo-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged user
        import pwd

        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or not shutil.which("runuser"):
            pytest.skip("running as root without a postgres/nobody user and runuser")
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    data, port = folder / "data", _free_port()
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "zoo"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                        f"-p {port} -k {folder} -h 127.0.0.1", "start"], check=True, capture_output=True, timeout=120)
        yield f"postgresql+psycopg2://zoo@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_three_workers_share_one_postgresql_study(tmp_path, postgres_url):
    _three_workers(tmp_path, postgres_url)


def test_a_worker_killed_mid_rung_is_recovered(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    victim = _worker(tmp_path, url, 3, seed=7, slow=SCHEDULE.steps[1])  # sleeps inside its trial's second rung
    deadline = time.monotonic() + 300
    line = ""
    while time.monotonic() < deadline and "in-rung" not in line:
        line = victim.stdout.readline()
        if not line and victim.poll() is not None:
            raise AssertionError(victim.stderr.read()[-3000:])
    assert "in-rung" in line, "the worker never reached its second rung"
    time.sleep(1.5)  # a heartbeat written
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    survivor = _worker(tmp_path, url, 3, seed=8)
    out, err = survivor.communicate(timeout=400)
    assert survivor.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="mf", storage=runner.open_storage(url, heartbeat_interval=None))
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["rung"] == 0  # died in rung 1, after rung 0
    retry = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    assert retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry[0].user_attrs[rung_attr(0)] == failed[0].user_attrs[rung_attr(0)]  # rung 0 kept, not redone
    assert retry[0].user_attrs["rung"] >= 1  # it went on with the rung it died in
    assert runner.trial_counts(study).counted == 3


# --------------------------------------------------------------------------- the CLI


def test_cli_multi_fidelity_predicted_throughput_and_the_front_measured(tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    url = f"sqlite:///{tmp_path}/s.db"
    args = ["search", "run", "--dry-run", "--resolution", "64", *[a for item in TINY for a in ("--limit", item)],
            "--n-trials", "5", "--fidelity", "2,6,18", "--throughput", "predicted", "--latency-table",
            str(tmp_path / "latency"), "--bench-batch", "1", "--bench-repeats", "1", "--bench-steps", "1",
            "--bench-warmup", "0", "--device", "cpu", "--storage", url, "--study-name", "cli", "--out",
            str(tmp_path / "runs")]
    fitted_table(tmp_path)  # the 64 px, batch-1 table with a fit: no full model to measure first
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "rungs 2,6,18 proxy steps (eta 3)" in text and "stopped at rung" in text
    study = optuna.load_study(study_name="cli", storage=runner.open_storage(url, heartbeat_interval=None))
    front = runner.pareto_trials(study)
    measured = study.user_attrs["zoo_measured"]
    assert front and {str(t.number) for t in front} == set(measured)
    for trial in front:
        assert f"front trial {trial.number}: predicted" in text
        record = read_record(trial.user_attrs["record"]["run_dir"])  # the run folder holds the measurement
        assert record.throughput["source"] == "measured" and record.gmacs > 0
        assert record.search.extra["predicted_throughput"] == pytest.approx(trial.values[0])
        assert record.search.extra["measured_throughput"] == pytest.approx(record.throughput["median"])
        assert runner.trial_record(trial, measured)["throughput"]["source"] == "measured"
    # a worker with another schedule: one line, exit 2
    at = args.index("--fidelity") + 1
    refused = CliRunner().invoke(cli, [*args[:at], "2,6", *args[at + 1:]])
    assert refused.exit_code == 2 and "runs with fidelity 2,6,18" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def test_memory_cap_skips_candidates_before_anything_runs(tmp_path):
    space = tiny_space()
    study = runner.open_study(optuna.storages.InMemoryStorage(), "cap", space)
    objective = MultiFidelityObjective(space, settings(tmp_path, max_memory_gb=0.001), "cap", fidelity=SCHEDULE,
                                       latency_table=fitted_table(tmp_path))
    report = runner.run_worker(study, objective, 2, max_skips_in_row=2)
    assert report.skipped == 2 and "over the memory cap" in report.stopped_because
    trial = study.get_trials()[0]
    assert "over the memory cap: training needs ~" in trial.user_attrs["skipped"]
    assert rung_attr(0) not in trial.user_attrs and not (tmp_path / "runs").exists()


def test_the_preview_says_memory_rungs_and_time_before_the_first_trial(tmp_path):
    from zoo.search.preview import sweep_preview

    space = tiny_space(["dim=32", "depth1=1", "depth2=1", "depth3=1", "depth4=1", "mlp_ratio=2.0"])
    study = runner.open_study(optuna.storages.InMemoryStorage(), "p", space)
    objective_settings = settings(tmp_path, dry_run=False, max_memory_gb=8.0)
    objective = MultiFidelityObjective(space, objective_settings, "p", fidelity=Fidelity((10, 30, 90)))
    preview = sweep_preview(space, objective_settings, 12, study, objective=objective, fidelity=objective.fidelity,
                            time_steps=True)
    line = " ".join(preview.line().split())
    assert "training memory ~" in line and "cap 8.0 GB: 0 of 8 sampled are over it" in line
    assert "rungs 10,30,90 proxy steps (eta 3): ~23 steps per trial on average, ~12/4/1 trials reach each rung" in line
    assert "a median candidate's training step takes" in line and preview.step_seconds > 0
