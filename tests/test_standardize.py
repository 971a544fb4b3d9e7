"""PHI-S standardisation: Hadamard constructions, unit per-dimension variance, exact inverse, state dicts."""

import math

import pytest
import torch

import zoo.standardize as standardize
from zoo.standardize import (PhiS, PhiSEstimator, StandardizerEstimator, TeacherStandardizer, equalizing_rotation,
                             hadamard)
from zoo.teachers import TeacherOutput


def _anisotropic(n: int, c: int, seed: int = 0, offset: float = 3.0) -> torch.Tensor:
    """Correlated vectors whose channel variances span about four orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g) / math.sqrt(c)
    return (torch.randn(n, c, generator=g) @ mix) * torch.logspace(-1, 1, c) + offset


# --------------------------------------------------------------------------- rotations


# 1280 (CLIP ViT-H/14 features: Sylvester 64 x Paley I 20) and 1536 (DINOv2 g/14: 128 x Paley I 12) are real widths
@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 36, 96, 128, 1280, 1536])
def test_hadamard_is_orthogonal_with_equal_magnitude_entries(n):
    h = hadamard(n)
    assert h is not None and h.shape == (n, n) and h.dtype == torch.float64
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full((n, n), 1 / math.sqrt(n), dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 10, 52, 92])
def test_no_hadamard_where_none_is_built(n):
    assert hadamard(n) is None  # 3, 10: none exists; 52, 92: not a Sylvester x Paley order


def test_equalizing_rotation_gives_every_dimension_the_mean():
    lam = torch.tensor([7.0, 5.0, 3.0, 1.0, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    g = equalizing_rotation(lam)
    assert torch.allclose(g @ g.T, torch.eye(10, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(torch.diag(g @ torch.diag(lam) @ g.T), lam.mean().expand(10), atol=1e-12)
    assert torch.equal(equalizing_rotation(torch.full((4,), 2.0)), torch.eye(4, dtype=torch.float64))


# --------------------------------------------------------------------------- one transform


@pytest.mark.parametrize("c, kind", [(64, "hadamard"), (96, "hadamard"), (10, "givens")])
def test_every_dimension_has_variance_one_on_the_estimation_data(c, kind):
    x = _anisotropic(4000, c)
    before = x.var(dim=0)
    assert before.max() / before.min() > 100  # far from unit variance to begin with
    estimator = PhiSEstimator(c)
    for chunk in x.split(1000):  # streaming: four batches
        estimator.update(chunk)
    phis = estimator.finalize()
    assert phis.describe()["rotation"] == kind and int(phis.samples) == 4000
    y = phis(x)
    assert torch.allclose(y.var(dim=0, correction=1), torch.ones(c), atol=1e-4)
    assert torch.allclose(y.mean(dim=0), torch.zeros(c), atol=1e-4)
    # Isotropic, not whitening: one scale for every direction, so distances are only divided by it ...
    pairs = torch.randint(0, 4000, (2, 50), generator=torch.Generator().manual_seed(1))
    d_before = (x[pairs[0]] - x[pairs[1]]).norm(dim=1)
    d_after = (y[pairs[0]] - y[pairs[1]]).norm(dim=1)
    assert torch.allclose(d_after * phis.scale, d_before, rtol=1e-4, atol=1e-4)
    # ... and the scale is sqrt(mean eigenvalue) = sqrt(trace / C) of the covariance
    assert float(phis.scale) ** 2 == pytest.approx(float(x.double().var(dim=0).mean()), rel=1e-6)
    # ... while the covariance stays anisotropic (off-diagonal terms remain)
    cov = torch.cov(y.T.double())
    assert (cov - torch.eye(c, dtype=torch.float64)).abs().max() > 0.1


@pytest.mark.parametrize("c", [12, 10])
def test_inverse_is_exact_on_vectors_and_feature_maps(c):
    x = _anisotropic(600, c, seed=2)
    estimator = PhiSEstimator(c)
    estimator.update(x)
    phis = estimator.finalize()
    assert torch.allclose(phis.inverse(phis(x)), x, rtol=1e-5, atol=1e-5 * x.abs().max().item())
    maps = torch.randn(2, c, 3, 5) * 4 + 1
    assert phis(maps).shape == maps.shape
    assert torch.allclose(phis.inverse(phis(maps)), maps, atol=1e-5)
    # a map is the same transform applied at every location
    assert torch.allclose(phis(maps)[1, :, 2, 4], phis(maps[1, :, 2, 4].unsqueeze(0))[0], atol=1e-6)


def test_feature_maps_every_location_is_a_sample():
    g = torch.Generator().manual_seed(3)
    maps = (torch.randn(8, 12, 6, 6, generator=g).movedim(1, -1) @ torch.randn(12, 12, generator=g)).movedim(-1, 1)
    estimator = PhiSEstimator(12)
    estimator.update(maps[:5])
    estimator.update(maps[5:])
    phis = estimator.finalize()
    assert int(phis.samples) == 8 * 36
    per_channel = phis(maps).movedim(1, -1).reshape(-1, 12).var(dim=0)
    assert torch.allclose(per_channel, torch.ones(12), atol=1e-4)


def test_streaming_sums_are_float64_and_chunked(monkeypatch):
    # offset 1000, unit spread: float32 sums of squares would lose the variance entirely
    x = _anisotropic(3000, 8, seed=4, offset=1000.0)
    whole = PhiSEstimator(8)
    whole.update(x)
    monkeypatch.setattr(standardize, "UPDATE_CHUNK_ROWS", 7)
    chunked = PhiSEstimator(8)
    for part in x.split(311):
        chunked.update(part)
    mean_a, cov_a = whole.covariance()
    mean_b, cov_b = chunked.covariance()
    assert torch.allclose(mean_a, mean_b) and torch.allclose(cov_a, cov_b, rtol=1e-7, atol=1e-7)
    reference = torch.cov(x.double().T)
    assert torch.allclose(cov_a, reference, rtol=1e-6, atol=1e-6 * reference.abs().max().item())


def test_autocast_does_not_touch_the_transform():
    x = _anisotropic(500, 16, seed=5)
    estimator = PhiSEstimator(16)
    estimator.update(x)
    phis = estimator.finalize()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = phis(x)
    assert y.dtype == torch.float32 and torch.equal(y, phis(x))


def test_estimator_and_transform_errors():
    estimator = PhiSEstimator(4)
    with pytest.raises(ValueError, match="at least 2 vectors"):
        estimator.finalize()
    with pytest.raises(ValueError, match="width 4"):
        estimator.update(torch.randn(3, 5))
    estimator.update(torch.randn(10, 4))
    phis = estimator.finalize()
    with pytest.raises(ValueError, match="width 4"):
        phis(torch.randn(2, 3))
    constant = PhiSEstimator(4)
    constant.update(torch.ones(5, 4))
    assert torch.equal(constant.finalize()(torch.ones(2, 4)), torch.zeros(2, 4))  # no division by zero


# --------------------------------------------------------------------------- per teacher


def _outputs(seed: int) -> dict[str, TeacherOutput]:
    g = torch.Generator().manual_seed(seed)
    return {
        "clip": TeacherOutput(torch.randn(16, 12, generator=g) * 5 + 2, torch.randn(16, 20, 3, 3, generator=g) * 0.1),
        "sam": TeacherOutput(None, torch.randn(16, 10, 4, 4, generator=g) * 30 - 7),  # features only
    }


def test_teacher_standardizer_round_trip_and_state_dict(tmp_path):
    estimator = StandardizerEstimator()
    batches = [_outputs(seed) for seed in range(3)]
    for batch in batches:
        estimator.update(batch)
    standardizer = estimator.finalize()
    assert standardizer.names == ["clip", "sam"] and list(standardizer.summary) == ["clip"]
    out = standardizer.standardize(batches[0])
    assert out["sam"].summary is None
    back = standardizer.destandardize(out)
    assert torch.allclose(back["clip"].summary, batches[0]["clip"].summary, atol=1e-5)
    assert torch.allclose(back["sam"].features, batches[0]["sam"].features, atol=1e-4)
    # unit variance per dimension over all the estimation batches, features per location
    feats = torch.cat([standardizer.standardize(b)["sam"].features for b in batches]).movedim(1, -1).reshape(-1, 10)
    assert torch.allclose(feats.var(dim=0), torch.ones(10), atol=1e-4)
    description = standardizer.describe()
    assert description["sam"]["summary"] is None and description["clip"]["summary"]["samples"] == 48
    assert description["clip"]["features"] == {"dim": 20, "samples": 48 * 9, "scale": pytest.approx(0.1, rel=0.2),
                                                "rotation": "hadamard"}
    # plain tensors, loadable weights-only, rebuilt without knowing the teachers beforehand
    path = tmp_path / "phis.pt"
    torch.save(standardizer.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "features.sam.rotation" in state and "summary.sam.mean" not in state
    loaded = TeacherStandardizer.from_state_dict(state)
    again = loaded.standardize(batches[1])
    expected = standardizer.standardize(batches[1])
    assert torch.equal(again["clip"].summary, expected["clip"].summary)
    assert torch.equal(again["sam"].features, expected["sam"].features)
    assert isinstance(loaded.features["sam"], PhiS) and loaded.features["sam"].describe()["rotation"] == "givens"


def test_teacher_standardizer_errors():
    estimator = StandardizerEstimator()
    with pytest.raises(ValueError, match="no teacher outputs"):
        estimator.finalize()
    estimator.update(_outputs(0))
    standardizer = estimator.finalize()
    with pytest.raises(ValueError, match="no PHI-S statistics for teachers \\['dinov2'\\]"):
        standardizer.standardize({"dinov2": TeacherOutput(torch.randn(2, 4), torch.randn(2, 4, 1, 1))})
    with pytest.raises(ValueError, match="has a summary but no PHI-S summary"):
        standardizer.standardize({"sam": TeacherOutput(torch.randn(2, 3), torch.randn(2, 10, 1, 1))})
    with pytest.raises(ValueError, match="unexpected keys"):
        TeacherStandardizer.from_state_dict({"weights": torch.zeros(1)})
    with pytest.raises(ValueError, match="lacks"):
        TeacherStandardizer.from_state_dict({"features.clip.mean": torch.zeros(3)})

