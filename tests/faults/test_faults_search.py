"""Faults of zoo search (issue 11, item 5): a worker SIGKILLed on a journal storage, the disk the proxy
runs keep, and diverging proxy runs. Each test asserts what the user sees: exit status, the line, the files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from zoo.cli import cli
from zoo.errors import DivergedError, ZooError
from zoo.runs import RunRecord, read_record, write_record
from zoo.search import study as runner

REPO = Path(__file__).resolve().parents[2]
TINY = ["dim=32", "depth1=1", "depth2=1", "depth3=1", "depth4=1"]
COMMON = ["--resolution", "64", *[a for item in TINY for a in ("--limit", item)], "--bench-batch", "1",
          "--bench-repeats", "1", "--bench-steps", "1", "--bench-warmup", "0", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error: ")]


# --------------------------------------------------------------------------- journal storage, SIGKILL

KILLED_WORKER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {repo!r})
    from zoo.search import study as runner
    from zoo.search.objective import ObjectiveSettings, SearchObjective
    from zoo.search.space import parse_limits
    from zoo.search.spaces.eradio import ERadioSpace

    class Stuck(SearchObjective):
        def measure(self, candidate, name):
            print("in trial", flush=True)
            time.sleep(300)  # SIGKILLed in here

    space = ERadioSpace((64,), limits=parse_limits({limits!r}))
    storage = runner.open_storage({url!r}, heartbeat_interval=1, grace_period=3)
    study = runner.open_study(storage, "j", space)
    runner.run_worker(study, Stuck(space, ObjectiveSettings(out_dir={out!r}, device="cpu", dry_run=True),
                                   study_name="j"), 2)
''')


def test_journal_worker_killed_mid_trial_is_recovered(tmp_path):
    """Before: the killed worker's trial stayed RUNNING forever and took one of the budget's places."""
    log = tmp_path / "search.log"
    script = tmp_path / "worker.py"
    script.write_text(KILLED_WORKER.format(repo=str(REPO), limits=TINY, url=str(log), out=str(tmp_path / "runs")))
    worker = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "in trial", worker.stderr.read()
        time.sleep(1.5)  # its lease was renewed at least once
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert worker.returncode == -signal.SIGKILL
    stored = optuna.load_study(study_name="j", storage=runner.open_storage(str(log), heartbeat_interval=None))
    (killed,) = stored.get_trials(states=(TrialState.RUNNING,))
    assert killed.system_attrs.get(runner.LEASE_ATTR) is not None

    # A new worker (the same command as the sweep's) fails it after the grace period and re-runs it.
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "search", "run", "--storage", str(log), "--study-name",
                             "j", "--n-trials", "2", "--dry-run", *COMMON, "--heartbeat-interval", "1",
                             "--grace-period", "3", "--out", str(tmp_path / "runs")],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stderr = " ".join(result.stderr.split())
    assert "study 'j': 2/2 trials (2 complete, 0 running, 1 failed)" in stderr
    study = optuna.load_study(study_name="j", storage=runner.open_storage(str(log), heartbeat_interval=None))
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed.number].state == TrialState.FAIL
    retried = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE and retried[0].params == killed.params
    records = sorted((tmp_path / "runs").glob("*/summary.json"))
    assert len(records) == 2  # one per complete trial, none for the killed attempt


# --------------------------------------------------------------------------- checkpoints of proxy runs


class DistillInterrupted(ZooError):
    """Named like zoo.distill's: the search treats it as a stop request."""


def fake_distill(behaviour):
    """A zoo.distill stand-in that lays out a run folder as the real one does (checkpoint, metrics, record)."""

    def distill(backbone, recipe, out_dir, run_name, resume, device, progress, teachers, on_eval):
        run_dir = Path(out_dir) / run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoint.pt").write_bytes(b"\0" * 4096)
        (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
        record = RunRecord(run_id=run_name, backbone=backbone.name, fd_loss=0.5, steps=30, recipe=recipe.name,
                           run_dir=str(run_dir))
        outcome = behaviour(run_dir)
        if isinstance(outcome, BaseException):
            if isinstance(outcome, DivergedError):
                record.status, record.fd_loss = "diverged", None
                write_record(run_dir, record)
            raise outcome
        write_record(run_dir, record)
        return record.to_dict()

    return types.SimpleNamespace(distill=distill)


def search(tmp_path: Path, *extra: str, n_trials: int = 1) -> object:
    return CliRunner().invoke(cli, ["search", "run", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--n-trials",
                                    str(n_trials), *COMMON, "--out", str(tmp_path / "runs"), *extra])


@pytest.mark.parametrize("keep", [False, True])
def test_proxy_checkpoints_are_deleted_unless_kept(tmp_path, monkeypatch, keep):
    monkeypatch.setitem(sys.modules, "zoo.distill", fake_distill(lambda run_dir: None))
    result = search(tmp_path, *(["--keep-checkpoints"] if keep else []))
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    files = sorted(p.name for p in run_dir.iterdir())
    assert files == (["checkpoint.pt", "metrics.jsonl", "summary.json"] if keep else ["metrics.jsonl", "summary.json"])
    assert read_record(run_dir).kind == "search-trial"
    preview = " ".join(result.output.split())
    assert ("checkpoints kept" in preview) == keep and ("deleted when its trial ends" in preview) != keep


def test_a_stopped_trial_keeps_its_checkpoint_for_the_retry(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zoo.distill",
                        fake_distill(lambda run_dir: DistillInterrupted("stopped by SIGTERM after saving")))
    result = search(tmp_path)
    assert result.exit_code == 2
    (line,) = error_lines(result.output)
    assert "stopped during trial 0" in line and "queued again" in line
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "checkpoint.pt").is_file()  # the retry resumes from it
    study = optuna.load_study(study_name="eradio-search", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


# --------------------------------------------------------------------------- diverging proxy runs


def test_a_diverged_trial_is_fail_not_a_point_of_the_front(tmp_path, monkeypatch):
    calls = []

    def first_diverges(run_dir):
        calls.append(run_dir)
        if len(calls) == 1:
            return DivergedError("diverged at step 4/30: the loss became NaN; last good checkpoint at step 2")
        return None

    monkeypatch.setitem(sys.modules, "zoo.distill", fake_distill(first_diverges))
    result = search(tmp_path, n_trials=2)
    assert result.exit_code == 0, result.output
    assert "trial 0: diverged (FAIL): diverged at step 4/30" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    study = optuna.load_study(study_name="eradio-search", storage=f"sqlite:///{tmp_path / 's.db'}")
    states = {t.number: t.state for t in study.get_trials()}
    assert states[0] == TrialState.FAIL and list(states.values()).count(TrialState.COMPLETE) == 2
    diverged = read_record(calls[0])
    assert diverged.status == "diverged" and diverged.kind == "search-trial" and diverged.fd_loss is None
    assert diverged.search.trial_number == 0 and "step 4/30" in diverged.search.extra["diverged"]
    assert not (calls[0] / "checkpoint.pt").exists()
    best = CliRunner().invoke(cli, ["search", "best", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--json"])
    assert 0 not in [r["search"]["trial_number"] for r in json.loads(best.output)]
    front = tmp_path / "front.json"
    pareto = CliRunner().invoke(cli, ["pareto", str(tmp_path / "runs"), "--json", str(front)])
    assert pareto.exit_code == 0, pareto.output
    rows = json.loads(front.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    diverged_rows = [r for r in rows if r["status"] == "diverged"]
    assert len(diverged_rows) == 1 and diverged_rows[0]["on_front"] is False  # listed, never on the front
    assert all(r["status"] == "complete" for r in rows if r["on_front"])


def test_every_trial_diverging_stops_the_worker_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zoo.distill",
                        fake_distill(lambda run_dir: DivergedError("diverged at step 3/30: the loss became NaN")))
    result = search(tmp_path, n_trials=5)
    assert result.exit_code == 2
    (line,) = error_lines(result.output)
    assert "3 trials in a row failed" in line and "diverged at step 3/30" in line and "optim.lr" in line


def test_a_real_diverging_proxy_run_is_a_failed_trial(tmp_path):
    """zoo.distill's own divergence guard (a huge learning rate), through a search worker."""
    from zoo.search.objective import ObjectiveSettings, SearchObjective
    from zoo.search.space import parse_limits
    from zoo.search.spaces.eradio import ERadioSpace

    space = ERadioSpace((64,), limits=parse_limits(TINY))
    overrides = ("train.steps=6", "train.batch_size=2", "eval.every=0", "optim.lr=1e6", "optim.warmup_steps=0",
                 "train.checkpoint_every=2", "train.log_every=1")
    settings = ObjectiveSettings(out_dir=tmp_path / "runs", device="cpu", recipe_overrides=overrides,
                                 bench=dict(batch_size=1, warmup=0, repeats=1, steps_per_repeat=1))
    study = runner.open_study(optuna.storages.InMemoryStorage(), "real", space)
    with pytest.raises(ZooError, match="1 trials in a row failed.*diverged at step .*optim.lr"):
        runner.run_worker(study, SearchObjective(space, settings, study_name="real"), 1, max_failures_in_row=1)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and trial.values is None
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = read_record(run_dir)
    assert record.status == "diverged" and record.kind == "search-trial" and record.diverged_step is not None
    assert record.search.trial_number == 0 and record.fd_loss is None
    assert not (run_dir / "checkpoint.pt").exists()  # the last good one is of no use to a search


# --------------------------------------------------------------------------- a refused start leaves nothing behind


def study_names(tmp_path: Path) -> list[str]:
    return optuna.get_all_study_names(f"sqlite:///{tmp_path / 's.db'}") if (tmp_path / "s.db").exists() else []


def test_a_refused_start_leaves_no_study_and_the_corrected_command_runs(tmp_path, monkeypatch):
    typo = search(tmp_path, "--dry-run", "--enqueue-variants", "xtt")  # refused before the study exists
    assert typo.exit_code == 2 and len(error_lines(typo.output)) == 1 and "eradio-xt" in typo.output
    assert study_names(tmp_path) == []
    bad_teacher = search(tmp_path, "--teacher", "nosuch:tiny")  # the proxy's teachers are checked first too
    assert bad_teacher.exit_code == 2 and len(error_lines(bad_teacher.output)) == 1
    assert study_names(tmp_path) == []

    # refused after the study was created (here: by the preview): the study goes again
    import zoo.search.preview as preview

    def refuse(*args, **kwargs):
        raise ZooError("refused for the test")

    monkeypatch.setattr(preview, "sweep_preview", refuse)
    late = search(tmp_path, "--dry-run", "--enqueue-variants", "xt")
    assert late.exit_code == 2 and error_lines(late.output) == ["Error: refused for the test"]
    assert study_names(tmp_path) == []
    monkeypatch.undo()
    # the retry, at another resolution (a left-over study would refuse it: "another search space")
    retry = CliRunner().invoke(cli, ["search", "run", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--n-trials", "1",
                                     "--dry-run", "--resolution", "128", *COMMON[2:], "--out", str(tmp_path / "runs"),
                                     "--no-live"])
    assert retry.exit_code == 0, retry.output
    assert study_names(tmp_path) == ["eradio-search"]


def test_a_refused_joining_worker_keeps_the_study(tmp_path):
    assert search(tmp_path, "--dry-run", "--no-live").exit_code == 0
    joined = search(tmp_path, "--dry-run", "--enqueue-variants", "xtt", n_trials=2)
    assert joined.exit_code == 2
    study = optuna.load_study(study_name="eradio-search", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert len(study.get_trials()) == 1  # the study and its trial are untouched


# --------------------------------------------------------------------------- zoo search best says where numbers came from


def test_best_marks_surrogate_fd_loss_and_predicted_throughput(tmp_path):
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    assert search(tmp_path, "--dry-run", "--no-live", "--quiet").exit_code == 0
    url = f"sqlite:///{tmp_path / 's.db'}"
    best = CliRunner().invoke(cli, ["search", "best", "--storage", url, "--json"])
    (record,) = json.loads(best.output)
    assert record["fd_loss_source"] == "surrogate" and record["search"]["throughput_source"] == "measured"
    table = CliRunner().invoke(cli, ["search", "best", "--storage", url])
    assert "surrogate" in table.output and "measured" in table.output and "FD from" in table.output

    # a study whose throughputs were predicted (latency table), one of them measured afterwards
    study = optuna.create_study(study_name="pred", storage=url, directions=["maximize", "minimize"])
    for number, (speed, loss) in enumerate([(500.0, 0.8), (300.0, 0.6)]):
        rec = {"run_id": f"r{number}", "backbone": "b", "kind": "search-trial", "fd_loss": loss, "params_m": 1.0,
               "throughput": {"median": speed}, "fd_loss_source": "proxy distillation",
               "search": {"study_name": "pred", "trial_number": number, "throughput_source": "predicted",
                          "predicted_throughput": speed}}
        study.add_trial(create_trial(values=[speed, loss], params={"x": 0.5},
                                     distributions={"x": FloatDistribution(0, 1)}, user_attrs={"record": rec}))
    study.set_user_attr("zoo_measured", {"1": {"throughput": {"median": 280.0}, "predicted_throughput": 300.0}})
    rows = json.loads(CliRunner().invoke(cli, ["search", "best", "--storage", url, "--study-name", "pred",
                                               "--json"]).output)
    sources = {r["search"]["trial_number"]: (r["search"]["throughput_source"], r["throughput"]["median"]) for r in rows}
    assert sources == {0: ("predicted", 500.0), 1: ("measured", 280.0)}
    assert all(r["fd_loss_source"] == "proxy distillation" for r in rows)
    text = CliRunner().invoke(cli, ["search", "best", "--storage", url, "--study-name", "pred"]).output
    assert "predicted" in text and "measured" in text and "surrogate" not in text
