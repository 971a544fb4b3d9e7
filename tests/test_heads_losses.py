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
    has_summary,
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


def test_match_grids_same_grid_and_nested_non_square_grids():
    a, b = torch.randn(1, 2, 6, 9), torch.randn(1, 2, 6, 9)
    s, t = match_grids(a, b)
    assert s is a and t is b
    # 12x18 contains 6x9 (and 6x18): only the smaller map is resized, bilinearly
    big = torch.randn(1, 2, 12, 18)
    for small in (torch.randn(1, 2, 6, 9), torch.randn(1, 2, 6, 18)):
        s, t = match_grids(small, big)
        assert t is big
        assert torch.allclose(s, F.interpolate(small, size=(12, 18), mode="bilinear", align_corners=False))
        t, s = match_grids(big, small)
        assert t is big and s.shape == (1, 2, 12, 18)


def test_match_grids_neither_contains_the_other_resizes_only_the_smaller_map():
    # 4x16 (64 locations) vs 8x6 (48): the target is 4x16, the teacher map alone is resized:
    # its height shrinks 8 -> 4 (area: mean of row pairs), its width grows 6 -> 16 (bilinear)
    student, teacher = torch.randn(1, 3, 4, 16), torch.randn(1, 3, 8, 6)
    s, t = match_grids(student, teacher)
    assert s is student and t.shape == (1, 3, 4, 16)
    rows = (teacher[:, :, 0::2] + teacher[:, :, 1::2]) / 2
    assert torch.allclose(t, F.interpolate(rows, size=(4, 16), mode="bilinear", align_corners=False), atol=1e-6)
    # either order of the two resizes gives the same map (separable axes)
    cols_first = F.interpolate(teacher, size=(8, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(t, F.avg_pool2d(cols_first, (2, 1)), atol=1e-6)
    # the other way round (student smaller): the student is resized, the teacher untouched
    s, t = match_grids(teacher, student)
    assert t is student and s.shape == (1, 3, 4, 16)


def test_match_grids_tie_keeps_the_teacher_grid():
    # 14x10 vs 10x14: the same number of locations -> the teacher (second map) keeps its grid
    student, teacher = torch.randn(2, 4, 14, 10), torch.randn(2, 4, 10, 14)
    s, t = match_grids(student, teacher)
    assert t is teacher and s.shape == (2, 4, 10, 14)
    expected = F.interpolate(F.interpolate(student, size=(10, 10), mode="area"), size=(10, 14), mode="bilinear",
                             align_corners=False)
    assert torch.allclose(s, expected, atol=1e-6)
    # a map that is constant along the shrinking axis and linear along the growing one is resampled exactly
    ramp = torch.linspace(0, 1, 10).view(1, 1, 1, 10).expand(1, 1, 14, 10)
    s, _ = match_grids(ramp, torch.zeros(1, 1, 10, 14))
    assert torch.allclose(s[0, 0, 3], s[0, 0, 7]) and s[0, 0, 0, 0] == 0 and s[0, 0, 0, -1] == 1


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


def test_losses_per_image_hand_values_and_their_mean():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-3.0, 0.0]])
    assert summary_loss(student, teacher, reduction="none").tolist() == pytest.approx([1.0, 0.0, 2.0], abs=1e-6)
    # image 0 of the hand case of test_feature_loss_hand_values, image 1: an exact match (loss 0)
    s0 = torch.tensor([[1.0, 3.0], [0.0, 0.5]]).view(1, 2, 1, 2)
    t0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 2, 1, 2)
    student_f, teacher_f = torch.cat([s0, t0]), torch.cat([t0, t0])
    image0 = 0.9 * (1.0 + (1 - 3 / math.sqrt(9.25))) / 2 + 0.1 * (0.5 + 0.5 + 1.5 + 0.125) / 4
    per_image = feature_loss(student_f, teacher_f, reduction="none")
    assert per_image.tolist() == pytest.approx([image0, 0.0], abs=1e-6)
    assert feature_loss(student_f, teacher_f).item() == pytest.approx(image0 / 2, rel=1e-6)
    # across grids: each image's value is its own, and their mean is the batch loss
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 8, 8)
    per_image = feature_loss(a, b, reduction="none")
    assert per_image.shape == (3,)
    assert per_image[1].item() == pytest.approx(feature_loss(a[1:2], b[1:2]).item(), rel=1e-6)
    assert per_image.mean().item() == pytest.approx(feature_loss(a, b).item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        summary_loss(student, teacher, reduction="sum")


def test_distillation_losses_per_image_keys_and_weights():
    torch.manual_seed(2)
    pred = {"clip": TeacherOutput(torch.randn(3, 8), torch.randn(3, 6, 4, 4))}
    target = {"clip": TeacherOutput(torch.randn(3, 8), torch.randn(3, 6, 8, 8))}
    means = distillation_losses(pred, target, summary_weights={"clip": 2.0})
    per_image = distillation_losses(pred, target, summary_weights={"clip": 2.0}, reduction="none")
    assert list(per_image) == list(means) and all(v.shape == (3,) for v in per_image.values())
    for key in means:
        assert per_image[key].mean().item() == pytest.approx(means[key].item(), rel=1e-6)


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
    per_image = {name: torch.tensor([v - 0.1, v + 0.1, v]) for name, v in zip(TERMS, (0.5, 1.5, 2.0, 0.25))}
    total, weights = balancer(per_image, torch.randn(3, 4))
    assert weights == pytest.approx({name: 1.0 for name in TERMS})
    assert total.item() == pytest.approx(4.25 + 4 * math.log(2.0), rel=1e-6)  # softplus(0) = ln 2


def _softplus(x):
    return math.log1p(math.exp(x))


def test_uncertainty_balancer_matches_eq6_per_image_with_hand_set_b():
    """Eq. 6 with b = b(x'): each image weighted by its own b, then the mean over images."""
    balancer = LossBalancer("uncertainty", TERMS[:2], summary_dim=3)
    with torch.no_grad():
        balancer.log_variance.bias.copy_(torch.tensor([0.5, -1.0]))
        balancer.log_variance.weight.zero_()
        balancer.log_variance.weight[0, 0] = 1.0  # b_summary(x_i) = 0.5 + summary[i, 0]
        balancer.log_variance.weight[1, 2] = 0.5  # b_features(x_i) = -1 + 0.5 * summary[i, 2]
    summary = torch.tensor([[-0.7, 9.0, 2.0], [1.3, -9.0, -2.0]])
    losses = {"clip/summary": torch.tensor([2.0, 0.5]), "clip/features": torch.tensor([3.0, 1.0])}
    total, weights = balancer(losses, summary)
    b = [(-0.2, 0.0), (1.8, -2.0)]  # (b_summary, b_features) of images 0 and 1
    per_image = [math.exp(-bs) * ls + _softplus(bs) + math.exp(-bf) * lf + _softplus(bf)
                 for (bs, bf), ls, lf in zip(b, (2.0, 0.5), (3.0, 1.0))]
    expected = sum(per_image) / 2
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert float(weights["clip/summary"]) == pytest.approx((math.exp(0.2) + math.exp(-1.8)) / 2, rel=1e-6)
    assert float(weights["clip/features"]) == pytest.approx((1.0 + math.exp(2.0)) / 2, rel=1e-6)
    # The old formula (b and L averaged over the batch first) gives a different number here.
    b_mean = [(-0.2 + 1.8) / 2, (0.0 - 2.0) / 2]
    old = sum(math.exp(-bm) * lm + _softplus(bm) for bm, lm in zip(b_mean, (1.25, 2.0)))
    assert abs(old - expected) / expected > 0.05  # 8% here
    total.backward()
    assert balancer.log_variance.bias.grad.abs().sum() > 0  # b is learned
    assert balancer.log_variance.weight.grad[1, 2] != 0  # through each image's own b


def test_uncertainty_balancer_refuses_batch_mean_terms_for_a_batch():
    balancer = LossBalancer("uncertainty", TERMS[:2], summary_dim=3)
    scalars = {"clip/summary": torch.tensor(2.0), "clip/features": torch.tensor(3.0)}
    with pytest.raises(ValueError, match="per-image loss terms of length 2"):
        balancer(scalars, torch.randn(2, 3))
    total, _ = balancer(scalars, torch.zeros(1, 3))  # one image: a scalar is that image's value
    assert total.item() == pytest.approx(5.0 + 2 * math.log(2.0), rel=1e-6)
    with pytest.raises(ValueError, match="all be scalars or all"):
        balancer({"clip/summary": torch.tensor(2.0), "clip/features": torch.ones(2)}, torch.randn(2, 3))


@pytest.mark.parametrize("method", ["naive", "adaloss"])
def test_naive_and_adaloss_give_the_same_result_from_per_image_terms(method):
    torch.manual_seed(3)
    per_image = {name: torch.rand(5) * 3 for name in TERMS}
    means = {name: v.mean() for name, v in per_image.items()}
    a, b = LossBalancer(method, TERMS, summary_dim=4), LossBalancer(method, TERMS, summary_dim=4)
    for _ in range(3):  # adaloss: the EMA state evolves identically too
        total_a, weights_a = a(per_image)
        total_b, weights_b = b(means)
        assert total_a.item() == pytest.approx(total_b.item(), rel=1e-6)
        assert weights_a == pytest.approx(weights_b, rel=1e-6)
    expected = sum(v.item() for v in means.values()) if method == "naive" else 4.0  # adaloss: every λL is 1 at step 1
    assert LossBalancer(method, TERMS, summary_dim=4)(per_image)[0].item() == pytest.approx(expected, rel=1e-6)


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
    assert float(weights["clip/summary"]) == pytest.approx(1 / expected_e, rel=1e-5)
    assert float(weights["clip/features"]) == pytest.approx(1 / 8.0, rel=1e-5)
    assert total.item() == pytest.approx(4.0 / expected_e + 1.0, rel=1e-5)
    # the EMA is a checkpointed buffer; eval mode reads it without updating
    state = balancer.state_dict()
    assert set(state) == {"loss_ema", "loss_steps"}
    restored = LossBalancer("adaloss", TERMS[:2], summary_dim=4)
    restored.load_state_dict(state)
    restored.eval()
    _, eval_weights = restored({"clip/summary": torch.tensor(100.0)})
    assert float(eval_weights["clip/summary"]) == pytest.approx(1 / expected_e, rel=1e-5)
    assert torch.equal(restored.loss_steps, torch.tensor([2, 2]))


def test_balancer_rejects_unknown_methods_and_terms():
    with pytest.raises(ConfigError, match="naive, uncertainty, adaloss"):
        LossBalancer("gradnorm", TERMS, summary_dim=4)
    # every advertised method builds a working balancer, and at initialisation each weights every term by 1
    for method in BALANCING_METHODS:
        _, weights = LossBalancer(method, TERMS, summary_dim=4)(_losses(2.0, 0.5, 4.0, 1.0), torch.zeros(1, 4))
        expected = [1.0] * 4 if method != "adaloss" else [0.5, 2.0, 0.25, 1.0]
        assert list(weights.values()) == pytest.approx(expected)
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
        losses = distillation_losses(heads(student), targets, reduction="none")
        total, _ = balancer(losses, student.summary)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        first = first if first is not None else total.item()
    assert total.item() < first


# ------------------------------------------------------------ features-only teachers (SAM)


def test_teacher_without_summary_has_no_summary_head_and_no_summary_term():
    teachers = [TeacherDims("clip", 6, 5), TeacherDims("sam", 0, 4)]
    assert not has_summary(teachers[1]) and has_summary(teachers[0]) and has_summary("sam")
    heads = AdaptorHeads(8, 3, teachers)
    assert list(heads.summary_heads) == ["clip"] and list(heads.feature_heads) == ["clip", "sam"]
    assert heads.hidden_dim == 6
    out = heads(BackboneOutput(torch.randn(2, 8), torch.randn(2, 3, 2, 2)))
    assert out["sam"].summary is None and out["sam"].features.shape == (2, 4, 2, 2)
    # a fake SAM teacher output: features, no summary
    targets = {"clip": TeacherOutput(torch.randn(2, 6), torch.randn(2, 5, 2, 2)),
               "sam": TeacherOutput(None, torch.randn(2, 4, 4, 4))}
    losses = distillation_losses(out, targets)
    assert list(losses) == ["clip/summary", "clip/features", "sam/features"]
    assert list(losses) == loss_term_names(teachers)
    assert loss_term_names(["clip", "sam"]) != list(losses)  # names alone cannot know SAM has no summary
    per_image = distillation_losses(out, targets, reduction="none")
    balancer = LossBalancer("uncertainty", loss_term_names(teachers), summary_dim=8)
    total, weights = balancer(per_image, torch.randn(2, 8))
    assert list(weights) == ["clip/summary", "clip/features", "sam/features"] and torch.isfinite(total)
    total.backward()
    assert heads.feature_heads["sam"].fc2.weight.grad.abs().sum() > 0  # SAM still trains its feature head


def test_summary_weight_for_a_teacher_without_summary_is_a_config_error():
    teachers = [TeacherDims("clip", 6, 5), TeacherDims("sam", 0, 4)]
    assert loss_term_names(teachers, {"sam": 0.0}) == ["clip/summary", "clip/features", "sam/features"]
    with pytest.raises(ConfigError, match=r"loss\.summary_weights\.sam.*has no summary"):
        loss_term_names(teachers, {"sam": 1.0})
    pred = {"sam": TeacherOutput(None, torch.randn(1, 4, 2, 2))}
    with pytest.raises(ConfigError, match="has no summary"):
        distillation_losses(pred, {"sam": TeacherOutput(None, torch.randn(1, 4, 2, 2))}, summary_weights={"sam": 0.5})


def test_teacher_objects_saying_has_summary_false():
    class FakeSam:
        name, summary_dim, feature_dim, has_summary = "sam", 0, 4, False

    heads = AdaptorHeads(8, 3, [FakeSam()])
    assert not heads.summary_heads and heads.teachers[0] == TeacherDims("sam", 0, 4)
    assert loss_term_names([FakeSam()]) == ["sam/features"]
    with pytest.raises(ConfigError, match="feature_dim >= 1"):
        AdaptorHeads(8, 3, [TeacherDims("x", 4, 0)])
