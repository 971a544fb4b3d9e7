"""CLIP zero-shot classification (AM-RADIO Section 3.1).

Class names go through the CLIP teacher's text tower (per class, the
renormalised mean of its normalised prompt embeddings); an image's class
probabilities are ``softmax(100 · cos(image, class))``. A student is scored
through its CLIP adaptor head (in the teacher's space), a CLIP teacher through
its own image tower.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError, ZooError, unknown_name
from zoo.evaluations.embedding import EMBED_BATCH_SIZE, Embedder, ImageView, embed
from zoo.evaluations.labelled import LabelledData
from zoo.evaluations.metrics import topk_accuracy

ZEROSHOT_LOGIT_SCALE = 100.0
PROMPT_TEMPLATE = "a photo of a {}."
TEMPLATE_SETS = ("simple", "openai", "photo")


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


def evaluate_zeroshot(data: LabelledData, embedder: Embedder, clip_teacher: Any, view: ImageView,
                      class_names: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                      batch_size: int = EMBED_BATCH_SIZE, progress: Callable[[int], None] | None = None,
                      ) -> dict[str, Any]:
    """Zero-shot top-1/top-5 on the val split (the train split is not needed)."""
    names = list(class_names or data.class_names or data.classes)
    templates = list(templates or zeroshot_templates())
    text = class_text_embeddings(clip_teacher, names, templates)
    images = embed(data.val.items, embedder, view, batch_size, progress)
    accuracy = zeroshot_accuracy(images, torch.from_numpy(data.val.labels), text)
    return {"top1": accuracy["top1"], "top5": accuracy["top5"], "templates": len(templates),
            "class_names": names, "resolution": list(view.size_hw), "transform": view.describe(),
            **data.describe()}


def clip_head_name(teachers: Sequence[dict[str, Any]], head: str | None = None, run_id: str = "?") -> str:
    """The CLIP teacher head of a run's recorded ``teachers`` (``head`` if given, checked), for zero-shot."""
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
        raise ZooError(f"run '{run_id}' has no CLIP teacher head (teachers: {', '.join(names) or 'none'}); "
                       "zero-shot needs a run distilled from a clip:* teacher")
    return clip[0]
