"""k-NN and zero-shot classification, PCA pictures, run loading and record updates (zoo.evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from zoo.backbone import Backbone, BackboneOutput, SizeRule
from zoo.cli import cli
from zoo.errors import ZooError
from zoo.evaluate import (DIGITS_SOURCE, KNN_TEMPERATURE, VIZ_LABEL_HEIGHT, class_text_embeddings, embed, evaluate_knn,
                          evaluate_zeroshot, knn_accuracy, knn_scores, load_labelled, load_run, pca_rgb,
                          student_embedder, teacher_embedder, topk_accuracy, update_record, zeroshot_probabilities,
                          zeroshot_templates)

RESOLUTION = 32
TINY_TEACHERS = ["clip:tiny@32", "dinov2:tiny@28"]
RUN_SETTINGS = ["train.steps=2", "train.batch_size=2", f"train.resolution={RESOLUTION}", "eval.every=0",
                "eval.images=1", "train.checkpoint_every=100", "bench.repeats=1", "bench.batch_size=1",
                "bench.warmup=1", "bench.steps_per_repeat=1"]


def _distill(out_dir: Path, name: str, teachers: list[str]) -> Path:
    """A real 2-step zoo.distill run of resnet-18 at 32 px against tiny teachers."""
    from zoo.distill import distill
    from zoo.recipe import load_recipe

    recipe = load_recipe("smoke", RUN_SETTINGS + [f"teachers={json.dumps(teachers)}"])
    record = distill("resnet-18", recipe, out_dir=out_dir, run_name=name, progress=False, device="cpu")
    return Path(record["run_dir"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {"both": _distill(out, "both", TINY_TEACHERS), "dino": _distill(out, "dino", ["dinov2:tiny@28"])}


@pytest.fixture
def run_dir(runs, tmp_path) -> Path:
    """A private copy of the two-teacher run (tests write into its summary.json)."""
    import shutil

    return Path(shutil.copytree(runs["both"], tmp_path / "run"))


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory) -> Path:
    """3 classes × 6 images: flat colour + noise, one hue per class."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(220, 30, 30), (30, 220, 30), (30, 30, 220)]):
        (root / f"class{c}").mkdir()
        for i in range(6):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# --------------------------------------------------------------------------- k-NN


def test_knn_agrees_with_sklearn_cross_check():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(1)
    classes, k = 6, 20
    centres = rng.normal(size=(classes, 16))
    train_y = rng.integers(0, classes, 300)
    val_y = rng.integers(0, classes, 120)
    train_x = centres[train_y] + 1.5 * rng.normal(size=(300, 16))
    val_x = centres[val_y] + 1.5 * rng.normal(size=(120, 16))

    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                     weights=lambda d: np.exp((1.0 - d) / KNN_TEMPERATURE))
    expected = reference.fit(train_x, train_y).predict(val_x)
    scores = knn_scores(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(val_x), classes, k)
    predicted = scores.argmax(dim=1).numpy()
    np.testing.assert_array_equal(predicted, expected)
    ours = knn_accuracy(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(val_x),
                        torch.from_numpy(val_y), classes, k)
    assert ours["top1"] == pytest.approx(float((expected == val_y).mean()))
    assert 0.3 < ours["top1"] < 1.0 and ours["top5"] >= ours["top1"]  # a non-trivial problem
    # sklearn's class probabilities are our votes normalised per row
    np.testing.assert_allclose(reference.predict_proba(val_x), (scores / scores.sum(1, keepdim=True)).numpy(),
                               rtol=1e-4, atol=1e-6)


def test_knn_votes_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # cosines 1, 0, 1/sqrt(2)
    scores = knn_scores(train, labels, query, num_classes=3, k=2, temperature=0.5)
    expected = torch.tensor([[np.exp(1 / 0.5), np.exp((2 ** -0.5) / 0.5), 0.0]], dtype=torch.float32)
    torch.testing.assert_close(scores, expected)
    assert topk_accuracy(scores, torch.tensor([1]), ks=(1, 2)) == {1: 0.0, 2: 1.0}


def test_knn_on_digits_with_raw_pixels_is_accurate():
    data = load_labelled(DIGITS_SOURCE)
    assert (len(data.train), len(data.val)) == (1437, 360)  # stratified 0.2 split of 1797
    assert np.bincount(data.val.labels).min() >= 35  # every class held out in proportion
    result = evaluate_knn(data, lambda images: images[:, 0].flatten(1), (8, 8), batch_size=512)
    assert result["top1"] > 0.9, result
    assert result["top5"] >= result["top1"]
    again = load_labelled(DIGITS_SOURCE)
    assert np.array_equal(again.val.labels, data.val.labels)  # the seeded split is deterministic


# --------------------------------------------------------------------------- data


def test_labelled_folder_flat_and_train_val(class_folder, tmp_path):
    flat = load_labelled(class_folder, val_fraction=0.5, seed=3)
    assert flat.classes == ["class0", "class1", "class2"] and flat.split == "random"
    assert np.bincount(flat.val.labels).tolist() == [3, 3, 3]
    assert load_labelled(class_folder, val_fraction=0.5, seed=3).val.items == flat.val.items
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (10, 10), "red").save(tmp_path / split / c / "x.png")
    both = load_labelled(tmp_path)
    assert both.split == "folders" and (len(both.train), len(both.val)) == (2, 2)
    # colour classes are separable: the pipeline through image files works
    result = evaluate_knn(flat, lambda images: images.mean(dim=(2, 3)) - 0.5, (16, 16), k=3)
    assert result["top1"] == 1.0


def test_folder_without_class_subfolders_is_an_error(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "loose.png")
    with pytest.raises(ZooError, match="no class sub-folders"):
        load_labelled(tmp_path)


# --------------------------------------------------------------------------- zero-shot


class TeacherAsBackbone(Backbone):
    """A 'student' whose summary is the CLIP teacher's own image embedding."""

    name = "teacher-as-backbone"
    stride = 16
    size_rule = SizeRule(multiple=16, minimum=16)

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.summary_dim, self.feature_dim = teacher.summary_dim, teacher.feature_dim

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        images = x * torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_DEFAULT_MEAN).view(
            1, 3, 1, 1)  # undo the student normalisation: the teacher normalises itself
        return BackboneOutput(*self.teacher(images))


def test_zeroshot_distribution_and_teacher_equivalence():
    from zoo.heads import AdaptorHeads
    from zoo.teachers import build_teacher

    clip = build_teacher("clip:tiny")
    data = load_labelled(DIGITS_SOURCE, per_class=4)
    templates = zeroshot_templates()
    assert templates[0] == "a photo of a {}." and len(templates) > 3
    text = class_text_embeddings(clip, data.class_names, templates)
    assert text.shape == (10, clip.summary_dim)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(10))

    images = torch.stack([torch.rand(3, 64, 64) for _ in range(5)])
    probabilities = zeroshot_probabilities(clip(images).summary, text)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(5))
    assert (probabilities >= 0).all()

    own = evaluate_zeroshot(data, teacher_embedder(clip), clip, clip.resolution, templates=templates)
    assert 0.0 <= own["top1"] <= own["top5"] <= 1.0
    heads = AdaptorHeads(clip.summary_dim, clip.feature_dim, [clip])
    heads.summary_heads["clip"] = nn.Identity()  # the "student head" is replaced by the teacher embedding
    student = student_embedder(TeacherAsBackbone(clip), heads, "clip", clip.resolution, torch.device("cpu"))
    as_student = evaluate_zeroshot(data, student, clip, clip.resolution, templates=templates)
    torch.testing.assert_close(embed(data.val.items, student, clip.resolution),
                               embed(data.val.items, teacher_embedder(clip), clip.resolution), rtol=1e-4, atol=1e-5)
    assert (as_student["top1"], as_student["top5"]) == (own["top1"], own["top5"])


# --------------------------------------------------------------------------- runs


def test_load_run_restores_the_trained_student(runs):
    from zoo.checkpoints import load_checkpoint

    backbone, heads, teachers, recipe, record = load_run(runs["both"])
    assert [t.name for t in teachers] == ["clip", "dinov2"] and recipe.train.steps == 2
    state = load_checkpoint(runs["both"] / "checkpoint.pt")
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, state["backbone"][key])
    assert not backbone.training and record["backbone"] == "resnet-18"
    x = torch.rand(2, 3, RESOLUTION, RESOLUTION)
    out = heads(backbone(x))
    assert out["clip"].summary.shape == (2, 64)
    built = load_run(runs["both"], build_teachers=True)[2]
    assert built[0].kind == "clip" and built[0].is_random


def test_update_record_is_pareto_readable(run_dir):
    from zoo.pareto import load_records

    update_record(run_dir, {"knn_top1": 0.5, "knn_top5": 0.75}, {"kind": "knn", "k": 20})
    record = json.loads((run_dir / "summary.json").read_text())
    assert record["knn_top1"] == 0.5 and record["evaluations"][0]["k"] == 20 and "date" in record["evaluations"][0]
    loaded = load_records([run_dir])
    assert loaded[0].metrics["knn_top1"] == 0.5


# --------------------------------------------------------------------------- CLI


def test_cli_knn_records_result(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "knn", str(run_dir), "--data", DIGITS_SOURCE, "--per-class", "3",
                                 "--json", str(tmp_path / "knn.json")])
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "summary.json").read_text())
    printed = json.loads((tmp_path / "knn.json").read_text())
    assert 0.0 <= record["knn_top1"] <= record["knn_top5"] <= 1.0
    assert record["knn_top1"] == printed["top1"]
    evaluation = record["evaluations"][-1]
    assert evaluation["kind"] == "knn" and evaluation["head"] == "backbone" and evaluation["k"] == 20
    assert evaluation["temperature"] == KNN_TEMPERATURE and evaluation["dataset"] == DIGITS_SOURCE
    assert (evaluation["train_images"], evaluation["val_images"]) == (30, 30)
    assert evaluation["resolution"] == [RESOLUTION, RESOLUTION]

    result = runner.invoke(cli, ["eval", "knn", str(run_dir), "--per-class", "3", "--head", "clip"])
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "summary.json").read_text())
    assert "knn_clip_top1" in record and record["evaluations"][-1]["head"] == "clip"
    assert record["knn_top1"] == printed["top1"]  # the backbone's figure is kept


def test_cli_zeroshot_student_and_teacher(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "zeroshot", str(run_dir), "--per-class", "2", "--templates", "photo"])
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= record["zeroshot_top1"] <= record["zeroshot_top5"] <= 1.0
    assert record["evaluations"][-1]["head"] == "clip"
    result = runner.invoke(cli, ["eval", "zeroshot", "--teacher", "clip:tiny", "--per-class", "2",
                                 "--json", str(tmp_path / "zs.json")])
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads((tmp_path / "zs.json").read_text())["top1"] <= 1.0


def test_cli_bad_input_is_one_line(runs, run_dir, tmp_path):
    runner = CliRunner()
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "flat" / "a.png")
    assert "no class sub-folders" in _one_line_error(
        runner.invoke(cli, ["eval", "knn", str(run_dir), "--data", str(tmp_path / "flat")]))
    assert "no CLIP teacher head" in _one_line_error(
        runner.invoke(cli, ["eval", "zeroshot", str(runs["dino"]), "--per-class", "2"]))
    assert "unknown head 'clipp'" in _one_line_error(
        runner.invoke(cli, ["eval", "knn", str(run_dir), "--head", "clipp", "--per-class", "2"]))
    assert "exactly one" in _one_line_error(runner.invoke(cli, ["eval", "knn", "--per-class", "2"]))
    assert "run record" in _one_line_error(runner.invoke(cli, ["eval", "knn", str(tmp_path), "--per-class", "2"]))
    assert "cannot take 30x30" in _one_line_error(runner.invoke(cli, ["viz", str(run_dir), "--resolutions", "30"]))


# --------------------------------------------------------------------------- viz


def test_pca_rgb_finds_the_structure():
    features = torch.zeros(2, 8, 6, 6)
    features[:, 0, :, :3] = 5.0  # left half differs from right half along one channel
    features += 0.01 * torch.randn_like(features)
    joint = pca_rgb(list(features), "joint")
    per_image = pca_rgb(list(features), "per-image")
    for picture in joint + per_image:
        assert picture.shape == (6, 6, 3) and picture.min() >= 0.0 and picture.max() <= 1.0
        left, right = picture[:, :3, 0].mean(), picture[:, 3:, 0].mean()
        assert abs(left - right) > 0.9  # the first component (red) separates the halves


def test_cli_viz_writes_grid_png(run_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    out, cell = tmp_path / "pca.png", 20
    result = CliRunner().invoke(cli, ["viz", str(run_dir), "--images", str(images), "--out", str(out),
                                      "--resolutions", "32,64", "--cell", str(cell), "--pca", "per-image"])
    assert result.exit_code == 0, result.output
    columns = 2 * 4  # per resolution: input | backbone | head clip | head dinov2
    assert Image.open(out).size == (columns * cell, VIZ_LABEL_HEIGHT + 2 * cell)
    result = CliRunner().invoke(cli, ["viz", str(run_dir), "--images", str(images), "--out", str(out),
                                      "--cell", str(cell), "--with-teachers", "--no-labels"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (6 * cell, 2 * cell)


def test_cli_export_digits_round_trip(tmp_path):
    folder = tmp_path / "digits"
    result = CliRunner().invoke(cli, ["eval", "export-digits", str(folder), "--size", "8"])
    assert result.exit_code == 0, result.output
    exported = load_labelled(folder)
    reference = load_labelled(DIGITS_SOURCE)
    assert exported.split == "folders" and exported.classes == reference.classes
    assert (len(exported.train), len(exported.val)) == (len(reference.train), len(reference.val))
    np.testing.assert_array_equal(np.sort(exported.val.labels), np.sort(reference.val.labels))
    result = evaluate_knn(exported, lambda images: images[:, 0].flatten(1), (8, 8), batch_size=512)
    assert result["top1"] > 0.9
    assert "not empty" in _one_line_error(CliRunner().invoke(cli, ["eval", "export-digits", str(folder)]))
