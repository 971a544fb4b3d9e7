"""Reference E-RADIO checkpoints: the key layout of NVlabs/RADIO's ``eradio_model.py`` loads into
every variant and gives the outputs of the model it was made from.

The fixtures are generated from our own models renamed to the reference layout
(:func:`eradio.checkpoint.to_reference`), and checked against the reference's key
list (``tests/data/eradio_reference_keys.json``: names, shapes, dtypes and order of
its ``state_dict()``, copied from the project's shared notes) and against values
derived by hand below.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch

import eradio
from eradio.checkpoint import from_reference, load_weights, reference_key_to_ours, to_reference
from eradio.errors import StateDictError
from zoo.errors import BadFileError
from zoo.registry import create_backbone

REFERENCE_KEYS = json.loads((Path(__file__).parent / "data" / "eradio_reference_keys.json").read_text())["models"]
ALL_VARIANTS = list(eradio.ERADIO_VARIANTS)


def slim(variant: str) -> dict:
    """A small config of ``variant`` that keeps what the key layout depends on: the MRA
    order and resampling, the neck's presence, several layers per attention stage."""
    fields = dict(dim=16, in_dim=8, depths=[1, 2, 2, 2], cpb_hidden=16)
    if eradio.variant_config(variant).neck_dim:
        fields["neck_dim"] = 32
    return fields


def randomise_norm_stats(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so that a swapped or dropped buffer shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)


def build(variant: str, seed: int, **kwargs):
    torch.manual_seed(seed)
    backbone = create_backbone(f"eradio-{variant}", resolution=64, config=slim(variant), **kwargs).eval()
    if "pretrained_file" not in kwargs:
        with torch.no_grad():
            randomise_norm_stats(backbone, seed)
    return backbone


# ----------------------------------------------------------------------------- the layout itself


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_full_size_variant_round_trips_through_the_reference_layout(variant):
    """The generated fixture has the reference's keys, shapes, dtypes and order (for the six
    variants the reference has), and loads back into a fresh model of the variant."""
    with torch.device("meta"):
        source = eradio.create_eradio(variant, num_classes=1000)
        target = eradio.create_eradio(variant, num_classes=1000)
    state = to_reference(source)
    if f"eradio-{variant}" in REFERENCE_KEYS:
        got = [[key, list(value.shape), str(value.dtype).removeprefix("torch.")] for key, value in state.items()]
        assert got == REFERENCE_KEYS[f"eradio-{variant}"]["keys"]
    assert load_weights(target, state) == "reference"
    assert sorted(from_reference(state)) == sorted(target.state_dict())


def test_mapping_anchors():
    """Hand-written correspondences for each kind of module (read off the two architectures)."""
    pairs = {
        "patch_embed.conv_down.0.conv.weight": "stem.conv1.conv.weight",
        "patch_embed.conv_down.2.bn.running_var": "stem.conv2.bn.running_var",
        "levels.0.blocks.m.0.cv2.conv.weight": "stage1.m.0.cv2.conv.weight",
        "levels.1.downsample.reduction.bn.bias": "down2.bn.bias",
        "levels.2.downsample.reduction.conv.weight": "down3.conv.weight",
        "levels.2.blocks.3.attention_blocks.1.norm2.weight": "stage3.layers.3.blocks.1.block.norm2.weight",
        "levels.2.blocks.0.attention_blocks.0.attn.qkv.weight": "stage3.layers.0.blocks.0.block.attn.qkv.weight",
        "levels.2.blocks.1.attention_blocks.0.attn.pos_emb_funct.cpb_mlp.2.weight":
            "stage3.layers.1.blocks.0.block.attn.pos_bias.mlp.2.weight",
        "levels.2.blocks.0.attention_blocks.1.downsample_mixer.conv.weight": "stage3.layers.0.blocks.1.down.1.conv.weight",
        "levels.2.blocks.0.attention_blocks.0.upsample_op.bn.running_mean": "stage3.layers.0.blocks.0.up.0.bn.running_mean",
        "levels.2.blocks.2.attention_blocks.0.downsample_op.weight": "stage3.layers.2.blocks.0.down.weight",
        "levels.2.blocks.2.attention_blocks.0.upsample_op.bias": "stage3.layers.2.blocks.0.up.bias",
        "levels.3.blocks.4.attention_blocks.0.mlp.fc2.weight": "stage4.blocks.4.mlp.fc2.weight",
        "levels.3.blocks.0.attention_blocks.0.attn.pos_emb_funct.cpb_mlp.0.bias": "stage4.blocks.0.attn.pos_bias.mlp.0.bias",
        "neck_features_proj.0.norm.weight": "neck.proj3.norm.weight",
        "neck_features_proj.1.conv.bias": "neck.proj4.conv.bias",
        "norm.running_var": "norm.running_var",
        "head.weight": "head.weight",
    }
    for reference, ours in pairs.items():
        assert reference_key_to_ours(reference) == ours, reference
    for derived in ("relative_coords_table", "relative_position_index", "relative_bias"):
        assert reference_key_to_ours(f"levels.3.blocks.0.attention_blocks.0.attn.pos_emb_funct.{derived}") is None
    assert reference_key_to_ours("levels.3.blocks.0.attention_blocks.1.norm1.weight") is None  # no such block


def test_derived_buffers_hold_the_reference_values():
    """Window 7 (the reference default): 13x13 offsets, SwinV2 log-spaced coordinates
    sign(t) log2(1 + |t|) / 3 with t = 8 k / 6, row-major offset index, bias = 16 sigmoid(.)."""
    torch.manual_seed(0)
    model = eradio.ERadio(dict(dim=16, in_dim=8, depths=[1, 1, 1, 1], cpb_hidden=16), num_classes=0)
    model.set_window_size(7)
    state = to_reference(model)
    prefix = "levels.3.blocks.0.attention_blocks.0.attn.pos_emb_funct."
    table, index, bias = (state[prefix + n] for n in ("relative_coords_table", "relative_position_index", "relative_bias"))
    assert table.shape == (1, 13, 13, 2) and index.shape == (49, 49) and index.dtype == torch.int64
    edge = math.log2(9) / 3  # offset 6 -> t = 8
    half = math.log2(5) / 3  # offset 3 -> t = 4
    assert table[0, 6, 6].tolist() == [0.0, 0.0]
    assert table[0, 12, 12].tolist() == pytest.approx([edge, edge])
    assert table[0, 0, 9].tolist() == pytest.approx([-edge, half])
    # Query (0, 0), key (0, 0): offset (0, 0) -> row 6 * 13 + 6; key (6, 6): offset (-6, -6) -> row 0;
    # query (6, 6), key (0, 0): offset (6, 6) -> row 12 * 13 + 12; query (0, 1), key (2, 0): (-2, 1) -> 4 * 13 + 7.
    assert (index[0, 0], index[0, 48], index[48, 0], index[1, 14]) == (84, 0, 168, 59)
    assert bias.shape == (1, 16, 49, 49) and 0 < bias.min() and bias.max() < 16
    mlp_out = model.stage4.blocks[0].attn.pos_bias.mlp(table.reshape(-1, 2))  # [169, heads]
    torch.testing.assert_close(bias[0, :, 1, 14], 16 * torch.sigmoid(mlp_out[59]))


# ----------------------------------------------------------------------------- loading through zoo


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_reference_checkpoint_loads_into_every_variant_with_identical_outputs(variant, tmp_path):
    source = build(variant, seed=1)
    path = tmp_path / "reference.pt"
    torch.save(to_reference(source.model), path)
    loaded = build(variant, seed=2, pretrained_file=str(path))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = source(x), loaded(x)
        assert not torch.equal(build(variant, seed=2)(x).features, expected.features)  # the load mattered
    assert torch.equal(got.summary, expected.summary) and torch.equal(got.features, expected.features)


def test_derived_buffers_are_recomputed_not_loaded(tmp_path):
    source = build("b", seed=1)
    state = to_reference(source.model)
    for key in state:
        if key.endswith(("relative_coords_table", "relative_bias")):
            state[key] = torch.full_like(state[key], float("nan"))
        elif key.endswith("relative_position_index"):
            state[key] = torch.zeros_like(state[key])
    path = tmp_path / "reference.pt"
    torch.save(state, path)
    loaded = build("b", seed=2, pretrained_file=str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x).features, source(x).features)


def test_timm_and_registry_take_a_checkpoint_with_its_classifier(tmp_path):
    """A reference checkpoint holds a 1000-class head: timm's model loads it, a backbone skips it."""
    torch.manual_seed(1)
    source = eradio.create_eradio("xt", num_classes=1000, **slim("xt")).eval()
    with torch.no_grad():
        randomise_norm_stats(source, 1)
    path = tmp_path / "eradio_xt_reference.pth"
    torch.save(to_reference(source), path)
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(2)
    overlay = dict(file=str(path))
    via_timm = timm.create_model("eradio_xt", pretrained=True, pretrained_cfg_overlay=overlay, **slim("xt")).eval()
    via_zoo = build("xt", seed=2, pretrained_file=str(path))
    with torch.no_grad():
        assert torch.equal(via_timm(x), source(x))  # logits: the head came along
        summary, features = source.set_window_size(via_zoo.window_size[0]).forward_features(x)
        out = via_zoo(x)
    assert torch.equal(out.summary, summary) and torch.equal(out.features, features)


def test_own_layouts_still_load(tmp_path):
    source = build("xt", seed=1)
    x = torch.randn(1, 3, 64, 64)
    for name, state in (("wrapper.pt", source.state_dict()), ("bare.pt", source.model.state_dict())):
        torch.save(state, tmp_path / name)
        loaded = build("xt", seed=2, pretrained_file=str(tmp_path / name))
        with torch.no_grad():
            assert torch.equal(loaded(x).features, source(x).features), name


# ----------------------------------------------------------------------------- refusals: one line each


def one_line_error(error_type, variant, path, match, **config):
    with pytest.raises(error_type, match=match) as info:
        create_backbone(f"eradio-{variant}", resolution=64, config={**slim(variant), **config},
                        pretrained_file=str(path))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unmappable_key_is_one_line(tmp_path):
    state = to_reference(build("xt", seed=1).model)
    state["levels.4.blocks.0.gamma"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    message = one_line_error(BadFileError, "xt", tmp_path / "extra.pt", "levels.4.blocks.0.gamma")
    assert "extra.pt" in message and "KEY_TABLE" in message
    with pytest.raises(StateDictError, match="levels.4.blocks.0.gamma"):  # eradio's own error underneath
        from_reference(state)


def test_wrong_variant_missing_and_mis_shaped_keys_are_one_line(tmp_path):
    state = to_reference(build("xt", seed=1).model)
    torch.save(state, tmp_path / "xt.pt")
    one_line_error(BadFileError, "xt", tmp_path / "xt.pt", r"'stem.conv2.conv.weight' has shape \[16, 8, 3, 3\] in the file, \[24, 8, 3, 3\] in the model",
                   dim=24)
    one_line_error(BadFileError, "b", tmp_path / "xt.pt", "unexpected key")  # pooling blocks, no neck
    del state["levels.3.blocks.1.attention_blocks.0.mlp.fc1.weight"]
    torch.save(state, tmp_path / "short.pt")
    one_line_error(BadFileError, "xt", tmp_path / "short.pt", r"1 missing key\(s\), e.g. 'stage4.blocks.1.mlp.fc1.weight'")
