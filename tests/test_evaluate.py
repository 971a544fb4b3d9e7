"""k-NN and zero-shot (zoo.evaluations), run loading (zoo.loading), PCA pictures (zoo.viz), ``zoo eval``/``zoo viz``."""

from __future__ import annotations

import json
import shutil
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
from zoo.evaluations.embedding import StudentView, TeacherView, embed, student_embedder, teacher_embedder, teacher_view
from zoo.evaluations.knn import KNN_TEMPERATURE, evaluate_knn, knn_accuracy, knn_scores
from zoo.evaluations.labelled import DIGITS_SOURCE, LabelledData, Split, load_labelled
from zoo.evaluations.metrics import topk_accuracy
from zoo.evaluations.zeroshot import (class_text_embeddings, evaluate_zeroshot, zeroshot_probabilities,
                                      zeroshot_templates)
from zoo.loading import LoadedRun, load_run
from zoo.runs import RunRecord, update_record
from zoo.viz import VIZ_LABEL_HEIGHT, pca_rgb

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
    return Path(record["run_dir"] if isinstance(record, dict) else record.run_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {"both": _distill(out, "both", TINY_TEACHERS)}


@pytest.fixture
def run_dir(runs, tmp_path) -> Path:
    """A private copy of the two-teacher run (tests write into its summary.json)."""
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


def _raw_pixels(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0].flatten(1)


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
    result = evaluate_knn(data, _raw_pixels, StudentView((8, 8)), batch_size=512)
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
    result = evaluate_knn(flat, lambda images: images.mean(dim=(2, 3)) - 0.5, StudentView((16, 16)), k=3)
    assert result["top1"] == 1.0


def test_folder_without_class_subfolders_is_an_error(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "loose.png")
    with pytest.raises(ZooError, match="no class sub-folders"):
        load_labelled(tmp_path)


# --------------------------------------------------------------------------- teacher evaluation transform


def _photo(path: Path, size_wh: tuple[int, int], seed: int = 0) -> Path:
    """A smooth, non-square picture: resampling differences show in every pixel."""
    small = np.random.default_rng(seed).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size_wh, Image.Resampling.BICUBIC).save(path)
    return path


@pytest.mark.parametrize("size_wh", [(97, 61), (50, 120)])
def test_teacher_view_matches_open_clip_eval_transform(tmp_path, size_wh):
    """A CLIP teacher is scored on what open_clip's own eval transform gives (bicubic, shorter side, centre crop)."""
    from open_clip.transform import image_transform

    from zoo.teachers import build_teacher

    clip = build_teacher("clip:tiny")  # 64 px
    view = teacher_view(clip)
    assert isinstance(view, TeacherView) and view.size_hw == (64, 64) and "bicubic" in view.describe()
    path = _photo(tmp_path / "photo.png", size_wh)
    reference = image_transform(64, is_train=False, mean=clip.mean, std=clip.std)(Image.open(path))
    ours = clip.preprocess(view.load(path)[None])[0]  # resize + crop in the view, the teacher's mean/std after
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    # the student's view (bilinear) is measurably different: this test can tell the two apart
    student = clip.preprocess(StudentView((64, 64)).load(path)[None])[0]
    assert (student - reference).abs().max() > 0.02


def test_teacher_view_with_crop_pct_matches_timm(tmp_path):
    from timm.data import create_transform

    from zoo.teachers import EvalTransform

    path = _photo(tmp_path / "photo.png", (90, 70))
    transform = EvalTransform((56, 56), "bicubic", crop_pct=0.875)
    reference = create_transform(56, is_training=False, interpolation="bicubic", crop_pct=0.875,
                                 mean=transform.mean, std=transform.std)(Image.open(path).convert("RGB"))
    mean, std = torch.tensor(transform.mean).view(3, 1, 1), torch.tensor(transform.std).view(3, 1, 1)
    torch.testing.assert_close((TeacherView(transform).load(path) - mean) / std, reference, rtol=0, atol=1e-5)
    grey = TeacherView(transform).load(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))  # built-in sets
    assert grey.shape == (3, 56, 56) and 0.0 <= grey.min() and grey.max() <= 1.0


def test_teacher_without_eval_transform_keeps_the_student_view():
    class Bare:
        resolution = (48, 40)

    assert teacher_view(Bare()) == StudentView((48, 40))


# --------------------------------------------------------------------------- zero-shot


class PixelRowBackbone(Backbone):
    """A 'student' whose summary is the first pixel row of channel 0 (the image encodes its own embedding)."""

    name = "pixel-row"
    stride = 8
    size_rule = SizeRule(multiple=8, minimum=8)

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.summary_dim, self.feature_dim = width, 2
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        row = x[:, 0, 0, :] * IMAGENET_DEFAULT_STD[0] + IMAGENET_DEFAULT_MEAN[0]  # undo the student normalisation
        return BackboneOutput(self.scale * row, x[:, :2, ::8, ::8])


class StubClip:
    """CLIP-like text tower: a prompt about class c embeds to e_c (+ a template-dependent shared part)."""

    kind = "clip"

    def __init__(self, class_names: list[str], dim: int = 8) -> None:
        self.class_names, self.dim = class_names, dim

    def encode_text(self, texts, normalize=True):
        rows = []
        for text in texts:
            row = torch.zeros(self.dim)
            row[[i for i, name in enumerate(self.class_names) if f" {name}" in f" {text}"][0]] = 1.0
            row[self.dim - 1] = 0.05 * (len(text) % 3)  # templates differ; the class mean stays on e_c
            rows.append(row / row.norm() if normalize else row)
        return torch.stack(rows)


def _loaded(backbone: Backbone, heads: nn.Module) -> LoadedRun:
    record = RunRecord(run_id="handmade", backbone=backbone.name, resolution=[8, 8],
                       teachers=[{"name": "clip", "kind": "clip", "spec": "clip:tiny", "summary_dim": 8,
                                  "feature_dim": 2}])
    return LoadedRun(backbone.eval(), heads.eval(), [], None, record, Path("."), torch.device("cpu"))


def test_zeroshot_known_answer():
    """Each image carries its embedding; the right class and its rank are known, so top-1/top-5 are exact."""
    from zoo.heads import AdaptorHeads, TeacherDims

    names = ["cat", "dog", "car", "tree", "boat", "lamp", "fish"]
    e = torch.eye(8)
    embeddings, labels, expected_top1 = [], [], []
    for c in range(7):
        a, b = (c + 1) % 7, (c + 2) % 7
        others = [o for o in range(7) if o not in (c, a)]
        embeddings += [e[c], e[c] + 0.4 * e[a],  # right: top-1
                       e[a] + 0.6 * e[b] + 0.3 * e[c],  # class c ranked third: a top-5 hit, a top-1 miss
                       e[a] + 0.2 * e[others].sum(0)]  # class c ranked last of 7: missed by both
        labels += [c] * 4
        expected_top1 += [c, c, a, a]
    items = []
    for v in embeddings:
        picture = np.zeros((8, 8), dtype=np.float32)
        picture[0] = (v / v.max()).numpy()  # row 0 holds the embedding (scale does not change a cosine)
        items.append(picture)
    data = LabelledData("known", names, Split(items[:1], np.array(labels[:1])), Split(items, np.array(labels)),
                        "folders", names)

    heads = AdaptorHeads(8, 2, [TeacherDims("clip", 8, 2)])
    heads.summary_heads["clip"] = nn.Identity()  # the head's prediction is the backbone summary itself
    run = _loaded(PixelRowBackbone(), heads)
    clip = StubClip(names)
    result = evaluate_zeroshot(data, student_embedder(run, "clip", (8, 8)), clip, StudentView((8, 8)),
                               templates=zeroshot_templates("simple"))
    assert (result["top1"], result["top5"]) == (0.5, 0.75)
    text = class_text_embeddings(clip, names, zeroshot_templates("simple"))
    images = embed(items, student_embedder(run, "clip", (8, 8)), StudentView((8, 8)))
    probabilities = zeroshot_probabilities(images, text)
    assert probabilities.argmax(dim=1).tolist() == expected_top1
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(len(items)))


def test_zeroshot_teacher_and_its_embeddings():
    from zoo.teachers import build_teacher

    clip = build_teacher("clip:tiny")
    data = load_labelled(DIGITS_SOURCE, per_class=2)
    templates = zeroshot_templates()
    assert templates[0] == "a photo of a {}." and len(templates) > 3
    text = class_text_embeddings(clip, data.class_names, templates)
    assert text.shape == (10, clip.summary_dim)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(10))
    view = teacher_view(clip)
    result = evaluate_zeroshot(data, teacher_embedder(clip), clip, view, templates=templates)
    images = embed(data.val.items, teacher_embedder(clip), view)
    by_hand = topk_accuracy(zeroshot_probabilities(images, text), torch.from_numpy(data.val.labels))
    assert (result["top1"], result["top5"]) == (by_hand[1], by_hand[5])
    assert result["resolution"] == list(clip.resolution)


# --------------------------------------------------------------------------- runs


def test_load_run_restores_the_trained_student(runs):
    from zoo.checkpoints import load_checkpoint

    run = load_run(runs["both"])
    assert [t.name for t in run.teachers] == ["clip", "dinov2"] and run.recipe.train.steps == 2
    state = load_checkpoint(runs["both"] / "checkpoint.pt")
    for key, value in run.backbone.state_dict().items():
        torch.testing.assert_close(value, state["backbone"][key])
    assert not run.backbone.training and run.record.backbone == "resnet-18" and run.resolution == (32, 32)
    images = torch.rand(2, 3, 48, 40)
    out, adaptors = run(images)
    assert adaptors["clip"].summary.shape == (2, 64) and out.summary.shape[0] == 2
    torch.testing.assert_close(run.summary(images, "clip"), adaptors["clip"].summary)
    torch.testing.assert_close(run.summary(images), out.summary)
    assert run.standardizer is None  # trained on raw targets: the heads' outputs are the teacher space as they are
    built = load_run(runs["both"], build_teachers=True).teachers
    assert built[0].kind == "clip" and built[0].is_random
    assert load_run(runs["both"].name, out_dir=runs["both"].parent).run_dir == runs["both"]  # a run id works


def _made_run(root: Path, teachers: list, standardizer_state: dict | None) -> Path:
    """A run folder as zoo distill lays it out (resnet-18 at 32 px), with random heads and an optional PHI-S entry."""
    from zoo.checkpoints import atomic_torch_save
    from zoo.heads import AdaptorHeads
    from zoo.recipe import load_recipe
    from zoo.registry import create_backbone
    from zoo.runs import write_record

    root.mkdir()
    backbone = create_backbone("resnet-18", (RESOLUTION, RESOLUTION))
    heads = AdaptorHeads(backbone.summary_dim, backbone.feature_dim, teachers)
    state = {"backbone": backbone.state_dict(), "heads": heads.state_dict(),
             "recipe": load_recipe("smoke", [f"train.resolution={RESOLUTION}"]).to_dict()}
    if standardizer_state is not None:
        state["standardizer"] = standardizer_state
    atomic_torch_save(state, root / "checkpoint.pt")
    write_record(root, RunRecord(run_id=root.name, backbone="resnet-18", run_dir=str(root),
                                 resolution=[RESOLUTION, RESOLUTION], teachers=[t.describe() for t in teachers]))
    return root


def test_phi_s_run_adaptors_come_back_in_teacher_space(tmp_path):
    """A run trained on PHI-S targets: load_run de-standardises every head (y = s·Rᵀ·y' + μ), k-NN uses it."""
    from zoo.standardize import StandardizerEstimator
    from zoo.teachers import TeacherOutput, build_teacher

    teachers = [build_teacher("clip:tiny@32"), build_teacher("dinov2:tiny@28")]
    generator = torch.Generator().manual_seed(3)
    estimator = StandardizerEstimator()
    for _ in range(4):  # teacher-like outputs far from standardised: offset and stretched channels
        estimator.update({t.name: TeacherOutput(
            5.0 + 3.0 * torch.randn(16, t.summary_dim, generator=generator).cumsum(1),
            -2.0 + torch.randn(2, t.feature_dim, 4, 4, generator=generator).cumsum(1)) for t in teachers})
    standardizer = estimator.finalize()
    plain = load_run(_made_run(tmp_path / "plain", teachers, None))
    phi_s = load_run(_made_run(tmp_path / "phi-s", teachers, standardizer.state_dict()))
    assert plain.standardizer is None and phi_s.standardizer is not None

    images = torch.rand(3, 3, 40, 48)
    with torch.no_grad():
        raw = phi_s.heads(phi_s.backbone(phi_s.preprocess(images)))  # the heads' own (standardised) outputs
    _, adaptors = phi_s(images)
    for name in ("clip", "dinov2"):
        for part, dim in (("summary", -1), ("features", 1)):
            transform = getattr(standardizer, part)[name]
            y = getattr(raw[name], part).movedim(dim, -1)
            expected = (float(transform.scale) * y @ transform.rotation + transform.mean).movedim(-1, dim)
            torch.testing.assert_close(getattr(adaptors[name], part), expected, rtol=1e-4, atol=1e-4)
            assert (getattr(adaptors[name], part) - getattr(raw[name], part)).abs().max() > 1.0
    torch.testing.assert_close(phi_s.summary(images, "clip"), adaptors["clip"].summary, rtol=1e-4, atol=1e-4)
    # the embedder k-NN uses on a head is the de-standardised summary
    embedder = student_embedder(phi_s, "dinov2", (RESOLUTION, RESOLUTION))
    torch.testing.assert_close(embedder(images), adaptors["dinov2"].summary, rtol=1e-4, atol=1e-4)


def test_phi_s_entry_that_does_not_fit_is_one_line(tmp_path):
    from zoo.standardize import StandardizerEstimator
    from zoo.teachers import TeacherOutput, build_teacher

    teachers = [build_teacher("clip:tiny@32"), build_teacher("dinov2:tiny@28")]
    estimator = StandardizerEstimator()
    clip = teachers[0]
    estimator.update({"clip": TeacherOutput(torch.randn(8, clip.summary_dim), torch.randn(2, clip.feature_dim, 3, 3))})
    run = _made_run(tmp_path / "partial", teachers, estimator.finalize().state_dict())
    with pytest.raises(ZooError, match="PHI-S statistics missing for teacher.*dinov2"):
        load_run(run)
    garbage = _made_run(tmp_path / "garbage", teachers, {"nonsense": torch.zeros(2)})
    with pytest.raises(ZooError, match="not PHI-S statistics"):
        load_run(garbage)


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
                                 "--json", str(tmp_path / "knn.json"), "--device", "cpu"])
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


def test_cli_knn_scores_each_teacher(run_dir, tmp_path):
    """--teacher is repeatable; each teacher is scored through its own view, the run's record untouched."""
    before = (run_dir / "summary.json").read_text()
    out = tmp_path / "knn.json"
    result = CliRunner().invoke(cli, ["eval", "knn", "--teacher", "clip:tiny", "--teacher", "dinov2:tiny",
                                      "--per-class", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert [r["teacher"] for r in results] == ["clip:tiny", "dinov2:tiny"]
    assert [r["resolution"] for r in results] == [[64, 64], [70, 70]]  # each teacher's own size
    assert all("bicubic" in r["transform"] and "teacher's evaluation transform" in r["transform"] for r in results)
    assert (run_dir / "summary.json").read_text() == before
    # a typo in the second spec fails before the first teacher is scored
    assert "unknown teacher kind" in _one_line_error(CliRunner().invoke(
        cli, ["eval", "knn", "--teacher", "clip:tiny", "--teacher", "clipp:tiny", "--per-class", "2"]))


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
    assert "needs a CLIP teacher" in _one_line_error(
        runner.invoke(cli, ["eval", "zeroshot", "--teacher", "dinov2:tiny", "--per-class", "2"]))


def test_cli_bad_input_is_one_line(run_dir, tmp_path):
    runner = CliRunner()
    dino_only = Path(shutil.copytree(run_dir, tmp_path / "dino-only"))
    record = json.loads((dino_only / "summary.json").read_text())
    record["teachers"] = [t for t in record["teachers"] if t["kind"] != "clip"]
    (dino_only / "summary.json").write_text(json.dumps(record))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "flat" / "a.png")
    assert "no class sub-folders" in _one_line_error(
        runner.invoke(cli, ["eval", "knn", str(run_dir), "--data", str(tmp_path / "flat")]))
    assert "no CLIP teacher head" in _one_line_error(
        runner.invoke(cli, ["eval", "zeroshot", str(dino_only), "--per-class", "2"]))
    assert "unknown head 'clipp'" in _one_line_error(
        runner.invoke(cli, ["eval", "knn", str(run_dir), "--head", "clipp", "--per-class", "2"]))
    assert "--head applies" in _one_line_error(
        runner.invoke(cli, ["eval", "knn", "--teacher", "clip:tiny", "--head", "clip"]))
    assert "give a RUN" in _one_line_error(runner.invoke(cli, ["eval", "knn", "--per-class", "2"]))
    assert "no summary.json" in _one_line_error(runner.invoke(cli, ["eval", "knn", str(tmp_path), "--per-class", "2"]))
    assert "cannot take 30x30" in _one_line_error(runner.invoke(cli, ["viz", str(run_dir), "--resolutions", "30"]))
    for args, message in ((["eval", "knn", str(run_dir), "--device", "tpu"], "is not a device"),
                          (["viz", str(run_dir), "--resolutions", "64,0"], "must be positive")):
        result = runner.invoke(cli, args)  # click's usage errors (shared option types): exit 2, the reason
        assert result.exit_code == 2 and message in result.output, result.output


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
                                      "--resolutions", "32,64x32", "--cell", str(cell), "--pca", "per-image"])
    assert result.exit_code == 0, result.output
    columns = 2 * 4  # per resolution: input | backbone | head clip | head dinov2
    assert Image.open(out).size == (columns * cell, VIZ_LABEL_HEIGHT + 2 * cell)
    assert "@64x32" in result.output
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
    result = evaluate_knn(exported, _raw_pixels, StudentView((8, 8)), batch_size=512)
    assert result["top1"] > 0.9
    assert "not empty" in _one_line_error(CliRunner().invoke(cli, ["eval", "export-digits", str(folder)]))
