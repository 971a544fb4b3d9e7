"""Teachers: spec parsing, tiny random teachers, local weights and fast offline failures."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError, ResolutionError, UnknownNameError, WeightsNotFoundError
from zoo.teachers import (
    ClipTeacher,
    Dinov2Teacher,
    TeacherOutput,
    build_teacher,
    build_teachers,
    offline_reason,
    parse_teacher_spec,
    teacher_names,
)

# ------------------------------------------------------------------ spec parsing


def test_parse_specs():
    spec = parse_teacher_spec("clip:ViT-H-14:laion2b_s32b_b79k")
    assert (spec.kind, spec.model, spec.tag, spec.weights_file, spec.resolution) == (
        "clip", "ViT-H-14", "laion2b_s32b_b79k", None, None,
    )
    spec = parse_teacher_spec("dinov2:vit_giant_patch14_reg4_dinov2@448")
    assert (spec.kind, spec.model, spec.resolution) == ("dinov2", "vit_giant_patch14_reg4_dinov2", (448, 448))
    assert parse_teacher_spec("dinov2:tiny@84x112").resolution == (84, 112)
    assert parse_teacher_spec("clip:tiny").is_tiny


def test_parse_spec_with_a_local_file(tmp_path):
    weights = tmp_path / "we@ights.safetensors"  # an '@' inside a path is not a resolution
    weights.write_bytes(b"x")
    spec = parse_teacher_spec(f"dinov2:vit_small_patch14_reg4_dinov2:{weights}")
    assert spec.weights_file == str(weights.resolve()) and spec.resolution is None
    spec = parse_teacher_spec(f"clip:ViT-B-16:{weights}@224")
    assert spec.weights_file == str(weights.resolve()) and spec.resolution == (224, 224) and spec.tag is None


@pytest.mark.parametrize(
    "spec,error,match",
    [
        ("", ConfigError, "empty teacher spec"),
        ("siglip:vit_h", UnknownNameError, "unknown teacher kind 'siglip'.*closest: clip"),
        ("sam:samvit_hug_patch16", UnknownNameError, "unknown timm SAM model.*closest: samvit_huge_patch16"),
        ("sam:vit_small_patch14_dinov2", UnknownNameError, "unknown timm SAM model"),
        ("sam:samvit_base_patch16:sa1b", ConfigError, "after a dot \\(sam:samvit_base_patch16.sa1b\\)"),
        ("sam:samvit_base_patch16@1000", ResolutionError, "multiple of 16"),
        ("sam:tiny@40", ResolutionError, "multiple of 16"),
        ("dinov3:tiny", UnknownNameError, "closest: dinov2"),
        ("clip", ConfigError, "names no model"),
        ("clip:ViT-B-16", ConfigError, "needs a pretrained tag or a weights file.*laion2b_s34b_b88k"),
        ("clip:ViT-Q-99:openai", UnknownNameError, "unknown open_clip model 'ViT-Q-99'"),
        ("clip:ViT-B-16:laion9b", UnknownNameError, "pretrained tag.*'laion9b'.*laion2b"),
        ("clip:ViT-B-16:/no/such/file.bin", WeightsNotFoundError, "weights file not found: /no/such/file.bin"),
        ("clip:ViT-B-16:openai@100", ResolutionError, "multiple of 16"),
        ("dinov2:vit_gaint_patch14_dinov2", UnknownNameError, "closest: vit_giant_patch14_dinov2"),
        ("dinov2:vit_small_patch14_dinov2:lvd142m", ConfigError, "after a dot"),
        ("dinov2:vit_small_patch14_dinov2@100", ResolutionError, "multiple of 14 \\(try 98 or 112\\)"),
        ("dinov2:tiny:/some/file.bin", ConfigError, "takes no weights"),
        ("clip:tiny@72", ResolutionError, "multiple of 16"),
    ],
)
def test_spec_errors(spec, error, match):
    with pytest.raises(error, match=match):
        parse_teacher_spec(spec)


def test_unique_names_for_repeated_kinds():
    assert teacher_names(["clip:tiny", "dinov2:tiny", "clip:tiny@96", "clip:tiny"]) == ["clip", "dinov2", "clip-2", "clip-3"]
    teachers = build_teachers(["clip:tiny", "dinov2:tiny", "clip:tiny@96"])
    assert [t.name for t in teachers] == ["clip", "dinov2", "clip-2"]
    assert teachers[2].resolution == (96, 96)
    with pytest.raises(ConfigError, match="no teachers"):
        build_teachers([])
    with pytest.raises(UnknownNameError):  # every spec is parsed before anything is built
        build_teachers(["clip:tiny", "sam:vit_h"])


# ----------------------------------------------------------------- tiny teachers


@pytest.fixture(scope="module")
def tiny():
    return {t.kind: t for t in build_teachers(["clip:tiny", "dinov2:tiny"])}


def test_tiny_dims_and_output_shapes(tiny):
    clip, dino = tiny["clip"], tiny["dinov2"]
    assert isinstance(clip, ClipTeacher) and isinstance(dino, Dinov2Teacher)
    assert (clip.summary_dim, clip.feature_dim, clip.resolution, clip.patch_size) == (64, 128, (64, 64), 16)
    assert (dino.summary_dim, dino.feature_dim, dino.resolution, dino.patch_size) == (96, 96, (70, 70), 14)
    assert {clip.summary_dim, clip.feature_dim}.isdisjoint({dino.summary_dim, dino.feature_dim})
    for teacher in (clip, dino):
        out = teacher(torch.rand(2, 3, *teacher.resolution))
        assert isinstance(out, TeacherOutput)
        assert out.summary.shape == (2, teacher.summary_dim)
        assert out.features.shape == (2, teacher.feature_dim, *teacher.grid_size)
        assert out.summary.dtype == out.features.dtype == torch.float32
        assert torch.isfinite(out.features).all()


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (200, 120)])
def test_tiny_teachers_resize_any_input(tiny, size):
    images = torch.rand(2, 3, *size)
    for teacher in tiny.values():
        out = teacher(images)
        assert out.features.shape[-2:] == teacher.grid_size
        resized = F.interpolate(images, size=teacher.resolution, mode="bilinear", align_corners=False, antialias=True)
        again = teacher(resized)
        assert torch.allclose(out.summary, again.summary, atol=1e-5)


def test_tiny_teachers_are_deterministic_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    first = build_teachers(["clip:tiny", "dinov2:tiny"])
    after_build = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_build)  # the fixed-seed build did not consume global RNG
    torch.manual_seed(999)
    second = build_teachers(["clip:tiny", "dinov2:tiny"])
    images = torch.rand(2, 3, 64, 64)
    for a, b in zip(first, second):
        out_a, out_b = a(images), b(images)
        assert torch.equal(out_a.summary, out_b.summary) and torch.equal(out_a.features, out_b.features)
    for key, value in first[1].state_dict().items():
        assert torch.equal(value, second[1].state_dict()[key]), key


def test_teachers_are_frozen(tiny):
    for teacher in tiny.values():
        assert not any(p.requires_grad for p in teacher.parameters())
        teacher.train()
        assert not teacher.training and not teacher.model.training  # train() cannot unfreeze
        images = torch.rand(1, 3, 64, 64, requires_grad=True)
        out = teacher(images)
        assert not out.summary.requires_grad and not out.features.requires_grad


def test_describe_says_random(tiny):
    for teacher in tiny.values():
        info = teacher.describe()
        assert info["random"] is True and "random teacher" in info["weights"]
        assert info["weights_file"] is None and info["weights_sha256"] is None
        assert info["resolution"] == list(teacher.resolution) and info["name"] == teacher.kind
        json.dumps(info)  # goes into summary.json as is


def test_dinov2_drops_register_tokens(tiny):
    teacher = tiny["dinov2"]
    model = teacher.model
    assert model.num_prefix_tokens == 5 and model.num_reg_tokens == 4  # CLS + 4 registers
    images = torch.rand(2, 3, 70, 70)
    out = teacher(images)
    tokens = model.forward_features(teacher.preprocess(images))
    assert tokens.shape[1] == 5 + 25
    h, w = out.features.shape[-2:]
    assert h * w == 25  # only patch tokens
    assert torch.allclose(out.summary, tokens[:, 0], atol=1e-6)  # CLS after the final norm
    assert torch.allclose(out.features.flatten(2).transpose(1, 2), tokens[:, 5:], atol=1e-6)


def test_clip_summary_is_the_image_embedding_and_features_the_tokens(tiny):
    teacher = tiny["clip"]
    images = torch.rand(2, 3, 64, 64)
    out = teacher(images)
    x = teacher.preprocess(images)
    with torch.no_grad():
        embedding = teacher.model.encode_image(x)  # after the projection, not normalised
        teacher.model.visual.output_tokens = True
        try:
            _, tokens = teacher.model.visual(x)
        finally:
            teacher.model.visual.output_tokens = False
    assert torch.allclose(out.summary, embedding, atol=1e-5)
    assert torch.allclose(out.features.flatten(2).transpose(1, 2), tokens, atol=1e-5)
    # the text tower is kept for zero-shot
    text = teacher.encode_text(["a photo of a cat", "a photo of a dog"])
    assert text.shape == (2, teacher.summary_dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-4)


# ---------------------------------------------------------------- weights files


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory):
    """A randomly initialised ViT-S/14 DINOv2 saved to safetensors, at 56 px."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=56).eval()
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_dinov2_from_a_local_file(dinov2_file):
    model, path = dinov2_file
    teacher = build_teacher(f"dinov2:vit_small_patch14_dinov2:{path}@56", offline=True)
    assert (teacher.summary_dim, teacher.feature_dim, teacher.patch_size, teacher.is_random) == (384, 384, 14, False)
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        tokens = model.forward_features(teacher.preprocess(images))
    out = teacher(images)
    assert torch.allclose(out.summary, tokens[:, 0], atol=1e-5)
    assert torch.allclose(out.features.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-5)
    info = teacher.describe()
    assert info["weights_file"] == str(path.resolve()) and info["random"] is False
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_dinov2_from_the_hf_cache(dinov2_file, tmp_path, monkeypatch):
    """The cache is looked at first: a file in HF's layout is found with no network."""
    from huggingface_hub import constants

    _, path = dinov2_file
    repo = tmp_path / "models--timm--vit_small_patch14_dinov2.lvd142m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    teacher = build_teacher("dinov2:vit_small_patch14_dinov2@56", offline=True)
    assert teacher.weights_file.endswith("snapshots/abc123/model.safetensors")
    assert teacher(torch.rand(1, 3, 56, 56)).features.shape == (1, 384, 4, 4)


def test_wrong_weights_file_is_a_clear_error(dinov2_file):
    _, path = dinov2_file
    with pytest.raises(ConfigError, match="do not fit vit_base_patch14_dinov2"):
        build_teacher(f"dinov2:vit_base_patch14_dinov2:{path}@56")


@pytest.mark.slow
def test_clip_from_a_local_file(tmp_path):
    import open_clip

    model = open_clip.create_model("ViT-S-32", force_image_size=64, pretrained_text=False).eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    teacher = build_teacher(f"clip:ViT-S-32:{path}@64", offline=True)
    assert (teacher.summary_dim, teacher.feature_dim, teacher.patch_size, teacher.resolution) == (384, 384, 32, (64, 64))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        embedding = model.encode_image(teacher.preprocess(images))
    out = teacher(images)
    assert torch.allclose(out.summary, embedding, atol=1e-5)
    assert out.features.shape == (2, 384, 2, 2)
    assert teacher.mean == tuple(open_clip.OPENAI_DATASET_MEAN)


# ------------------------------------------------------------ missing weights

_MISSING = textwrap.dedent(
    """
    import json, sys, time
    from zoo.errors import WeightsNotFoundError
    from zoo.teachers import build_teacher, parse_teacher_spec
    results = []
    for spec in sys.argv[1:]:
        parse_teacher_spec(spec)  # imports open_clip / timm outside the timed part
        start = time.perf_counter()
        try:
            build_teacher(spec)
            results.append([spec, "built", 0.0])
        except WeightsNotFoundError as err:
            results.append([spec, str(err), time.perf_counter() - start])
    print(json.dumps(results))
    """
)


@pytest.mark.parametrize("hub_offline_env", [None, "1"])
def test_missing_weights_fail_fast_with_a_clear_message(tmp_path, hub_offline_env):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"), HOME=str(tmp_path))
    # A dead proxy keeps the test hermetic on machines that do have a network.
    env.update(HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    if hub_offline_env:
        env["HF_HUB_OFFLINE"] = hub_offline_env
    specs = ["clip:ViT-B-16:laion2b_s34b_b88k", "dinov2:vit_small_patch14_reg4_dinov2"]
    run = subprocess.run(
        [sys.executable, "-c", _MISSING, *specs], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    (clip_spec, clip_msg, clip_s), (dino_spec, dino_msg, dino_s) = results
    assert clip_s < 5 and dino_s < 5, results
    assert "\n" not in clip_msg and "\n" not in dino_msg
    assert "laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in clip_msg and "open_clip_pytorch_model.bin" in clip_msg
    assert "--teacher clip:ViT-B-16:/path/to/open_clip_pytorch_model.bin" in clip_msg
    assert "timm/vit_small_patch14_reg4_dinov2.lvd142m" in dino_msg and "model.safetensors" in dino_msg
    assert "--teacher dinov2:vit_small_patch14_reg4_dinov2:/path/to/model.safetensors" in dino_msg
    assert "HF cache" in dino_msg and str(tmp_path / "hf") in dino_msg
    reason = "HF_HUB_OFFLINE=1" if hub_offline_env else "no network"
    assert reason in clip_msg and reason in dino_msg


def test_offline_reason(monkeypatch):
    assert offline_reason(True) == "offline mode requested (--offline)"
    assert offline_reason(False) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline_reason(None) == "HF_HUB_OFFLINE=1"
