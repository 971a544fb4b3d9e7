"""Data-at-scale faults (issue 16): shards and listing caches that are missing, damaged or changed under a run.

CLI refusals are one ``Error:`` line, exit status 2, no run folder; damaged caches are rebuilt, never trusted;
a shard damaged while training costs only the samples it lost, counted.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import zoo.data.listing as listing
from zoo.cli import cli
from zoo.data import CropDataset, DataWarning, load_images, load_shards, train_loader

from tests.test_data_scale import _folder, write_shards

pytest.importorskip("webdataset")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("zoo-cache")))


def _distill(tmp_path: Path, *sets: str):
    out = tmp_path / "runs"
    args = ["distill", "--backbone", "resnet-18", "--recipe", "smoke", "--out", str(out), "--offline",
            "--no-progress", "--device", "cpu"]
    for value in sets:
        args += ["--set", value]
    return CliRunner().invoke(cli, args), out


def _one_line(result, out: Path) -> str:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output  # (plus the smoke recipe's note)
    assert not out.exists() or not any(out.iterdir())
    return errors[0]


@pytest.mark.parametrize("make_path, expected", [
    (lambda d: str(d / "missing" / "{00000..00003}.tar"), "4 of 4 shard(s) not found, first: "),
    (lambda d: "s3://bucket/shards/{00000..00009}.tar", "must be local or mounted files"),
    (lambda d: str(d / "shards" / "{00000..00001.tar"), "unbalanced '{' in shard pattern"),
    (lambda d: (d / "garbage.tar").write_bytes(b"\0not a tar" * 100) and str(d / "garbage.tar"), "no usable images"),
    (lambda d: (d / "empty.txt").write_text("# no shards\n") and str(d / "empty.txt"), "no .tar shards in"),
], ids=["missing-shards", "url", "unbalanced-brace", "not-a-tar", "empty-shard-list"])
def test_bad_shard_sources_are_one_line_and_leave_nothing(tmp_path, make_path, expected):
    write_shards(tmp_path / "shards", shards=2, per_shard=2)
    result, out = _distill(tmp_path, "data.source=webdataset", f"data.path={make_path(tmp_path)}")
    assert expected in _one_line(result, out)


@pytest.mark.parametrize("sets, expected", [
    (["eval.source=webdataset"], "'eval.path' is required for eval.source 'webdataset'"),
    (["eval.source=split", "eval.path=/data/val"], "'eval.path' (/data/val) is ignored by eval.source 'split'"),
    (["data.shuffle_buffer=-5"], "'data.shuffle_buffer' must be 0 or more"),
    (["data.source=tfrecord"], "'data.source' must be one of auto, bundled, folder, list, webdataset"),
])
def test_bad_data_keys_are_one_line(tmp_path, sets, expected):
    result, out = _distill(tmp_path, *sets)
    assert expected in _one_line(result, out)


def test_a_damaged_listing_cache_is_redone_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "LISTING_CACHE_MIN", 3)
    _folder(tmp_path / "images", 8)
    listing.list_folder(tmp_path / "images")
    where = listing._listing_dir(tmp_path / "images")
    (where / "offsets.npy").write_bytes(b"garbage")  # torn or tampered
    again = listing.list_folder(tmp_path / "images")
    assert not again.cached and len(again.catalog) == 8
    np.save(where / "offsets.npy", np.arange(4, dtype=np.int64))  # valid array, wrong length
    assert not listing.list_folder(tmp_path / "images").cached
    assert listing.list_folder(tmp_path / "images").cached  # rewritten correctly by the run before


def test_an_unwritable_cache_folder_costs_only_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "LISTING_CACHE_MIN", 3)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(blocker))
    _folder(tmp_path / "images", 5)
    write_shards(tmp_path / "shards", shards=1, per_shard=3)
    assert len(load_images("folder", str(tmp_path / "images"), holdout=1).train) == 4
    assert len(load_shards(str(tmp_path / "shards"))) == 3 and not load_shards(str(tmp_path / "shards")).cached


def test_a_damaged_shard_index_is_rebuilt(tmp_path):
    write_shards(tmp_path, shards=2, per_shard=3)
    pattern = str(tmp_path / "{00000..00001}.tar")
    load_shards(pattern)
    index_dir = next((Path(os.environ["ZOO_CACHE_DIR"]) / "shard-index").iterdir())
    np.save(index_dir / "offset.npy", np.zeros(2, dtype=np.int64))
    rebuilt = load_shards(pattern)
    assert not rebuilt.cached and len(rebuilt) == 6 and rebuilt.item(5).read_bytes()[:2] == b"\xff\xd8"


def test_a_shard_cut_short_while_training_costs_only_its_lost_samples(tmp_path):
    """The index says a member is there; the file was truncated since: those samples are skipped and counted."""
    paths = write_shards(tmp_path, shards=2, per_shard=4)
    images = load_images("webdataset", str(tmp_path / "{00000..00001}.tar"), holdout=1, verify_limit=0, warn=False)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:len(data) // 3])  # after indexing (e.g. a copy still in progress)
    dataset = CropDataset(images.train, (8, 8), seed=0, batch_size=7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        batches = list(train_loader(dataset, 0, 2, 7))
    assert all(b.shape == (7, 3, 8, 8) for b in batches)
    lost = images.skipped_count
    assert 1 <= lost <= 4 and all(name.startswith("00001.tar:") for name in images.skipped_names)
    assert len([w for w in caught if "skipped unreadable image" in str(w.message)]) == lost  # each bad sample once


def test_first_step_on_a_large_folder_decodes_only_the_held_out_images(tmp_path, monkeypatch):
    """Listing 3,000 files opens none of them; only the held-out images are decoded before the first step."""
    import zoo.data.sources as sources

    _folder(tmp_path, 3000, subfolders=30)
    decoded = []
    real = sources._readable
    monkeypatch.setattr(sources, "_readable", lambda item: decoded.append(item) or real(item))
    started = time.perf_counter()
    images = load_images("folder", str(tmp_path), holdout=2, verify_limit=1000)
    next(iter(train_loader(CropDataset(images.train, (16, 16), 0, 4), 0, 1, 4)))
    assert len(decoded) == 2 and time.perf_counter() - started < 30
    assert images.describe()["listing_seconds"] < 10
