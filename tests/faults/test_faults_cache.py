"""Faults of the teacher cache: a tampered index (training and verify refuse it), a full disk during
`zoo cache build` (one line, earlier shards intact, temp files removed, resumable), a cache of an older format."""

from __future__ import annotations

import errno
import json
import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from zoo.cache import INDEX_FILE, MANIFEST_FILE, CacheError, CacheWarning, TeacherCache, file_checksum
from zoo.cli import cli

from tests.conftest import write_smooth_images

# 4 training images x 2 views = 8 entries in shards of 3: shards 00000, 00001, 00002.
COMMON = ["--recipe", "smoke", "--set", "data.source=folder", "--set", "train.resolution=32",
          "--set", "train.batch_size=2", "--set", "eval.images=2", "--set", "data.workers=0",
          "--teacher", "clip:tiny@32", "--teacher", "dinov2:tiny@28"]
BUILD = ["--views", "2", "--shard-size", "3", "--batch-size", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fault-cache-images")
    write_smooth_images(folder, count=6, seed=2)
    return folder


def _common(image_dir: Path) -> list[str]:
    return [*COMMON, "--set", f"data.path={image_dir}"]


def _build(image_dir: Path, out: Path):
    return CliRunner().invoke(cli, ["cache", "build", *_common(image_dir), "--out", str(out), *BUILD])


@pytest.fixture(scope="module")
def built(image_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault-cache") / "cache"
    result = _build(image_dir, out)
    assert result.exit_code == 0, result.output
    return out


def _error_line(result) -> str:
    """The single error line of a refused command (no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_checksum(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _distill_from(image_dir: Path, cache: Path, runs: Path):
    return CliRunner().invoke(cli, ["distill", "--backbone", "resnet-18", *_common(image_dir), "--set", "train.steps=2",
                                    "--set", "bench.enabled=false", "--out", str(runs), "--no-progress",
                                    "--device", "cpu", "--teacher-cache", str(cache)])


def _tamper(source: Path, folder: Path, field: str, row: int) -> Path:
    """A copy of cache ``source`` whose index entry ``row`` has another box or flip (still valid JSON)."""
    shutil.copytree(source, folder)
    index = json.loads((folder / INDEX_FILE).read_text())
    if field == "box":
        index["box"][row][0] += 1  # a plausible box, one pixel off
    else:
        index["flip"][row] = not index["flip"][row]
    (folder / INDEX_FILE).write_text(json.dumps(index))
    return folder


def test_tampered_index_is_refused_by_training_and_verify_then_restored(image_dir, built, tmp_path):
    box, flip = _tamper(built, tmp_path / "box", "box", 4), _tamper(built, tmp_path / "flip", "flip", 6)
    before = {folder: _files(folder) for folder in (box, flip)}

    line = _error_line(_distill_from(image_dir, box, tmp_path / "runs"))
    assert f"teacher cache {box}: index.json was changed after the build" in line
    line = _error_line(CliRunner().invoke(cli, ["cache", "verify", str(flip), "--samples", "2", "--device", "cpu"]))
    assert f"teacher cache {flip}: index.json was changed after the build" in line
    with pytest.raises(CacheError, match="index.json was changed"):
        TeacherCache(flip)
    assert {folder: _files(folder) for folder in (box, flip)} == before  # refusing touches nothing

    # The index is a pure function of the build's seed and images: building again restores it (no teacher runs).
    with pytest.warns(CacheWarning, match="restored"):
        assert _build(image_dir, box).exit_code == 0
    assert _files(box) == _files(built)
    assert CliRunner().invoke(cli, ["cache", "verify", str(box), "--samples", "2", "--device", "cpu"]).exit_code == 0


def test_format1_cache_is_checked_by_regeneration_and_upgraded(image_dir, built, tmp_path):
    """A cache from before index checksums: its index is compared with the regenerated one (accepted with a
    warning when equal, refused when not); `zoo cache build` again adds the checksum without running teachers."""
    old = tmp_path / "old"
    shutil.copytree(built, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    for key in ("index_sha256", "standardize"):
        manifest.pop(key, None)
    manifest["format"] = 1
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.warns(CacheWarning, match="predates index checksums"):
        assert TeacherCache(old).rows == 8

    tampered = tmp_path / "tampered"
    shutil.copytree(old, tampered)
    index = json.loads((tampered / INDEX_FILE).read_text())
    index["box"][5][1] += 2
    (tampered / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CacheError, match=r"does not match the views regenerated from its seed \(first at entry 5\)"):
        TeacherCache(tampered)
    line = _error_line(_distill_from(image_dir, tampered, tmp_path / "runs"))
    assert "does not match the views regenerated" in line

    shards = {k: v for k, v in _files(old).items() if k.startswith("shards/")}
    assert _build(image_dir, old).exit_code == 0
    upgraded = json.loads((old / MANIFEST_FILE).read_text())
    assert upgraded["format"] == 2 and upgraded["index_sha256"] == file_checksum(old / INDEX_FILE)
    assert upgraded["standardize"]["file"] == "standardize.safetensors"  # PHI-S statistics from the stored shards
    assert {k: v for k, v in _files(old).items() if k.startswith("shards/")} == shards
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # checked by its checksum now: no warning
        TeacherCache(old).standardizer.standardize(TeacherCache(built).targets([0]))


def _fail_mid_file(monkeypatch, fail_in: str, after_bytes: int = 200) -> list[str]:
    """Make the shard file whose path contains ``fail_in`` hit ENOSPC after ``after_bytes`` bytes (mid-file)."""
    import zoo.cache.build as build

    real_save = build.save_npy
    seen: list[str] = []

    def save_npy(path, array):
        if fail_in not in str(path):
            return real_save(path, array)
        seen.append(str(path))
        written = [0]
        real_write = build._HashingWriter.write

        def write(self, data):
            if written[0] + len(data) > after_bytes:
                self.handle.write(bytes(data)[:after_bytes - written[0]])  # part of it reaches the disk
                raise OSError(errno.ENOSPC, "No space left on device")
            written[0] += len(data)
            return real_write(self, data)

        monkeypatch.setattr(build._HashingWriter, "write", write)
        try:
            return real_save(path, array)
        finally:
            monkeypatch.setattr(build._HashingWriter, "write", real_write)

    monkeypatch.setattr(build, "save_npy", save_npy)
    return seen


def test_full_disk_while_writing_a_shard(image_dir, built, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    failing = "00001/dinov2.summary.npy"  # the third file of the second shard: two of its files are already written
    seen = _fail_mid_file(monkeypatch, failing)
    line = _error_line(_build(image_dir, out))
    assert seen and failing in line and "bytes needed" in line and "free" in line
    assert "1 of 3 shard(s) are kept" in line and "run the same command again to resume" in line
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert not manifest["complete"] and [s["name"] for s in manifest["shards"]] == ["00000"]
    kept = {f"shards/00000/{name}": digest for name, digest in manifest["shards"][0]["files"].items()}
    assert {k: v for k, v in _files(out).items() if k.startswith("shards/")} == kept  # shard 0 intact, nothing else
    assert _temps(out) == []
    assert not list((out / "shards" / "00001").glob("*"))  # the unfinished shard's files are removed too

    monkeypatch.undo()
    result = _build(image_dir, out)  # resumes: shard 0 kept as it was, the rest built; the same cache as in one go
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in _files(out).items() if k.startswith("shards/00000")} == kept
    assert {k: v for k, v in _files(out).items() if k != MANIFEST_FILE} == \
        {k: v for k, v in _files(built).items() if k != MANIFEST_FILE}


def test_full_disk_while_writing_the_manifest(image_dir, tmp_path, monkeypatch):
    import zoo.atomic
    import zoo.cache.build as build

    out = tmp_path / "cache"
    calls = {"n": 0}
    real_json = build.atomic_write_json

    def atomic_write_json(path, obj):
        calls["n"] += 1
        if calls["n"] == 3:  # the manifest recording shard 00001 (1: start, 2: shard 00000)
            def half(tmp):
                with open(tmp, "wb") as handle:
                    handle.write(b'{"format": 2, "kind": "teacher-')
                raise OSError(errno.ENOSPC, "No space left on device")

            zoo.atomic.write_via_temp(path, half, size_hint=4096)
        return real_json(path, obj)

    monkeypatch.setattr(build, "atomic_write_json", atomic_write_json)
    line = _error_line(_build(image_dir, out))
    assert "manifest.json" in line and "4,096 bytes needed" in line and "1 of 3 shard(s) are kept" in line
    manifest = json.loads((out / MANIFEST_FILE).read_text())  # the previous version, intact
    assert [s["name"] for s in manifest["shards"]] == ["00000"]
    assert _temps(out) == [] and not list((out / "shards" / "00001").glob("*"))
    monkeypatch.undo()
    assert _build(image_dir, out).exit_code == 0
    assert json.loads((out / MANIFEST_FILE).read_text())["complete"]


def test_not_enough_disk_is_refused_before_the_teachers_run(image_dir, tmp_path, monkeypatch):
    import zoo.cache.build as build

    class Usage:
        free = 1000

    monkeypatch.setattr(build.shutil, "disk_usage", lambda path: Usage())
    out = tmp_path / "cache"
    line = _error_line(_build(image_dir, out))
    assert f"not enough disk for the cache in {out}" in line and "1,000 free" in line
    assert not out.exists()
