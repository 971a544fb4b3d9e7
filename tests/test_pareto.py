"""zoo.pareto and ``zoo pareto``: the front, loading, environments, joining, outputs, errors."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from zoo.cli import cli
from zoo.errors import ZooError
from zoo.pareto import (Objective, analyse, available_metrics, default_direction, join_bench_throughput,
                        load_records, load_study_records, pareto_front, parse_objective, plot_html, plot_png,
                        resolve_metric, to_csv)
from zoo.pareto.versus import hypervolume_2d

# --------------------------------------------------------------------------- synthetic records

# The spellings zoo.bench writes: device "cuda:0"/"cpu", dtype fp32/bf16/fp16, threads.
A100 = dict(device="cuda:0", device_name="NVIDIA A100", batch_size=128, dtype="fp16")
XEON = dict(device="cpu", device_name="Intel Xeon", batch_size=32, dtype="fp32", threads=4)


def _throughput(median: float, env: dict, resolution=(224, 224)) -> dict:
    return {"median": median, "min": median * 0.95, "max": median * 1.05, "values": [median] * 3, "unit": "img/s",
            "resolution": list(resolution), "channels_last": True, "compile": False, "fuse": True, "threads": None,
            **env}


def distill_record(backbone: str, speed: float | None, fd_loss: float | None, env: dict = A100,
                   random_teacher: bool = False, resolution=(224, 224), compile: str | bool = False,
                   **extra) -> dict:
    return {
        "kind": "distill", "run_id": f"{backbone}-run", "run_dir": f"runs/{backbone}-run", "backbone": backbone,
        "family": backbone.split("-")[0], "backbone_config": {}, "params_m": 10.0, "gmacs": 1.5,
        "resolution": list(resolution),
        "throughput": None if speed is None else {**_throughput(speed, env, resolution), "compile": compile},
        "fd_loss": fd_loss,
        "losses": {"clip/summary": 0.5, "clip/features": 0.6, "dinov2/summary": 0.4,
                   "dinov2/features": fd_loss if fd_loss is not None else 0.9},
        "train_loss_first": 2.0, "train_loss_last": 1.0, "steps": 10, "wall_time_s": 3.0,
        "teachers": [{"spec": "clip:tiny", "random": random_teacher}, {"spec": "dinov2:tiny", "random": random_teacher}],
        "random_teacher": random_teacher, "recipe": "smoke", "balancing": "naive", "device": env["device"],
        "versions": {"torch": "2"}, "created": "2026-11-29T00:00:00", "status": "completed", **extra,
    }


def bench_record(backbone: str, speed: float, env: dict = XEON, created: str = "2026-11-29T00:00:00",
                 resolution=(224, 224)) -> dict:
    return {"kind": "bench", "backbone": backbone, "family": backbone.split("-")[0], "params_m": 10.0, "gmacs": 1.5,
            "flops_skipped": {"aten::add": 3}, "peak_memory_mb": 12.0, "throughput": _throughput(speed, env, resolution),
            "versions": {"torch": "2"}, "created": created}


def write_run(root: Path, record: dict, name: str | None = None) -> Path:
    folder = root / (name or record["run_id"])
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(record))
    # A run's own per-step log must not be mistaken for records.
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    return folder


def write_bench(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# (backbone, throughput, FD loss): Table 7 of the paper, front = effnet, resnet, regnet, eradio-b, eradio-l.
TABLE7 = [("efficientnetv2-s", 9017, 0.415), ("resnetv2-101", 7283, 0.405), ("regnety-064", 6573, 0.394),
          ("efficientvit-l1", 6048, 0.376), ("convnext-b", 1805, 0.358), ("nfnet-f3", 1777, 0.340),
          ("swinv2-s", 1497, 0.364), ("maxvit-b", 1486, 0.340), ("mvitv2-b", 975, 0.345),
          ("eradio-b", 6422, 0.319), ("eradio-l", 3472, 0.265)]
TABLE7_FRONT = {"efficientnetv2-s", "resnetv2-101", "regnety-064", "eradio-b", "eradio-l"}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for backbone, speed, fd in TABLE7:
        write_run(root, distill_record(backbone, speed, fd, random_teacher=backbone == "eradio-l"))
    write_bench(root / "bench.jsonl", [bench_record("efficientnetv2-s", 450.0), bench_record("eradio-b", 300.0)])
    return root


# --------------------------------------------------------------------------- the front


def test_front_hand_examples():
    # maximise speed, minimise loss
    pts = np.array([[10, 0.5], [5, 0.3], [5, 0.4], [1, 0.2], [0.5, 0.25], [10, 0.5]])
    assert pareto_front(pts, [True, False]).tolist() == [True, True, False, True, False, True]
    # equal first value: only the best second value survives, in every method
    for method in ("2d", "nd"):
        assert pareto_front(np.array([[1, 1], [1, 2], [2, 1]]), [False, False], method).tolist() == [True, False, False]
    # a single point, all duplicates, empty input
    assert pareto_front(np.array([[3.0, 4.0]]), [True, True]).tolist() == [True]
    assert pareto_front(np.ones((4, 2)), [True, False]).all()
    assert pareto_front(np.zeros((0, 2)), [True, False]).shape == (0,)


def test_front_nan_is_excluded_and_dominates_nothing():
    pts = np.array([[100.0, np.nan], [1.0, 0.5], [2.0, 0.4], [np.nan, 0.0]])
    mask = pareto_front(pts, [True, False])
    assert mask.tolist() == [False, False, True, False]
    assert not pareto_front(np.full((3, 2), np.nan), [True, True]).any()


def test_front_three_objectives_by_hand():
    # maximise speed, minimise loss, minimise params
    pts = np.array([[10, 0.5, 5], [10, 0.5, 6], [5, 0.3, 50], [5, 0.3, 50], [4, 0.3, 60], [1, 0.9, 1]])
    assert pareto_front(pts, [True, False, False]).tolist() == [True, False, True, True, False, True]


def _optuna_front(points: np.ndarray, maximize: list[bool]) -> np.ndarray:
    from optuna.study._multi_objective import _is_pareto_front

    loss = points * np.where(maximize, -1.0, 1.0)
    return _is_pareto_front(loss, assume_unique_lexsorted=False)


@pytest.mark.parametrize("k", [2, 3])
def test_front_matches_optuna_on_random_points_with_ties(k):
    rng = np.random.default_rng(k)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        # small integer grid: many ties and exact duplicates
        points = rng.integers(0, 6, size=(n, k)).astype(float)
        if trial % 3 == 0:
            points = np.concatenate([points, points[: n // 2]])
        maximize = [bool(b) for b in rng.integers(0, 2, size=k)]
        expected = _optuna_front(points, maximize)
        got = pareto_front(points, maximize)
        assert got.tolist() == expected.tolist(), (points, maximize)
        if k == 2:
            assert pareto_front(points, maximize, method="nd").tolist() == got.tolist()
    # continuous values too, and NaN rows leave the rest of the front unchanged
    points = rng.normal(size=(300, k))
    assert pareto_front(points, [True] * k).tolist() == _optuna_front(points, [True] * k).tolist()
    with_nan = np.concatenate([points, np.full((5, k), np.nan)])
    assert pareto_front(with_nan, [True] * k)[:300].tolist() == _optuna_front(points, [True] * k).tolist()


# --------------------------------------------------------------------------- loading and metrics


def test_load_records_from_folders_files_and_jsonl(runs: Path):
    records = load_records([runs])
    assert len(records) == len(TABLE7) + 2  # metrics.jsonl of each run is not a record file
    kinds = sorted({r.kind for r in records})
    assert kinds == ["bench", "distill"]
    one = load_records([runs / "eradio-b-run"])
    assert [r.backbone for r in one] == ["eradio-b"]
    assert one[0].metrics["throughput.median"] == 6422 and one[0].metrics["losses.dinov2/features"] == 0.319
    assert load_records([runs / "eradio-l-run" / "summary.json"])[0].random_teacher
    assert len(load_records([runs / "bench.jsonl"])) == 2
    # the same file reached twice is loaded once
    assert len(load_records([runs, runs / "eradio-b-run"])) == len(records)


def test_metric_names_aliases_and_directions(runs: Path):
    records = load_records([runs])
    names = available_metrics(records)
    assert {"throughput", "throughput.median", "fd_loss", "params_m", "losses.dinov2/features"} <= set(names)
    assert not any(name.startswith(("flops_skipped", "versions")) for name in names)
    assert resolve_metric("throughput", records) == "throughput.median"
    assert resolve_metric("dinov2/features", records) == "losses.dinov2/features"
    assert resolve_metric("losses.clip/summary", records) == "losses.clip/summary"
    with pytest.raises(ZooError, match="unknown metric 'fd_los'.*fd_loss"):
        resolve_metric("fd_los", records)
    assert default_direction("throughput.median") == "max" and default_direction("knn_top1") == "max"
    assert default_direction("fd_loss") == "min" and default_direction("gmacs") == "min"
    with pytest.raises(ZooError, match="--x-dir"):
        parse_objective("steps", records)
    assert parse_objective("steps:max", records) == Objective("steps", "max")


@pytest.mark.parametrize("content, message", [
    ('{"kind": "distill", "backbone": "a"', "summary.json: invalid JSON at line 1"),
    (json.dumps({k: v for k, v in distill_record("a", 1, 0.1).items() if k != "fd_loss"}), "missing field 'fd_loss'"),
    (json.dumps({**distill_record("a", 1, 0.1), "throughput": {"median": 3.0}}), "missing field 'throughput.device_name'"),
    (json.dumps({**distill_record("a", 1, 0.1), "kind": "eval"}), "unknown record kind 'eval'"),
])
def test_bad_records_name_the_file_and_field(tmp_path: Path, content: str, message: str):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "summary.json").write_text(content)
    with pytest.raises(ZooError, match=message) as info:
        load_records([tmp_path])
    assert str(folder / "summary.json") in str(info.value)


def test_runtimes_are_never_on_one_front(tmp_path: Path):
    """The same backbones under eager PyTorch and onnxruntime: two groups, each with its own front."""
    onnx = {**XEON, "runtime": "onnxruntime", "runtime_version": "1.32.0"}
    write_bench(tmp_path / "bench.jsonl", [bench_record("a", 100.0), bench_record("b", 50.0),
                                           bench_record("a", 160.0, env=onnx), bench_record("b", 55.0, env=onnx)])
    records = load_records([tmp_path / "bench.jsonl"])
    objectives = [parse_objective("throughput", records), parse_objective("params_m", records)]
    groups = analyse(records, objectives).groups
    assert sorted(g.envs[0].runtime for g in groups) == ["eager", "onnxruntime"]
    assert all(len(g.rows) == 2 for g in groups)
    assert any("onnxruntime" in g.envs[0].describe() for g in groups)


def test_bad_jsonl_line_and_skip_invalid(tmp_path: Path):
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps(bench_record("a", 1.0)) + "\n{oops\n" + json.dumps(bench_record("b", 2.0)) + "\n")
    with pytest.raises(ZooError, match=r"bench.jsonl:2: invalid JSON"):
        load_records([path])
    warnings = []
    records = load_records([path], skip_invalid=True, warn=warnings.append)
    assert [r.backbone for r in records] == ["a", "b"] and len(warnings) == 1 and "bench.jsonl:2" in warnings[0]


def test_empty_or_missing_inputs(tmp_path: Path):
    with pytest.raises(ZooError, match="no records in"):
        load_records([tmp_path])
    with pytest.raises(ZooError, match="no such file or folder"):
        load_records([tmp_path / "nope"])


# --------------------------------------------------------------------------- environments and joining


def _by_label(analysis):
    return {row.record.label: row for group in analysis.groups for row in group.rows}


def test_table7_front(runs: Path):
    records = [r for r in load_records([runs]) if r.kind == "distill"]
    objectives = [parse_objective("throughput", records), parse_objective("fd_loss", records)]
    analysis = analyse(records, objectives)
    assert len(analysis.groups) == 1
    assert {row.record.label for row in analysis.groups[0].front} == TABLE7_FRONT
    speeds = [row.values[0] for row in analysis.groups[0].rows]
    assert speeds == sorted(speeds, reverse=True)  # fastest first, as Table 7
    assert analysis.random_teacher


def test_environments_are_never_mixed(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, distill_record("fast-gpu", 5000, 0.40, env=A100))
    write_run(root, distill_record("good-gpu", 1000, 0.30, env=A100))
    # On the CPU: far slower, but a better loss-per-speed among CPU records; a GPU record would dominate it.
    write_run(root, distill_record("cpu-a", 50, 0.45, env=XEON))
    write_run(root, distill_record("cpu-b", 40, 0.50, env=XEON))
    records = load_records([root])
    objectives = [parse_objective("throughput", records), parse_objective("fd_loss", records)]
    analysis = analyse(records, objectives)
    assert len(analysis.groups) == 2 and "2 measurement environments" in analysis.notes[0]
    fronts = [{row.record.label for row in g.front} for g in analysis.groups]
    assert {"fast-gpu", "good-gpu"} in fronts and {"cpu-a"} in fronts
    only_cpu = analyse(records, objectives, device="cpu")
    assert len(only_cpu.groups) == 1 and only_cpu.groups[0].envs[0].device_name == "Intel Xeon"
    assert len(analyse(records, objectives, batch_size=128).groups) == 1
    assert [g.envs[0].dtype for g in analyse(records, objectives, dtype="float32").groups] == ["fp32"]  # alias
    with pytest.raises(ZooError, match="--env 3 is out of range.*1: .*2: "):
        analyse(records, objectives, env_index=3)
    # one PNG panel per environment: two panels side by side
    import matplotlib.image

    height, width = matplotlib.image.imread(io.BytesIO(plot_png(analysis))).shape[:2]
    assert width > 1.8 * height
    # CPU thread count and torch.compile also change the speed: separate groups
    write_run(root, distill_record("cpu-8-threads", 60, 0.55, env={**XEON, "threads": 8}))
    write_run(root, distill_record("gpu-compiled", 9000, 0.60, env=A100, compile="max-autotune"))
    records = load_records([root])
    assert len(analyse(records, objectives).groups) == 4
    mixed = analyse(records, objectives, group_by="none")
    assert len(mixed.groups) == 1 and mixed.groups[0].mixed and "mixed" in mixed.groups[0].describe()
    assert {row.record.label for row in mixed.groups[0].front} == {"gpu-compiled", "fast-gpu", "good-gpu"}


def test_throughput_from_bench_joins_explicitly(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, distill_record("resnet-18", None, 0.40))  # distilled without a speed measurement
    write_run(root, distill_record("convnext-atto", 800, 0.35))
    write_run(root, distill_record("orphan", 900, 0.30))
    write_bench(root / "bench.jsonl", [
        bench_record("resnet-18", 100.0, created="2026-01-01"), bench_record("resnet-18", 120.0, created="2026-02-01"),
        bench_record("convnext-atto", 60.0), bench_record("convnext-atto", 2000.0, env=A100),
        bench_record("resnet-18", 999.0, resolution=(160, 160)),  # another resolution: never used
    ])
    records = load_records([root])
    warnings = []
    joined = join_bench_throughput(records, warn=warnings.append)
    got = sorted((r.backbone, r.env.device_name, r.metrics["throughput.median"]) for r in joined)
    assert got == [("convnext-atto", "Intel Xeon", 60.0), ("convnext-atto", "NVIDIA A100", 2000.0),
                   ("resnet-18", "Intel Xeon", 120.0)]  # the latest bench per environment
    assert all(r.throughput_source.startswith("bench ") and r.kind == "distill" for r in joined)
    assert any("left out orphan" in w for w in warnings)
    objectives = [Objective("throughput.median", "max"), Objective("fd_loss", "min")]
    analysis = analyse(records, objectives, throughput_from="bench", device="xeon")
    assert {row.record.label for row in analysis.groups[0].front} == {"resnet-18", "convnext-atto"}
    # By default, records keep their own throughput and bench rows are reported as missing fd_loss.
    default = analyse(records, objectives)
    assert any("missing fd_loss" in note for g in default.groups for note in g.notes)


def test_study_records(tmp_path: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = optuna.create_study(study_name="eradio", storage=storage, directions=["maximize", "minimize"])
    for number, (speed, fd) in enumerate([(100, 0.5), (50, 0.3), (40, 0.6)]):
        trial = study.ask()
        record = {**distill_record("eradio", speed, fd), "kind": "search-trial", "trial_number": number}
        trial.set_user_attr("record", record)
        study.tell(trial, [speed, fd])
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    records = load_study_records(storage)  # the only study: no name needed
    assert [r.label for r in records] == ["trial 0", "trial 1", "trial 2"]
    objectives = [Objective("throughput.median", "max"), Objective("fd_loss", "min")]
    front = {row.record.label for row in analyse(records, objectives).groups[0].front}
    assert front == {f"trial {t.number}" for t in study.best_trials} == {"trial 0", "trial 1"}
    with pytest.raises(ZooError, match="unknown study 'eradoi'.*eradio"):
        load_study_records(storage, "eradoi")
    missing = tmp_path / "nope.db"
    with pytest.raises(ZooError, match="no such Optuna storage"):
        load_study_records(f"sqlite:///{missing}")
    assert not missing.exists()
    result = CliRunner().invoke(cli, ["pareto", "--study", storage, "--study-name", "eradio"])
    assert result.exit_code == 0, result.output
    assert "trial 1" in result.output


# --------------------------------------------------------------------------- the command


def _run(*args: str):
    return CliRunner().invoke(cli, ["pareto", *args])


def test_cli_table_marks_the_front(runs: Path):
    result = _run(str(runs), "--env", "1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "│" in line]
    starred = {name for name, *_ in TABLE7 if any(name in line and "★" in line for line in lines)}
    assert starred == TABLE7_FRONT
    assert "NVIDIA A100 · 224x224 · fp16 · batch 128" in result.output
    assert "eradio-l†" in result.output  # the random-teacher run is marked


def test_cli_csv_json_png_html(runs: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = _run(str(runs), "--csv", str(out / "f.csv"), "--json", str(out / "f.json"),
                  "--png", str(out / "f.png"), "--html", str(out / "f.html"), "--title", "Table 7 again")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "f.json").read_text())["rows"]
    on_front = {r["label"] for r in rows if r["on_front"]}
    assert on_front == TABLE7_FRONT
    assert all({"group", "on_front", "metrics", "env", "missing"} <= set(r) for r in rows)
    bench_rows = [r for r in rows if r["kind"] == "bench"]
    assert len(bench_rows) == 2 and all(r["missing"] == ["fd_loss"] and not r["on_front"] for r in bench_rows)
    csv_text = (out / "f.csv").read_text()
    import csv

    csv_rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert {r["label"] for r in csv_rows if r["on_front"] == "true"} == TABLE7_FRONT
    assert "throughput.median" in csv_rows[0] and "losses.dinov2/features" in csv_rows[0]

    png = (out / "f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(io.BytesIO(png)).shape[:2]
    assert width > 400 and height > 300

    html = (out / "f.html").read_text()
    assert "Table 7 again" in html and "random teacher" in html
    assert "eradio-b" in html and "6422" in html and "NVIDIA A100" in html
    # plotly.js is inline (megabytes, no external script), so the page works offline
    assert len(html) > 1_000_000 and not re.search(r"<script[^>]+src=", html)
    assert not list(out.glob(".*.tmp"))


def test_cli_more_objectives_table_only(runs: Path, tmp_path: Path):
    result = _run(str(runs), "--env", "1", "--objective", "throughput", "--objective", "fd_loss",
                  "--objective", "params_m:min")
    assert result.exit_code == 0, result.output
    assert "params (M) ↓" in result.output
    result = _run(str(runs), "--objective", "throughput", "--objective", "fd_loss", "--objective", "gmacs",
                  "--png", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "exactly two objectives" in result.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("make, args, message", [
    (lambda root: root.mkdir(), [], "no records in"),
    (lambda root: write_run(root, {k: v for k, v in distill_record("a", 1, 0.2).items() if k != "backbone"}),
     [], "missing field 'backbone'"),
    (lambda root: write_run(root, distill_record("a", 1, 0.2)), ["--y", "knn_top"], "unknown metric 'knn_top'"),
    (lambda root: write_run(root, distill_record("a", 1, 0.2)), ["--y", "knn_top1"], "unknown metric 'knn_top1'"),
    (lambda root: write_run(root, distill_record("a", 1, 0.2)), ["--resolution", "abc"], "is not N or HxW"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, make, args, message):
    root = tmp_path / "runs"
    make(root)
    result = _run(str(root), *args)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in result.output


def test_pareto_command_does_not_import_torch(runs: Path):
    code = ("import sys; from zoo.cli import main\n"
            "try:\n    main(['pareto', sys.argv[1], '--env', '1'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch' in sys.modules, 'optuna' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(runs)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False"


def test_repeated_backbones_get_distinct_labels(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, {**distill_record("resnet-18", 100, 0.4), "run_id": "r18-a"})
    write_run(root, {**distill_record("resnet-18", 90, 0.3), "run_id": "r18-b"})
    records = load_records([root])
    analysis = analyse(records, [Objective("throughput.median", "max"), Objective("fd_loss", "min")])
    assert sorted(row.label for row in analysis.groups[0].rows) == ["resnet-18 (r18-a)", "resnet-18 (r18-b)"]
    assert "resnet-18 (r18-b)" in to_csv(analysis)


def test_cli_default_runs_folder(tmp_path: Path):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        result = runner.invoke(cli, ["pareto"])
        assert result.exit_code == 2 and "no runs/ folder here" in result.output
        write_run(Path("runs"), distill_record("resnet-18", 100, 0.4))
        result = runner.invoke(cli, ["pareto"])
        assert result.exit_code == 0 and "★" in result.output and "resnet-18" in result.output


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="no chromium for a headless check of the HTML page")
def test_html_renders_in_headless_chromium(runs: Path, tmp_path: Path):
    records = load_records([runs])
    analysis = analyse(records, [Objective("throughput.median", "max"), Objective("fd_loss", "min")], env_index=1)
    page = tmp_path / "front.html"
    page.write_text(plot_html(analysis))
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "main-svg" in done.stdout  # plotly drew the figure, offline


# --------------------------------------------------------------------------- search trials beside runs


PARAMS = {"dim": 48, "in_dim": 32, "depth1": 1, "depth2": 2, "depth3": 4, "depth4": 1, "window3": 7}


def write_trial(root: Path, number: int, speed: float, fd: float, feasible: bool = True, legacy: bool = False,
                pruned: bool = False) -> Path:
    """A trial folder as ``zoo search --out`` leaves it: schema 2 (one summary.json with a ``search`` block),
    or schema 1 (a distill summary.json without throughput, the trial's record in ``trial.json`` beside it)."""
    from zoo.runs import RunRecord, SearchInfo, write_record

    folder = root / f"study-{number:04d}"
    trial = distill_record(f"eradio-search-{number:04d}", speed, fd, run_id=f"study-{number:04d}")
    if legacy:
        summary = {**trial, "throughput": None}  # the proxy distillation itself measures no speed
        write_run(root, summary, name=folder.name)
        flat = {**trial, "kind": "search-trial", "study_name": "study", "trial_number": number,
                "params": PARAMS, "feasible": feasible, "constraints": {"min_throughput": 1.0}}
        (folder / "trial.json").write_text(json.dumps(flat))
    else:
        record = RunRecord.from_dict({**trial, "kind": "search-trial"})
        record.search = SearchInfo(study_name="study", trial_number=number, params=PARAMS, feasible=feasible,
                                   extra={"pruned": True} if pruned else {})
        write_record(folder, record)
    return folder


@pytest.fixture
def search_out(tmp_path: Path) -> Path:
    root = tmp_path / "search-out"
    write_trial(root, 0, 9500, 0.42, legacy=True)  # fastest of all: on the front
    write_trial(root, 1, 3000, 0.50, legacy=True)  # dominated
    write_trial(root, 2, 5000, 0.30)  # between eradio-l and regnety: on the front
    write_trial(root, 3, 9999, 0.01, feasible=False)  # would dominate everything, but violates the constraints
    write_trial(root, 4, 9998, 0.02, pruned=True)  # stopped at a lower rung: its figures are a shorter proxy's
    return root


def test_search_out_folder_reads_trials_of_both_schemas(search_out: Path):
    warnings = []
    records = load_records([search_out], warn=warnings.append)
    assert sorted(r.label for r in records) == ["trial 0 (d48 1-2-4-1)", "trial 1 (d48 1-2-4-1)",
                                                "trial 2 (d48 1-2-4-1)"]
    assert {r.kind for r in records} == {"search-trial"}
    assert any("left out 1 trial(s)" in w and "constraints" in w for w in warnings)
    assert any("left out 1 trial(s)" in w and "lower rung" in w for w in warnings)
    legacy = next(r for r in records if r.trial_number == 0)
    # trial.json merged as zoo.runs.read_record merges it: its throughput and environment win
    assert legacy.metrics["throughput.median"] == 9500 and legacy.env.device_name == "NVIDIA A100"
    assert legacy.search["study_name"] == "study" and legacy.search["params"] == PARAMS


def test_search_trials_share_the_front_with_hand_picked_runs(runs: Path, search_out: Path, tmp_path: Path):
    records = [r for r in load_records([runs, search_out]) if r.kind != "bench"]
    analysis = analyse(records, [Objective("throughput.median", "max"), Objective("fd_loss", "min")])
    assert len(analysis.groups) == 1 and analysis.groups[0].kinds == ["distill", "search-trial"]
    front = {row.record.label for row in analysis.groups[0].front}
    # trial 0 outruns efficientnetv2-s (9017) at a worse loss; trial 2 sits between eradio-l (3472 / 0.265)
    # and eradio-b (6422 / 0.319) without dominating either; every run on the front stays there.
    assert front == TABLE7_FRONT | {"trial 0 (d48 1-2-4-1)", "trial 2 (d48 1-2-4-1)"}

    out = tmp_path / "out"
    result = _run(str(runs), str(search_out), "--env", "1", "--json", str(out / "f.json"), "--png", str(out / "f.png"),
                  "--html", str(out / "f.html"))
    assert result.exit_code == 0, result.output
    assert "▲ search-trial" in result.output and "● distill" in result.output
    assert "violate the search's constraints" in result.output
    payload = json.loads((out / "f.json").read_text())
    assert payload["groups"][0]["kinds"] == ["distill", "search-trial"]
    trials = [r for r in payload["rows"] if r["kind"] == "search-trial"]
    assert sorted(r["trial_number"] for r in trials) == [0, 1, 2]
    html = (out / "f.html").read_text()
    legend = set(re.findall(r'"name":\s*"([^"]*)"', html))
    assert {"runs [1]", "runs (on the front) [1]", "search trials [1]", "search trials (on the front) [1]"} <= legend
    # the trials alone: the original failure was "unknown metric 'throughput'"
    alone = _run(str(search_out))
    assert alone.exit_code == 0, alone.output
    assert "trial 2 (d48 1-2-4-1)" in alone.output


def test_metric_directions_by_name():
    for name in ("throughput.median", "throughput.min", "knn_top1", "knn_top5", "zeroshot_top1", "miou_ade20k",
                 "miou_voc", "pixel_acc_ade20k", "evaluations.seg.miou"):
        assert default_direction(name) == "max", name
    for name in ("fd_loss", "fd_loss_train", "knn_loss", "losses.dinov2/features", "latency_p50", "latency.p99",
                 "params_m", "gmacs", "peak_memory_mb", "wall_time_s"):
        assert default_direction(name) == "min", name
    for name in ("steps", "search.params.dim", "world_size"):
        with pytest.raises(ZooError, match="no default direction"):
            default_direction(name)


def test_cli_quality_metrics_of_later_evaluations(tmp_path: Path):
    root = tmp_path / "runs"
    # miou_ade20k as the segmentation probe writes it; fd_loss_train as the distillation records it
    write_run(root, distill_record("a", 900, 0.40, miou_ade20k=0.20, fd_loss_train=0.50))
    write_run(root, distill_record("b", 500, 0.35, miou_ade20k=0.31, fd_loss_train=0.45))
    write_run(root, distill_record("c", 400, 0.30, miou_ade20k=0.25, fd_loss_train=0.47))
    seg = _run(str(root), "--y", "miou_ade20k")
    assert seg.exit_code == 0, seg.output
    assert "ADE20k mIoU ↑ higher is better" in seg.output  # the table says which way is better
    starred = {name for name in "abc" if any(line.split("│")[2].strip() == name and "★" in line
                                             for line in seg.output.splitlines() if line.count("│") > 3)}
    assert starred == {"a", "b"}  # c is slower than b with a lower mIoU
    train = _run(str(root), "--y", "fd_loss_train")
    assert train.exit_code == 0, train.output
    assert "FD loss (DINOv2 features, training) ↓ lower is better" in train.output
    starred = {name for name in "abc" if any(line.split("│")[2].strip() == name and "★" in line
                                             for line in train.output.splitlines() if line.count("│") > 3)}
    assert starred == {"a", "b"}


def test_cli_resolution_filter_uses_the_shared_parser(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, distill_record("square", 100, 0.4))
    write_run(root, distill_record("wide", 90, 0.3, resolution=(224, 320)))
    result = _run(str(root), "--resolution", "224x320")
    assert result.exit_code == 0 and "wide" in result.output and "square" not in result.output
    # a comma separates sizes in lists; it never means height x width
    refused = _run(str(root), "--resolution", "224,320")
    assert refused.exit_code == 2 and "is not N or HxW" in refused.output
    import zoo.pareto

    assert not hasattr(zoo.pareto, "parse_resolution")


# --------------------------------------------------------------------------- the searched front over the hand-picked one


@pytest.fixture
def versus_case(tmp_path: Path) -> tuple[Path, Path]:
    """Three hand-picked runs and two trials on one GPU, values chosen so the normalised points are round.

    Throughput 10 / 100 / 1000 on a log axis -> 1, 0.5, 0 (as losses); FD loss 0.1 .. 0.5 -> (v - 0.1) / 0.4.
    """
    runs_dir, search_dir = tmp_path / "hand", tmp_path / "search"
    for backbone, speed, fd in [("h1", 1000, 0.30), ("h2", 100, 0.20), ("h3", 10, 0.50)]:
        write_run(runs_dir, distill_record(backbone, speed, fd))  # h1 (0, .5), h2 (.5, .25), h3 (1, 1)
    write_trial(search_dir, 0, 1000, 0.25)  # (0, .375): same speed as h1, better loss -> dominates h1 and h3
    write_trial(search_dir, 1, 10, 0.10)  # (1, 0): as slow as h3, better loss -> dominates h3 only
    return runs_dir, search_dir


# By hand, reference point (1.1, 1.1); each front swept by normalised speed-loss x:
HV_HAND = 1.1 * (1.1 - 0.5) + (1.1 - 0.5) * (0.5 - 0.25)  # h1, then h2 below it: 0.66 + 0.15
HV_SEARCHED = 1.1 * (1.1 - 0.375) + (1.1 - 1.0) * 0.375  # trial 0, then trial 1: 0.7975 + 0.0375
HV_COMBINED = 1.1 * (1.1 - 0.375) + (1.1 - 0.5) * (0.375 - 0.25) + (1.1 - 1.0) * 0.25  # trial 0, h2, trial 1
T0, T1 = "trial 0 (d48 1-2-4-1)", "trial 1 (d48 1-2-4-1)"


def test_versus_hypervolumes_and_dominated_by_hand(versus_case):
    records = load_records(list(versus_case))
    speed_loss = [Objective("throughput.median", "max"), Objective("fd_loss", "min")]
    group = analyse(records, speed_loss).groups[0]
    versus = group.versus
    assert (HV_HAND, HV_SEARCHED, HV_COMBINED) == pytest.approx((0.81, 0.835, 0.8975))
    assert versus.hand_picked == pytest.approx(HV_HAND)
    assert versus.searched == pytest.approx(HV_SEARCHED)
    assert versus.combined == pytest.approx(HV_COMBINED)
    assert [(d.row.label, [t.label for t in d.by]) for d in versus.dominated] == [("h1", [T0]), ("h3", [T0, T1])]
    assert [s.log for s in versus.scales] == [True, False]
    assert (versus.scales[0].best, versus.scales[0].worst) == (1000, 10)
    # a third objective equal everywhere spans nothing: every volume is 1.1x (Optuna's exact WFG path)
    three = analyse(records, speed_loss + [Objective("params_m", "min")]).groups[0].versus
    assert (three.hand_picked, three.searched, three.combined) == pytest.approx(
        (1.1 * HV_HAND, 1.1 * HV_SEARCHED, 1.1 * HV_COMBINED))
    # one kind alone: no comparison, output as before
    assert analyse([r for r in records if r.kind == "distill"], speed_loss).groups[0].versus is None
    assert analyse([r for r in records if r.kind != "distill"], speed_loss).groups[0].versus is None


def test_hypervolume_2d_matches_optuna():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for trial in range(100):
        points = rng.integers(0, 8, size=(int(rng.integers(1, 30)), 2)).astype(float) / 7  # ties and duplicates
        reference = np.array([1.1, 1.1])
        assert hypervolume_2d(points, reference) == pytest.approx(compute_hypervolume(points, reference))
    # points outside the reference box add nothing
    assert hypervolume_2d(np.array([[0.5, 2.0], [2.0, 0.5], [1.0, 1.0]]), [1.5, 1.5]) == pytest.approx(0.25)


def test_cli_versus_table_lines_and_json(versus_case, tmp_path: Path):
    out = tmp_path / "out"
    result = _run(*map(str, versus_case), "--json", str(out / "f.json"), "--html", str(out / "f.html"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "hypervolume of the fronts: hand-picked 0.81 · searched 0.835 · combined 0.8975" in lines
    assert "hand-picked backbones dominated by a searched configuration:" in lines
    assert f"  h1 by {T0}" in lines and f"  h3 by {T0}, {T1}" in lines
    assert any("reference point 1.1 each = worst + 10% of the range" in line for line in lines)
    group = json.loads((out / "f.json").read_text())["groups"][0]
    hv = group["hypervolume"]
    assert (hv["hand_picked"], hv["searched"], hv["combined"]) == pytest.approx((HV_HAND, HV_SEARCHED, HV_COMBINED))
    assert hv["reference_point"] == [1.1, 1.1] and hv["records"] == 5
    assert [n["log"] for n in hv["normalisation"]] == [True, False]
    dominated = {d["label"]: [t["trial_number"] for t in d["dominated_by"]] for d in group["dominated_hand_picked"]}
    assert dominated == {"h1": [0], "h3": [0, 1]}
    assert "hypervolume: hand-picked 0.81 · searched 0.835 · combined 0.8975" in (out / "f.html").read_text()
    # runs alone: no hypervolume line, no new JSON keys
    alone = _run(str(versus_case[0]), "--json", str(out / "alone.json"))
    assert alone.exit_code == 0 and "hypervolume" not in alone.output and "dominated" not in alone.output
    assert not {"hypervolume", "dominated_hand_picked"} & set(json.loads((out / "alone.json").read_text())["groups"][0])


def test_table7_backbones_dominated_by_a_search_trial(runs: Path, search_out: Path):
    records = [r for r in load_records([runs, search_out]) if r.kind != "bench"]
    versus = analyse(records, [Objective("throughput.median", "max"), Objective("fd_loss", "min")]).groups[0].versus
    # trial 2 (5000 img/s, 0.30) beats every Table 7 backbone at <= 5000 img/s with FD loss >= 0.30
    assert {d.row.label: [t.label for t in d.by] for d in versus.dominated} == {
        name: ["trial 2 (d48 1-2-4-1)"] for name in ("convnext-b", "nfnet-f3", "swinv2-s", "maxvit-b", "mvitv2-b")}
    # the trials add area to the hand-picked front, never remove it
    assert versus.combined > versus.hand_picked and versus.combined >= versus.searched


# --------------------------------------------------------------------------- figures that are not measurements


def write_search_trial(root: Path, number: int, speed: float, fd: float, surrogate: bool = False,
                       predicted: bool = False, measured: float | None = None) -> Path:
    """A trial of ``zoo search run``: ``--dry-run`` (surrogate FD loss), predicted throughput, re-measured or not."""
    from zoo.runs import RunRecord, SearchInfo, write_record

    data = {**distill_record(f"eradio-search-{number:04d}", speed, fd, run_id=f"dry-{number:04d}"),
            "kind": "search-trial", "fd_loss_source": "surrogate" if surrogate else "proxy"}
    extra = {}
    if predicted:
        data["throughput"]["source"] = "measured" if measured is not None else "predicted"
        extra = {"throughput_source": "predicted", "predicted_throughput": speed * 1.1,
                 "measured_throughput": measured}
    record = RunRecord.from_dict(data)
    record.search = SearchInfo(study_name="dry", trial_number=number, params=PARAMS, feasible=True, extra=extra)
    folder = root / f"dry-{number:04d}"
    write_record(folder, record)
    return folder


def test_surrogate_fd_losses_and_predicted_throughputs_are_marked(runs: Path, tmp_path: Path, monkeypatch):
    import csv

    import matplotlib.text

    search = tmp_path / "dry-out"
    write_search_trial(search, 0, 9500, 0.30, surrogate=True)  # a dry run: the surrogate beats every run
    write_search_trial(search, 1, 5000, 0.31, surrogate=True, predicted=True)
    write_search_trial(search, 2, 3000, 0.29, predicted=True)  # predicted, never measured
    write_search_trial(search, 3, 2000, 0.28, predicted=True, measured=2000)  # predicted, then measured: a figure
    drawn: list[str] = []
    real_draw = matplotlib.text.Text.draw
    monkeypatch.setattr(matplotlib.text.Text, "draw", lambda self, r: drawn.append(self.get_text()) or real_draw(self, r))
    out = tmp_path / "out"
    result = _run(str(runs), str(search), "--env", "1", "--json", str(out / "f.json"), "--csv", str(out / "f.csv"),
                  "--png", str(out / "f.png"), "--html", str(out / "f.html"))
    assert result.exit_code == 0, result.output
    surrogate_line = "FD loss of 2 points is the dry-run surrogate, not a distillation"
    predicted_line = "throughput of 2 points is predicted from a latency table, not measured"
    # The table: marks on the labels, a note per row, the caption, and a note under it.
    assert surrogate_line in result.output and predicted_line in result.output
    rows = {line.split("│")[2].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "§ surrogate" in rows["trial 0 (d48 1-2-4-1)§"] and "§ surrogate" in rows["trial 1 (d48 1-2-4-1)§≈"]
    assert "≈ predicted" in rows["trial 2 (d48 1-2-4-1)≈"]
    assert "trial 3 (d48 1-2-4-1)" in rows and "eradio-b" in rows  # measured figures carry no mark
    assert "predicted" not in rows["trial 3 (d48 1-2-4-1)"] and "surrogate" not in rows["eradio-b"]
    assert "§ these compare dry-run surrogate FD losses with distillations" in result.output  # under the hypervolumes
    # JSON and CSV say it per row and as caption lines.
    payload = json.loads((out / "f.json").read_text())
    flags = {r["trial_number"]: (r["fd_loss_surrogate"], r["throughput_predicted"])
             for r in payload["rows"] if r["kind"] == "search-trial"}
    assert flags == {0: (True, False), 1: (True, True), 2: (False, True), 3: (False, False)}
    assert not any(r["fd_loss_surrogate"] or r["throughput_predicted"] for r in payload["rows"] if r["kind"] != "search-trial")
    assert any(surrogate_line in c for c in payload["caveats"]) and any(predicted_line in c for c in payload["caveats"])
    assert payload["groups"][0]["surrogate_points"] == 2 and payload["groups"][0]["predicted_points"] == 2
    csv_rows = {r["label"]: r for r in csv.DictReader(io.StringIO((out / "f.csv").read_text()))}
    assert csv_rows["trial 1 (d48 1-2-4-1)"]["fd_loss_surrogate"] == "true"
    assert csv_rows["trial 1 (d48 1-2-4-1)"]["throughput_predicted"] == "true"
    assert csv_rows["eradio-b"]["fd_loss_surrogate"] == "false"
    # The PNG: legend entries for the rings around such points, and the caption line.
    assert "§ FD loss: dry-run surrogate" in drawn and "≈ throughput: predicted" in drawn
    assert any(surrogate_line in text and predicted_line in text for text in drawn)
    # The HTML: the same legend entries, the caption in the title, and a hover line per point.
    html = (out / "f.html").read_text()
    legend = set(re.findall(r'"name":\s*"([^"]*)"', html))
    assert {"§ FD loss: dry-run surrogate [1]", "≈ throughput: predicted [1]"} <= legend, legend
    assert surrogate_line in html and predicted_line in html
    assert "FD loss: the dry-run surrogate, not a distillation" in html  # hover text


def test_study_trials_read_their_later_measurement(tmp_path: Path):
    """A study's trial whose predicted throughput was measured after the search (``zoo_measured``) shows the
    measurement, unmarked; one that was not keeps its prediction, marked."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = optuna.create_study(study_name="p", storage=storage, directions=["maximize", "minimize"])
    for number, (speed, fd) in enumerate([(100, 0.5), (50, 0.3)]):
        trial = study.ask()
        record = {**distill_record("eradio", speed, fd), "kind": "search-trial",
                  "search": {"study_name": "p", "trial_number": number, "params": PARAMS,
                             "throughput_source": "predicted", "predicted_throughput": speed,
                             "measured_throughput": None}}
        record["throughput"]["source"] = "predicted"
        trial.set_user_attr("record", record)
        study.tell(trial, [speed, fd])
    measured = {**_throughput(80.0, A100), "source": "measured"}
    study.set_user_attr("zoo_measured", {"0": {"throughput": measured, "predicted_throughput": 100.0, "gmacs": 1.5}})
    records = {r.trial_number: r for r in load_study_records(storage)}
    assert records[0].metrics["throughput.median"] == 80.0 and not records[0].throughput_predicted
    assert records[1].metrics["throughput.median"] == 50.0 and records[1].throughput_predicted
