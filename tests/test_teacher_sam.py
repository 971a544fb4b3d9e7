"""The SAM teacher kind: no summary, neck features, @RES through timm's resampling, local files, offline errors."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import WeightsNotFoundError
from zoo.teachers import SamTeacher, TeacherOutput, build_teacher, build_teachers, parse_teacher_spec, teacher_names


@pytest.fixture(scope="module")
def tiny():
    return build_teacher("sam:tiny")


def test_tiny_sam_has_features_and_no_summary(tiny):
    assert isinstance(tiny, SamTeacher)
    assert (tiny.summary_dim, tiny.has_summary, tiny.feature_dim, tiny.resolution, tiny.patch_size) == (
        0, False, 48, (96, 96), 16)
    out = tiny(torch.rand(2, 3, 80, 120))
    assert isinstance(out, TeacherOutput) and out.summary is None
    assert out.features.shape == (2, 48, 6, 6) and out.features.dtype == torch.float32
    assert torch.isfinite(out.features).all()
    info = tiny.describe()
    assert info["summary_dim"] == 0 and info["random"] is True and info["kind"] == "sam"
    # the features are the neck's output (LayerNorm2d over channels), not the raw last-block tokens
    x = tiny.preprocess(torch.rand(1, 3, 96, 96))
    with torch.no_grad():
        _, blocks = tiny.model.forward_intermediates(x, indices=1)
        neck = tiny.model.neck(blocks[-1])
    assert blocks[-1].shape[1] == 64
    assert torch.allclose(tiny._forward_model(x).features, neck, atol=1e-6)


def test_tiny_sam_is_fixed_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    first = build_teacher("sam:tiny")
    after = torch.rand(2)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(2), after)
    second = build_teacher("sam:tiny")
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert first.model.pos_embed.abs().sum() > 0  # random, so position matters in the @RES test below


def test_sam_at_another_resolution_equals_a_model_built_there(tiny):
    """``@RES`` keeps the native weights; timm resamples the position tables at run time.

    The same numbers come from a model built at that size whose tables were resampled once.
    """
    import timm
    from timm.layers import resample_abs_pos_embed_nhwc

    teacher = build_teacher("sam:tiny@128x64")
    assert teacher.resolution == (128, 64) and teacher.grid_size == (8, 4)
    for key, value in tiny.state_dict().items():  # the same weights as at 96 px
        assert torch.equal(value, teacher.state_dict()[key]), key
    images = torch.rand(2, 3, 128, 64)
    out = teacher(images)
    assert out.summary is None and out.features.shape == (2, 48, 8, 4)

    built = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, img_size=(128, 64),
                              embed_dim=64, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,),
                              neck_chans=48).eval()
    state = dict(tiny.model.state_dict())
    state["pos_embed"] = resample_abs_pos_embed_nhwc(state["pos_embed"], (8, 4))
    for key in ("blocks.1.attn.rel_pos_h", "blocks.1.attn.rel_pos_w"):  # the global block's tables
        size = built.state_dict()[key].shape[0]
        state[key] = F.interpolate(state[key].T[None], size=size, mode="linear")[0].T
    built.load_state_dict(state, strict=True)
    with torch.no_grad():
        expected = built.forward_features(teacher.preprocess(images))
    assert torch.allclose(out.features, expected, atol=1e-5)


def test_sam_names_and_mixing_with_other_kinds():
    assert teacher_names(["clip:tiny", "sam:tiny", "sam:tiny@64"]) == ["clip", "sam", "sam-2"]
    teachers = build_teachers(["dinov2:tiny", "sam:tiny@64"])
    assert [t.has_summary for t in teachers] == [True, False]
    assert [t.summary_dim for t in teachers] == [96, 0]


def test_sam_specs():
    spec = parse_teacher_spec("sam:samvit_huge_patch16@512")
    assert (spec.kind, spec.model, spec.resolution, spec.weights_file) == ("sam", "samvit_huge_patch16", (512, 512), None)
    assert parse_teacher_spec("sam:samvit_large_patch16.sa1b").model == "samvit_large_patch16.sa1b"


# ------------------------------------------------------------------ local files


@pytest.fixture(scope="module")
def sam_b_file(tmp_path_factory):
    """Random tensors in samvit_base_patch16's layout (timm's), as safetensors: the real shapes, 1024 px."""
    import timm
    from safetensors.torch import save_file

    with torch.device("meta"):
        model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0)
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=generator) * 0.02 for k, v in model.state_dict().items()}
    for key in state:
        if key.endswith(".weight") and ("norm" in key or key.startswith("neck.1") or key.startswith("neck.3")):
            state[key] = torch.ones_like(state[key])
    path = tmp_path_factory.mktemp("sam") / "model.safetensors"
    save_file(state, str(path))
    return state, path


def _reference_features(state, images_normalised):
    import timm

    with torch.device("meta"):  # no random init of 90 M parameters only to overwrite them
        model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0).eval()
    model.load_state_dict(state, strict=True, assign=True)
    with torch.no_grad():
        return model.forward_features(images_normalised)


def test_sam_from_a_local_file_and_from_the_original_layout(sam_b_file, tmp_path):
    state, path = sam_b_file
    teacher = build_teacher(f"sam:samvit_base_patch16:{path}@64", offline=True)
    assert (teacher.summary_dim, teacher.feature_dim, teacher.patch_size, teacher.resolution) == (0, 256, 16, (64, 64))
    assert teacher.model.pos_embed.shape == (1, 64, 64, 768)  # built at SAM's native 1024 px
    images = torch.rand(1, 3, 64, 64)
    out = teacher(images)
    expected = _reference_features(state, teacher.preprocess(images))
    assert out.summary is None and torch.allclose(out.features, expected, atol=1e-5)
    info = teacher.describe()
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and info["random"] is False
    # the original segment-anything checkpoint layout (image_encoder.*, mlp.lin1) converts through timm's filter
    original = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in state.items()}
    original["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 128)
    sam_pth = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(original, sam_pth)
    again = build_teacher(f"sam:samvit_base_patch16:{sam_pth}@64", offline=True)
    assert torch.equal(again(images).features, out.features)
    assert teacher.eval_transform.size == (64, 64) and teacher.eval_transform.interpolation == "bicubic"


def test_sam_default_resolution_is_native():
    """Without @RES a real SAM runs at its 1024 px (checked on the spec path without loading weights)."""
    import timm

    from zoo.teachers.sam import SAM_NATIVE_RESOLUTION, _native_resolution

    with torch.device("meta"):
        model = timm.create_model("samvit_huge_patch16", pretrained=False, num_classes=0)
    assert _native_resolution(model) == SAM_NATIVE_RESOLUTION == (1024, 1024)


def test_missing_sam_weights_fail_fast_with_a_clear_message(tmp_path, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    parse_teacher_spec("sam:samvit_base_patch16")  # timm imported outside the timed part
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as caught:
        build_teacher("sam:samvit_base_patch16", offline=True)
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert "\n" not in message
    assert "timm/samvit_base_patch16.sa1b" in message and "model.safetensors" in message
    assert "--teacher sam:samvit_base_patch16:/path/to/model.safetensors" in message
    assert "offline mode requested" in message and str(tmp_path / "hf") in message
