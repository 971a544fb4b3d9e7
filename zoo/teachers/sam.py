"""SAM teachers (timm's Segment-Anything image encoders): ``sam:samvit_huge_patch16``, ``sam:tiny``.

Specs: ``sam:samvit_base_patch16`` (weights from the caches or the hub),
``sam:samvit_large_patch16.sa1b``, ``sam:samvit_huge_patch16:/path/model.safetensors``
(timm's layout or the original ``sam_vit_h_4b8939.pth``: timm's filter converts it).

SAM has spatial features and no summary (the paper's λ_SAM = 0 for the
summary term): ``summary_dim`` 0, ``has_summary`` False, ``summary`` None.
The features are the encoder's *neck* output (256 channels, stride 16,
LayerNorm2d'd): that is the image embedding SAM's prompt encoder and mask
decoder consume, so a student head trained on it can stand in for SAM's
encoder; the raw last-block tokens (768-1280 wide, no final norm) are an
internal of the encoder that nothing downstream reads.

SAM's native input is 1024 px; ``@RES`` (a multiple of 16) runs it at
another size. The model is always built at 1024 so the checkpoint loads as
is; at other sizes timm resamples the absolute position embedding (bicubic,
every forward) and interpolates the global-attention blocks' relative
position tables (the windowed blocks keep their 14x14 windows, padding the
grid when 14 does not divide it).
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.errors import ConfigError
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

SAM_PATCH_SIZE = 16
SAM_NATIVE_RESOLUTION = (1024, 1024)
# Tiny: a 6x6 grid with 4x4 windows, so window padding and the global block both run.
TINY_SAM_RESOLUTION = (96, 96)
TINY_SAM_NECK = 48


class SamTeacher(Teacher):
    """A timm ``VisionTransformerSAM``: no summary; features = the 256-channel neck output."""

    def _forward_model(self, x: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(None, self.model.forward_features(x))  # NCHW after the neck


def parse(text: str, model: str, source: str | None, resolution: tuple[int, int] | None) -> TeacherSpec:
    check_timm_model(text, model, "samvit*", "timm SAM model", prefix="samvit")
    file_or_dot_tag(text, "sam", model, source, "sa1b")
    if resolution is not None:
        check_resolution(text, resolution, SAM_PATCH_SIZE)
    weights = weights_path(text, source) if source else None
    return TeacherSpec(text, "sam", model, weights_file=weights, resolution=resolution)


def _native_resolution(model: nn.Module) -> tuple[int, int]:
    grid = model.patch_embed.grid_size
    patch = model.patch_embed.patch_size
    return (int(grid[0] * patch[0]), int(grid[1] * patch[1]))


def _teacher(model: nn.Module, spec: TeacherSpec, weights_file: str | None, is_random: bool, model_name: str) -> SamTeacher:
    resolution = spec.resolution or _native_resolution(model)
    transform = EvalTransform.from_timm(model.pretrained_cfg, size=resolution)
    return SamTeacher(
        model, spec, summary_dim=0, feature_dim=model.num_features, resolution=resolution,
        patch_size=int(model.patch_embed.patch_size[0]), mean=transform.mean, std=transform.std,
        is_random=is_random, weights_file=weights_file, model_name=model_name, eval_transform=transform,
    )


def build(spec: TeacherSpec, weights_file: str) -> SamTeacher:
    from timm.models.vision_transformer_sam import VisionTransformerSAM, checkpoint_filter_fn

    # Built at the checkpoint's own 1024 px (pos_embed 64x64, relative tables 127 long): see the module docstring.
    model = load_timm_model(spec, weights_file, VisionTransformerSAM, checkpoint_filter_fn, "SAM image encoder")
    if model.pos_embed is None or isinstance(model.neck, nn.Identity) or model.num_features == model.embed_dim:
        raise ConfigError(f"teacher '{spec.spec}': {spec.model} has no SAM neck; use samvit_base/large/huge_patch16")
    return _teacher(model, spec, weights_file, False, spec.model)


def build_tiny(spec: TeacherSpec) -> SamTeacher:
    """A 2-block random SAM encoder (width 64, 4x4 windows + 1 global block, 48-channel neck), fixed seed."""
    import timm

    def create() -> nn.Module:
        model = timm.create_model(
            "samvit_base_patch16", pretrained=False, num_classes=0, img_size=TINY_SAM_RESOLUTION[0],
            embed_dim=64, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,), neck_chans=TINY_SAM_NECK,
        )
        # SAM initialises its position embeddings to zero (the checkpoint fills them): random
        # values here make position matter, so resampling them at another @RES is exercised.
        with torch.no_grad():
            nn.init.trunc_normal_(model.pos_embed, std=0.5)
            for name, param in model.named_parameters():
                if "rel_pos" in name:
                    nn.init.trunc_normal_(param, std=0.5)
        return model

    model = fixed_seed_build(create)
    return _teacher(model, spec, None, True, "tiny-sam (2 blocks, width 64, window 4, neck 48, patch 16)")


KIND = register_teacher_kind(TeacherKind(
    name="sam",
    parse=parse,
    build=build,
    remote=timm_remote,
    build_tiny=build_tiny,
    tiny_patch_size=SAM_PATCH_SIZE,
    examples=("sam:samvit_huge_patch16", "sam:samvit_base_patch16:/path/model.safetensors"),
    description="timm Segment-Anything image encoder: no summary, features = 256-channel neck output at stride 16",
))
