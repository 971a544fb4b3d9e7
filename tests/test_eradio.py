"""E-RADIO: parameter counts, shapes, windows, padding, deploy mode, errors, training, timm/zoo registration.

Expected values come from the spec (``ERADIO.md``) or are derived by hand in the
test, never read back from the code under test.
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

import eradio
from eradio import ERadio, ERadioConfig, pick_window_size
from eradio.blocks import ContinuousPositionBias, relative_coords_table, window_partition, window_reverse
from eradio.errors import ERadioConfigError, ERadioResolutionError, UnknownVariantError
from zoo.backbone import BackboneOutput
from zoo.backbones.eradio_entries import build_eradio_backbone
from zoo.errors import ConfigError, ResolutionError
from zoo.registry import create_backbone, get_entry, list_backbones

TINY = dict(dim=8, in_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], cpb_hidden=16)
TINY_NECK = dict(TINY, neck_dim=24)

# ERADIO.md's table, measured on the reference implementation: millions of parameters
# (with a 1000-class head, without). Tolerance 1%: the table rounds to 0.1 M.
PAPER_PARAMS_M = {
    "xt": (25.1, 24.6),
    "t": (38.9, 38.3),
    "s": (59.8, 59.0),
    "b-noup": (113.7, 112.7),
    "b": (118.4, 117.4),
    "l": (265.5, 263.9),
}


def n_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def tiny(neck: bool = True, **overrides) -> ERadio:
    torch.manual_seed(0)
    return ERadio({**(TINY_NECK if neck else TINY), **overrides})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def train_steps(model: torch.nn.Module, steps: int = 3, size: int = 64) -> None:
    """A few SGD steps so BatchNorm statistics and weights are non-trivial."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        summary, features = model.forward_features(torch.randn(2, 3, size, size))
        (summary.square().mean() + features.square().mean()).backward()
        opt.step()
        opt.zero_grad()


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS_M))
def test_param_counts_match_reference(variant):
    with_head, without = PAPER_PARAMS_M[variant]
    with torch.device("meta"):
        headed = eradio.create_eradio(variant, num_classes=1000)
        bare = eradio.create_eradio(variant, num_classes=0)
    assert n_params(headed) == pytest.approx(with_head, rel=0.01)
    assert n_params(bare) == pytest.approx(without, rel=0.01)


def test_neck_variants_add_only_the_neck():
    for small in ("xt", "t", "s"):  # the -up variants differ from the plain ones by the neck alone
        with torch.device("meta"):
            plain = eradio.create_eradio(small, num_classes=0)
            necked = eradio.create_eradio(f"{small}-up", num_classes=0)
        d = plain.config.dim
        neck = necked.config.neck_dim
        assert neck == 8 * d
        expected = (2 * 4 * d + 4 * d * neck + neck) + (2 * 8 * d + 8 * d * 4 * neck + 4 * neck)
        assert n_params(necked) - n_params(plain) == pytest.approx(expected / 1e6, abs=1e-6)


# ----------------------------------------------------------------------------- shapes and windows


# Hand-derived from the spec: the stage-4 map is side/32 cells; the window is its largest
# divisor up to 16 (224 -> 7 cells -> 7; 1024 -> 32 cells -> 16).
SPEC_WINDOWS = {(224, 224): (7, 7), (256, 256): (8, 8), (320, 512): (10, 16), (512, 512): (16, 16),
                (1024, 1024): (16, 16)}


@pytest.mark.parametrize("size", sorted(SPEC_WINDOWS))
@pytest.mark.parametrize("neck", [True, False])
def test_tiny_shapes_and_strides(size, neck):
    backbone = eradio_backbone(neck, size)
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, *size))
    assert isinstance(out, BackboneOutput)
    stride = 16 if neck else 32
    assert backbone.stride == stride
    assert out.summary.shape == (1, backbone.summary_dim) == (1, 64)
    assert out.features.shape == (1, backbone.feature_dim, size[0] // stride, size[1] // stride)
    assert backbone.feature_size(*size) == tuple(out.features.shape[-2:])
    assert backbone.window_size == (SPEC_WINDOWS[size], SPEC_WINDOWS[size])
    assert torch.isfinite(out.features).all() and torch.isfinite(out.summary).all()


def eradio_backbone(neck: bool, size=(224, 224)):
    torch.manual_seed(0)
    return build_eradio_backbone(TINY_NECK if neck else TINY, resolution=size, name="eradio-tiny")


@pytest.mark.parametrize("name,stride,dim", [("eradio-xt", 32, 512), ("eradio-xt-up", 16, 512)])
def test_real_variant_at_224(name, stride, dim):
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 224, 224))
    assert out.summary.shape == (1, 512)
    assert out.features.shape == (1, dim, 224 // stride, 224 // stride)
    assert backbone.window_size == ((7, 7), (7, 7))


def test_pick_window_size():
    assert pick_window_size(224) == (7, 7)
    assert pick_window_size(256) == (8, 8)
    assert pick_window_size(512) == (16, 16)
    assert pick_window_size((320, 512)) == (10, 16)
    assert pick_window_size(1024) == (16, 16)
    assert pick_window_size(64) == (2, 2)  # the whole 2x2 map: global attention, allowed
    assert pick_window_size("384x640") == (12, 10)
    for bad, hint in [(544, "512 or 576"), (608, "576 or 640"), (736, "704 or 768")]:
        with pytest.raises(ERadioResolutionError, match=hint):
            pick_window_size(bad)
    assert pick_window_size(544, cap=17) == (17, 17)


@pytest.mark.parametrize("bad", [0, -32, "0", "-64", "224x0", (224, -32), "abc", "1x2x3", True])
def test_zero_negative_and_garbage_resolutions_are_one_line_errors(bad):
    with pytest.raises(ERadioResolutionError) as info:
        pick_window_size(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ResolutionError) as info:  # the zoo wrapper: zoo's error, same one line
        build_eradio_backbone(TINY, resolution=bad)
    assert "\n" not in str(info.value)


def test_zero_sized_input_is_refused():
    with pytest.raises(ERadioResolutionError, match="height 0 < 32"):
        tiny()(torch.randn(1, 3, 0, 64))


def test_window_partition_roundtrip_with_zero_padding():
    x = torch.randn(2, 5, 9, 11)
    tokens, padded = window_partition(x, (4, 4))
    assert padded == (12, 12) and tokens.shape == (2 * 3 * 3, 16, 5)
    torch.testing.assert_close(window_reverse(tokens, (4, 4), (9, 11), padded), x)
    # Zeros (as the reference), not reflection: rows 9-11 and columns 11 are 0.
    full = window_reverse(tokens, (4, 4), (12, 12), padded)
    assert full[:, :, 9:, :].abs().sum() == 0 and full[:, :, :, 11:].abs().sum() == 0
    # The first window holds rows 0-3, columns 0-3 of the first image, row by row.
    torch.testing.assert_close(tokens[0], x[0, :, :4, :4].permute(1, 2, 0).reshape(16, 5))


def test_large_window_clamps_to_the_map():
    """A window that covers the map is global attention over exactly the map's tokens: the
    result does not depend on how much larger the window is (``large_window="clamp"``);
    the reference's zero-padding to the full window (``"pad"``) changes it."""
    x = torch.randn(2, 3, 64, 64)  # stage-3 map 4x4, its 2x sub-sampled copy and stage 4: 2x2
    with torch.no_grad():
        clamp = tiny().eval()
        outs = [clamp.set_window_size(w).forward_features(x) for w in (4, 5, 7, 9)]
        for out in outs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(out, outs[0]))
        pad = tiny(large_window="pad").eval()
        pad.load_state_dict(clamp.state_dict())
        # Window 2 fits every map (4x4 tiled by four windows, 2x2 by one): the two modes agree ...
        small = clamp.set_window_size(2).forward_features(x)
        assert all(torch.equal(a, b) for a, b in zip(pad.set_window_size(2).forward_features(x), small))
        # ... window 7 does not: "pad" attends to zero-padded tokens (4x4 -> 7x7, 2x2 -> 7x7).
        padded = pad.set_window_size(7).forward_features(x)
        assert rel_err(padded[1], outs[0][1]) > 1e-3


def test_window_change_keeps_outputs_finite_and_shapes():
    model = tiny().eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        base = model.forward_features(x)
        for window in (8, 4, (8, 4), 5, 16):  # 5 does not divide 8/16: zero-padded windows
            model.set_window_size(window)
            out = model.forward_features(x)
            assert [t.shape for t in out] == [t.shape for t in base]
            assert all(torch.isfinite(t).all() for t in out)
    assert model.window_size == ((16, 16), (16, 16))


def test_backbone_repicks_window_when_input_size_changes():
    backbone = eradio_backbone(True, (224, 224)).eval()
    assert backbone.window_size == ((7, 7), (7, 7))
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 256, 256))
        assert backbone.window_size == ((8, 8), (8, 8))
        assert out.features.shape[-2:] == (16, 16)
        backbone(torch.randn(1, 3, 320, 512))
        assert backbone.window_size == ((10, 16), (10, 16))
        with pytest.raises(ResolutionError, match="512 or 576"):
            backbone(torch.randn(1, 3, 544, 544))


def test_registry_builds_window_from_resolution():
    with torch.device("meta"):
        backbone = create_backbone("eradio-b", resolution=512)
    assert backbone.window_size == ((16, 16), (16, 16))
    assert (backbone.stride, backbone.feature_dim, backbone.summary_dim) == (16, 1024, 1024)


# ----------------------------------------------------------------------------- deploy mode


def test_fuse_matches_eval_mode_and_recomputes_bias_on_window_change():
    model = tiny()
    train_steps(model)
    model.eval()
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model.forward_features(x)
        model.fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules() if m is not model.norm)
        got = model.forward_features(x)
        for a, b in zip(got, expected):
            assert rel_err(a, b) < 1e-4

        # Changing the window after fusing recomputes (never zeros) the cached bias.
        x256 = torch.randn(1, 3, 256, 256)
        model.set_window_size(8)
        reference.set_window_size(8)
        bias = [m for m in model.modules() if isinstance(m, ContinuousPositionBias)]
        assert all(m.cached_window == (8, 8) and m.cached_bias.shape[-1] == 64 for m in bias)
        assert all(m.cached_bias.abs().min() > 0 for m in bias)  # 16 * sigmoid(...) is never 0
        for a, b in zip(model.forward_features(x256), reference.forward_features(x256)):
            assert rel_err(a, b) < 1e-4


def test_backbone_fuse_delegates():
    backbone = eradio_backbone(True)
    train_steps(backbone.model)
    backbone.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = backbone(x)
        assert backbone.supports_fuse
        got = backbone.fuse()(x)
    assert backbone.model.deployed
    assert rel_err(got.features, expected.features) < 1e-4


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "field,value",
    [
        ("dim", 0),
        ("in_dim", -1),
        ("depths", [1, 2, 3]),
        ("depths", [1, 1, -1, 1]),
        ("num_heads", [2, 4, 7, 16]),
        ("num_heads", [2, 4, 8]),
        ("window_size", 0),
        ("mra_ratios", []),
        ("mra_ratios", [2, 0]),
        ("mra_resample", "bilinear"),
        ("mlp_ratio", 0.0),
        ("neck_dim", 0),
        ("drop_path_rate", 1.5),
        ("cpb_hidden", 0),
        ("cpb_norm_window", "pretrained"),
        ("large_window", "reflect"),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ERadioConfigError, match=rf"\b{field}\b"):
        ERadioConfig(**{field: value})
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):  # zoo's error through the registry
        create_backbone("eradio-b", config={field: value})


def test_config_dict_roundtrip_and_unknown_key():
    cfg = ERadioConfig(**TINY_NECK)
    assert ERadioConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["depths"] == [1, 1, 1, 1]
    with pytest.raises(ERadioConfigError, match="neck_dims.*closest: neck_dim"):
        ERadioConfig.from_dict({**cfg.to_dict(), "neck_dims": 3})
    with pytest.raises(UnknownVariantError, match="eradio-m"):
        eradio.variant_config("eradio-m")


def test_non_multiple_of_32_names_nearest_sizes():
    model = tiny()
    with pytest.raises(ERadioResolutionError, match="192 or 224"):
        model(torch.randn(1, 3, 200, 200))
    with pytest.raises(ResolutionError, match="192 or 224"):
        eradio_backbone(True)(torch.randn(1, 3, 200, 224))
    with pytest.raises(ResolutionError, match="192 or 224"), torch.device("meta"):
        create_backbone("eradio-b", resolution=200)


# ----------------------------------------------------------------------------- training behaviour


def test_gradients_reach_the_stem():
    backbone = eradio_backbone(True)
    out = backbone(torch.randn(2, 3, 64, 64))
    (out.summary.sum() + out.features.sum()).backward()
    grads = [p.grad for p in backbone.first_layer_parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_autocast_bf16_and_channels_last():
    model = tiny().eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = model.forward_features(x)
        model = model.to(memory_format=torch.channels_last)
        channels_last = model.forward_features(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_features(x.to(memory_format=torch.channels_last))
    for a, b in zip(channels_last, expected):
        assert rel_err(a, b) < 1e-4
    for a, b in zip(low, expected):
        assert torch.isfinite(a).all() and rel_err(a.float(), b) < 0.1


def test_deepcopy_after_training_forward():
    model = tiny(drop_path_rate=0.1)
    model.train()
    summary, features = model.forward_features(torch.randn(2, 3, 64, 64))
    (summary.sum() + features.sum()).backward()
    twin = copy.deepcopy(model)  # fails if a module holds a non-leaf tensor
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), name
    model.eval().fuse()
    copy.deepcopy(model)


def test_tiny_config_trains():
    torch.manual_seed(0)
    model = ERadio(TINY_NECK, num_classes=3)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ----------------------------------------------------------------------------- attention and FLOPs


def test_fused_and_explicit_attention_agree(monkeypatch):
    model = tiny().eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        monkeypatch.setattr(eradio.blocks, "FUSED_ATTN", True)
        fused = model.forward_features(x)
        monkeypatch.setattr(eradio.blocks, "FUSED_ATTN", False)
        explicit = model.forward_features(x)
    for a, b in zip(fused, explicit):
        assert rel_err(a, b) < 1e-5


def test_fused_flag_follows_timm_by_default(monkeypatch):
    import timm.layers

    monkeypatch.setattr(eradio.blocks, "FUSED_ATTN", None)
    fused_before = timm.layers.use_fused_attn()
    try:
        timm.layers.set_fused_attn(False)
        assert not eradio.blocks.fused_attn_enabled()
        timm.layers.set_fused_attn(True)
        assert eradio.blocks.fused_attn_enabled() == timm.layers.use_fused_attn()
    finally:
        timm.layers.set_fused_attn(fused_before)


def test_fvcore_counts_window_attention(monkeypatch):
    from fvcore.nn import FlopCountAnalysis

    monkeypatch.setattr(eradio.blocks, "FUSED_ATTN", False)
    model = tiny().eval()
    analysis = FlopCountAnalysis(model, torch.randn(1, 3, 64, 64))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    ops = analysis.by_operator()
    # q @ k^T and attn @ v of every attention block: (stage 3: 2 blocks, stage 4: 1) at 64 px.
    # stage 3 map 4x4 (16 tokens, width 32) ratio-2 block 2x2 (4 tokens); stage 4 2x2 (width 64).
    expected = 2 * (16 * 16 * 32 + 4 * 4 * 32 + 4 * 4 * 64)
    assert ops["matmul"] == expected


# ----------------------------------------------------------------------------- registration


def test_timm_entry_points():
    assert "eradio_b" in timm.list_models("eradio*")
    with torch.device("meta"):
        model = timm.create_model("eradio_b")
        bare = timm.create_model("eradio_b", num_classes=0, drop_path_rate=0.1)
    assert isinstance(model, ERadio) and model.head.out_features == 1000
    assert n_params(model) == pytest.approx(118.4, rel=0.01)
    assert bare.config.drop_path_rate == 0.1 and bare.num_classes == 0
    with pytest.raises(ERadioConfigError, match="bogus"):
        timm.create_model("eradio_xt", bogus=1)


def test_registry_entries():
    names = [e.name for e in list_backbones("eradio")]
    assert names == ["eradio-xt", "eradio-t", "eradio-s", "eradio-b-noup", "eradio-b", "eradio-l",
                     "eradio-xt-up", "eradio-t-up", "eradio-s-up"]
    table7 = [e for e in list_backbones("eradio") if e.in_table7]
    assert sorted(e.name for e in table7) == ["eradio-b", "eradio-b-noup", "eradio-l"]
    for entry in table7:  # the Table-7 figure each entry claims fits the model it builds (with a head)
        with torch.device("meta"):
            built = timm.create_model(entry.timm_name, num_classes=1000)
        assert n_params(built) == pytest.approx(entry.paper_params_m, rel=0.01), entry.name
    assert get_entry("eradio-b").timm_name == "eradio_b"


def test_registry_config_override_and_search_builder():
    with torch.device("meta"):
        small_b = create_backbone("eradio-b", config=dict(depths=[1, 1, 1, 1]))
        replaced = create_backbone("eradio-b", config=ERadioConfig(**TINY))
        custom = build_eradio_backbone(dict(TINY, dim=16), resolution=256, drop_path_rate=0.2)
    assert small_b.config.depths == (1, 1, 1, 1) and small_b.config.neck_dim == 1024
    assert replaced.config == ERadioConfig(**TINY) and replaced.stride == 32
    assert custom.config.dim == 16 and custom.config.drop_path_rate == 0.2
    assert custom.window_size == ((8, 8), (8, 8))


def test_import_has_no_side_effects_and_no_zoo(tmp_path):
    """No settings file in the user's config dir, no OMP_NUM_THREADS left behind (ultralytics sets
    both), and eradio is standalone: building a model through timm imports no ``zoo`` module."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "YOLO_CONFIG_DIR", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path)
    code = ("import os, sys, timm, eradio; timm.create_model('eradio_xt', num_classes=0); "
            "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('YOLO_OFFLINE'), "
            "len([m for m in sys.modules if m == 'zoo' or m.startswith('zoo.')]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None", "0"]
    assert not (tmp_path / ".config" / "Ultralytics").exists()


@pytest.mark.slow
def test_torch_compile():
    """Inductor at one size; a size change (dynamo only, to stay fast) re-picks the window and recompiles."""
    backbone = eradio_backbone(True, (64, 64)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = torch.compile(backbone)(x)
        expected = backbone(x)
        for a, b in zip(got, expected):
            assert rel_err(a, b) < 1e-4
        traced = torch.compile(backbone, backend="eager")
        for size, window in [((64, 64), (2, 2)), ((96, 128), (3, 4)), ((128, 96), (4, 3))]:  # whole maps
            x = torch.randn(1, 3, *size)
            got = traced(x)
            assert backbone.window_size[1] == window
            expected = backbone(x)
            for a, b in zip(got, expected):
                assert a.shape == b.shape and rel_err(a, b) < 1e-4


# ----------------------------------------------------------------------------- fidelity to the reference


def test_eradio_s_runs_full_resolution_first():
    """The reference E-RADIO-S runs its MRA blocks in the order [1, 2]; the others [2, 1]."""
    for name in ("s", "s-up"):
        assert eradio.variant_config(name).mra_ratios == (1, 2)
    for name in ("xt", "t", "b-noup", "b", "l", "xt-up", "t-up"):
        assert eradio.variant_config(name).mra_ratios == (2, 1)
    with torch.device("meta"):
        model = eradio.create_eradio("s", num_classes=0)
    first, second = model.stage3.layers[0].blocks
    assert (first.ratio, second.ratio) == (1, 2)
    assert isinstance(first.down, torch.nn.Identity) and isinstance(second.down[0], torch.nn.AvgPool2d)


def test_position_bias_coordinates_normalised_by_current_or_build_window():
    """SwinV2 coordinates: offset k of a window w is divided by (w' - 1), scaled by 8 and
    log-spaced: sign(t) log2(1 + |t|) / 3 with t = 8 k / (w' - 1). Default w' = the window in
    use (the reference); ``cpb_norm_window="build"``: w' = the build-time window."""
    def expected(k, ref):
        t = 8 * k / (ref - 1)
        return math.copysign(math.log2(1 + abs(t)) / 3, t)

    # Window 16 at run time, 7 at build time: the largest offset is 15.
    current = ContinuousPositionBias(2, 8, reference_window=(7, 7), norm_window="current")
    build = ContinuousPositionBias(2, 8, reference_window=(7, 7), norm_window="build")
    build.load_state_dict(current.state_dict())
    seen = {}
    for module in (current, build):
        module.mlp.register_forward_hook(lambda mod, inp, out, m=module: seen.__setitem__(m, inp[0]))
        module.compute((16, 16))
    corner = 31 * 31 - 1  # offset (+15, +15): the last row of the coordinate table
    assert seen[current][corner].tolist() == pytest.approx([expected(15, 16)] * 2)  # = log2(9)/3 = 1.057
    assert seen[build][corner].tolist() == pytest.approx([expected(15, 7)] * 2)  # = log2(21)/3 = 1.464
    assert torch.equal(seen[current], relative_coords_table((16, 16), (16, 16)))
    # At the build-time window both modes agree.
    torch.testing.assert_close(current.compute((7, 7)), build.compute((7, 7)))
    assert ERadioConfig().cpb_norm_window == "current"


def test_cpb_norm_window_reaches_every_attention_block():
    model = tiny(cpb_norm_window="build")
    modes = {m.norm_window for m in model.modules() if isinstance(m, ContinuousPositionBias)}
    assert modes == {"build"} and tiny().stage4.blocks[0].attn.pos_bias.norm_window == "current"


# ----------------------------------------------------------------------------- package boundary


def test_build_eradio_backbone_window_modes():
    cfg = dict(TINY, window_size=[4, 2])
    with torch.device("meta"):
        auto = build_eradio_backbone(cfg, resolution=256)
        searched = build_eradio_backbone(cfg, resolution=256, window="config")
        fixed = build_eradio_backbone(cfg, resolution=256, window=(8, 4))
        per_stage = build_eradio_backbone(cfg, resolution=256, window=((8, 8), (4, 4)))
        variant = build_eradio_backbone(variant="xt", resolution=(320, 512), window_cap=8)
    assert auto.window_size == ((8, 8), (8, 8)) and auto.auto_window  # 256 px: 8 cells
    assert searched.window_size == ((4, 4), (2, 2)) and not searched.auto_window
    assert fixed.window_size == ((8, 4), (8, 4)) and per_stage.window_size == ((8, 8), (4, 4))
    assert variant.name == "eradio-xt" and variant.config.dim == 64
    assert variant.window_size == ((5, 8), (5, 8))  # 10 and 16 cells, largest divisors up to 8
    with pytest.raises(ConfigError, match="window"):
        build_eradio_backbone(cfg, window="global")
    with pytest.raises(ResolutionError, match="at least 1"):
        build_eradio_backbone(cfg, window=0)
