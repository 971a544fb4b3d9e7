"""Adaptor heads, distillation losses and loss balancing against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.backbone import BackboneOutput
from zoo.errors import ConfigError
from zoo.heads import AdaptorHeads, FeatureHead, MLPHead, TeacherDims
from zoo.losses import (
    BALANCING_METHODS,
    LossBalancer,
    cosine_distance,
    distillation_losses,
    feature_loss,
    loss_term_names,
    match_grids,
    summary_loss,
)
from zoo.teachers import TeacherOutput


# ----------------------------------------------------------------------- losses


def test_cosine_distance_hand_values():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-3.0, 0.0]])
    # cos = 0, 1, -1 -> distances 1, 0, 2 -> mean 1
    assert cosine_distance(student, teacher).item() == pytest.approx(1.0)
    assert summary_loss(student[:2], teacher[:2]).item() == pytest.approx(0.5)
    # along another dim: columns (1,1,1)·(0,2,-3) and (0,1,0)·(1,2,0)
    col0 = 1 - (0 + 2 - 3) / (math.sqrt(3) * math.sqrt(13))
    col1 = 1 - 2 / (1 * math.sqrt(5))
    assert cosine_distance(student, teacher, dim=0).item() == pytest.approx((col0 + col1) / 2, rel=1e-6)


def test_summary_loss_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="summary shapes differ"):
        summary_loss(torch.ones(2, 3), torch.ones(2, 4))


def test_feature_loss_hand_values():
    # one image, 2 channels, a 1x2 grid: locations (1, 0) and (3, 0.5) vs teacher (0, 1) and (1, 0)
    student = torch.tensor([[1.0, 3.0], [0.0, 0.5]]).view(1, 2, 1, 2)
    teacher = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 2, 1, 2)
    cos = (1.0 + (1 - 3 / math.sqrt(9.25))) / 2
    # smooth-L1 with torch's default beta=1: |d| >= 1 -> |d| - 0.5, else 0.5 d^2
    # differences: 1, -1 (loc 1) and 2, 0.5 (loc 2) -> 0.5, 0.5, 1.5, 0.125
    smooth = (0.5 + 0.5 + 1.5 + 0.125) / 4
    expected = 0.9 * cos + 0.1 * smooth
    assert feature_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert feature_loss(student, teacher, alpha=1.0, beta=0.0).item() == pytest.approx(cos, rel=1e-6)
    assert feature_loss(student, teacher, alpha=0.0, beta=1.0).item() == pytest.approx(smooth, rel=1e-6)
    assert feature_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("student_size,teacher_size", [((4, 4), (16, 16)), ((16, 16), (4, 4))])
def test_match_grids_resizes_the_smaller_grid_to_the_larger(student_size, teacher_size):
    student = torch.randn(2, 3, *student_size)
    teacher = torch.randn(2, 3, *teacher_size)
    s, t = match_grids(student, teacher)
    assert s.shape == t.shape == (2, 3, 16, 16)
    small, big = (student, teacher) if student_size == (4, 4) else (teacher, student)
    small_out, big_out = (s, t) if student_size == (4, 4) else (t, s)
    assert torch.equal(big_out, big)  # the larger grid is untouched
    assert torch.allclose(small_out, F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False))


def test_match_grids_neither_contains_the_other_uses_elementwise_max():
    s, t = match_grids(torch.randn(1, 2, 4, 16), torch.randn(1, 2, 16, 4))
    assert s.shape == t.shape == (1, 2, 16, 16)


def test_feature_loss_compares_at_the_larger_grid():
    vector = torch.tensor([0.3, -1.2, 2.0]).view(1, 3, 1, 1)
    # a constant map stays constant under bilinear resizing: zero loss across grids
    assert feature_loss(vector.expand(2, 3, 4, 4), vector.expand(2, 3, 16, 16)).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(1, 3, 4, 4)
    teacher = torch.randn(1, 3, 16, 16)
    up = F.interpolate(student, size=(16, 16), mode="bilinear", align_corners=False)
    assert feature_loss(student, teacher).item() == pytest.approx(feature_loss(up, teacher).item(), rel=1e-6)


def test_distillation_losses_keys_and_weights():
    torch.manual_seed(1)
    pred = {
        "clip": TeacherOutput(torch.randn(2, 8), torch.randn(2, 6, 4, 4)),
        "dinov2": TeacherOutput(torch.randn(2, 5), torch.randn(2, 7, 4, 4)),
    }
    target = {
        "clip": TeacherOutput(torch.randn(2, 8), torch.randn(2, 6, 8, 8)),
        "dinov2": TeacherOutput(torch.randn(2, 5), torch.randn(2, 7, 2, 2)),
    }
    losses = distillation_losses(pred, target)
    assert list(losses) == ["clip/summary", "clip/features", "dinov2/summary", "dinov2/features"]
    assert list(losses) == loss_term_names(["clip", "dinov2"])
    assert losses["clip/summary"].item() == pytest.approx(summary_loss(pred["clip"].summary, target["clip"].summary).item())
    assert losses["dinov2/features"].item() == pytest.approx(
        feature_loss(pred["dinov2"].features, target["dinov2"].features).item()
    )
    weighted = distillation_losses(pred, target, summary_weights={"clip": 2.0, "dinov2": 0.0}, feature_weights={"clip": 0.5})
    assert "dinov2/summary" not in weighted  # weight 0 drops the term
    assert list(weighted) == loss_term_names(["clip", "dinov2"], {"clip": 2.0, "dinov2": 0.0}, {"clip": 0.5})
    assert weighted["clip/summary"].item() == pytest.approx(2 * losses["clip/summary"].item())
    assert weighted["clip/features"].item() == pytest.approx(0.5 * losses["clip/features"].item())
    with pytest.raises(ConfigError, match="unknown teachers"):
        distillation_losses(pred, target, summary_weights={"sam": 1.0})
    with pytest.raises(ConfigError, match="no adaptor-head predictions"):
        distillation_losses({"clip": pred["clip"]}, target)


def test_distillation_losses_backpropagate_to_predictions():
    pred_s = torch.randn(2, 8, requires_grad=True)
    pred_f = torch.randn(2, 6, 4, 4, requires_grad=True)
    target = {"clip": TeacherOutput(torch.randn(2, 8), torch.randn(2, 6, 8, 8))}
    total = sum(distillation_losses({"clip": TeacherOutput(pred_s, pred_f)}, target).values())
    total.backward()
    assert pred_s.grad.abs().sum() > 0 and pred_f.grad.abs().sum() > 0


# -------------------------------------------------------------------- balancing

TERMS = ["clip/summary", "clip/features", "dinov2/summary", "dinov2/features"]


def _losses(*values):
    return {name: torch.tensor(float(v), requires_grad=True) for name, v in zip(TERMS, values)}


def test_naive_balancer_is_a_plain_sum():
    balancer = LossBalancer("naive", TERMS, summary_dim=4)
    total, weights = balancer(_losses(0.5, 1.5, 2.0, 0.25), torch.randn(2, 4))
    assert total.item() == pytest.approx(4.25)
    assert weights == {name: 1.0 for name in TERMS}
    assert not list(balancer.parameters())


def test_uncertainty_balancer_starts_at_weight_one():
    balancer = LossBalancer("uncertainty", TERMS, summary_dim=4)
    total, weights = balancer(_losses(0.5, 1.5, 2.0, 0.25), torch.randn(3, 4))
    assert weights == pytest.approx({name: 1.0 for name in TERMS})
    assert total.item() == pytest.approx(4.25 + 4 * math.log(2.0), rel=1e-6)  # softplus(0) = ln 2


def test_uncertainty_balancer_matches_eq6_with_hand_set_b():
    balancer = LossBalancer("uncertainty", TERMS[:2], summary_dim=3)
    with torch.no_grad():
        balancer.log_variance.bias.copy_(torch.tensor([0.5, -1.0]))
        balancer.log_variance.weight.zero_()
        balancer.log_variance.weight[0, 0] = 1.0  # b_0 = 0.5 + mean over the batch of summary[:, 0]
    summary = torch.tensor([[0.2, 9.0, 9.0], [0.4, -9.0, 3.0]])  # mean of column 0: 0.3
    losses = {"clip/summary": torch.tensor(2.0), "clip/features": torch.tensor(3.0)}
    total, weights = balancer(losses, summary)
    b0, b1 = 0.8, -1.0
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = math.exp(-b0) * 2.0 + softplus(b0) + math.exp(-b1) * 3.0 + softplus(b1)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert weights["clip/summary"] == pytest.approx(math.exp(-b0), rel=1e-6)
    assert weights["clip/features"] == pytest.approx(math.exp(-b1), rel=1e-6)
    total.backward()
    assert balancer.log_variance.bias.grad.abs().sum() > 0  # b is learned


def test_adaloss_weights_are_one_over_the_ema():
    balancer = LossBalancer("adaloss", TERMS[:2], summary_dim=4)
    balancer.train()
    total, weights = balancer({"clip/summary": torch.tensor(2.0), "clip/features": torch.tensor(8.0)})
    # step 1: bias-corrected EMA = the first value -> every weighted term is 1
    assert weights == pytest.approx({"clip/summary": 0.5, "clip/features": 0.125})
    assert total.item() == pytest.approx(2.0)
    total, weights = balancer({"clip/summary": torch.tensor(4.0), "clip/features": torch.tensor(8.0)})
    # step 2: ema = 0.99 * (0.01 * 2) + 0.01 * 4 = 0.0598, debiased by 1 - 0.99^2 = 0.0199
    expected_e = 0.0598 / 0.0199
    assert weights["clip/summary"] == pytest.approx(1 / expected_e, rel=1e-5)
    assert weights["clip/features"] == pytest.approx(1 / 8.0, rel=1e-5)
    assert total.item() == pytest.approx(4.0 / expected_e + 1.0, rel=1e-5)
    # the EMA is a checkpointed buffer; eval mode reads it without updating
    state = balancer.state_dict()
    assert set(state) == {"loss_ema", "loss_steps"}
    restored = LossBalancer("adaloss", TERMS[:2], summary_dim=4)
    restored.load_state_dict(state)
    restored.eval()
    _, eval_weights = restored({"clip/summary": torch.tensor(100.0)})
    assert eval_weights["clip/summary"] == pytest.approx(1 / expected_e, rel=1e-5)
    assert torch.equal(restored.loss_steps, torch.tensor([2, 2]))


def test_balancer_rejects_unknown_methods_and_terms():
    with pytest.raises(ConfigError, match="naive, uncertainty, adaloss"):
        LossBalancer("gradnorm", TERMS, summary_dim=4)
    assert BALANCING_METHODS == ("naive", "uncertainty", "adaloss")
    balancer = LossBalancer("naive", TERMS, summary_dim=4)
    with pytest.raises(ConfigError, match="sam/features"):
        balancer({"sam/features": torch.tensor(1.0)})
    total, weights = balancer({"dinov2/features": torch.tensor(1.5)})  # any subset of the terms
    assert total.item() == pytest.approx(1.5) and list(weights) == ["dinov2/features"]


# ------------------------------------------------------------------------ heads


def test_mlp_head_layout_and_shape():
    head = MLPHead(8, 32, 5)
    layers = list(head.children())
    assert [type(m) for m in layers] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert (head.fc1.in_features, head.fc1.out_features, head.norm.normalized_shape, head.fc2.out_features) == (8, 32, (32,), 5)
    assert head(torch.randn(3, 8)).shape == (3, 5)


def test_feature_head_is_the_mlp_at_every_location():
    head = FeatureHead(6, 16, 4)
    x = torch.randn(2, 6, 3, 5)
    y = head(x)
    assert y.shape == (2, 4, 3, 5)
    location = x[1, :, 2, 4]
    assert torch.allclose(y[1, :, 2, 4], MLPHead.forward(head, location), atol=1e-6)


def test_adaptor_heads_shapes_and_hidden_width():
    teachers = [TeacherDims("clip", 64, 128), TeacherDims("dinov2", 96, 96)]
    heads = AdaptorHeads(summary_dim=40, feature_dim=24, teachers=teachers)
    assert heads.hidden_dim == 128  # the largest teacher dim over summary and feature dims
    assert heads.summary_heads["dinov2"].fc1.out_features == 128
    assert heads.feature_heads["clip"].fc1.in_features == 24
    out = heads(BackboneOutput(torch.randn(2, 40), torch.randn(2, 24, 3, 3)))
    assert list(out) == ["clip", "dinov2"]
    assert out["clip"].summary.shape == (2, 64) and out["clip"].features.shape == (2, 128, 3, 3)
    assert out["dinov2"].summary.shape == (2, 96) and out["dinov2"].features.shape == (2, 96, 3, 3)
    # plain tuples work too
    assert AdaptorHeads(8, 8, [("clip", 16, 300)]).hidden_dim == 300


def test_adaptor_heads_accept_teacher_objects_and_reject_duplicate_names():
    from zoo.teachers import build_teachers

    teachers = build_teachers(["clip:tiny", "dinov2:tiny"])
    heads = AdaptorHeads(16, 16, teachers)
    assert heads.names == ["clip", "dinov2"] and heads.hidden_dim == 128
    with pytest.raises(ConfigError, match="unique"):
        AdaptorHeads(16, 16, [TeacherDims("clip", 4, 4), TeacherDims("clip", 8, 8)])


def test_heads_losses_and_balancer_train_end_to_end():
    """A few optimizer steps on heads + uncertainty balancer reduce the loss."""
    torch.manual_seed(0)
    teachers = [TeacherDims("clip", 6, 5), TeacherDims("dinov2", 7, 4)]
    heads = AdaptorHeads(8, 3, teachers)
    balancer = LossBalancer("uncertainty", loss_term_names(["clip", "dinov2"]), summary_dim=8)
    student = BackboneOutput(torch.randn(4, 8), torch.randn(4, 3, 2, 2))
    targets = {
        "clip": TeacherOutput(torch.randn(4, 6), torch.randn(4, 5, 4, 4)),
        "dinov2": TeacherOutput(torch.randn(4, 7), torch.randn(4, 4, 2, 2)),
    }
    optimizer = torch.optim.AdamW([*heads.parameters(), *balancer.parameters()], lr=1e-2)
    first = None
    for _ in range(30):
        losses = distillation_losses(heads(student), targets)
        total, _ = balancer(losses, student.summary)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        first = first if first is not None else total.item()
    assert total.item() < first
