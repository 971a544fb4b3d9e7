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


# ------------------------------------------------------------- prepare_teachers


def test_prepare_teachers_builds_or_reuses():
    from zoo.teachers import prepare_teachers

    built = prepare_teachers(None, ["clip:tiny", "dinov2:tiny"], "cpu", offline=True)
    assert [t.name for t in built] == ["clip", "dinov2"]
    assert [t.spec for t in prepare_teachers(["dinov2:tiny@28"], ["clip:tiny"], "cpu", True)] == ["dinov2:tiny@28"]
    reused = prepare_teachers(built, ["sam:tiny"], "cpu")
    assert all(a is b for a, b in zip(reused, built))  # built objects are shared, not rebuilt
    with pytest.raises(ConfigError, match="all spec strings or all built Teacher objects"):
        prepare_teachers(["clip:tiny", built[1]], [])


# ---------------------------------------------------------- evaluation transforms


@pytest.fixture(scope="module")
def photo():
    """A smooth, non-square generated RGB image (203 x 137)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (9, 13, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((203, 137), Image.Resampling.BICUBIC)


def _as_uint8_tensor(image):
    import numpy as np

    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def _check_against(transform, reference, image):
    """PIL input: the library's own result exactly; a uint8 tensor: within ~1 grey level."""
    from zoo.teachers import apply_eval_transform

    expected = reference(image)
    assert torch.allclose(apply_eval_transform(transform, image, normalize=True), expected, atol=1e-6)
    from_tensor = apply_eval_transform(transform, _as_uint8_tensor(image), normalize=True)
    assert from_tensor.shape == expected.shape
    assert (from_tensor - expected).abs().max() <= 2.5 / 255 / min(transform.std)
    unnormalised = apply_eval_transform(transform, image)
    assert 0 <= unnormalised.min() and unnormalised.max() <= 1


@pytest.mark.parametrize("model,tag", [("ViT-B-16", "openai"), ("ViT-B-16-SigLIP", "webli"),
                                       ("ViT-B-16", "laion2b_s34b_b88k")])
def test_eval_transform_matches_open_clip(photo, model, tag):
    import open_clip

    from zoo.teachers import EvalTransform

    cfg = open_clip.get_pretrained_cfg(model, tag)
    transform = EvalTransform.from_open_clip(cfg, size=96)
    reference = open_clip.image_transform(96, is_train=False, mean=cfg.get("mean"), std=cfg.get("std"),
                                          resize_mode=cfg.get("resize_mode"), interpolation=cfg.get("interpolation"))
    _check_against(transform, reference, photo)


def test_eval_transform_matches_open_clip_longest_mode(photo):
    import open_clip

    from zoo.teachers import EvalTransform

    transform = EvalTransform.from_open_clip({"resize_mode": "longest", "interpolation": "bilinear", "fill_color": 0},
                                             size=96)
    assert (transform.resize_mode, transform.interpolation) == ("longest", "bilinear")
    reference = open_clip.image_transform(96, is_train=False, resize_mode="longest", interpolation="bilinear")
    _check_against(transform, reference, photo)


@pytest.mark.parametrize("name,size,crop_mode", [
    ("resnet50.tv_in1k", (96, 96), None),  # crop_pct 0.875, bilinear
    ("resnet50.tv_in1k", (96, 80), None),  # non-square: shorter side to size / crop_pct
    ("vit_base_patch16_224.augreg_in21k", (64, 112), None),  # crop_pct 0.9, bicubic
    ("vit_small_patch14_dinov2.lvd142m", (98, 98), None),
    ("samvit_base_patch16.sa1b", (64, 64), None),
    ("resnet50.tv_in1k", (96, 80), "squash"),
    ("resnet50.tv_in1k", (96, 80), "border"),
])
def test_eval_transform_matches_timm(photo, name, size, crop_mode):
    import timm
    from timm.data import create_transform, resolve_data_config

    from zoo.teachers import EvalTransform

    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    if crop_mode:
        cfg.update(crop_mode=crop_mode, crop_pct=0.9)
    transform = EvalTransform.from_timm(cfg, size=size)
    reference = create_transform(**resolve_data_config({"input_size": (3, *size)}, pretrained_cfg=cfg, use_test_size=True))
    _check_against(transform, reference, photo)


def test_teachers_carry_their_own_eval_transform(tiny, photo):
    """Read from the model's own config: open_clip's preprocess_cfg, timm's pretrained_cfg."""
    import open_clip
    from timm.data import create_transform, resolve_data_config

    from zoo.teachers import eval_batch

    clip, dino = tiny["clip"], tiny["dinov2"]
    assert (clip.eval_transform.size, clip.eval_transform.interpolation, clip.eval_transform.resize_mode) == (
        (64, 64), "bicubic", "shortest")
    assert clip.eval_transform.mean == clip.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert dino.eval_transform.size == dino.resolution and dino.eval_transform.std == dino.std
    references = {
        "clip": open_clip.image_transform(64, is_train=False, **{
            k: v for k, v in open_clip.get_model_preprocess_cfg(clip.model).items() if k != "size"}),
        "dinov2": create_transform(**resolve_data_config({"input_size": (3, 70, 70)}, model=dino.model)),
    }
    for kind, teacher in tiny.items():
        batch = eval_batch(teacher.eval_transform, [photo, photo.transpose(0)])
        assert batch.shape == (2, 3, *teacher.resolution)
        expected = torch.stack([references[kind](photo), references[kind](photo.transpose(0))])
        with torch.no_grad():  # the teacher normalises the [0, 1] batch as the library's transform does
            assert torch.allclose(teacher.preprocess(batch), expected, atol=1e-5)


def test_eval_transform_rejects_bad_values():
    from zoo.teachers import EvalTransform

    with pytest.raises(ValueError, match="interpolation"):
        EvalTransform((64, 64), interpolation="lanczos5")
    with pytest.raises(ValueError, match="crop_pct"):
        EvalTransform((64, 64), crop_pct=1.5)
    with pytest.raises(ValueError, match="resize_mode"):
        EvalTransform((64, 64), resize_mode="fit")
    assert EvalTransform(64).size == (64, 64) and EvalTransform((64, 48), crop_pct=0.875).scale_size == (73, 54)


# ----------------------------------------------------------- unreadable files


@pytest.mark.parametrize("spec", ["dinov2:vit_small_patch14_dinov2", "sam:samvit_base_patch16", "clip:ViT-S-32"])
def test_garbage_weights_file_is_one_line(tmp_path, spec):
    from zoo.errors import BadFileError

    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file" * 10)
    with pytest.raises(BadFileError, match="not a readable .safetensors file") as caught:
        build_teacher(f"{spec}:{garbage}@64" if "dinov2" not in spec else f"{spec}:{garbage}@56", offline=True)
    assert str(garbage) in str(caught.value) and "\n" not in str(caught.value)


def test_pickled_teacher_file_is_refused(tmp_path):
    from zoo.errors import BadFileError

    pickled = tmp_path / "model.pt"
    torch.save({"blocks.0.attn": F.relu}, pickled)  # a function: weights-only loading refuses it
    with pytest.raises(BadFileError, match="refused"):
        build_teacher(f"dinov2:vit_small_patch14_dinov2:{pickled}@56", offline=True)


# ------------------------------------------------------------ a teacher kind of your own


class _ToyTeacher(__import__("zoo.teachers", fromlist=["Teacher"]).Teacher):
    """A conv stem: features at stride 8, summary = their mean through a linear layer."""

    def _forward_model(self, x):
        features = self.model["stem"](x)
        return TeacherOutput(self.model["proj"](features.mean((2, 3))), features)


def _toy_model():
    return torch.nn.ModuleDict({"stem": torch.nn.Conv2d(3, 24, 8, stride=8), "proj": torch.nn.Linear(24, 12)})


def _toy_teacher(spec, model, weights_file, is_random):
    return _ToyTeacher(model, spec, summary_dim=12, feature_dim=24, resolution=spec.resolution or (64, 64),
                       patch_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), is_random=is_random,
                       weights_file=weights_file, model_name=spec.model)


@pytest.fixture
def toy_kind():
    from zoo.checkpoints import load_state_dict_file
    from zoo.teachers import (TeacherKind, TeacherSpec, fixed_seed_build, register_teacher_kind,
                              unregister_teacher_kind)

    def parse(text, model, source, resolution):
        if model != "conv8":
            raise UnknownNameError(f"unknown toy model '{model}'")
        return TeacherSpec(text, "toy", model, weights_file=source, resolution=resolution)

    def build(spec, weights_file):
        model = _toy_model()
        model.load_state_dict(load_state_dict_file(weights_file))
        return _toy_teacher(spec, model, weights_file, False)

    kind = register_teacher_kind(TeacherKind(
        name="toy", parse=parse, build=build, build_tiny=lambda spec: _toy_teacher(spec, fixed_seed_build(_toy_model), None, True),
        tiny_patch_size=8, examples=("toy:conv8:/path/to/toy.safetensors",),
    ))
    yield kind
    unregister_teacher_kind("toy")


def test_a_registered_kind_is_built_through_build_teacher(toy_kind, tmp_path):
    from safetensors.torch import save_file

    from zoo.teachers import get_teacher_kind, teacher_kinds

    assert "toy" in teacher_kinds() and get_teacher_kind("toy") is toy_kind
    with pytest.raises(UnknownNameError, match="closest: toy"):
        parse_teacher_spec("tyo:tiny")
    teachers = build_teachers(["toy:tiny@32", "dinov2:tiny"])
    assert [t.name for t in teachers] == ["toy", "dinov2"]
    out = teachers[0](torch.rand(2, 3, 50, 40))
    assert out.summary.shape == (2, 12) and out.features.shape == (2, 24, 4, 4)
    assert teachers[0].describe()["random"] is True
    with pytest.raises(ResolutionError, match="multiple of 8"):
        parse_teacher_spec("toy:tiny@30")
    with pytest.raises(WeightsNotFoundError, match="needs a weights file"):
        build_teacher("toy:conv8")  # no remote: a file is required
    model = _toy_model()
    path = tmp_path / "toy.safetensors"
    save_file(model.state_dict(), str(path))
    teacher = build_teacher(f"toy:conv8:{path}")
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher(images).features, model["stem"]((images - 0.5) / 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        from zoo.teachers import TeacherKind, register_teacher_kind

        register_teacher_kind(TeacherKind(name="toy", parse=toy_kind.parse, build=toy_kind.build))


def test_the_builtin_kinds_are_registered():
    from zoo.teachers import get_teacher_kind, teacher_kinds

    assert {"clip", "dinov2", "sam"} <= set(teacher_kinds())
    assert get_teacher_kind("sam").build_tiny is not None and get_teacher_kind("sam").tiny_patch_size == 16
