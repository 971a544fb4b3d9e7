"""Faults for ``zoo pareto`` and ``zoo bench``: hostile text, a full disk, a hostile working directory, bad sizes.

Each test states the user-visible behaviour: exit status, the one ``Error:``
line, and the files on disk before and after.
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import zoo.atomic
from zoo.cli import cli
from zoo.errors import ResolutionError
from zoo.runs import RunRecord, write_record

MATH = "$\\frac{1"  # mathtext would raise on it (unclosed group); "$x^2$" would be silently typeset
OUTPUTS = {"csv": "front.csv", "json": "front.json", "png": "front.png", "html": "front.html"}  # in write order


def _run_record(backbone: str, speed: float, fd_loss: float, run_id: str) -> RunRecord:
    throughput = {"median": speed, "min": speed, "max": speed, "values": [speed], "unit": "img/s",
                  "device": "cpu", "device_name": "Test CPU", "batch_size": 8, "resolution": [224, 224],
                  "dtype": "fp32", "threads": 1, "compile": False}
    return RunRecord(run_id=run_id, backbone=backbone, throughput=throughput, fd_loss=fd_loss)


def _runs(root: Path, backbones: list[str]) -> Path:
    for i, name in enumerate(backbones):
        run_id = f"run-{i}"
        write_record(root / run_id, _run_record(name, 100.0 * (i + 1), 0.5 - 0.05 * i, run_id))
    return root


def _error_line(result) -> str:
    """The one ``Error:`` line of a failed command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exc_info[0] is SystemExit
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# --------------------------------------------------------------------------- hostile text in labels and titles


def test_mathtext_and_markup_in_labels_and_title_are_plain_text(tmp_path, monkeypatch):
    import matplotlib.text

    hostile = ["a[/]b", f"net {MATH}", "$x^2$ net"]
    root = _runs(tmp_path / "runs", hostile)
    drawn: list[tuple[str, bool]] = []
    real_draw = matplotlib.text.Text.draw

    def spy(self, renderer):
        drawn.append((self.get_text(), self.get_parse_math()))
        return real_draw(self, renderer)

    monkeypatch.setattr(matplotlib.text.Text, "draw", spy)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["pareto", str(root), "--title", f"a {MATH}", "--png", str(out / "f.png"),
                                      "--html", str(out / "f.html")])
    assert result.exit_code == 0, result.output
    assert (out / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every drawn text holding a dollar sign was drawn without mathtext, labels and title included.
    with_dollar = [(text, parse) for text, parse in drawn if "$" in text]
    assert {text for text, _ in with_dollar} >= {f"a {MATH}", f"net {MATH}", "$x^2$ net"}
    assert not [text for text, parse in with_dollar if parse]
    # The table shows the names as given (rich markup is not interpreted either).
    assert "a[/]b" in result.output and f"net {MATH}" in result.output
    html = (out / "f.html").read_text()
    # plotly.js never typesets the "$...$" labels; they are in the figure's data as given ("/" JSON-escaped).
    assert '"typesetMath": false' in html
    assert '"a[\\u002f]b"' in html and '"$x^2$ net"' in html and '"net $\\\\frac{1"' in html


# --------------------------------------------------------------------------- a full disk


def _fill_disk_on(monkeypatch, target: str) -> None:
    """Writes of ``target`` (through zoo.atomic's temp file) stop half-way with ENOSPC."""
    real_open = open

    class HalfWritten:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith(f".{target}."):
            return HalfWritten(handle)
        return handle

    monkeypatch.setattr(zoo.atomic, "open", fake_open, raising=False)


@pytest.fixture(scope="module")
def full_outputs(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """A runs folder and the size of each output a successful ``zoo pareto`` writes for it."""
    base = tmp_path_factory.mktemp("pareto-disk")
    root = _runs(base / "runs", ["resnet-18", "convnext-atto", "vit-t16-cpe"])
    good = base / "good"
    args = ["pareto", str(root)] + [a for kind, name in OUTPUTS.items() for a in (f"--{kind}", str(good / name))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return root, {kind: (good / name).stat().st_size for kind, name in OUTPUTS.items()}


@pytest.mark.parametrize("failing", list(OUTPUTS))
def test_disk_full_during_a_pareto_output(tmp_path, monkeypatch, full_outputs, failing):
    root, sizes = full_outputs
    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUTS.values():  # an earlier run's files
        (out / name).write_text("earlier\n")
    _fill_disk_on(monkeypatch, OUTPUTS[failing])
    args = ["pareto", str(root)] + [a for kind, name in OUTPUTS.items() for a in (f"--{kind}", str(out / name))]
    line = _error_line(CliRunner().invoke(cli, args))
    path = out / OUTPUTS[failing]
    assert f"disk full while writing {path}" in line
    needed = int(re.search(r"\(([\d,]+) bytes needed", line).group(1).replace(",", ""))
    assert needed == sizes[failing]  # the size of the whole file, not of what fitted
    order = list(OUTPUTS)
    for kind, name in OUTPUTS.items():
        text = (out / name).read_bytes()
        if order.index(kind) < order.index(failing):
            assert len(text) == sizes[kind]  # written before the disk filled: whole
        else:
            assert text == b"earlier\n"  # the failing file and those after it: the earlier version, intact
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS.values())  # no temp file left


# --------------------------------------------------------------------------- a hostile working directory


def _hostile_cwd(tmp_path: Path) -> tuple[Path, Path]:
    """A folder holding a ``zoo/`` package whose import leaves a marker file and exits 7."""
    cwd, marker = tmp_path / "cwd", tmp_path / "hostile-code-ran"
    (cwd / "zoo").mkdir(parents=True)
    code = f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(7)\n"
    (cwd / "zoo" / "__init__.py").write_text(code)
    (cwd / "zoo" / "bench.py").write_text(code)
    return cwd, marker


def test_the_hazard_is_real(tmp_path):
    """A plain ``python -m zoo.bench`` started in that folder runs its code (what the workers must avoid)."""
    cwd, marker = _hostile_cwd(tmp_path)
    done = subprocess.run([sys.executable, "-m", "zoo.bench"], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 7 and marker.exists()


def test_bench_subprocess_ignores_a_zoo_folder_in_the_working_directory(tmp_path, monkeypatch):
    cwd, marker = _hostile_cwd(tmp_path)
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(cli, ["bench", "-b", "resnet-18", "-r", "32", "--device", "cpu", "--batch-size", "1",
                                      "--warmup", "0", "--repeats", "1", "--steps", "1", "--no-flops",
                                      "--subprocess", "--json", "out.json", "--results", "r.jsonl", "-q"])
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    data = json.loads((cwd / "out.json").read_text())
    assert [r["backbone"] for r in data] == ["resnet-18"] and len(data[0]["throughput"]["values"]) == 1
    assert len((cwd / "r.jsonl").read_text().splitlines()) == 1


# --------------------------------------------------------------------------- sizes of 0 or less


FAMILIES = ["resnet-18", "vit-t16-cpe", "swinv2-s", "maxvit-b"]  # a timm CNN, a ViT with CPE, SwinV2, MaxViT


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("resolution", ["0", "-32", "0x224", "224x-16"])
def test_bench_resolution_zero_or_negative_is_one_line(tmp_path, monkeypatch, name, resolution):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["bench", "-b", name, "-r", resolution, "--results", "r.jsonl"])
    line = _error_line(result)
    assert "must be positive" in line and "--resolution" in line
    # Only click's usage header may precede the error line.
    others = [l for l in result.output.splitlines() if l.strip() and not l.startswith("Error:")]
    assert all(l.startswith(("Usage:", "Try ")) for l in others), result.output
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("name", FAMILIES)
def test_bench_library_refuses_sizes_of_zero_or_less(name):
    from zoo.bench import BenchSettings, check_backbones

    for resolution in (0, -32, (0, 224), (224, -16)):
        with pytest.raises(ResolutionError, match="must be positive"):
            check_backbones([name], resolution)
        with pytest.raises(ResolutionError, match="must be positive"):
            BenchSettings(resolution=resolution, device="cpu")
