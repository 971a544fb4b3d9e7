"""Image-level quality beyond FD loss (AM-RADIO Section 3.1, Figure 1, Appendix B).

* **k-NN**: DINO's weighted k-NN classifier on L2-normalised summaries
  (cosine similarity, the ``k`` nearest training images vote for their class
  with weight ``exp(sim / T)``), top-1/top-5 on a labelled image set.
* **Zero-shot**: class names through the CLIP teacher's text tower (mean of
  normalised prompt embeddings), cosine with the student's CLIP summary head,
  ``softmax(100 · cos)``.
* **PCA pictures**: the first three principal components of spatial features
  as RGB, side by side with the input, at one or several resolutions.

A run folder (``runs/<id>/``, written by :mod:`zoo.distill`) is loaded with
:func:`load_run`; results are appended to its ``summary.json`` with
:func:`update_record` so ``zoo pareto --y knn_top1`` can use them.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.atomic import atomic_write_bytes, atomic_write_json
from zoo.backbone import Backbone, as_hw
from zoo.errors import ConfigError, UnknownNameError, ZooError, unknown_name

# One source of truth for the evaluation constants (DINO's k-NN, CLIP's zero-shot).
KNN_K = 20
KNN_TEMPERATURE = 0.07
TOPK = (1, 5)
VAL_FRACTION = 0.2
SPLIT_SEED = 0
ZEROSHOT_LOGIT_SCALE = 100.0
EMBED_BATCH_SIZE = 64
DIGITS_SOURCE = "sklearn:digits"
DIGITS_MAX_VALUE = 16.0  # load_digits pixels are 0..16
DIGIT_CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPT_TEMPLATE = "a photo of a {}."
TRAIN_DIR, VAL_DIR = "train", "val"
PCA_MODES = ("joint", "per-image")
PCA_PERCENTILES = (1.0, 99.0)
VIZ_CELL = 128
VIZ_LABEL_HEIGHT = 14  # the strip of column names above the grid
VIZ_MAX_IMAGES = 4
RUN_CHECKPOINT, RUN_SUMMARY = "checkpoint.pt", "summary.json"  # zoo.distill's run-folder layout


# --------------------------------------------------------------------------- devices


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but CUDA is not available here")
    return device


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as in training), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- labelled data


@dataclass
class Split:
    """Images (paths, or 2-D grey arrays for built-in sets) and their integer labels."""

    items: list[Any]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class LabelledData:
    """A labelled image set split into train (the k-NN memory) and val (the queries)."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    split: str  # "folders" (train/ + val/) or "random" (stratified, seeded)
    class_names: list[str] = field(default_factory=list)  # for zero-shot prompts (default: classes)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "classes": len(self.classes), "train_images": len(self.train),
                "val_images": len(self.val), "split": self.split}


def _image_files(folder: Path) -> list[Path]:
    from zoo.data import folder_images

    return folder_images(folder)


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: images}`` for every sub-folder of ``root`` that holds images."""
    found = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _image_files(sub)
        if images:
            found[sub.name] = images
    return found


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    index = np.arange(len(labels))
    try:
        train, val = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError as err:  # a class with one image, or fewer val images than classes
        raise ZooError(f"cannot make a stratified {val_fraction:g} validation split: {err} "
                       "(add images, change --val-fraction or give train/ and val/ sub-folders)") from None
    return np.sort(train), np.sort(val)


def _subsample(split: Split, per_class: int | None, seed: int) -> Split:
    """At most ``per_class`` items of each class (deterministic), for quick checks."""
    if per_class is None:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(split.labels):
        where = np.flatnonzero(split.labels == label)
        keep.extend(np.sort(rng.permutation(where)[:per_class]).tolist())
    keep = sorted(keep)
    return Split([split.items[i] for i in keep], split.labels[keep])


def load_digits_data(val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> LabelledData:
    """scikit-learn's 8×8 handwritten digits (1797 images, ships with the package, no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train, val = _stratified_split(labels, val_fraction, seed)
    images = list(digits.images.astype(np.float32) / DIGITS_MAX_VALUE)
    return LabelledData(DIGITS_SOURCE, [str(c) for c in range(10)],
                        Split([images[i] for i in train], labels[train]), Split([images[i] for i in val], labels[val]),
                        "random", list(DIGIT_CLASS_NAMES))


def load_labelled(data: str | Path, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED,
                  per_class: int | None = None) -> LabelledData:
    """A labelled set: ``sklearn:digits`` or a folder with one sub-folder per class.

    A folder with ``train/`` and ``val/`` sub-folders uses them as the split;
    otherwise a stratified ``val_fraction`` split with ``seed`` is made.
    ``per_class`` keeps at most that many images per class in each split.
    """
    text = str(data)
    if text.startswith("sklearn:"):
        if text != DIGITS_SOURCE:
            raise unknown_name("built-in data set", text, [DIGITS_SOURCE])
        labelled = load_digits_data(val_fraction, seed)
    else:
        labelled = _load_folder(Path(text).expanduser(), val_fraction, seed)
    labelled.train = _subsample(labelled.train, per_class, seed)
    labelled.val = _subsample(labelled.val, per_class, seed)
    return labelled


def _load_folder(root: Path, val_fraction: float, seed: int) -> LabelledData:
    if not root.is_dir():
        raise ZooError(f"data folder not found: {root} (give a folder with one sub-folder per class, "
                       f"or {DIGITS_SOURCE})")
    hint = f"expected {root}/<class>/<image> or {root}/{TRAIN_DIR}/<class>/ and {root}/{VAL_DIR}/<class>/"
    if (root / TRAIN_DIR).is_dir() and (root / VAL_DIR).is_dir():
        train, val = _class_folders(root / TRAIN_DIR), _class_folders(root / VAL_DIR)
        if not train or not val:
            raise ZooError(f"no class sub-folders with images in {root / (VAL_DIR if train else TRAIN_DIR)}; {hint}")
        classes = sorted(train)
        extra = sorted(set(val) - set(train))
        if extra:
            raise ZooError(f"classes in {root / VAL_DIR} but not in {root / TRAIN_DIR}: {', '.join(extra[:5])}")

        def split_of(folders: dict[str, list[Path]]) -> Split:
            items = [(p, classes.index(c)) for c in classes for p in folders.get(c, [])]
            return Split([p for p, _ in items], np.array([y for _, y in items], dtype=np.int64))

        return LabelledData(str(root), classes, split_of(train), split_of(val), "folders", list(classes))
    folders = _class_folders(root)
    if not folders:
        raise ZooError(f"no class sub-folders with images in {root}; {hint}")
    if len(folders) < 2:
        raise ZooError(f"only one class ('{next(iter(folders))}') in {root}; classification needs two or more")
    classes = sorted(folders)
    paths = [p for c in classes for p in folders[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in folders[c]], dtype=np.int64)
    train, val = _stratified_split(labels, val_fraction, seed)
    return LabelledData(str(root), classes, Split([paths[i] for i in train], labels[train]),
                        Split([paths[i] for i in val], labels[val]), "random", list(classes))


def export_digits(folder: str | Path, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED,
                  size: int = 32) -> dict[str, int]:
    """Write ``sklearn:digits`` as ``folder/{train,val}/<digit>/<index>.png`` (grey, ``size`` px)."""
    from PIL import Image

    data = load_digits_data(val_fraction, seed)
    counts = {}
    for split_name, split in ((TRAIN_DIR, data.train), (VAL_DIR, data.val)):
        for i, (image, label) in enumerate(zip(split.items, split.labels)):
            pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
            picture = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.NEAREST)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            atomic_write_bytes(Path(folder) / split_name / data.classes[label] / f"{i:05d}.png", buffer.getvalue())
        counts[split_name] = len(split)
    return counts


# --------------------------------------------------------------------------- images -> tensors


def load_item(item: Any, size_hw: tuple[int, int]) -> torch.Tensor:
    """One image (a path or a grey array in [0, 1]) as float [3, h, w] in [0, 1] at ``size_hw``."""
    if isinstance(item, np.ndarray):
        grey = torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32))[None, None]
        image = F.interpolate(grey, size=size_hw, mode="bilinear", align_corners=False)[0]
        return image.clamp_(0.0, 1.0).expand(3, -1, -1).contiguous()
    from zoo.data import center_crop_box, load_crop

    try:
        return load_crop(Path(item), lambda w, h: center_crop_box(w, h, size_hw), size_hw)
    except OSError as err:
        raise ZooError(f"cannot read image {item}: {err}") from None


def image_batches(items: Sequence[Any], size_hw: tuple[int, int], batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(items), batch_size):
        yield torch.stack([load_item(item, size_hw) for item in items[start:start + batch_size]])


Embedder = Callable[[torch.Tensor], torch.Tensor]  # [B, 3, H, W] in [0, 1] -> [B, D]


@torch.no_grad()
def embed(items: Sequence[Any], embedder: Embedder, size_hw: tuple[int, int], batch_size: int = EMBED_BATCH_SIZE,
          progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """``embedder`` over every item, float32 on the CPU: ``[N, D]``."""
    chunks = []
    for images in image_batches(items, size_hw, batch_size):
        chunks.append(embedder(images).float().cpu())
        if progress is not None:
            progress(images.shape[0])
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def student_embedder(backbone: Backbone, heads: nn.Module | None, head: str | None,
                     size_hw: tuple[int, int], device: torch.device) -> Embedder:
    """The student's summary: the backbone's own (``head=None``) or a teacher head's prediction."""
    from zoo.data import student_view

    def run(images: torch.Tensor) -> torch.Tensor:
        x = student_view(images.to(device), size_hw)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            summary = backbone(x)[0]
            if head is not None:
                summary = heads.summary_heads[head](summary)  # only the head asked for
        return summary

    return run


def teacher_embedder(teacher: nn.Module) -> Embedder:
    """A teacher's own summary (it resizes and normalises [0, 1] images itself)."""
    return lambda images: teacher(images)[0]


# --------------------------------------------------------------------------- k-NN


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
               num_classes: int, k: int = KNN_K, temperature: float = KNN_TEMPERATURE,
               chunk: int = 1024) -> torch.Tensor:
    """DINO's weighted k-NN votes ``[Nq, num_classes]``.

    Features are L2-normalised; each query's ``k`` most cosine-similar training
    features vote for their class with weight ``exp(sim / temperature)``.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    train = F.normalize(train_features.float(), dim=1)
    query = F.normalize(query_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, train.shape[0])
    votes = []
    for start in range(0, query.shape[0], chunk):
        similarity = query[start:start + chunk] @ train.T
        top_sim, top_index = similarity.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(top_sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.append(scores.scatter_add_(1, labels[top_index], weights))
    return torch.cat(votes) if votes else torch.zeros(0, num_classes)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOPK) -> dict[int, float]:
    """``{k: fraction of rows whose label is among the k best scores}``.

    Ties go to the smaller class index (a stable sort), as scikit-learn does.
    ``k`` larger than the number of classes counts every row as correct.
    """
    if scores.shape[0] == 0:
        raise ZooError("no validation images to score")
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    hits = order == labels.long().view(-1, 1).to(order.device)
    return {k: int(hits[:, :k].any(dim=1).sum()) / hits.shape[0] for k in ks}


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 val_labels: torch.Tensor, num_classes: int, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` of the weighted k-NN classifier."""
    scores = knn_scores(train_features, train_labels, val_features, num_classes, k, temperature)
    accuracy = topk_accuracy(scores, val_labels)
    return {f"top{k_}": v for k_, v in accuracy.items()}


def evaluate_knn(data: LabelledData, embedder: Embedder, size_hw: tuple[int, int], k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE, batch_size: int = EMBED_BATCH_SIZE,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Embed both splits with ``embedder`` and score the weighted k-NN: top-1/top-5 plus the settings."""
    train = embed(data.train.items, embedder, size_hw, batch_size, progress)
    val = embed(data.val.items, embedder, size_hw, batch_size, progress)
    accuracy = knn_accuracy(train, torch.from_numpy(data.train.labels), val, torch.from_numpy(data.val.labels),
                            len(data.classes), k, temperature)
    return {"top1": accuracy["top1"], "top5": accuracy["top5"], "k": min(k, len(data.train)),
            "temperature": temperature, "resolution": list(size_hw), "feature_dim": int(train.shape[1]),
            **data.describe()}


# --------------------------------------------------------------------------- zero-shot


def zeroshot_templates(kind: str = "simple") -> list[str]:
    """Prompt templates: ``simple`` ("a photo of a {}." + open_clip's 7 SIMPLE_IMAGENET_TEMPLATES),
    ``openai`` (open_clip's 80 OPENAI_IMAGENET_TEMPLATES) or ``photo`` (only "a photo of a {}.")."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    as_text = lambda templates: [t("{}") for t in templates]  # noqa: E731 - open_clip's are lambdas
    choices = {
        "photo": [PROMPT_TEMPLATE],
        "simple": [PROMPT_TEMPLATE] + [t for t in as_text(SIMPLE_IMAGENET_TEMPLATES) if t != PROMPT_TEMPLATE],
        "openai": as_text(OPENAI_IMAGENET_TEMPLATES),
    }
    if kind not in choices:
        raise unknown_name("template set", kind, choices)
    return choices[kind]


@torch.no_grad()
def class_text_embeddings(clip_teacher: Any, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[C, D]``: per class, the renormalised mean of its normalised prompt embeddings (CLIP's recipe)."""
    if not class_names:
        raise ConfigError("no class names for zero-shot classification")
    texts = [template.format(name) for name in class_names for template in templates]
    embeddings = clip_teacher.encode_text(texts, normalize=True).float().cpu()
    per_class = embeddings.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=1)


def zeroshot_probabilities(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                           logit_scale: float = ZEROSHOT_LOGIT_SCALE) -> torch.Tensor:
    """``softmax(logit_scale · cos(image, class))``: ``[N, C]``, rows sum to 1."""
    if image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ZooError(f"image embeddings have {image_embeddings.shape[1]} dims but the CLIP text embeddings have "
                       f"{text_embeddings.shape[1]}: use the CLIP head (--head) for zero-shot")
    cosine = F.normalize(image_embeddings.float(), dim=1) @ text_embeddings.float().T
    return (logit_scale * cosine).softmax(dim=1)


def zeroshot_accuracy(image_embeddings: torch.Tensor, labels: torch.Tensor,
                      text_embeddings: torch.Tensor) -> dict[str, float]:
    accuracy = topk_accuracy(zeroshot_probabilities(image_embeddings, text_embeddings), labels)
    return {f"top{k}": v for k, v in accuracy.items()}


def evaluate_zeroshot(data: LabelledData, embedder: Embedder, clip_teacher: Any, size_hw: tuple[int, int],
                      class_names: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                      batch_size: int = EMBED_BATCH_SIZE, progress: Callable[[int], None] | None = None,
                      ) -> dict[str, Any]:
    """Zero-shot top-1/top-5 on the val split (the train split is not needed)."""
    names = list(class_names or data.class_names or data.classes)
    templates = list(templates or zeroshot_templates())
    text = class_text_embeddings(clip_teacher, names, templates)
    images = embed(data.val.items, embedder, size_hw, batch_size, progress)
    accuracy = zeroshot_accuracy(images, torch.from_numpy(data.val.labels), text)
    return {"top1": accuracy["top1"], "top5": accuracy["top5"], "templates": len(templates),
            "class_names": names, "resolution": list(size_hw), **data.describe()}


def parse_class_names(text: str | None, default: Sequence[str], count: int) -> list[str]:
    """``--classes``: comma-separated names or a file with one name per line (default: the set's names)."""
    if not text:
        return list(default)
    path = Path(text).expanduser()
    names = ([line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
             if path.is_file() else [n.strip() for n in text.split(",") if n.strip()])
    if len(names) != count:
        raise ConfigError(f"--classes gives {len(names)} names but the data has {count} classes")
    return names


# --------------------------------------------------------------------------- run folders


@dataclass
class LoadedRun:
    backbone: Backbone
    heads: nn.Module
    teachers: list[Any]  # TeacherDims (built=False) or built Teacher objects
    recipe: Any
    record: dict[str, Any]
    run_dir: Path


def read_record(run_dir: str | Path) -> dict[str, Any]:
    import json

    path = Path(run_dir) / RUN_SUMMARY
    if not path.is_file():
        raise ZooError(f"no run record in {run_dir} (looked for {path}); give a run folder written by zoo distill")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ZooError(f"run record {path} is not valid JSON: {err}") from None


def teacher_spec(info: dict[str, Any]) -> Any:
    """The spec a record's teacher entry was built from, pointing at its recorded weights file."""
    from zoo.teachers import parse_teacher_spec

    spec = parse_teacher_spec(info["spec"])
    weights = info.get("weights_file")
    if weights and not spec.is_tiny and spec.weights_file is None and Path(weights).is_file():
        spec = replace(spec, weights_file=weights)  # the exact file the run used, no hub lookup
    return spec


def build_run_teacher(record: dict[str, Any], name: str, device: torch.device | str = "cpu",
                      offline: bool | None = True) -> Any:
    """Rebuild the teacher ``name`` of a run (``clip:tiny`` rebuilds bit-exactly from its fixed seed)."""
    from zoo.teachers import build_teacher

    info = _teacher_info(record, name)
    return build_teacher(teacher_spec(info), device, offline, name=name)


def _teacher_info(record: dict[str, Any], name: str) -> dict[str, Any]:
    teachers = {t["name"]: t for t in record.get("teachers", [])}
    if name not in teachers:
        raise unknown_name("head", name, teachers)
    return teachers[name]


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", build_teachers: bool = False,
             backbone: Backbone | None = None, offline: bool | None = True,
             ) -> tuple[Backbone, nn.Module, list[Any], Any, dict[str, Any]]:
    """``(backbone, heads, teachers, recipe, record)`` of a run folder, in eval mode on ``device``.

    The student is rebuilt from the registry name in the record (or pass the
    built ``backbone`` for one outside the registry) and loaded from
    ``checkpoint.pt`` with ``weights_only=True``. ``teachers`` are
    :class:`~zoo.heads.TeacherDims` unless ``build_teachers`` (built from the
    recorded specs and weights files).
    """
    loaded = open_run(run_dir, device, build_teachers, backbone, offline)
    return loaded.backbone, loaded.heads, loaded.teachers, loaded.recipe, loaded.record


def open_run(run_dir: str | Path, device: torch.device | str = "cpu", build_teachers: bool = False,
             backbone: Backbone | None = None, offline: bool | None = True) -> LoadedRun:
    """:func:`load_run` as a :class:`LoadedRun`."""
    from zoo.checkpoints import load_checkpoint
    from zoo.heads import AdaptorHeads, TeacherDims
    from zoo.recipe import recipe_from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ZooError(f"run folder not found: {run_dir}")
    record = read_record(run_dir)
    state = load_checkpoint(run_dir / RUN_CHECKPOINT, map_location="cpu")
    for key in ("backbone", "heads"):
        if not isinstance(state, dict) or key not in state:
            raise ZooError(f"{run_dir / RUN_CHECKPOINT} has no '{key}' state (not a zoo distill checkpoint)")
    resolution = as_hw(record.get("resolution") or recipe_from_dict(state["recipe"]).resolution)
    if backbone is None:
        backbone = _rebuild_backbone(record, resolution)
    _load_state(backbone, state["backbone"], "backbone", run_dir)
    dims = [TeacherDims(t["name"], int(t["summary_dim"]), int(t["feature_dim"])) for t in record.get("teachers", [])]
    heads = AdaptorHeads(backbone.summary_dim, backbone.feature_dim, dims)
    _load_state(heads, state["heads"], "heads", run_dir)
    device = torch.device(device)
    backbone.to(device).eval()
    heads.to(device).eval()
    teachers = [build_run_teacher(record, d.name, device, offline) for d in dims] if build_teachers else dims
    recipe = recipe_from_dict(state["recipe"]) if state.get("recipe") else None
    return LoadedRun(backbone, heads, teachers, recipe, record, run_dir)


def _rebuild_backbone(record: dict[str, Any], resolution: tuple[int, int]) -> Backbone:
    from zoo.registry import create_backbone

    name = record.get("backbone")
    try:
        return create_backbone(str(name), resolution)
    except UnknownNameError:
        raise ZooError(f"the run's backbone '{name}' is not in the registry; rebuild it yourself and pass it "
                       "(zoo.evaluate.load_run(run_dir, backbone=...))") from None


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], what: str, run_dir: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ZooError(f"the {what} weights in {run_dir / RUN_CHECKPOINT} do not fit the rebuilt model: {first}") from None


def clip_head_name(record: dict[str, Any], head: str | None = None) -> str:
    """The run's CLIP teacher head (``head`` if given, checked), for zero-shot."""
    teachers = record.get("teachers", [])
    names = [t["name"] for t in teachers]
    clip = [t["name"] for t in teachers if t.get("kind") == "clip"]
    if head is not None:
        if head not in names:
            raise unknown_name("head", head, names)
        if head not in clip:
            raise ZooError(f"head '{head}' is not a CLIP teacher head (CLIP heads of this run: "
                           f"{', '.join(clip) or 'none'})")
        return head
    if not clip:
        raise ZooError(f"run '{record.get('run_id', '?')}' has no CLIP teacher head (teachers: "
                       f"{', '.join(names) or 'none'}); zero-shot needs a run distilled from a clip:* teacher")
    return clip[0]


def check_head(record: dict[str, Any], head: str | None) -> None:
    if head is not None:
        _teacher_info(record, head)


def update_record(run_dir: str | Path, metrics: dict[str, float], evaluation: dict[str, Any]) -> dict[str, Any]:
    """Add top-level numeric ``metrics`` and append ``evaluation`` to ``evaluations`` in ``summary.json`` (atomic)."""
    record = read_record(run_dir)
    record.update({k: float(v) for k, v in metrics.items()})
    record.setdefault("evaluations", []).append({**evaluation, "date": now_utc()})
    atomic_write_json(Path(run_dir) / RUN_SUMMARY, record)
    return record


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- PCA pictures


def robust_unit(values: np.ndarray, percentiles: Sequence[float] = PCA_PERCENTILES) -> np.ndarray:
    """Per column, ``(x - p_lo) / (p_hi - p_lo)`` clipped to [0, 1] (outliers do not wash out colours)."""
    lo = np.percentile(values, percentiles[0], axis=0)
    hi = np.percentile(values, percentiles[1], axis=0)
    return np.clip((values - lo) / np.maximum(hi - lo, 1e-8), 0.0, 1.0)


def pca_rgb(features: Sequence[torch.Tensor] | torch.Tensor, mode: str = "joint",
            percentiles: Sequence[float] = PCA_PERCENTILES) -> list[np.ndarray]:
    """Spatial features ``[C, h, w]`` (per image) -> RGB ``[h, w, 3]`` in [0, 1] from 3 PCA components.

    ``joint`` fits one PCA (and one colour scaling) over all images, so colours
    are comparable across images; ``per-image`` fits each image alone.
    """
    from sklearn.decomposition import PCA

    if mode not in PCA_MODES:
        raise unknown_name("PCA mode", mode, PCA_MODES)
    maps = [f.detach().float().cpu() for f in features]
    flat = [m.reshape(m.shape[0], -1).T.numpy() for m in maps]  # [h*w, C]

    def project(rows: np.ndarray) -> np.ndarray:
        n = min(3, rows.shape[0], rows.shape[1])
        out = np.zeros((rows.shape[0], 3), dtype=np.float64)
        if n > 0 and rows.shape[0] > 1:
            out[:, :n] = PCA(n_components=n, svd_solver="full").fit_transform(rows)
        return robust_unit(out, percentiles)

    if mode == "joint":
        joint = project(np.concatenate(flat))
        sizes = np.cumsum([0] + [f.shape[0] for f in flat])
        colours = [joint[a:b] for a, b in zip(sizes[:-1], sizes[1:])]
    else:
        colours = [project(f) for f in flat]
    return [c.reshape(m.shape[1], m.shape[2], 3) for c, m in zip(colours, maps)]


@dataclass
class VizColumn:
    """One grid column: a title and, per image, an RGB array in [0, 1] (an input or a PCA picture)."""

    title: str
    cells: list[np.ndarray]


def grid_png(columns: Sequence[VizColumn], cell: int = VIZ_CELL, labels: bool = True) -> bytes:
    """A PNG of one row per image, one ``cell``-pixel square per column (features upsampled nearest)."""
    from PIL import Image, ImageDraw

    rows = len(columns[0].cells) if columns else 0
    top = VIZ_LABEL_HEIGHT if labels else 0
    canvas = Image.new("RGB", (cell * len(columns), top + cell * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for c, column in enumerate(columns):
        if labels:
            draw.text((c * cell + 2, 1), column.title[: max(4, cell // 6)], fill="black")
        for r, array in enumerate(column.cells):
            picture = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8), "RGB")
            picture = picture.resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(picture, (c * cell, top + r * cell))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def feature_columns(images: torch.Tensor, backbone: Backbone, heads: nn.Module | None,
                    teachers: Sequence[Any], size_hw: tuple[int, int], device: torch.device,
                    mode: str = "joint", percentiles: Sequence[float] = PCA_PERCENTILES) -> list[VizColumn]:
    """Columns ``input | backbone | head <t> ... | teacher <t> ...`` for images [N, 3, H, W] in [0, 1]."""
    from zoo.data import student_view

    backbone.check_resolution(*size_hw)
    x = student_view(images.to(device), size_hw)
    with _autocast(device):
        out = backbone(x)
        predictions = heads(out) if heads is not None else {}
    tag = f"@{size_hw[0]}" if size_hw[0] == size_hw[1] else f"@{size_hw[0]}x{size_hw[1]}"
    columns = [VizColumn(f"input {tag}", [im.permute(1, 2, 0).cpu().numpy() for im in images]),
               VizColumn("backbone", pca_rgb(list(out[1]), mode, percentiles))]
    for name, prediction in predictions.items():
        columns.append(VizColumn(f"head {name}", pca_rgb(list(prediction[1]), mode, percentiles)))
    for teacher in teachers:
        columns.append(VizColumn(f"teacher {teacher.name}", pca_rgb(list(teacher(images)[1]), mode, percentiles)))
    return columns


def render_viz(image_items: Sequence[Any], backbone: Backbone, heads: nn.Module | None, teachers: Sequence[Any],
               resolutions: Sequence[tuple[int, int]], device: torch.device, mode: str = "joint",
               percentiles: Sequence[float] = PCA_PERCENTILES, cell: int = VIZ_CELL,
               labels: bool = True) -> tuple[bytes, list[str]]:
    """The grid PNG over every resolution (its columns repeat per resolution) and the column titles."""
    if not image_items:
        raise ZooError("no images to draw")
    for hw in resolutions:
        backbone.check_resolution(*hw)  # fail before any work
    columns: list[VizColumn] = []
    for hw in resolutions:
        images = torch.stack([load_item(item, hw) for item in image_items])
        columns.extend(feature_columns(images, backbone, heads, teachers, hw, device, mode, percentiles))
    return grid_png(columns, cell, labels), [c.title for c in columns]


def parse_resolutions(text: str | None, default: tuple[int, int]) -> list[tuple[int, int]]:
    """``"224,448,896"`` -> ``[(224, 224), (448, 448), (896, 896)]`` (``HxW`` also works)."""
    if not text:
        return [default]
    values = [as_hw(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise ConfigError(f"--resolutions '{text}' names no resolution (e.g. 224,448)")
    return values
