"""benchmarks/search_fidelity.py --objective real, end to end at a tiny budget: random sampling with full
proxies against multi-fidelity rungs with predicted throughput, both run by the search machinery, scored."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--limit", "dim=32", "--limit", "depth1=1", "--limit", "depth2=1", "--limit", "depth3=1",
        "--limit", "depth4=1", "--limit", "mlp_ratio=2.0", "--limit", "neck=0"]
FAST = ["--set", "train.batch_size=2", "--set", "eval.images=1", "--set", "eval.batch_size=1",
        "--bench-batch", "1", "--bench-warmup", "0", "--bench-repeats", "1", "--bench-steps", "1"]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("search_fidelity", REPO / "benchmarks" / "search_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_real_objective_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both methods run until their clock budget is spent, in their own study and folder (the
    multi-fidelity one with its own latency table); every COMPLETE trial is scored with one measured
    throughput per candidate; the printout has each method's figures and the ratio to random sampling."""
    bench = load_benchmark()
    args = bench.build_parser().parse_args(["--objective", "real", "--budget-seconds", "2", "--seeds", "1",
                                            "--rungs", "1,3", "--quiet", "--max-memory", "none", *TINY, *FAST])
    bench.torch.set_num_threads(1)
    results = bench.run_real(args, tmp_path)
    random_run, multi_run = results.runs
    assert random_run.sampler == "random" and multi_run.n_trials_hint >= 1
    assert (tmp_path / "random-seed0" / "study.db").is_file()
    assert len(list(tmp_path.glob("default-1-3-seed0/latency/*.json"))) == 1
    for run in results.runs:
        assert run.complete >= 1 and run.failed == 0 and run.seconds >= 2  # ran until the budget was spent
        assert len(run.points) == len(run.trials) == run.complete
        for (candidate, fd_loss), (throughput, loss) in zip(run.trials, run.points):
            assert loss == fd_loss and throughput > 0
    values = bench.losses([p for run in results.runs for p in run.points])
    assert (values < results.reference).all()  # every point adds volume

    bench.print_real(results)
    out = capsys.readouterr().out
    assert "REAL objective" in out and "budget 2 s of process CPU time" in out
    methods = re.findall(r"^(.+): hypervolume ([0-9.]+) ± ([0-9.]+)  ratio vs random ([0-9.]+)$", out, re.M)
    labels = [label for label, *_ in methods]
    assert labels == [random_run.label, multi_run.label], out
    assert labels[0] == "random, 3-step proxy + measured" and "+ rungs 1,3 + predicted" in labels[1]
    for label, mean, spread, _ in methods:
        assert float(mean) > 0 and float(spread) == 0.0  # one seed: no spread
        assert float(mean) == pytest.approx(results.hypervolumes[label][0], abs=6e-5)
    assert float(methods[0][3]) == 1.0
    ratio = results.hypervolumes[labels[1]][0] / results.hypervolumes[labels[0]][0]
    assert float(methods[1][3]) == pytest.approx(ratio, abs=6e-4)
    counts = re.findall(r"trials complete/pruned/failed per seed (\d+)/(\d+)/(\d+); clock used (\d+) s", out)
    assert [(int(c), int(p), int(f)) for c, p, f, _ in counts] == [(r.complete, r.pruned, r.failed)
                                                                    for r in results.runs]
