"""The live front table of a running search (zoo.search.live) and the time estimate before the first trial."""

from __future__ import annotations

import io
import logging
import sys

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from zoo.cli import cli
from zoo.search import study as runner
from zoo.search.cost import TrialCost, TrialPlan, measure_trial_cost
from zoo.search.live import (LiveFront, Progress, eta_seconds, footer, front_points, front_table, live_wanted,
                             trial_point)
from zoo.search.objective import ObjectiveSettings, SearchObjective
from zoo.search.space import parse_limits
from zoo.search.spaces.eradio import ERadioSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = ["dim=32", "depth1=1", "depth2=1", "depth3=1", "depth4=1"]
TINY_ARGS = [a for item in TINY for a in ("--limit", item)]
BENCH_ARGS = ["--bench-batch", "1", "--bench-repeats", "1", "--bench-steps", "1", "--bench-warmup", "0"]
TINY_BENCH = dict(batch_size=1, warmup=0, repeats=1, steps_per_repeat=1, threads=1)
DIST = {"x": FloatDistribution(0.0, 1.0)}


def record(throughput: float, fd_loss: float, params_m: float = 1.0, source: str = "proxy distillation",
           throughput_source: str | None = None, rung: int | None = None, rung_steps: int | None = None,
           feasible: bool = True, note: str | None = None) -> dict:
    search = {"study_name": "s", "trial_number": 0, "feasible": feasible}
    if throughput_source:
        search["throughput_source"] = throughput_source
    if rung is not None:
        search.update(rung=rung, rung_steps=rung_steps)
    data = {"run_id": "r", "backbone": "b", "kind": "search-trial", "throughput": {"median": throughput},
            "fd_loss": fd_loss, "params_m": params_m, "search": search, "note": note}
    if source is not None:
        data["fd_loss_source"] = source
    return data


def trial(number: int, state: TrialState = TrialState.COMPLETE, **kwargs) -> optuna.trial.FrozenTrial:
    attrs = kwargs.pop("attrs", {})
    data = record(**kwargs) if kwargs else None
    values = [data["throughput"]["median"], data["fd_loss"]] if data and state == TrialState.COMPLETE else None
    made = create_trial(state=state, values=values, params={"x": 0.5}, distributions=DIST,
                        user_attrs={**({"record": data} if data else {}), **attrs})
    made.number = number
    return made


def render(table, width: int = 160) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(table)
    return console.export_text()


def rows(text: str) -> list[list[str]]:
    """The body rows of a rendered table, as cell texts."""
    out = []
    for line in text.splitlines():
        if line.startswith("│"):
            out.append([cell.strip() for cell in line.strip("│").split("│")])
    return out


# --------------------------------------------------------------------------- the table (pure)


def test_front_table_ranks_the_front_and_marks_sources():
    trials = [
        trial(0, throughput=100.0, fd_loss=0.50, params_m=2.0),  # on the front (lowest loss)
        trial(1, throughput=300.0, fd_loss=0.70, params_m=1.0, throughput_source="predicted"),  # front (fastest)
        trial(2, throughput=90.0, fd_loss=0.80),  # dominated by 0 and 1
        trial(3, throughput=200.0, fd_loss=0.60, source="surrogate"),  # front, middle
        trial(4, throughput=999.0, fd_loss=0.10, feasible=False),  # infeasible: never a row
        trial(5, TrialState.FAIL),
        trial(6, TrialState.PRUNED, attrs={"skipped": "duplicate of trial 0"}),
        trial(7, TrialState.RUNNING),
    ]
    progress = Progress(n_trials=20, complete=5, pruned=1, failed=1, running=1, elapsed_s=125.0, eta_s=3000.0)
    text = render(front_table(trials, progress))
    body = rows(text)
    assert [r[1] for r in body] == ["0", "3", "1"]  # best FD loss first; 2 (dominated) and 4 (infeasible) absent
    assert [r[0] for r in body] == ["1", "2", "3"]
    by_trial = {r[1]: r for r in body}
    assert by_trial["0"][2:7] == ["100.0", "measured", "0.5000", "proxy", "2.00"]
    assert by_trial["1"][2:4] == ["300.0", "predicted"]
    assert by_trial["3"][4:6] == ["0.6000", "surrogate"]
    assert "current front (3 of 5 evaluated)" in text  # 0-4 were evaluated (4 infeasible), 5-7 were not
    flat = " ".join(text.split())  # the caption wraps at the table's width
    assert "trials 7/20: 5 done, 1 pruned, 1 failed, 1 running; elapsed 2 min, ETA ~50 min" in flat
    assert "rung" not in text.split("\n")[1]


def test_front_table_rungs_measured_front_and_row_cap():
    trials = [trial(n, TrialState.PRUNED if n < 3 else TrialState.COMPLETE, throughput=100.0 + n, fd_loss=0.9 - n / 100,
                    throughput_source="predicted", rung=0 if n < 3 else 2, rung_steps=10 if n < 3 else 90)
              for n in range(5)]  # each is faster and better than the last: only trial 4 is on the front
    measured = {"4": {"throughput": {"median": 110.5}, "predicted_throughput": 104.0}}
    text = render(front_table(trials, Progress(12), rungs=[10, 30, 90], measured=measured))
    (row,) = rows(text)
    assert row[1] == "4" and row[2:4] == ["110.5", "measured"] and row[-1] == "3/3 (90 steps)"
    # without the measurement trial 4 is still the front; a rung-0 trial shows its rung
    spread = [trial(n, TrialState.PRUNED, throughput=100.0 * (n + 1), fd_loss=0.5 + n / 10, rung=0, rung_steps=10)
              for n in range(4)]
    text = render(front_table(spread, Progress(12), rungs=[10, 30, 90], max_rows=2))
    assert [r[1] for r in rows(text)] == ["0", "1"] and all(r[-1] == "1/3 (10 steps)" for r in rows(text))
    assert "2 more on the front (zoo search best)" in " ".join(text.split())


def test_single_objective_front_is_the_best_fd_loss():
    trials = [trial(0, throughput=10.0, fd_loss=0.5), trial(1, throughput=99.0, fd_loss=0.6)]
    points = [trial_point(t) for t in trials]
    assert [p.number for p in front_points(points, single_objective=True)] == [0]
    assert [p.number for p in front_points(points)] == [0, 1]


def test_old_dry_run_records_are_marked_surrogate():
    old = trial(0, throughput=10.0, fd_loss=0.5, source=None, note="dry run: fd_loss is a surrogate")
    assert trial_point(old).fd_loss_source == "surrogate"
    assert trial_point(trial(1, throughput=10.0, fd_loss=0.5, source=None)).fd_loss_source == "proxy"


def test_footer_and_eta():
    assert footer(Progress(10)) == "trials 0/10: 0 done, 0 pruned, 0 failed, 0 running"
    # pace seen here: 2 trials in 100 s, 6 left -> 300 s
    assert eta_seconds(10, finished=4, running=1, finished_here=2, elapsed_s=100.0, seconds_per_trial=50.0) == 300.0
    # nothing finished yet: the estimate per trial, less the time the running one has had
    assert eta_seconds(10, 0, 1, 0, 20.0, 30.0) == pytest.approx(280.0)
    assert eta_seconds(10, 0, 0, 0, 0.0, None) is None and eta_seconds(5, 5, 0, 5, 9.0, None) == 0.0


def test_live_is_on_for_terminals_only_unless_asked(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    terminal = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert live_wanted(None, terminal) and not live_wanted(None, pipe)
    assert not live_wanted(None, terminal, quiet=True)
    assert live_wanted(True, pipe) and not live_wanted(False, terminal)
    monkeypatch.setenv("CI", "true")
    assert not live_wanted(None, terminal) and live_wanted(True, terminal)


# --------------------------------------------------------------------------- live, during a worker


def tiny_space() -> ERadioSpace:
    return ERadioSpace((64,), limits=parse_limits(TINY))


def test_live_front_keeps_trial_lines_and_log_records_whole(tmp_path, capsys):
    """Under Live (a terminal console), each per-trial line and a log record written during the run come out
    whole, above the table, and nothing goes around the console to the real stderr."""
    space = tiny_space()
    settings = ObjectiveSettings(out_dir=tmp_path / "runs", device="cpu", dry_run=True, bench=TINY_BENCH)
    study = runner.open_study(optuna.storages.InMemoryStorage(), "live", space)
    # Optuna's own handler holds the stderr of the moment Optuna was imported; here, the test's stderr.
    optuna_logger = logging.getLogger("optuna")
    handler = logging.StreamHandler(sys.stderr)
    saved = optuna_logger.handlers[:]
    optuna_logger.handlers[:] = [handler]
    logger = logging.getLogger("optuna.live-test")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150, color_system=None)
    lines = []
    view = LiveFront(study, 3, console, seconds_per_trial=5.0)

    def on_trial(t) -> None:
        line = f"trial {t.number}: {t.state.name.lower()} done-marker-{t.number}"
        lines.append(line)
        console.print(line)
        logger.warning("log-during-live-%d", t.number)
        view.update()

    try:
        with view:
            report = runner.run_worker(study, SearchObjective(space, settings, study_name="live"), 3,
                                       on_trial=on_trial)
    finally:
        optuna_logger.handlers[:] = saved
    assert report.complete == 3 and handler.stream is sys.stderr  # the handler's stream is given back
    text = out.getvalue()
    assert len(lines) == 3
    for number, line in enumerate(lines):
        assert line in text, text
        assert f"log-during-live-{number}" in text
    assert "study 'live': current front" in text and "surrogate" in text  # the table was drawn
    assert "trials 3/3: 3 done" in " ".join(render(view.renderable()).split())
    assert "log-during-live" not in capsys.readouterr().err


def test_cli_live_prints_the_front_after_each_trial(tmp_path):
    base = ["search", "run", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--n-trials", "2", "--dry-run",
            "--resolution", "64", *TINY_ARGS, *BENCH_ARGS, "--device", "cpu", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(cli, [*base, "--live"])
    assert result.exit_code == 0, result.output
    assert result.output.count("current front") == 2  # after each of the two trials (not a terminal: printed)
    flat = " ".join(result.output.split())
    assert "trials 1/2: 1 done" in flat and "trials 2/2: 2 done" in flat
    assert "surrogate" in result.output and "measured" in result.output
    first_line = result.output.index("trial 0:")
    assert first_line < result.output.index("current front")  # the trial's line, then the table
    plain = CliRunner().invoke(cli, [*base, "--study-name", "plain"])  # not a terminal: no live table
    assert plain.exit_code == 0, plain.output
    assert "current front" not in plain.output and "trial 1:" in plain.output


# --------------------------------------------------------------------------- the estimate before the first trial


def test_trial_plan_counts_what_a_trial_does(tmp_path):
    from zoo.search.fidelity import Fidelity, MultiFidelityObjective
    from zoo.search.preview import trial_plan

    space = tiny_space()
    settings = ObjectiveSettings(out_dir=tmp_path, device="cpu", recipe_overrides=("train.steps=30", "eval.every=10",
                                 "train.checkpoint_every=10", "eval.images=2"))
    plan = trial_plan(SearchObjective(space, settings))
    assert (plan.steps, plan.evaluations, plan.checkpoints, plan.runs) == (30, 3, 3, 1)  # at 10, 20 and the end
    assert plan.bench_forwards == 5 + 5 * 10 and plan.eval_images == 2  # zoo bench's warm-up + repeats x steps
    rungs = MultiFidelityObjective(space, settings, fidelity=Fidelity((10, 30, 90), eta=3))
    plan = trial_plan(rungs)
    # all reach rung 0 (10 steps: its end), 1/3 rung 1 (20, 30), 1/9 rung 2 (40..90: 6 checkpoints)
    assert plan.checkpoints == pytest.approx(1 + 2 / 3 + 6 / 9)
    assert plan.runs == pytest.approx(1 + 1 / 3 + 1 / 9) == plan.evaluations
    assert plan.steps == pytest.approx(10 + 20 / 3 + 60 / 9)
    rungs.tables = {64: object()}  # throughput predicted from a latency table: no measurement per trial
    assert trial_plan(rungs).bench_forwards == 0


def test_trial_cost_adds_up_its_pieces():
    cost = TrialCost(build_s=1.0, step_s=2.0, forward_s=0.5, bench_batch=8, gmacs_s=3.0, checkpoint_bytes=400,
                     write_bytes_per_s=100.0)
    plan = TrialPlan(steps=30, evaluations=3, eval_images=16, checkpoints=3, runs=1, bench_forwards=55)
    bench = 1.0 + 3.0 + 55 * 0.5
    assert cost.seconds(plan) == pytest.approx(bench + (1.0 + 3.0) + 30 * 2.0 + 3 * 1.0 + 3 * 4.0)


def test_measured_trial_cost_of_a_tiny_candidate(tmp_path):
    from zoo.recipe import load_recipe
    from zoo.teachers import build_teachers

    space = tiny_space()
    candidate = space.params_to_candidate(space.random_params(__import__("random").Random(1)))
    recipe = load_recipe("search-proxy", overrides=["train.batch_size=2", "bench.enabled=false"])
    teachers = build_teachers(list(recipe.teachers), "cpu")
    cost = measure_trial_cost(candidate, recipe, teachers, bench_batch=2, out_dir=tmp_path / "not-yet")
    assert cost.step_s > 0 and cost.forward_s > 0 and cost.build_s > 0 and cost.write_bytes_per_s > 0
    params = sum(p.numel() for p in candidate.build().parameters())
    # fp32 weights + AdamW's two moments of the backbone, and more for the heads
    assert cost.checkpoint_bytes > 12 * params
    assert not list(tmp_path.iterdir())  # the write probe went to the nearest existing folder and is gone


def test_preview_line_says_time_per_trial_before_the_first(tmp_path):
    from zoo.search.preview import sweep_preview

    space = tiny_space()
    settings = ObjectiveSettings(out_dir=tmp_path, device="cpu", bench=TINY_BENCH,
                                 recipe_overrides=("train.batch_size=2", "train.steps=4", "eval.every=2"))
    study = runner.open_study(optuna.storages.InMemoryStorage(), "p", space)
    preview = sweep_preview(space, settings, 5, study, objective=SearchObjective(space, settings), time_steps=True)
    line = " ".join(preview.line().split())
    assert preview.estimate_seconds == pytest.approx(preview.cost.seconds(preview.plan))
    assert preview.estimate_seconds > 4 * preview.step_seconds  # steps, and the rest on top
    assert "per trial: 4 steps of" in line and "teachers included" in line and "checkpoint writes" in line
    assert preview.per_trial_seconds() == preview.estimate_seconds
