"""DINOv2 teachers (timm ViTs): ``dinov2:vit_giant_patch14_reg4_dinov2``, ``...:/path/model.safetensors``, ``dinov2:tiny``.

summary = the normed CLS token; features = the last-layer patch tokens, NCHW,
register tokens dropped. Without ``@RES`` a DINOv2 teacher runs at 224 px
(timm resamples the position embedding of the 518-px checkpoints to the grid).
"""

from __future__ import annotations

import torch

from zoo.teachers.base import (
    Teacher,
    TeacherKind,
    TeacherOutput,
    TeacherSpec,
    check_resolution,
    fixed_seed_build,
    register_teacher_kind,
    weights_path,
)
from zoo.teachers.hub import timm_remote
from zoo.teachers.timm_models import check_timm_model, file_or_dot_tag, load_timm_model
from zoo.teachers.transforms import EvalTransform

DINOV2_PATCH_SIZE = 14
DINOV2_DEFAULT_RESOLUTION = (224, 224)
TINY_DINOV2_RESOLUTION = (70, 70)  # a 5x5 grid: differs from tiny CLIP's 4x4 on purpose


class Dinov2Teacher(Teacher):
    """A timm DINOv2 ViT: summary = normed CLS token, features = patch tokens."""

    def _forward_model(self, x: torch.Tensor) -> TeacherOutput:
        tokens = self.model.forward_features(x)  # [B, prefix + h*w, C], after the final norm
        prefix = int(self.model.num_prefix_tokens)  # CLS + registers
        height, width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = tokens[:, prefix:]
        features = patches.transpose(1, 2).reshape(x.shape[0], -1, height, width)
        return TeacherOutput(tokens[:, 0], features)


def parse(text: str, model: str, source: str | None, resolution: tuple[int, int] | None) -> TeacherSpec:
    check_timm_model(text, model, "*dinov2*", "timm DINOv2 model")
    file_or_dot_tag(text, "dinov2", model, source, "lvd142m")
    if resolution is not None:
        check_resolution(text, resolution, DINOV2_PATCH_SIZE)
    weights = weights_path(text, source) if source else None
    return TeacherSpec(text, "dinov2", model, weights_file=weights, resolution=resolution)


def _teacher(model, spec: TeacherSpec, resolution, weights_file, is_random: bool, model_name: str) -> Dinov2Teacher:
    transform = EvalTransform.from_timm(model.pretrained_cfg, size=resolution)
    return Dinov2Teacher(
        model, spec, summary_dim=model.num_features, feature_dim=model.num_features, resolution=resolution,
        patch_size=int(model.patch_embed.patch_size[0]), mean=transform.mean, std=transform.std,
        is_random=is_random, weights_file=weights_file, model_name=model_name, eval_transform=transform,
    )


def build(spec: TeacherSpec, weights_file: str) -> Dinov2Teacher:
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    resolution = spec.resolution or DINOV2_DEFAULT_RESOLUTION
    # timm's filter converts original DINOv2 checkpoints and resamples pos_embed to our grid.
    model = load_timm_model(spec, weights_file, VisionTransformer, checkpoint_filter_fn, "ViT",
                            img_size=resolution, dynamic_img_size=True)
    return _teacher(model, spec, resolution, weights_file, False, spec.model)


def build_tiny(spec: TeacherSpec) -> Dinov2Teacher:
    """A 2-layer random DINOv2 layout (width 96, CLS + 4 registers, patch 14), fixed seed."""
    import timm

    resolution = spec.resolution or TINY_DINOV2_RESOLUTION
    # init_values=1 keeps the random blocks from collapsing to identity so the features carry some structure.
    model = fixed_seed_build(
        timm.create_model, "vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0,
        embed_dim=96, depth=2, num_heads=3, img_size=resolution, dynamic_img_size=True, init_values=1.0,
    )
    return _teacher(model, spec, resolution, None, True, "tiny-dinov2 (2 layers, width 96, 4 registers, patch 14)")


KIND = register_teacher_kind(TeacherKind(
    name="dinov2",
    parse=parse,
    build=build,
    remote=timm_remote,
    build_tiny=build_tiny,
    tiny_patch_size=DINOV2_PATCH_SIZE,
    examples=("dinov2:vit_giant_patch14_reg4_dinov2", "dinov2:vit_small_patch14_dinov2:/path/model.safetensors"),
    description="timm DINOv2 ViT: summary = normed CLS token, features = last-layer patch tokens (registers dropped)",
))
