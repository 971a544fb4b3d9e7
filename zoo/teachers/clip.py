"""CLIP teachers (open_clip): ``clip:MODEL:TAG``, ``clip:MODEL:/path/weights.bin``, ``clip:tiny``.

summary = the image embedding after the projection (so zero-shot works
through the student's CLIP summary head); features = the last-layer patch
tokens, NCHW. The text tower stays loaded for zero-shot classification.
Without ``@RES`` a CLIP teacher runs at its model config's ``image_size``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from zoo.checkpoints import load_state_dict_file
from zoo.errors import ConfigError, unknown_name
from zoo.sizes import as_hw
from zoo.teachers.base import (
    Teacher,
    TeacherKind,
    TeacherOutput,
    TeacherSpec,
    check_resolution,
    fixed_seed_build,
    looks_like_path,
    register_teacher_kind,
    weights_path,
)
from zoo.teachers.hub import RemoteWeights
from zoo.teachers.transforms import EvalTransform

TINY_CLIP_RESOLUTION = (64, 64)
TINY_CLIP_PATCH_SIZE = 16


class ClipTeacher(Teacher):
    """An open_clip model; only the visual tower runs in :meth:`forward`.

    The whole model (text tower included) stays on ``self.model`` for zero-shot
    classification: see :meth:`tokenize` and :meth:`encode_text`.
    """

    def __init__(self, *args: Any, context_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context_length = context_length

    def _forward_model(self, x: torch.Tensor) -> TeacherOutput:
        out = self.model.visual.forward_intermediates(
            x, indices=1, normalize_intermediates=True, output_fmt="NCHW"
        )
        return TeacherOutput(out["image_features"], out["image_intermediates"][-1])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        import open_clip

        if self.is_random:
            tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length or 77)
        else:
            tokenizer = open_clip.get_tokenizer(self.model_name)
        return tokenizer(list(texts))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings [N, summary_dim] (float32) for zero-shot classification."""
        tokens = self.tokenize(texts).to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tokens.device.type == "cuda"):
            out = self.model.encode_text(tokens, normalize=normalize)
        return out.float()


# ------------------------------------------------------------------------ parse


def parse(text: str, model: str, source: str | None, resolution: tuple[int, int] | None) -> TeacherSpec:
    import open_clip

    model = model.replace("/", "-")  # open_clip's own name cleaning ("ViT-B/16" -> "ViT-B-16")
    if model not in open_clip.list_models():
        raise unknown_name("open_clip model", model, open_clip.list_models())
    patch = (open_clip.get_model_config(model) or {}).get("vision_cfg", {}).get("patch_size")
    if resolution is not None and isinstance(patch, int):
        check_resolution(text, resolution, patch)
    tags = open_clip.list_pretrained_tags_by_model(model)
    if source is None:
        hint = f"tags for {model}: {', '.join(tags)}" if tags else f"{model} has no pretrained tags"
        raise ConfigError(
            f"teacher spec '{text}' needs a pretrained tag or a weights file "
            f"(clip:{model}:TAG or clip:{model}:/path/to/weights.bin); {hint}"
        )
    if looks_like_path(source):
        return TeacherSpec(text, "clip", model, weights_file=weights_path(text, source), resolution=resolution)
    if not open_clip.get_pretrained_cfg(model, source):
        raise unknown_name(f"pretrained tag for open_clip {model}", source, tags or ["(none)"])
    return TeacherSpec(text, "clip", model, tag=source, resolution=resolution)


# ---------------------------------------------------------------------- weights


def remote(spec: TeacherSpec) -> RemoteWeights:
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag)
    hf_repo, filenames = None, ()
    if cfg.get("hf_hub"):
        hf_repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" or "org/repo/file.bin"
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else None
        if safe is None and filename.endswith((".bin", ".pth")):
            safe = filename[:-4] + ".safetensors"
        filenames = tuple(n for n in (safe, filename) if n)
    url = cfg.get("url") or None
    return RemoteWeights(
        hf_repo=hf_repo,
        hf_filenames=filenames,
        url=url,
        url_cache_dir=os.path.expanduser("~/.cache/clip") if url else None,  # open_clip's URL cache
        example_file=filenames[-1] if filenames else os.path.basename(url or "weights.bin"),
    )


# --------------------------------------------------------------------- builders


def _visual_dims(visual: nn.Module, resolution: tuple[int, int]) -> tuple[int, int, int]:
    """(embedding dim, token width, patch size) of an open_clip vision tower."""
    width = getattr(getattr(visual, "transformer", None), "width", None)
    patch = getattr(visual, "patch_size", None)
    output_dim = getattr(visual, "output_dim", None)
    if width is not None and patch is not None and output_dim is not None:
        return int(output_dim), int(width), int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    # Other towers (timm trunks, ModifiedResNet): one probe forward says it all.
    with torch.no_grad():
        out = visual.forward_intermediates(
            torch.zeros(1, 3, *resolution), indices=1, normalize_intermediates=True, output_fmt="NCHW"
        )
    features = out["image_intermediates"][-1]
    return int(out["image_features"].shape[-1]), int(features.shape[1]), resolution[0] // features.shape[-2]


def _load_error(spec: TeacherSpec, weights_file: str, err: Exception) -> Exception:
    """open_clip's error for a file, as one line: an unreadable file or one that does not fit."""
    if not str(weights_file).endswith((".npz", ".npy")):
        load_state_dict_file(weights_file)  # raises BadFileError for garbage, truncated or pickled files
    return ConfigError(
        f"teacher '{spec.spec}': weights {weights_file} do not fit open_clip {spec.model}: "
        f"{' '.join(line.strip() for line in str(err).splitlines()[:2])[:300]}"
    )


def build(spec: TeacherSpec, weights_file: str) -> ClipTeacher:
    import open_clip
    from open_clip.transform import merge_preprocess_dict

    tag_cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag) if spec.tag else {}
    try:
        model = open_clip.create_model(
            spec.model,
            pretrained=weights_file,
            # A file path bypasses open_clip's tag handling: keep the tag's activation.
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_image_size=spec.resolution,
            pretrained_text=False,  # never fetch separate text-tower weights from a hub
            weights_only=True,
        )
    except Exception as err:  # open_clip raises whatever its loader raised: map it to one line
        raise _load_error(spec, weights_file, err) from err
    # The tag's preprocessing (mean/std, interpolation, resize mode) wins, as when open_clip loads by tag.
    preprocess = merge_preprocess_dict(open_clip.get_model_preprocess_cfg(model), tag_cfg)
    image_size = model.visual.image_size
    resolution = as_hw(tuple(image_size) if isinstance(image_size, (tuple, list)) else image_size)
    transform = EvalTransform.from_open_clip(preprocess, size=resolution)
    summary_dim, feature_dim, patch = _visual_dims(model.visual, resolution)
    return ClipTeacher(
        model, spec, summary_dim=summary_dim, feature_dim=feature_dim, resolution=resolution,
        patch_size=patch, mean=transform.mean, std=transform.std, is_random=False, weights_file=weights_file,
        model_name=spec.model, pretrained_tag=spec.tag, context_length=getattr(model, "context_length", None),
        eval_transform=transform,
    )


def build_tiny(spec: TeacherSpec) -> ClipTeacher:
    """A 2-layer random CLIP (width 128, patch 16, 64-d embedding) with a text tower, fixed seed."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    image_size = spec.resolution or TINY_CLIP_RESOLUTION
    square = image_size[0] == image_size[1]
    vision = CLIPVisionCfg(
        layers=2, width=128, head_width=64, patch_size=TINY_CLIP_PATCH_SIZE,
        image_size=image_size[0] if square else image_size,
    )
    text = CLIPTextCfg(context_length=32, vocab_size=49408, width=64, heads=2, layers=2)
    model = fixed_seed_build(CLIP, embed_dim=64, vision_cfg=vision, text_cfg=text)
    transform = EvalTransform.from_open_clip(open_clip.get_model_preprocess_cfg(model), size=image_size)
    return ClipTeacher(
        model, spec, summary_dim=64, feature_dim=128, resolution=image_size, patch_size=TINY_CLIP_PATCH_SIZE,
        mean=transform.mean, std=transform.std, is_random=True, weights_file=None,
        model_name="tiny-clip (2 layers, width 128, patch 16)", context_length=32, eval_transform=transform,
    )


KIND = register_teacher_kind(TeacherKind(
    name="clip",
    parse=parse,
    build=build,
    remote=remote,
    build_tiny=build_tiny,
    tiny_patch_size=TINY_CLIP_PATCH_SIZE,
    examples=("clip:ViT-H-14:laion2b_s32b_b79k", "clip:ViT-B-16:/path/to/open_clip_pytorch_model.bin"),
    description="open_clip image-text model: summary = image embedding, features = last-layer patch tokens",
))
