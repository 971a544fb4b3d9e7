"""Hostile recipes and data faults (issue 11 items 2 and 4): what a user sees, and that nothing is left behind.

Every CLI case: exit status 2, exactly one ``Error:`` line, no traceback, no run folder, and fast
(a "billion laughs" recipe must not grow to gigabytes before it is refused).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo.cli import cli
from zoo.data import load_images

from tests.conftest import write_smooth_images


def _laughs(levels: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _distill(tmp_path: Path, *args: str):
    out = tmp_path / "runs"
    started = time.process_time()
    result = CliRunner().invoke(cli, ["distill", "--backbone", "resnet-18", *args, "--out", str(out),
                                      "--offline", "--no-progress", "--device", "cpu"])
    return result, out, time.process_time() - started


def _refused(result, out: Path, cpu_seconds: float) -> str:
    """The one error line of a refused start; nothing written under --out."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    assert cpu_seconds < 5.0
    return errors[0]


@pytest.mark.parametrize("content, expected", [
    (b"train:\n  steps: 3\ndescription: caf\xe9\n", "bad.yaml: not UTF-8 text (invalid byte 0xe9 at offset 34)"),
    (_laughs().encode(), "bad.yaml: its aliases expand to more than 100,000 values"),
    (b"train: &t\n  steps: *t\n", "bad.yaml: an alias refers to itself"),
    (b"teachers: &t [clip:tiny, *t]\n", "bad.yaml: an alias refers to itself"),
    (b"- clip:tiny\n- dinov2:tiny\n", "bad.yaml: the top level must be a mapping"),
    (b"a: " + b"[" * 100_000 + b"\n", "bad.yaml: nesting deeper than 64 levels"),
    (b"# padding\n" * 200_000, "bad.yaml: larger than 1,000,000 bytes"),
], ids=["not-utf8", "billion-laughs", "recursive-mapping", "recursive-list", "not-a-mapping", "deep", "huge"])
def test_hostile_recipe_file_is_one_line_and_leaves_nothing(tmp_path, content, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    line = _refused(*_distill(tmp_path, "--recipe", str(bad)))
    assert expected in line and str(bad) in line


@pytest.mark.parametrize("override, expected", [
    ("teachers={" + _laughs().replace("\n", ", ").rstrip(", ") + "}", "its aliases expand to more than 100,000"),
    ("train=&t {steps: *t}", "an alias refers to itself"),
    ("optim.lr=.inf", "recipe key 'optim.lr' expects a finite number"),
    ("data.path=/some/images", "'data.path' (/some/images) is ignored by data.source 'bundled'"),
], ids=["billion-laughs", "recursive", "infinite", "path-with-bundled"])
def test_hostile_set_value_is_one_line_and_leaves_nothing(tmp_path, override, expected):
    line = _refused(*_distill(tmp_path, "--recipe", "smoke", "--set", override))
    assert expected in line


def test_billion_laughs_is_refused_in_bounded_memory(tmp_path):
    import tracemalloc

    bad = tmp_path / "laughs.yaml"
    bad.write_text(_laughs())
    tracemalloc.start()
    try:
        result, out, cpu = _distill(tmp_path, "--recipe", str(bad))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "its aliases expand" in _refused(result, out, cpu)
    assert peak < 50e6  # expanded, the document holds 9**9 = 387,420,489 strings


def test_symlink_loop_lists_each_image_once_and_holds_out_disjoint_images(tmp_path):
    """15 images and a directory loop: 15 entries (not hundreds), the held-out ones never trained on."""
    for sub, seed in (("a", 1), ("a/b", 2), ("c", 3)):
        (tmp_path / sub).mkdir(parents=True)
        write_smooth_images(tmp_path / sub, count=5, seed=seed)
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "c" / "root").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "alias-of-c").symlink_to(tmp_path / "c", target_is_directory=True)
    images = load_images("folder", str(tmp_path), holdout=3, warn=False)
    assert len(images.train) + len(images.holdout) == 15 and len(images.holdout) == 3
    resolved_train = {p.resolve() for p in images.train}
    assert len(resolved_train) == 12 and not resolved_train & {p.resolve() for p in images.holdout}
    assert images.describe()["skipped_images"] == 0 and images.describe()["verified_images"] == 15
