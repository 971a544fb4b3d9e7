"""Data at scale (issue 16): WebDataset shards, large folders listed once, the loader, named held-out sources.

Tiny shards of tiny images, written with the ``webdataset`` package's own ``TarWriter`` (so the
reader is checked against the format as that package writes it).
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo.data.crops as crops
import zoo.data.listing as listing
from zoo.data import (CropDataset, DataWarning, ImageList, ShardSample, ShardStreamOrder, expand_braces,
                      image_size, load_crop, load_images, load_recipe_images, load_shards, train_loader)
from zoo.errors import ConfigError, ZooError
from zoo.recipe import load_recipe

wds = pytest.importorskip("webdataset")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Listings and shard indexes go to a per-test cache folder, never the user's."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("zoo-cache")))


def jpeg_bytes(rng: np.random.Generator, size: tuple[int, int] = (24, 20)) -> bytes:
    small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(folder: Path, shards: int = 4, per_shard: int = 6, seed: int = 0, prefix: str = "",
                 labels: int = 3) -> list[Path]:
    """``shards`` tar files of ``per_shard`` samples ``<key>.jpg`` + ``<key>.cls`` (class = index mod ``labels``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(shards):
        path = folder / f"{prefix}{s:05d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in range(per_shard):
                index = s * per_shard + i
                writer.write({"__key__": f"sample{index:06d}", "jpg": jpeg_bytes(rng), "cls": index % labels})
        paths.append(path)
    return paths


def labels_of(dataset: CropDataset, steps: range, slots: range) -> list[str]:
    return [dataset.paths[dataset.image_index(step, slot)].label for step in steps for slot in slots]


# --------------------------------------------------------------------------- naming shards


def test_brace_expansion():
    assert expand_braces("/d/{00000..00003}.tar") == [f"/d/{i:05d}.tar" for i in range(4)]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("x{9..11}") == ["x9", "x10", "x11"]
    assert expand_braces("{train-{0..1},val}.tar") == ["train-0.tar", "train-1.tar", "val.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ConfigError, match="unbalanced"):
        expand_braces("/d/{0..3.tar")


def test_pattern_list_file_and_folder_name_the_same_shards(tmp_path):
    paths = write_shards(tmp_path / "shards", shards=3, per_shard=2)
    listing_file = tmp_path / "shards.txt"
    listing_file.write_text("# train shards\nshards/{00000..00001}.tar\n\n" + str(paths[2]) + "\nshards/00000.tar\n")
    by_pattern = load_shards(str(tmp_path / "shards" / "{00000..00002}.tar"))
    by_list = load_shards(str(listing_file))
    by_folder = load_shards(str(tmp_path / "shards"))
    assert len(by_pattern) == len(by_list) == len(by_folder) == 6  # the repeated shard is read once
    assert [by_pattern.name(i) for i in range(6)] == [by_folder.name(i) for i in range(6)]
    assert by_pattern.name(0) == "00000.tar:sample000000"
    for source in ("auto", "webdataset"):
        assert load_images(source, str(listing_file), holdout=1).source == "webdataset"


def test_shard_index_is_cached_and_rebuilt_when_a_shard_changes(tmp_path):
    paths = write_shards(tmp_path, shards=2, per_shard=3)
    pattern = str(tmp_path / "{00000..00001}.tar")
    first = load_shards(pattern)
    again = load_shards(pattern)
    assert not first.cached and again.cached and isinstance(again.offset, np.memmap)
    assert [first.name(i) for i in range(6)] == [again.name(i) for i in range(6)]
    write_shards(tmp_path, shards=1, per_shard=5, seed=3)  # shard 0 rewritten with 5 samples
    os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = load_shards(pattern)
    assert not changed.cached and len(changed) == 8


def test_a_sample_reads_its_own_bytes_and_label(tmp_path):
    write_shards(tmp_path, shards=2, per_shard=3, labels=3)
    catalog = load_shards(str(tmp_path / "{00000..00001}.tar"))
    sample = catalog.item(4)
    assert isinstance(sample, ShardSample) and sample.cls() == 4 % 3
    assert image_size(sample) == (24, 20)
    crop = load_crop(sample, lambda w, h: (0, 0, w, h), (8, 8))
    assert crop.shape == (3, 8, 8) and 0.0 <= float(crop.min()) <= float(crop.max()) <= 1.0


def test_urls_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="must be local or mounted files"):
        load_images("webdataset", "https://example.com/shards/{0..9}.tar")


# --------------------------------------------------------------------------- the order


@pytest.mark.parametrize("buffer", [0, 1, 5, 7, 1000])
def test_stream_order_windows_equal_the_whole_epoch(buffer):
    counts = [5, 0, 9, 3, 11]
    order = ShardStreamOrder(counts, seed=3, buffer=buffer)
    for epoch in range(3):
        full = order.epoch_order(epoch)
        assert sorted(full.tolist()) == list(range(28))  # a permutation: every sample once
        assert [order.at(epoch, g) for g in range(28)] == full.tolist()
    fresh = ShardStreamOrder(counts, seed=3, buffer=buffer)
    assert fresh.at(2, 17) == order.epoch_order(2)[17]  # reached directly, nothing before it computed


def test_stream_order_reads_shards_in_order_within_the_buffer():
    counts = [50] * 8
    starts = np.cumsum([0] + counts[:-1])
    order = ShardStreamOrder(counts, seed=0, buffer=10)
    shown = order.epoch_order(0)
    shard_of = np.searchsorted(starts, shown, side="right") - 1
    # where each sample is in the stream (shards in the epoch's shard order, then tar order)
    perm = np.random.default_rng(np.random.SeedSequence([0, 2_000_003, 0])).permutation(8)
    stream_position = {int(starts[s] + i): k * 50 + i for k, s in enumerate(perm) for i in range(50)}
    displacement = [abs(stream_position[int(sample)] - g) for g, sample in enumerate(shown)]
    assert max(displacement) <= 10 and np.mean(displacement) > 1  # bounded, and actually shuffled
    assert len(set(shard_of[:40].tolist())) <= 2  # the first batches come from the first shard or two
    assert not np.array_equal(order.epoch_order(0), order.epoch_order(1))


def test_resume_at_step_k_reads_the_uninterrupted_batches(tmp_path):
    write_shards(tmp_path, shards=4, per_shard=5)
    images = load_images("webdataset", str(tmp_path / "{00000..00003}.tar"), holdout=2, shuffle_buffer=4)
    assert len(images.train) == 18 and len(images.holdout) == 2

    def batches(start: int, workers: int = 0) -> list[torch.Tensor]:
        dataset = CropDataset(images.train, (16, 16), seed=5, batch_size=4, hflip=True)
        return list(train_loader(dataset, start, 12, 4, workers=workers))

    uninterrupted = batches(0)
    resumed = batches(7)
    assert len(resumed) == 5 and all(torch.equal(a, b) for a, b in zip(uninterrupted[7:], resumed))
    with_workers = batches(7, workers=1)  # another process, same batches
    assert all(torch.equal(a, b) for a, b in zip(resumed, with_workers))
    # every training sample once per epoch (18 samples: steps 0-3 and half of step 4)
    dataset = CropDataset(images.train, (16, 16), seed=5, batch_size=4)
    epoch = labels_of(dataset, range(4), range(4)) + labels_of(dataset, range(4, 5), range(2))
    assert sorted(epoch) == sorted(images.train.names())
    assert not set(epoch) & set(images.holdout.names())


def test_epoch_slots_invert_the_shard_order(tmp_path):
    """The teacher cache's schedule: image i of epoch v sits at the (step, slot) epoch_slots says."""
    write_shards(tmp_path, shards=3, per_shard=4)
    images = load_images("webdataset", str(tmp_path), holdout=1, shuffle_buffer=3)
    dataset = CropDataset(images.train, (16, 16), seed=1, batch_size=3)
    for epoch in range(2):
        for image, (step, slot) in enumerate(dataset.epoch_slots(epoch)):
            assert dataset.image_index(step, slot) == image


def _rank_worker(rank: int, world: int, pattern: str, cache: str, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ["ZOO_CACHE_DIR"] = cache
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        images = load_images("webdataset", pattern, holdout=2, shuffle_buffer=5, warn=False)
        dataset = CropDataset(images.train, (8, 8), seed=11, batch_size=6)
        steps = len(images.train) // 6  # one epoch
        loader = train_loader(dataset, 0, steps, 6, rank=rank, world_size=world)
        mine = [dataset.paths[dataset.image_index(step, slot)].label
                for step, slots in enumerate(loader.batch_sampler) for _, slot in slots]
        assert sum(len(b) for b in loader) == len(mine)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            Path(out).write_text("\n".join(f"{r}\t{label}" for r, labels in enumerate(gathered) for label in labels))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_read_every_sample_once_per_epoch(tmp_path):
    """Two real processes (gloo): the union of their samples over one epoch is every training sample, once."""
    import socket

    import torch.multiprocessing as mp

    write_shards(tmp_path / "shards", shards=4, per_shard=8)
    pattern = str(tmp_path / "shards" / "{00000..00003}.tar")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "seen.tsv"
    mp.start_processes(_rank_worker, args=(2, pattern, os.environ["ZOO_CACHE_DIR"], port, str(out)), nprocs=2,
                       start_method="fork")
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    by_rank = {r: [label for rank, label in rows if rank == r] for r in ("0", "1")}
    train = load_images("webdataset", pattern, holdout=2, shuffle_buffer=5, warn=False).train.names()
    assert len(by_rank["0"]) == len(by_rank["1"]) == 15 and not set(by_rank["0"]) & set(by_rank["1"])
    assert sorted(by_rank["0"] + by_rank["1"]) == sorted(train)


# --------------------------------------------------------------------------- corrupt members


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    good = jpeg_bytes(rng)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as writer:
        for i in range(5):
            writer.write({"__key__": f"a{i}", "jpg": good if i != 2 else b"not a jpeg", "cls": 0})
        writer.write({"__key__": "a5", "txt": "a caption without an image"})
    with wds.TarWriter(str(tmp_path / "00001.tar")) as writer:
        for i in range(4):
            writer.write({"__key__": f"b{i}", "jpg": good, "cls": 1})
    import tarfile

    with tarfile.open(tmp_path / "00001.tar") as archive:
        last = archive.getmembers()[-1]
    assert last.name == "b3.jpg"
    data = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[:last.offset_data + 100])  # the last member is cut off
    with pytest.warns(DataWarning, match=r"skipped 3 unreadable image\(s\)"):
        images = load_images("webdataset", str(tmp_path / "{00000..00001}.tar"), holdout=1)
    assert len(images.train) + len(images.holdout) == 7  # a0 a1 a3 a4 b0 b1 b2
    names = images.describe()["skipped_names"]
    assert any("a5 (no image member)" in n for n in names) and any("b3.jpg (cut off" in n for n in names)
    assert any(n.endswith("00000.tar:a2") for n in names) and images.describe()["skipped_images"] == 3


def test_bad_images_found_while_training_are_counted_across_workers(tmp_path):
    """Above data.verify_limit nothing is decoded up front: a worker finds the bad member and the record counts it."""
    rng = np.random.default_rng(1)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as writer:
        for i in range(8):
            writer.write({"__key__": f"k{i}", "jpg": jpeg_bytes(rng) if i != 5 else b"\xff\xd8 broken"})
    images = load_images("webdataset", str(tmp_path / "00000.tar"), holdout=1, verify_limit=2, warn=False)
    assert images.skipped_count == 0 and images.verified <= 2
    dataset = CropDataset(images.train, (8, 8), seed=0, batch_size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        batches = list(train_loader(dataset, 0, 2, 7, workers=1))
    assert all(b.shape == (7, 3, 8, 8) for b in batches)
    assert images.skipped_count == 1 and images.describe()["skipped_while_training"] == 1
    assert images.skipped_names == ["00000.tar:k5"]


# --------------------------------------------------------------------------- large folders


def _folder(root: Path, count: int, subfolders: int = 3) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class{i % subfolders}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def test_folder_listing_is_cached_and_redone_when_a_directory_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "LISTING_CACHE_MIN", 5)
    _folder(tmp_path / "images", 12)
    first = listing.list_folder(tmp_path / "images")
    second = listing.list_folder(tmp_path / "images")
    assert not first.cached and second.cached and isinstance(second.catalog.buffer, np.memmap)
    names = [second.catalog.name(i) for i in range(12)]
    assert names == [first.catalog.name(i) for i in range(12)] and names[0] == "class0/00000.png"
    _folder(tmp_path / "extra", 1)
    os.replace(tmp_path / "extra" / "class0" / "00000.png", tmp_path / "images" / "class2" / "new.png")
    third = listing.list_folder(tmp_path / "images")
    assert not third.cached and len(third.catalog) == 13


def test_a_large_folder_is_not_opened_before_the_first_step(tmp_path, monkeypatch):
    _folder(tmp_path, 40)
    opened = []
    real_open = crops.Image.open
    monkeypatch.setattr(crops.Image, "open", lambda fp, *a, **k: opened.append(fp) or real_open(fp, *a, **k))
    images = load_images("folder", str(tmp_path), holdout=2, verify_limit=10)
    assert len(opened) == 2 == images.verified  # only the held-out images
    assert isinstance(images.train, ImageList) and len(images.train) == 38
    per_image = images.train.nbytes() / len(images.train.catalog)
    assert per_image < 40  # joined names + offsets, no Path objects


def test_image_list_behaves_as_a_sequence_of_paths(tmp_path):
    _folder(tmp_path, 9)
    images = load_images("folder", str(tmp_path), holdout=2)
    train = images.train
    assert list(train) == [train[i] for i in range(len(train))] and train[-1] == list(train)[-1]
    assert all(isinstance(p, Path) and p.is_file() for p in train)
    assert sorted(train + images.holdout) == sorted(p for p in tmp_path.rglob("*.png"))
    assert images.train_names() == [p.relative_to(tmp_path).as_posix() for p in train]


# --------------------------------------------------------------------------- named held-out source


def test_held_out_images_from_a_named_folder(tmp_path):
    _folder(tmp_path / "train", 10)
    _folder(tmp_path / "val", 4, subfolders=1)
    recipe = load_recipe("smoke", ["data.source=folder", f"data.path={tmp_path / 'train'}", "eval.images=3",
                                   f"eval.path={tmp_path / 'val'}"])
    images = load_recipe_images(recipe)
    assert len(images.train) == 10 and len(images.holdout) == 3
    assert all(p.is_relative_to(tmp_path / "val") for p in images.holdout)
    assert images.describe()["holdout_source"] == str(tmp_path / "val")
    # a held-out folder inside the training one: those files leave training
    inside = load_images("folder", str(tmp_path), holdout=2, eval_source="auto", eval_path=str(tmp_path / "val"))
    assert len(inside.train) == 12 and not {p.resolve() for p in inside.train} & {p.resolve() for p in inside.holdout}


def test_held_out_images_from_a_validation_shard(tmp_path):
    write_shards(tmp_path / "train", shards=2, per_shard=4)
    write_shards(tmp_path / "val", shards=1, per_shard=3, seed=9, prefix="val-")
    images = load_images("webdataset", str(tmp_path / "train"), holdout=2, eval_source="auto",
                         eval_path=str(tmp_path / "val" / "val-00000.tar"))
    assert len(images.train) == 8 and len(images.holdout) == 2
    assert all(n.startswith("val-00000.tar:") for n in images.holdout.names())
    # the same shard set for both: the held-out samples are not trained on
    same = load_images("webdataset", str(tmp_path / "train"), holdout=3, eval_source="webdataset",
                       eval_path=str(tmp_path / "train"))
    assert len(same.train) == 5 and not set(same.train.names()) & set(same.holdout.names())


def test_recipe_keys_for_shards_and_held_out_sources():
    recipe = load_recipe("smoke", ["data.source=webdataset", "data.path=/data/{00000..01023}.tar",
                                   "data.shuffle_buffer=2000", "eval.path=/data/val.tar"])
    assert recipe.data.shuffle_buffer == 2000 and recipe.eval.source == "auto"
    with pytest.raises(ConfigError, match=r"'eval\.path' \(/v\) is ignored by eval\.source 'split'"):
        load_recipe("smoke", ["eval.source=split", "eval.path=/v"])
    with pytest.raises(ConfigError, match="'eval.path' is required for eval.source 'webdataset'"):
        load_recipe("smoke", ["eval.source=webdataset"])
    with pytest.raises(ConfigError, match="'data.shuffle_buffer' must be 0 or more"):
        load_recipe("smoke", ["data.shuffle_buffer=-1"])


# --------------------------------------------------------------------------- decoding


def test_draft_decoding_shows_the_same_region(tmp_path):
    yy, xx = np.meshgrid(np.linspace(0, 255, 750), np.linspace(0, 255, 1000), indexing="ij")
    array = np.stack([xx, yy, 255 - xx], axis=-1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(array).save(path, quality=92)
    box = lambda w, h: (100, 50, 900, 650)  # noqa: E731
    scales = []
    real = crops._draft_scale
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crops, "_draft_scale", lambda *a: scales.append(real(*a)) or scales[-1])
        drafted = load_crop(path, box, (64, 64))
    old = crops.set_draft(False)
    try:
        full = load_crop(path, box, (64, 64))
    finally:
        crops.set_draft(old)
    assert scales == [8]  # 800x600 box -> 64 px: the decoder scales by 1/8 (the box, 100x75, is still >= 64 px)
    assert (drafted - full).abs().mean() < 0.01 and (drafted - full).abs().max() < 0.06
    small = load_crop(path, lambda w, h: (0, 0, 200, 150), (64, 64))  # a small box: no draft, same as before
    assert small.shape == (3, 64, 64)


# --------------------------------------------------------------------------- the teacher cache over shards


def test_cache_build_and_replay_over_shards(tmp_path):
    """`zoo cache build` reads the same shards: its stored views are the crops training shows, and verify agrees."""
    from zoo.cache import CachedCropDataset, TeacherCache, build_cache, verify_cache
    from zoo.data import shared_resolution
    from zoo.teachers import build_teachers

    from tests.test_distill import tiny_recipe

    write_shards(tmp_path / "shards", shards=3, per_shard=3)
    recipe = tiny_recipe(tmp_path, "data.source=webdataset", f"data.path={tmp_path / 'shards' / '{00000..00002}.tar'}",
                         "data.shuffle_buffer=2", "train.batch_size=2", "augment.views=2")
    teachers = build_teachers(recipe.teachers)
    out = tmp_path / "cache"
    build_cache(recipe, out, teachers=teachers, device="cpu", shard_size=8, batch_size=4, progress=False)
    images = load_recipe_images(recipe)
    cache = TeacherCache(out, checksums=True)
    assert cache.table.names == images.train_names() and all(".tar:sample" in n for n in cache.table.names)
    assert cache.rows == 2 * len(images.train) == 14
    shared = shared_resolution(recipe.resolution, *[t.resolution for t in teachers])
    online = CropDataset(images.train, shared, recipe.train.seed, 2, recipe.augment.scale, recipe.augment.ratio,
                         recipe.augment.hflip)
    replay = CachedCropDataset(online, cache)
    for step in range(7):  # two epochs of 7 images: every stored view once
        for slot in range(2):
            crop, row = replay[(step, slot)]
            assert torch.equal(crop, online[(step, slot)])
    report = verify_cache(out, teachers=teachers, device="cpu", samples=3)
    assert report.ok and len(report.samples) == 3 and report.teachers


def test_labelled_shards_for_classification(tmp_path):
    """`zoo eval knn/zeroshot --data` on shards: the samples and their cls labels (see the README for the hook)."""
    from zoo.data import labelled_shards

    write_shards(tmp_path / "val", shards=2, per_shard=4, labels=3)
    items, labels = labelled_shards(str(tmp_path / "val" / "{00000..00001}.tar"))
    assert labels.tolist() == [i % 3 for i in range(8)] and len(items) == 8
    assert load_crop(items[3], lambda w, h: (0, 0, w, h), (8, 8)).shape == (3, 8, 8)
    with wds.TarWriter(str(tmp_path / "unlabelled.tar")) as writer:
        writer.write({"__key__": "x", "jpg": jpeg_bytes(np.random.default_rng(0))})
    with pytest.raises(ZooError, match="1 of 1 samples .* have no cls member"):
        labelled_shards(str(tmp_path / "unlabelled.tar"))


def test_zoo_eval_knn_reads_labelled_shards(tmp_path):
    """The same shard source works for `zoo eval`: classes from `cls`, a stratified split, a teacher scored."""
    from click.testing import CliRunner

    from zoo.cli import cli

    write_shards(tmp_path / "val", shards=2, per_shard=9, labels=3)
    result = CliRunner().invoke(cli, ["eval", "knn", "--teacher", "clip:tiny", "--data",
                                      str(tmp_path / "val" / "{00000..00001}.tar"), "--device", "cpu", "-k", "3",
                                      "--json", str(tmp_path / "knn.json")])
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "knn.json").read_text())
    scored = scored[0] if isinstance(scored, list) else scored
    assert scored["classes"] == 3 and scored["train_images"] + scored["val_images"] == 18
    assert 0.0 <= scored["top1"] <= 1.0


# --------------------------------------------------------------------------- a run over shards


def test_distill_over_shards_resumes_to_the_same_weights(tmp_path):
    """`zoo distill` on shards with a validation shard for the FD loss: a run stopped at step 3 and resumed
    ends with the weights of an uninterrupted one; the record describes the data."""
    from zoo.checkpoints import load_checkpoint
    from zoo.distill import distill
    from zoo.distill.trainer import DistillInterrupted

    from tests.test_distill import TinyBackbone, tiny_recipe

    write_shards(tmp_path / "train", shards=3, per_shard=4)
    write_shards(tmp_path / "val", shards=1, per_shard=3, seed=7, prefix="val-")
    recipe = tiny_recipe(tmp_path, "data.source=auto", f"data.path={tmp_path / 'train' / '{00000..00002}.tar'}",
                         "data.shuffle_buffer=3", f"eval.path={tmp_path / 'val'}", "train.steps=5",
                         "augment.hflip=true")
    torch.manual_seed(0)
    straight = distill(TinyBackbone(), recipe, out_dir=tmp_path / "runs", run_name="straight", progress=False)
    data = straight["data"]  # RunRecord.extra is flattened into the record
    assert data["source"] == "webdataset" and data["train_images"] == 12 and data["holdout_images"] == 2
    assert data["holdout_source"] == str(tmp_path / "val") and straight["fd_loss"] is not None

    def stop_at_3(step: int, metrics: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    torch.manual_seed(0)  # TinyBackbone takes its initial weights from the global RNG, as the first run's did
    with pytest.raises(DistillInterrupted):
        distill(TinyBackbone(), recipe, out_dir=tmp_path / "runs", run_name="split", progress=False, on_step=stop_at_3)
    torch.manual_seed(123)
    record = distill(TinyBackbone(), recipe, out_dir=tmp_path / "runs", run_name="split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "runs" / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "runs" / "split" / "checkpoint.pt")
    for key, value in a["backbone"].items():
        torch.testing.assert_close(b["backbone"][key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert record["steps"] == 5 and record["fd_loss"] == pytest.approx(straight["fd_loss"], rel=1e-4)
