"""Teacher feature cache: round trip, view replay, refusal, resume, cache == online training, verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from zoo.cache import (MANIFEST_FILE, CacheError, CacheMismatchError, CachedCropDataset, TeacherCache, build_cache,
                       cache_fingerprint, view_crop, verify_cache)
from zoo.data import CropDataset, load_images, shared_resolution
from zoo.distill import distill
from zoo.teachers import build_teachers

from tests.conftest import write_smooth_images
from tests.test_distill import TinyBackbone, tiny_recipe

VIEWS = 2


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache-images")
    write_smooth_images(folder, count=6, seed=1)
    return folder


@pytest.fixture(scope="module")
def recipe(image_dir):
    # 4 training images, batch 2: 2 steps per epoch, so 4 steps = the 2 stored views exactly
    return tiny_recipe(image_dir, "train.batch_size=2", "train.steps=4", f"augment.views={VIEWS}",
                       "augment.hflip=true")


@pytest.fixture(scope="module")
def teachers(recipe):
    return build_teachers(recipe.teachers)


@pytest.fixture(scope="module")
def built(recipe, teachers, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    build_cache(recipe, out, teachers=teachers, device="cpu", shard_size=3, batch_size=2, progress=False)
    return out


def _run_state(recipe, teachers):
    images = load_images(recipe.data.source, recipe.data.path, recipe.eval.images)
    shared = shared_resolution(recipe.resolution, *[t.resolution for t in teachers])
    return images, shared


def test_round_trip_and_view_replay(recipe, teachers, built):
    cache = TeacherCache(built, checksums=True)
    images, shared = _run_state(recipe, teachers)
    assert cache.rows == len(images.train) * VIEWS and len(cache.manifest["shards"]) == 3
    manifest = json.loads((built / MANIFEST_FILE).read_text())
    assert manifest["complete"] and manifest["dtype"] == "fp16"
    assert manifest["fingerprint"]["augment"]["hflip"] is True and manifest["teacher_details"][0]["random"] is True
    online = CropDataset(images.train, shared, recipe.train.seed, recipe.train.batch_size, recipe.augment.scale,
                         recipe.augment.ratio, recipe.augment.hflip)
    replay = CachedCropDataset(online, cache)
    flips = set()
    for step in range(recipe.train.steps):
        for slot in range(recipe.train.batch_size):
            crop, row = replay[(step, slot)]
            # the rebuilt crop is the one online training shows (and the teachers saw)
            assert torch.equal(crop, online[(step, slot)])
            entry = cache.entry(row)
            assert (entry["step"], entry["slot"]) == (step, slot)
            assert torch.equal(crop, view_crop(images.train[row // VIEWS], entry["box"], entry["flip"], shared))
            flips.add(entry["flip"])
            stored = cache.targets([row])
            for t in teachers:
                live = t(crop.unsqueeze(0))
                # exact to the stored precision (the build ran batches of 2: float noise on top of fp16 rounding)
                for part in ("summary", "features"):
                    torch.testing.assert_close(getattr(stored[t.name], part), getattr(live, part),
                                               rtol=2e-3, atol=2e-3)
    assert flips == {True, False}
    # past the K views, epochs cycle through them: epoch 2 uses view 0 again
    assert replay.row(4, 0) % VIEWS == 0 and replay.row(6, 1) % VIEWS == 1


@pytest.mark.parametrize("dtype, tolerance", [("fp16", 2 ** -11), ("bf16", 2 ** -8), ("fp32", 0.0)])
def test_encoding_round_trip_is_exact_to_the_stored_precision(dtype, tolerance):
    from zoo.cache import decode as _decode, encode as _encode

    values = torch.randn(4, 8, 3, 3)
    decoded = _decode(_encode(values, dtype), dtype)
    assert decoded.dtype == torch.float32 and decoded.shape == values.shape
    assert float(((decoded - values).abs() / values.abs().clamp_min(1e-3)).max()) <= tolerance
    if dtype != "fp32":
        torch_dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
        assert torch.equal(decoded, values.to(torch_dtype).float())


@pytest.mark.parametrize("extra, named", [
    (('teachers=["clip:tiny@48", "dinov2:tiny@28"]',), "teachers[0].spec"),
    (("train.resolution=64",), "shared_resolution"),
    (("augment.scale=[0.5, 1.0]",), "augment.scale"),
    (("augment.hflip=false",), "augment.hflip"),
    (("train.seed=3",), "augment.seed"),
    (("eval.images=1",), "data.holdout_images"),
])
def test_mismatched_cache_is_refused(image_dir, recipe, built, tmp_path, extra, named):
    other = tiny_recipe(image_dir, "train.batch_size=2", "train.steps=4", f"augment.views={VIEWS}",
                        "augment.hflip=true", *extra)
    with pytest.raises(CacheMismatchError, match=named.replace("[", r"\[").replace("]", r"\]")) as err:
        distill(TinyBackbone(), other, out_dir=tmp_path, progress=False, device="cpu", teacher_cache=built)
    assert "\n" not in str(err.value)


def test_other_weights_are_refused(recipe, teachers, built):
    images, shared = _run_state(recipe, teachers)
    fingerprint = cache_fingerprint(recipe, teachers, images, shared)
    fingerprint["teachers"][1]["weights_sha256"] = "0" * 64
    with pytest.raises(CacheMismatchError, match=r"teachers\[1\].weights_sha256"):
        TeacherCache(built).check_compatible(fingerprint)


def test_interrupted_build_resumes(recipe, teachers, built, tmp_path):
    out = tmp_path / "c"

    def stop_after_first(index: int) -> None:
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(recipe, out, teachers=teachers, device="cpu", shard_size=3, batch_size=2, progress=False,
                    on_shard=stop_after_first)
    with pytest.raises(CacheError, match="incomplete"):
        TeacherCache(out)
    kept = {p: p.stat().st_mtime_ns for p in (out / "shards" / "00000").iterdir()}
    # a half-written partial shard (no manifest entry) and a damaged kept one are both redone
    (out / "shards" / "00002").mkdir()
    (out / "shards" / "00002" / "clip.summary.npy").write_bytes(b"partial")
    damaged = out / "shards" / "00001" / "dinov2.features.npy"
    damaged.write_bytes(damaged.read_bytes()[:-8])
    redone: list[int] = []
    build_cache(recipe, out, teachers=teachers, device="cpu", shard_size=3, batch_size=2, progress=False,
                on_shard=redone.append)
    assert redone == [1, 2]
    assert {p: p.stat().st_mtime_ns for p in (out / "shards" / "00000").iterdir()} == kept
    a, b = TeacherCache(out, checksums=True), TeacherCache(built)
    rows = list(range(a.rows))
    for name in a.names:
        assert torch.equal(a.targets(rows)[name].features, b.targets(rows)[name].features)


def test_distill_from_cache_equals_online(recipe, teachers, built, tmp_path):
    def run(name: str, cache: Path | None) -> tuple[dict, list[float]]:
        losses: list[float] = []
        torch.manual_seed(0)  # the same student weights in both runs
        record = distill(TinyBackbone(), recipe, out_dir=tmp_path, run_name=name, progress=False, device="cpu",
                         teachers=teachers, teacher_cache=cache, on_step=lambda s, m: losses.append(m["total"]))
        return record, losses

    online, online_losses = run("online", None)
    cached, cached_losses = run("cached", built)
    assert cached["teacher_cache"] == str(built) and "teacher_cache" not in online
    # the same views, targets rounded to fp16: the same training to fp16 tolerance
    np.testing.assert_allclose(cached_losses, online_losses, rtol=2e-3, atol=1e-4)
    assert cached["fd_loss"] == pytest.approx(online["fd_loss"], rel=5e-3)


def test_verify_passes_then_catches_a_corrupted_shard(recipe, teachers, built, tmp_path):
    report = verify_cache(built, samples=4, device="cpu", teachers=teachers)
    assert report.ok and not report.problems and len(report.samples) == 4
    assert all(t.cosine_min >= 0.999 and t.max_abs_error < 0.05 for t in report.teachers)

    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(built, bad)
    target = bad / "shards" / "00001" / "clip.features.npy"
    array = np.load(target)
    array[0, 0, 0, 0] = np.nan
    np.save(target, array)  # same size and shape: only the checksum and the NaN check see it
    report = verify_cache(bad, samples=4, device="cpu", teachers=teachers)
    assert not report.ok and any(p.shard == "00001" and "checksum" in p.problem for p in report.problems)
    assert all(r // 3 != 1 for r in report.samples)  # entries of the bad shard are never used
    with pytest.raises(CacheError, match="corrupt"):
        TeacherCache(bad, checksums=True)
    with pytest.raises(CacheError, match="checksum mismatch"):  # training refuses it too
        distill(TinyBackbone(), recipe, out_dir=tmp_path, progress=False, device="cpu", teachers=teachers,
                teacher_cache=bad)
    np.save(target, array[:2])  # a wrong shape is caught even without checksums (training's open)
    with pytest.raises(CacheError, match="shape"):
        TeacherCache(bad)

    from zoo.cli import cli as main

    runner = CliRunner()
    good = runner.invoke(main, ["cache", "verify", str(built), "--samples", "2", "--device", "cpu"])
    assert good.exit_code == 0, good.output
    assert "cosine" in good.output
    failed = runner.invoke(main, ["cache", "verify", str(bad), "--samples", "2", "--device", "cpu"])
    assert failed.exit_code == 1


def test_cli_build_and_distill(image_dir, tmp_path):
    from zoo.cli import cli as main

    runner = CliRunner()
    common = ["--recipe", "smoke", "--set", "data.source=folder", "--set", f"data.path={image_dir}",
              "--set", "train.resolution=32", "--set", "train.batch_size=2",
              "--teacher", "clip:tiny@32", "--teacher", "dinov2:tiny@28"]
    out = tmp_path / "cache"
    result = runner.invoke(main, ["cache", "build", *common, "--out", str(out), "--views", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "estimated size" in result.output and (out / MANIFEST_FILE).is_file()
    result = runner.invoke(main, ["distill", "--backbone", "resnet-18", *common, "--set", "train.steps=2",
                                  "--set", "bench.enabled=false", "--out", str(tmp_path / "runs"), "--no-progress",
                                  "--teacher-cache", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["distill", "--backbone", "resnet-18", *common, "--set", "train.steps=2",
                                  "--set", "augment.hflip=false", "--out", str(tmp_path / "runs"), "--no-progress",
                                  "--set", f"data.teacher_cache={out}"])  # the recipe key (search proxy's route)
    assert result.exit_code == 2 and "augment.hflip" in result.output


def test_search_proxy_reads_the_cache(tmp_path):
    """`zoo search --teacher-cache` trains its proxies on the cached teacher outputs."""
    from zoo.cli import cli

    runner = CliRunner()
    cache = tmp_path / "proxy-cache"
    small = ["--set", "train.steps=2", "--set", "eval.every=2", "--set", "train.checkpoint_every=2"]
    result = runner.invoke(cli, ["cache", "build", "--recipe", "search-proxy", *small, "--out", str(cache),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["search", "run", "--n-trials", "1", "--out", str(tmp_path / "s"), "--quiet",
                                 "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study-name", "c",
                                 "--limit", "dim=32", "--bench-repeats", "1", "--bench-steps", "1",
                                 *small, "--teacher-cache", str(cache)])
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "s").glob("*/summary.json")]
    assert len(records) == 1 and records[0]["teacher_cache"] and records[0]["fd_loss"] is not None
    # A cache built for another resolution is refused with one line.
    result = runner.invoke(cli, ["search", "run", "--n-trials", "2", "--out", str(tmp_path / "s"), "--quiet",
                                 "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study-name", "c96",
                                 "--limit", "dim=32", *small, "--set", "train.resolution=96",
                                 "--teacher-cache", str(cache)])
    assert result.exit_code == 2, result.output
    assert "does not fit" in result.output and "Traceback" not in result.output


def test_phi_s_statistics_are_stored_by_the_build(recipe, teachers, built):
    """The build estimates PHI-S over every stored entry: standardised targets have unit variance per channel."""
    cache = TeacherCache(built)
    entry = cache.manifest["standardize"]
    assert entry["method"] == "phi-s" and entry["teachers"]["dinov2"]["features"]["samples"] > 0
    standardizer = cache.standardizer
    assert sorted(cache.standardizers) == sorted(cache.names) == sorted(standardizer.names)
    assert set(cache.standardizers["clip"]) >= {"summary.mean", "summary.rotation", "features.scale"}
    targets = cache.targets(range(cache.rows))
    standardized = standardizer.standardize(targets)
    for name in cache.names:
        summary = standardized[name].summary
        features = standardized[name].features.movedim(1, -1).flatten(0, -2)  # every location one vector
        assert entry["teachers"][name]["features"]["samples"] == features.shape[0]
        for values in (summary, features):
            torch.testing.assert_close(values.var(0, unbiased=True), torch.ones(values.shape[1]), atol=2e-3, rtol=0)
        back = standardizer.destandardize(standardized)[name]
        torch.testing.assert_close(back.features, targets[name].features, atol=1e-4, rtol=1e-4)


def test_cache_imports_no_engine_above_it():
    """zoo.cache uses zoo.teachers/progress/versions/devices, never zoo.distill (which imports it)."""
    import ast

    folder = Path(__file__).resolve().parent.parent / "zoo" / "cache"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[:2] in (["zoo", "distill"], ["zoo", "bench"],
                                                                  ["zoo", "commands"], ["zoo", "cli"])], path
