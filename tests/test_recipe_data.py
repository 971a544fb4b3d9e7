"""Recipes (loading, overrides, errors with paths) and data (sources, bad images, split, augmentation)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zoo.data import (RECORD_FIRST, CropDataset, DataWarning, StepBatchSampler, bundled_images, holdout_split,
                      load_crop, load_images, random_crop_box, sample_rng, shared_resolution, student_view, walk_images)
from zoo.errors import ConfigError, UnknownNameError, ZooError
from zoo.recipe import Recipe, load_recipe, recipe_from_dict, shipped_recipes

# --------------------------------------------------------------------------- recipes


def test_shipped_recipes_load():
    assert {"smoke", "table7", "search-proxy"} <= set(shipped_recipes())
    smoke = load_recipe("smoke")
    assert smoke.name == "smoke" and smoke.teachers == ["clip:tiny", "dinov2:tiny"]
    assert smoke.data.source == "bundled" and smoke.resolution[0] <= 96
    table7 = load_recipe("table7")
    assert table7.teachers == ["clip:ViT-H-14:laion2b_s32b_b79k", "dinov2:vit_giant_patch14_dinov2"]
    assert (table7.optim.lr, table7.train.batch_size, table7.resolution) == (1e-3, 1024, (224, 224))
    assert table7.train.steps == 600_000 and table7.data.path is None
    assert load_recipe("search-proxy").train.steps < smoke.train.steps * 10


def test_defaults_come_from_the_dataclasses(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  steps: 7\n")
    recipe = load_recipe(path)
    assert recipe.name == "mine" and recipe.train.steps == 7
    assert recipe.optim == Recipe().optim and recipe.loss.alpha == 0.9 and recipe.loss.beta == 0.1


def test_overrides_are_parsed_as_yaml():
    recipe = load_recipe("smoke", ["optim.lr=5e-4", "optim.betas=[0.8, 0.9]", "loss.summary_weights.clip=0.5",
                                   "train.resolution=[48, 64]", "train.grad_clip=null", "augment.hflip=false"])
    assert recipe.optim.lr == 5e-4 and recipe.optim.betas == (0.8, 0.9)
    assert recipe.loss.summary_weights == {"clip": 0.5}
    assert recipe.resolution == (48, 64) and recipe.train.grad_clip is None and recipe.augment.hflip is False


def test_round_trip_through_to_dict():
    recipe = load_recipe("table7", ["data.path=/data/in21k"])
    again = recipe_from_dict(recipe.to_dict())
    assert again == recipe
    assert isinstance(recipe.to_dict()["optim"]["betas"], list)


@pytest.mark.parametrize("override, path, valid", [
    ("optim.lrr=1", "optim.lrr", "lr, weight_decay"),
    ("trian.steps=3", "trian", "teachers, data"),
    ("eval.every.x=1", "eval.every", None),
])
def test_unknown_override_names_its_path(override, path, valid):
    with pytest.raises(ConfigError) as err:
        load_recipe("smoke", [override])
    assert f"'{path}" in str(err.value)
    if valid:
        assert valid in str(err.value)


def test_unknown_key_in_file_names_its_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"'train\.stepz'.*steps, batch_size"):
        load_recipe(path)


@pytest.mark.parametrize("override, path", [
    ("train.steps=abc", "train.steps"), ("optim.betas=[0.9]", "optim.betas"), ("teachers=clip:tiny", "teachers"),
    ("loss.balancing=magic", "loss.balancing"), ("train.steps=0", "train.steps"), ("augment.hflip=3", "augment.hflip"),
])
def test_bad_values_name_their_path(override, path):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_recipe("smoke", [override])


def test_loss_and_eval_keys_for_fd_and_standardisation():
    recipe = load_recipe("smoke")
    assert (recipe.loss.fd_teacher, recipe.loss.standardize, recipe.loss.standardize_batches) == ("dinov2", "none", 8)
    assert recipe.eval.fd_loss_train_steps == 20
    recipe = load_recipe("smoke", ["loss.standardize=phi-s", "loss.fd_teacher=clip", "eval.fd_loss_train_steps=5"])
    assert (recipe.loss.standardize, recipe.loss.fd_teacher, recipe.eval.fd_loss_train_steps) == ("phi-s", "clip", 5)
    for override, message in [("loss.standardize=whiten", r"'loss\.standardize' must be one of none, phi-s"),
                              ("loss.fd_teacher=3", r"'loss\.fd_teacher' expects str"),
                              ("loss.fd_teacher=' '", r"'loss\.fd_teacher' must name a teacher"),
                              ("loss.standardize_batches=0", r"'loss\.standardize_batches' must be at least 1"),
                              ("eval.fd_loss_train_steps=0", r"'eval\.fd_loss_train_steps' must be at least 1")]:
        with pytest.raises(ConfigError, match=message) as err:
            load_recipe("smoke", [override])
        assert "\n" not in str(err.value)


def test_unknown_recipe_name_and_missing_file():
    with pytest.raises(UnknownNameError, match="smoke"):
        load_recipe("smok")
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("/nonexistent/recipe.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_recipe("smoke", ["optim.lr"])


# --------------------------------------------------------------------------- hostile recipe text


def _laughs(levels: int = 9) -> str:
    """A "billion laughs" document: 9 ** levels strings once every alias is expanded."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_fast_in_bounded_memory(tmp_path):
    import time
    import tracemalloc

    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs())
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(ConfigError, match=r"laughs\.yaml: its aliases expand to more than 100,000 values") as err:
            load_recipe(path)
        cpu = time.process_time() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cpu < 1.0 and peak < 20e6  # 9**9 = 387M strings if expanded
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="override 'teachers': value refused: its aliases expand"):
        load_recipe("smoke", ["teachers=" + "{" + _laughs().replace("\n", ", ").rstrip(", ") + "}"])


@pytest.mark.parametrize("text", ["train: &x\n  steps: *x\n", "teachers: &t [clip:tiny, *t]\n",
                                  "data: &d {path: *d}\n"])
def test_recursive_alias_is_refused(tmp_path, text):
    path = tmp_path / "recursive.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"recursive\.yaml: an alias refers to itself"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="an alias refers to itself"):
        load_recipe("smoke", ["eval=&e [*e]"])


def test_aliases_within_the_limit_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("teachers: &t [clip:tiny, dinov2:tiny]\ndescription: shared\n"
                    "loss:\n  summary_weights: &w {clip: 0.5}\n  feature_weights: *w\n")
    recipe = load_recipe(path)
    assert recipe.teachers == ["clip:tiny", "dinov2:tiny"] and recipe.loss.feature_weights == {"clip": 0.5}


@pytest.mark.parametrize("content, message", [
    (b"train:\n  steps: 3\n# caf\xe9\n", r"bad\.yaml: not UTF-8 text \(invalid byte 0xe9 at offset 23\)"),
    (b"- a\n- b\n", r"bad.yaml: the top level must be a mapping of name, .*got list"),
    (b"just text\n", "the top level must be a mapping.*got str"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nesting deeper than 64 levels"),
    (b"a:" + b"".join(b"\n" + b" " * i + b"k:" for i in range(1, 80)) + b" 1\n", "nesting deeper than 64 levels"),
    (b"#" * 1_000_001, r"bad\.yaml: larger than 1,000,000 bytes"),
    (b"train: {steps: 3\n", r"bad\.yaml: invalid YAML"),
])
def test_hostile_recipe_files_are_one_line_errors(tmp_path, content, message):
    import time

    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    started = time.process_time()
    with pytest.raises(ConfigError, match=message) as err:
        load_recipe(path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert time.process_time() - started < 1.0


@pytest.mark.parametrize("override, message", [
    ("optim.lr=.inf", r"'optim\.lr' expects a finite number"),
    ("optim.lr=1e999", r"'optim\.lr' expects a finite number"),
    ("loss.alpha=.nan", r"'loss\.alpha' expects a finite number"),
    ("optim.lr=" + "9" * 400, r"'optim\.lr' expects a finite number"),
    ("description=" + "[" * 100 + "]" * 100, "value refused: nesting deeper than 64"),
    ("train.steps=" + "x" * 5000, r"'train\.steps' expects int, got x{20}"),
])
def test_hostile_override_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_recipe("smoke", [override])
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


# --------------------------------------------------------------------------- images


def _write_images(folder: Path, count: int, size=(40, 30), exts=(".png", ".jpg")) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img{i}{exts[i % len(exts)]}"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def test_bundled_images_exist():
    images = bundled_images()
    assert len(images) >= 3 and all(p.is_file() for p in images)


def test_folder_skips_corrupt_and_truncated_images(tmp_path):
    good = _write_images(tmp_path / "a" / "b", 4, size=(64, 48))
    (tmp_path / "a" / "corrupt.jpg").write_bytes(b"not an image at all")
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(big, quality=95)
    data = big.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    big.unlink()
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(DataWarning, match=r"skipped 2 unreadable image\(s\)") as record:
        images = load_images("folder", str(tmp_path), holdout=1)
    message = str(record[0].message)
    assert "corrupt.jpg" in message and "truncated.jpg" in message
    assert len(images.skipped) == 2 and sorted(images.train + images.holdout) == sorted(good)
    assert len(images.holdout) == 1 and images.describe()["skipped_images"] == 2


def test_folder_without_usable_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="no usable images"):
        load_images("folder", str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(DataWarning), pytest.raises(ZooError, match="1 unreadable"):
        load_images("auto", str(tmp_path / "bad"))
    with pytest.raises(ZooError, match="not found"):
        load_images("folder", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="data.path"):
        load_images("folder", None)


def test_list_file_paths_are_relative_to_the_file(tmp_path):
    paths = _write_images(tmp_path / "imgs", 3)
    listing = tmp_path / "train.txt"
    listing.write_text("# my images\nimgs/img0.png\n\nimgs/img1.jpg\n" + str(paths[2]) + "\nimgs/missing.png\n")
    with pytest.warns(DataWarning, match="skipped 1"):
        images = load_images("auto", str(listing), holdout=1)
    assert images.source == "list" and sorted(images.train + images.holdout) == sorted(paths)


def test_holdout_is_deterministic_and_order_free(tmp_path):
    paths = [tmp_path / f"d{i % 3}" / f"{i}.jpg" for i in range(20)]
    train, held = holdout_split(paths, 4, tmp_path)
    train2, held2 = holdout_split(list(reversed(paths)), 4, tmp_path)
    assert held == held2 and len(held) == 4 and set(train) == set(train2) and not set(train) & set(held)
    assert holdout_split(paths[:2], 5, tmp_path)[0]  # at least one image stays for training


# --------------------------------------------------------------------------- augmentation


def test_batch_is_a_function_of_seed_and_step(tmp_path):
    paths = _write_images(tmp_path, 5, size=(80, 60))
    make = lambda seed: CropDataset(paths, (32, 32), seed=seed, batch_size=4, hflip=True)  # noqa: E731
    a, b = make(3), make(3)
    batch = lambda ds, step: torch.stack([ds[(step, i)] for i in range(4)])  # noqa: E731
    assert torch.equal(batch(a, 7), batch(b, 7))
    assert torch.equal(batch(a, 7), batch(a, 7))
    assert not torch.equal(batch(a, 7), batch(a, 8))
    assert not torch.equal(batch(a, 7), batch(make(4), 7))
    # An epoch visits every image once.
    seen = [a.image_index(step, slot) for step in range(5) for slot in range(4)]
    assert sorted(seen[:5]) == list(range(5))


def test_crop_box_within_image_and_in_range():
    for index in range(50):
        rng = sample_rng(0, 1, index)
        left, top, right, bottom = random_crop_box(200, 100, rng, scale=(0.25, 0.5), ratio=(0.75, 1.33))
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 100
        area = (right - left) * (bottom - top) / (200 * 100)
        assert 0.2 <= area <= 0.55


def test_load_crop_shows_the_box(tmp_path):
    array = np.zeros((60, 80, 3), dtype=np.uint8)
    array[:, 40:] = 255  # right half white
    path = tmp_path / "half.png"
    Image.fromarray(array).save(path)
    assert load_crop(path, lambda w, h: (50, 10, 70, 30), (8, 8)).min() == 1.0
    assert load_crop(path, lambda w, h: (0, 0, 30, 60), (8, 8)).max() == 0.0
    flipped = load_crop(path, lambda w, h: (30, 0, 50, 60), (8, 8), flip=True)
    assert flipped[:, :, 0].min() == 1.0 and flipped[:, :, -1].max() == 0.0


def test_student_and_teacher_views_share_one_crop(tmp_path):
    from zoo.teachers import build_teacher

    yy, xx = np.meshgrid(np.linspace(0, 255, 90), np.linspace(0, 255, 120), indexing="ij")
    array = np.stack([xx, yy, 255 - xx], axis=-1).astype(np.uint8)  # position-coded colours
    path = tmp_path / "ramp.png"
    Image.fromarray(array).save(path)
    teacher = build_teacher("clip:tiny@32")
    shared = shared_resolution((24, 24), teacher.resolution)
    dataset = CropDataset([path], shared, seed=0, batch_size=4, scale=(0.1, 0.3))
    batch = torch.stack([dataset[(0, i)] for i in range(4)])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    student = student_view(batch, (24, 24)) * std + mean
    seen_by_teacher = teacher.preprocess(batch) * teacher._std + teacher._mean
    teacher_at_student = F.interpolate(seen_by_teacher, size=(24, 24), mode="bilinear", antialias=True)
    assert (student - teacher_at_student).abs().max() < 0.03  # same region of the image
    assert (batch[0] - batch[1]).abs().max() > 0.05  # while different samples get different crops


def test_ranks_get_distinct_shards():
    shards = [list(StepBatchSampler(2, 4, 6, rank, 3)) for rank in range(3)]
    assert all(len(s) == 2 for s in shards)
    step2 = sorted(key for shard in shards for key in shard[0])
    assert step2 == [(2, slot) for slot in range(6)]
    with pytest.raises(ConfigError, match="divisible"):
        StepBatchSampler(0, 4, 5, 0, 2)


def _looped_tree(root: Path) -> list[Path]:
    """15 images in a/, a/b/, c/ with a directory symlink loop, a second link to c/ and a file symlink."""
    files = _write_images(root / "a", 5) + _write_images(root / "a" / "b", 5) + _write_images(root / "c", 5)
    (root / "a" / "b" / "loop").symlink_to(root / "a", target_is_directory=True)  # a/b/loop -> a (a cycle)
    (root / "c-again").symlink_to(root / "c", target_is_directory=True)
    (root / "a" / "same.png").symlink_to(files[-1])  # a file reached by two names
    return files


def test_symlink_loop_lists_each_file_once(tmp_path):
    files = _looped_tree(tmp_path)
    images, broken, duplicates = walk_images(tmp_path)
    assert len(images) == 15 and not broken
    assert sorted({p.resolve() for p in images}) == sorted(p.resolve() for p in files)
    assert duplicates == 1  # a/same.png (the folders reached twice are not walked twice at all)
    assert walk_images(tmp_path) == (images, broken, duplicates)  # deterministic


def test_held_out_images_are_disjoint_from_training_by_resolved_path(tmp_path):
    _looped_tree(tmp_path)
    images = load_images("folder", str(tmp_path), holdout=4)
    train = {p.resolve() for p in images.train}
    held = {p.resolve() for p in images.holdout}
    assert len(images.train) == len(train) == 11 and len(held) == 4 and not train & held
    assert images.duplicates == 1 and images.describe()["duplicates"] == 1
    # even when handed two names of one file, the split never trains on a held-out file
    a = tmp_path / "a" / "img0.png"
    twin = tmp_path / "twin.png"
    twin.symlink_to(a)
    for count in range(1, 3):
        tr, he = holdout_split([a, twin, tmp_path / "a" / "img1.jpg"], count, tmp_path)
        assert not {p.resolve() for p in tr} & {p.resolve() for p in he}


def test_list_file_duplicates_and_dangling_links(tmp_path):
    paths = _write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    listing = tmp_path / "train.txt"
    listing.write_text("imgs/img0.png\n./imgs/img0.png\nimgs/../imgs/img1.jpg\nimgs/img1.jpg\nimgs/img2.png\n")
    images = load_images("list", str(listing), holdout=1)
    assert images.duplicates == 2 and sorted(p.resolve() for p in images.train + images.holdout) == sorted(paths)
    with pytest.warns(DataWarning, match="skipped 1"):
        folder = load_images("folder", str(tmp_path / "imgs"), holdout=1)
    assert folder.skipped_names == ["dangling.png"]


def test_skipped_count_names_and_verify_cost_are_on_the_image_set(tmp_path):
    _write_images(tmp_path, 6)
    for i in range(7):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"not an image")
    with pytest.warns(DataWarning, match="skipped 7"):
        images = load_images("folder", str(tmp_path), holdout=1)
    assert images.skipped_count == 7 and images.skipped_names == [f"bad{i}.jpg" for i in range(RECORD_FIRST)]
    assert images.verified == 13 and images.verify_seconds > 0
    described = images.describe()
    assert described["skipped_images"] == 7 and described["skipped_names"] == images.skipped_names
    assert described["verified_images"] == 13 and isinstance(described["verify_seconds"], float)


def test_verify_pass_is_bounded_by_the_limit(tmp_path, monkeypatch):
    import zoo.data.sources as data

    _write_images(tmp_path, 12)
    bad = sorted(tmp_path.iterdir())[:3]
    for path in bad:
        path.write_bytes(b"broken")
    opened = []
    real = data._readable
    monkeypatch.setattr(data, "_readable", lambda p: opened.append(p) or real(p))
    # 12 images > limit 5: only the held-out ones are decoded now (bad ones replaced), not the whole set
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        images = load_images("folder", str(tmp_path), holdout=2, verify_limit=5)
    assert len(opened) == images.verified <= 5 and all(real(p) for p in images.holdout)
    assert len(images.holdout) == 2 and set(images.skipped) <= set(bad)
    assert len(images.train) + len(images.holdout) + len(images.skipped) == 12
    opened.clear()
    assert load_images("folder", str(tmp_path), holdout=2, verify_limit=0, warn=False).verified == 0 and not opened


def test_data_path_with_bundled_source_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'data\.path' \(/some/images\) is ignored by data\.source 'bundled'"):
        load_recipe("smoke", ["data.path=/some/images"])
    with pytest.raises(ConfigError, match="ignored by data.source 'bundled'"):
        load_images("bundled", "/some/images")
    assert load_recipe("smoke", ["data.path=/some/images", "data.source=auto"]).data.path == "/some/images"


def test_no_warning_for_clean_folder(tmp_path):
    _write_images(tmp_path, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_images("folder", str(tmp_path), holdout=1).train) == 2
