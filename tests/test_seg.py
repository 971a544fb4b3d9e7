"""zoo eval seg: the linear segmentation probe, its metric, its data layouts, resume, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zoo.errors import ZooError
from zoo.evaluations.seg import (SegProbe, SegSettings, batch_indices, confusion_matrix, nearest_valid_crop,
                                 segmentation_scores)
from zoo.evaluations.seg_data import (IGNORE_INDEX, SHAPE_CLASSES, VOC_CLASSES, load_mask, load_seg_dataset,
                                      write_shapes_dataset)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("seg") / "shapes", count=32, size=64, seed=1)


def faithful_features(images: torch.Tensor) -> torch.Tensor:
    """Random but spatially faithful: a fixed random 1x1 projection of 4x4-pooled colours (stride 4)."""
    weight = torch.Generator().manual_seed(7)
    projection = torch.randn(24, 3, 1, 1, generator=weight)
    pooled = F.avg_pool2d(images, 4)
    return torch.cat([pooled, torch.relu(F.conv2d(pooled - 0.5, projection))], 1)


def constant_features(images: torch.Tensor) -> torch.Tensor:
    return torch.ones(images.shape[0], 27, images.shape[-2] // 4, images.shape[-1] // 4)


# --------------------------------------------------------------------------- metric


def test_miou_matches_sklearn_confusion_matrix():
    from sklearn.metrics import confusion_matrix as sk_confusion

    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (40, 50))
    target[rng.random((40, 50)) < 0.1] = IGNORE_INDEX
    pred = np.where(rng.random((40, 50)) < 0.6, target, rng.integers(0, 5, (40, 50)))
    pred[pred == IGNORE_INDEX] = 0
    ours = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 5).numpy()
    valid = target != IGNORE_INDEX
    theirs = sk_confusion(target[valid], pred[valid], labels=list(range(5)))
    assert (ours == theirs).all()
    scores = segmentation_scores(torch.from_numpy(ours), [str(i) for i in range(5)])
    tp = np.diag(theirs)
    iou = tp / (theirs.sum(0) + theirs.sum(1) - tp)
    assert scores["miou"] == pytest.approx(iou.mean())
    assert scores["pixel_acc"] == pytest.approx(tp.sum() / theirs.sum())


def test_absent_classes_do_not_count():
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    scores = segmentation_scores(confusion, ["a", "b", "c"])
    assert scores["per_class_iou"]["c"] is None
    assert scores["miou"] == pytest.approx((5 / 8 + 3 / 6) / 2)


def test_nearest_valid_crop():
    assert nearest_valid_crop(512, 14) == 518  # the paper's DINOv2 crop
    assert nearest_valid_crop(512, 32) == 512
    assert nearest_valid_crop(500, 32) == 512 and nearest_valid_crop(490, 32) == 480
    assert nearest_valid_crop(8, 32, minimum=32) == 32


def test_batches_are_a_function_of_seed_and_step():
    assert batch_indices(3, 4, 10, 0) == batch_indices(3, 4, 10, 0)
    epoch = [i for step in range(5) for i in batch_indices(step, 2, 10, 0)]
    assert sorted(epoch) == list(range(10))  # every image once per epoch


# --------------------------------------------------------------------------- known answer


def _probe(data, features, **settings) -> SegProbe:
    return SegProbe(features, 27, data, SegSettings(crop=64, batch_size=8, lr=1e-2, **settings), torch.device("cpu"))


def test_probe_on_faithful_features_beats_constant_by_far(shapes):
    data = load_seg_dataset(shapes, "folder")
    good = _probe(data, faithful_features, steps=150).run()
    flat = _probe(data, constant_features, steps=150).run()
    assert good.feature_cache and good.miou > 0.6, good.per_class_iou
    # a constant map can only predict one class everywhere: at most the background's IoU over 4 classes
    assert flat.miou < 0.3
    assert good.miou - flat.miou > 0.4


def test_slide_prediction_covers_images_larger_than_the_crop(shapes):
    data = load_seg_dataset(shapes, "folder")
    probe = _probe(data, faithful_features, steps=40)
    probe.train()
    wide = np.zeros((64, 200, 3), dtype=np.uint8)
    prediction = probe.predict(wide)
    assert prediction.shape == (64, 200)


def test_augmented_training_runs_the_backbone_and_resumes_exactly(shapes, tmp_path):
    data = load_seg_dataset(shapes, "folder")
    settings = dict(steps=12, augment=True, checkpoint_every=4)
    straight = SegProbe(faithful_features, 27, data, SegSettings(crop=64, batch_size=4, **settings),
                        torch.device("cpu"), tmp_path / "a")
    assert straight.train() == (0, False)

    calls = {"n": 0}

    def stop_after_six(kind, n):
        calls["n"] += n if kind == "train" else 0
        if calls["n"] == 6:
            raise KeyboardInterrupt

    first = SegProbe(faithful_features, 27, data, SegSettings(crop=64, batch_size=4, **settings),
                     torch.device("cpu"), tmp_path / "b", stop_after_six)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    resumed = SegProbe(faithful_features, 27, data, SegSettings(crop=64, batch_size=4, **settings),
                       torch.device("cpu"), tmp_path / "b")
    assert resumed.train() == (4, False)
    for a, b in zip(straight.head.state_dict().values(), resumed.head.state_dict().values()):
        assert torch.equal(a, b)


def test_changed_settings_refuse_the_old_head(shapes, tmp_path):
    data = load_seg_dataset(shapes, "folder")
    SegProbe(faithful_features, 27, data, SegSettings(crop=64, steps=4), torch.device("cpu"), tmp_path).train()
    other = SegProbe(faithful_features, 27, data, SegSettings(crop=64, steps=4, lr=5e-3), torch.device("cpu"), tmp_path)
    with pytest.raises(ZooError, match="--restart"):
        other.train()


# --------------------------------------------------------------------------- layouts


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode=mode).save(path)


def test_ade20k_layout_and_reduce_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        _png(base / "images" / split / "a.png", np.zeros((8, 8, 3)))
        _png(base / "annotations" / split / "a.png", np.array([[0, 1, 150, 2]] * 4))
    data = load_seg_dataset(tmp_path, "ade20k")
    assert data.num_classes == 150 and data.reduce_zero_label
    labels = load_mask(data.train.masks[0], data.num_classes, data.reduce_zero_label)
    assert labels[0].tolist() == [IGNORE_INDEX, 0, 149, 1]


def test_voc_layout_reads_palette_indices(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass"):
        (base / folder).mkdir(parents=True)
    for split, name in (("train", "2007_000032"), ("val", "2007_000033")):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(name + "\n")
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        mask = Image.new("P", (6, 6), 0)  # VOC's palette PNGs: the pixel values are class indices
        mask.putpalette([0, 0, 0, 128, 0, 0] + [224, 224, 192] * 254)
        mask.putpixel((1, 1), 1)
        mask.putpixel((2, 2), 255)
        mask.save(base / "SegmentationClass" / f"{name}.png")
    data = load_seg_dataset(tmp_path, "voc")
    assert data.classes == VOC_CLASSES and len(data.train) == len(data.val) == 1
    labels = load_mask(data.val.masks[0], data.num_classes, False)
    assert labels[1, 1] == 1 and labels[2, 2] == IGNORE_INDEX and labels[0, 0] == 0


def test_folder_layout_classes_and_split(shapes):
    data = load_seg_dataset(shapes, "folder")
    assert data.classes == SHAPE_CLASSES and len(data.val) == 8 and len(data.train) == 24


@pytest.mark.parametrize("fmt", ["ade20k", "voc", "folder"])
def test_missing_layout_is_one_line(tmp_path, fmt):
    with pytest.raises(ZooError) as err:
        load_seg_dataset(tmp_path, fmt)
    assert "\n" not in str(err.value) and "missing" in str(err.value)


def test_image_without_mask_names_the_file(shapes, tmp_path):
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "classes.txt").write_text("a\nb\n")
    _png(folder / "images" / "lonely.png", np.zeros((4, 4, 3)))
    with pytest.raises(ZooError, match="lonely.png has no mask"):
        load_seg_dataset(folder, "folder")


def test_label_outside_classes_and_rgb_masks_are_refused(tmp_path):
    _png(tmp_path / "bad.png", np.array([[0, 1], [7, 0]]), mode="L")
    with pytest.raises(ZooError, match="bad.png has label 7 outside the 4 classes"):
        load_mask(tmp_path / "bad.png", 4, False)
    _png(tmp_path / "rgb.png", np.zeros((2, 2, 3)))
    with pytest.raises(ZooError, match="expected an index PNG"):
        load_mask(tmp_path / "rgb.png", 4, False)


# --------------------------------------------------------------------------- CLI


def test_cli_probe_writes_the_record_and_pareto_reads_it(shapes, tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    runner = CliRunner()
    out = tmp_path / "runs"
    result = runner.invoke(cli, ["distill", "--backbone", "resnet-18", "--recipe", "smoke", "--set", "train.steps=2",
                                 "--set", "bench.enabled=false", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = next(p for p in out.iterdir() if p.is_dir())
    result = runner.invoke(cli, ["eval", "seg", str(run), "--data", str(shapes), "--steps", "20", "--crop", "64",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "summary.json").read_text())
    assert 0 <= record["miou_shapes"] <= 1 and "pixel_acc_shapes" in record
    assert record["evaluations"][-1]["kind"] == "seg"
    assert (run / "seg" / "shapes-64" / "head.pt").is_file()
    result = runner.invoke(cli, ["pareto", str(out), "--x", "params_m", "--y", "miou_shapes"])
    assert result.exit_code == 0, result.output
    assert "resnet-18" in result.output


def test_cli_needs_exactly_one_target(shapes):
    from click.testing import CliRunner

    from zoo.cli import cli

    result = CliRunner().invoke(cli, ["eval", "seg", "--data", str(shapes)])
    assert result.exit_code == 2 and "exactly one" in result.output
