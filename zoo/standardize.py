"""PHI-S: isotropic standardisation of teacher outputs (Ranzinger et al., arXiv 2410.01680).

Per teacher, the summary vectors and the feature vectors (each location of
the feature map one sample) get their own transform, estimated once over a
pass of N batches before training::

    y' = R (y - mu) / s,     R = H U^T,     s = sqrt(mean eigenvalue of Sigma)

with ``mu``/``Sigma`` the mean and covariance of the teacher's outputs,
``Sigma = U diag(lambda) U^T``, and ``H`` a normalised Hadamard matrix
(entries ``+-1/sqrt(C)``). Why it works: ``U^T`` decorrelates (covariance
``diag(lambda)``), and because every entry of ``H`` has the same magnitude,
the rotated covariance ``H diag(lambda) H^T`` has every diagonal entry equal
to ``sum(lambda) / C``, the mean eigenvalue. Dividing by its square root gives
**every output dimension variance exactly 1** on the estimation data. The
covariance is not the identity (this is not whitening: one scale for all
dimensions, so the transform is isotropic -- distances are only scaled by
``1/s`` -- and a low-rank teacher is not blown up). The transform is
orthogonal up to the scale, so the inverse is exact:
``y = s R^T y' + mu``.

Sizes: a Hadamard matrix of order C exists only for C = 1, 2 or a multiple
of 4. :func:`hadamard` builds one, when it can, as a Kronecker product of a
Sylvester matrix (order 2^k) and a Paley matrix (type I: order q+1, q prime
= 3 mod 4; type II: order 2(q+1), q prime = 1 mod 4). That covers every
width of the teachers used here (64, 96, 128, 256, 384, 768, 1024, 1152,
1280, 1536, ...). For any other C (e.g. 10, or a multiple of 4 with no such
factorisation), no matrix with equal-magnitude entries is built; instead
``H`` is replaced by a product of at most C-1 Givens rotations chosen so
that every diagonal entry of the rotated covariance equals the mean
eigenvalue (the constructive Schur-Horn argument: rotating a pair of
dimensions, one above and one below the mean, moves one of them exactly onto
the mean). It keeps the two properties PHI-S uses H for -- orthogonality
(exact inverse, isotropic scale) and equal per-dimension variance -- on the
estimation data. Padding to the next power of two was rejected: keeping the
first C rows of a larger Hadamard matrix is not orthogonal, and keeping all
rows changes the teacher's width (the heads would predict more channels
than the teacher has).

API (used by distillation, the teacher cache and loading):

* :class:`PhiSEstimator` ``(dim)``: ``update(x)`` with ``x`` ``[N, C]`` or
  ``[B, C, h, w]`` (float64 sums of ``x`` and ``x x^T``, on ``x``'s device),
  ``all_reduce()`` under torch.distributed, ``finalize() -> PhiS``;
* :class:`PhiS` (an ``nn.Module`` of buffers): ``forward(y)`` /
  ``inverse(y)`` on ``[B, C]`` or ``[B, C, h, w]`` (channels at dim 1),
  ``PhiS.from_state_dict(state)``;
* :class:`TeacherStandardizer`: a summary and a features :class:`PhiS` per
  teacher (no summary transform for a features-only teacher such as SAM):
  ``standardize(outputs)`` / ``destandardize(outputs)`` on
  ``{name: TeacherOutput}``, ``state_dict()`` (plain tensors, loadable with
  ``torch.load(weights_only=True)``), ``TeacherStandardizer.from_state_dict``,
  ``describe()`` for the run record;
* :class:`StandardizerEstimator`: ``update({name: TeacherOutput})`` per batch,
  ``all_reduce()``, ``finalize() -> TeacherStandardizer``.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from zoo.teachers import TeacherOutput

ROTATION_HADAMARD, ROTATION_GIVENS = 0, 1
ROTATION_NAMES = {ROTATION_HADAMARD: "hadamard", ROTATION_GIVENS: "givens"}
UPDATE_CHUNK_ROWS = 65536  # rows per float64 outer-product update (bounds the float64 copy of a batch)
MIN_VARIANCE = 1e-12  # floor of the mean eigenvalue (a constant teacher output would divide by 0)
PHIS_BUFFERS = ("mean", "rotation", "scale", "eigenvalues", "samples", "rotation_kind")
PARTS = ("summary", "features")


# --------------------------------------------------------------------------- rotations


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(math.isqrt(n)) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    """``Q[i, j] = chi(j - i)`` over GF(q), q prime (chi: the quadratic character, chi(0) = 0)."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=np.int64)
    idx = np.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _paley_type1(q: int) -> np.ndarray:
    """Hadamard matrix of order ``q + 1`` for a prime ``q = 3 (mod 4)``: ``I + S``, S skew."""
    n = q + 1
    s = np.zeros((n, n), dtype=np.int64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
    return np.eye(n, dtype=np.int64) + s


def _paley_type2(q: int) -> np.ndarray:
    """Hadamard matrix of order ``2 (q + 1)`` for a prime ``q = 1 (mod 4)``."""
    n = q + 1
    c = np.zeros((n, n), dtype=np.int64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
    # each 0 of C becomes [[1, -1], [-1, -1]], each +-1 becomes +-[[1, 1], [1, -1]]
    return np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(np.eye(n, dtype=np.int64), np.array([[1, -1], [-1, -1]]))


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


@functools.lru_cache(maxsize=16)
def _hadamard_int(n: int) -> np.ndarray | None:
    k = 1
    while n % k == 0:
        m = n // k
        core = None
        if m == 1:
            core = np.ones((1, 1), dtype=np.int64)
        elif m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3:
            core = _paley_type1(m - 1)
        elif m % 4 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
            core = _paley_type2(m // 2 - 1)
        if core is not None:
            return np.kron(_sylvester(k), core)
        k *= 2
    return None


def hadamard(n: int) -> torch.Tensor | None:
    """A normalised Hadamard matrix of order ``n`` (float64, ``H H^T = I``), or None when not built here.

    Sylvester (order 2^k) times Paley type I/II (see the module docstring).
    """
    if n < 1:
        raise ValueError(f"matrix order must be at least 1, got {n}")
    h = _hadamard_int(int(n))
    return None if h is None else torch.from_numpy(h.astype(np.float64) / math.sqrt(n))


def equalizing_rotation(eigenvalues: torch.Tensor) -> torch.Tensor:
    """An orthogonal ``G`` (float64) with every diagonal entry of ``G diag(eigenvalues) G^T`` equal to their mean.

    At most ``C - 1`` Givens rotations, each in the plane of one dimension above
    the mean and one below, turned so that the one above lands exactly on the
    mean (the pair's trace is kept, so the other takes the rest).
    """
    lam = eigenvalues.detach().to("cpu", torch.float64).numpy()
    n = lam.shape[0]
    a, g = np.diag(lam), np.eye(n)
    target = float(lam.mean())
    tol = 1e-12 * max(abs(target), float(np.abs(lam).max(initial=0.0)), MIN_VARIANCE)
    for _ in range(n):
        d = np.diag(a)
        i, j = int(np.argmax(d)), int(np.argmin(d))
        if d[i] - target <= tol or target - d[j] <= tol:
            break
        half_gap, x = (a[i, i] - a[j, j]) / 2, a[i, j]
        r, phi = math.hypot(half_gap, x), math.atan2(x, half_gap)
        theta = (phi + math.acos(max(-1.0, min(1.0, (target - (a[i, i] + a[j, j]) / 2) / r)))) / 2
        c, s = math.cos(theta), math.sin(theta)
        rot = np.array([[c, s], [-s, c]])  # new e_i = c e_i + s e_j, new e_j = -s e_i + c e_j
        a[[i, j], :] = rot @ a[[i, j], :]
        a[:, [i, j]] = a[:, [i, j]] @ rot.T
        g[[i, j], :] = rot @ g[[i, j], :]
        a[i, i] = target  # exact by construction; drop the rounding
    return torch.from_numpy(g)


# --------------------------------------------------------------------------- one transform


def _channels_last(y: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    if y.ndim < 2:
        raise ValueError(f"expected [B, C] or [B, C, h, w], got shape {tuple(y.shape)}")
    return y.movedim(dim, -1), dim


class PhiS(nn.Module):
    """``y' = R (y - mean) / scale`` and its exact inverse, on channels at ``dim`` (default 1).

    Buffers (all plain tensors): ``mean`` [C], ``rotation`` R [C, C] (orthogonal),
    ``scale`` (0-d, sqrt of the mean eigenvalue), ``eigenvalues`` [C] (ascending,
    for diagnostics), ``samples`` (0-d int64: vectors the statistics came from),
    ``rotation_kind`` (0-d int64: 0 Hadamard, 1 Givens). Computation is float32
    with autocast off; outputs are float32.
    """

    def __init__(self, mean: torch.Tensor, rotation: torch.Tensor, scale: torch.Tensor | float,
                 eigenvalues: torch.Tensor | None = None, samples: int | torch.Tensor = 0,
                 rotation_kind: int | torch.Tensor = ROTATION_HADAMARD) -> None:
        super().__init__()
        dim = int(mean.shape[0])
        if mean.ndim != 1 or tuple(rotation.shape) != (dim, dim):
            raise ValueError(f"PHI-S needs mean [C] and rotation [C, C], got {tuple(mean.shape)} and "
                             f"{tuple(rotation.shape)}")
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("rotation", rotation.detach().to(torch.float32).clone())
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).detach().clone().reshape(()))
        eig = torch.zeros(dim) if eigenvalues is None else eigenvalues.detach()
        self.register_buffer("eigenvalues", eig.to(torch.float32).clone())
        self.register_buffer("samples", torch.as_tensor(samples, dtype=torch.int64).clone().reshape(()))
        self.register_buffer("rotation_kind", torch.as_tensor(rotation_kind, dtype=torch.int64).clone().reshape(()))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, scale={float(self.scale):.4g}, samples={int(self.samples)}, "
                f"rotation={ROTATION_NAMES.get(int(self.rotation_kind), '?')}")

    def _check(self, y: torch.Tensor, dim: int) -> None:
        if y.ndim < 2 or y.shape[dim] != self.dim:
            raise ValueError(f"PHI-S transform of width {self.dim} got shape {tuple(y.shape)} (channels at dim {dim})")

    def forward(self, y: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Teacher space -> standardised space."""
        self._check(y, dim)
        with torch.autocast(y.device.type, enabled=False):
            x = y.float().movedim(dim, -1)
            out = ((x - self.mean) @ self.rotation.T) / self.scale
        return out.movedim(-1, dim)

    def inverse(self, y: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Standardised space -> teacher space (exact: R is orthogonal)."""
        self._check(y, dim)
        with torch.autocast(y.device.type, enabled=False):
            x = y.float().movedim(dim, -1)
            out = (x * self.scale) @ self.rotation + self.mean
        return out.movedim(-1, dim)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], prefix: str = "") -> "PhiS":
        """A transform from its ``state_dict()`` (keys optionally under ``prefix``)."""
        missing = [k for k in PHIS_BUFFERS if prefix + k not in state]
        if missing:
            raise ValueError(f"PHI-S state lacks {', '.join(prefix + k for k in missing)}")
        return cls(*(state[prefix + k] for k in PHIS_BUFFERS))

    def describe(self) -> dict[str, object]:
        return {"dim": self.dim, "samples": int(self.samples), "scale": float(self.scale),
                "rotation": ROTATION_NAMES.get(int(self.rotation_kind), "?")}


class PhiSEstimator:
    """Streaming mean and covariance of ``C``-dim vectors (float64 sums), then :meth:`finalize`.

    ``update`` takes ``[N, C]`` or ``[B, C, h, w]`` (every location one vector);
    the sums live on the first input's device (CPU for MPS, which has no float64).
    The covariance is the unbiased ``(sum x x^T - n mu mu^T) / (n - 1)``.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"PHI-S needs a width of at least 1, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        if x.ndim == 4:
            x = x.movedim(1, -1).reshape(-1, x.shape[1])
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"PHI-S estimator of width {self.dim} got shape {tuple(x.shape)}")
        x = x.detach()
        if self.total is None:
            device = x.device if x.device.type != "mps" else torch.device("cpu")
            self.total = torch.zeros(self.dim, dtype=torch.float64, device=device)
            self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)
        for start in range(0, x.shape[0], UPDATE_CHUNK_ROWS):
            rows = x[start:start + UPDATE_CHUNK_ROWS].to(self.total.device, torch.float64)
            self.total += rows.sum(0)
            self.outer += rows.T @ rows
        self.count += int(x.shape[0])

    def all_reduce(self) -> None:
        """Sum the statistics over torch.distributed ranks (every rank must have updated at least once)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.total is None:
            raise ValueError("PHI-S statistics: this rank saw no data before all_reduce")
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.total.device)
        for t in (count, self.total, self.outer):
            dist.all_reduce(t)
        self.count = int(count.item())

    def covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean [C], covariance [C, C])`` in float64 on the CPU."""
        if self.count < 2 or self.total is None:
            raise ValueError(f"PHI-S statistics need at least 2 vectors, got {self.count}")
        n = self.count
        mean = (self.total / n).cpu()
        cov = (self.outer.cpu() - n * torch.outer(mean, mean)) / (n - 1)
        return mean, (cov + cov.T) / 2

    def finalize(self) -> PhiS:
        mean, cov = self.covariance()
        eigenvalues, vectors = torch.linalg.eigh(cov)
        eigenvalues = eigenvalues.clamp_min(0.0)  # tiny negative values are rounding
        h = hadamard(self.dim)
        if h is not None:
            rotation, kind = h @ vectors.T, ROTATION_HADAMARD
        else:
            rotation, kind = equalizing_rotation(eigenvalues) @ vectors.T, ROTATION_GIVENS
        scale = math.sqrt(max(float(eigenvalues.mean()), MIN_VARIANCE))
        return PhiS(mean, rotation, scale, eigenvalues, self.count, kind)


# --------------------------------------------------------------------------- per teacher


class TeacherStandardizer(nn.Module):
    """Summary and features :class:`PhiS` per teacher name (no summary transform for features-only teachers).

    ``state_dict`` keys: ``summary.<teacher>.<buffer>`` and ``features.<teacher>.<buffer>``.
    """

    def __init__(self, summary: Mapping[str, PhiS], features: Mapping[str, PhiS]) -> None:
        super().__init__()
        extra = set(summary) - set(features)
        if extra:
            raise ValueError(f"summary transforms for teachers without a features transform: {sorted(extra)}")
        self.summary = nn.ModuleDict(dict(summary))
        self.features = nn.ModuleDict(dict(features))

    @property
    def names(self) -> list[str]:
        return list(self.features)

    def _transform(self, outputs: Mapping[str, TeacherOutput], inverse: bool) -> dict[str, TeacherOutput]:
        unknown = set(outputs) - set(self.features)
        if unknown:
            raise ValueError(f"no PHI-S statistics for teachers {sorted(unknown)}; have {self.names}")
        result = {}
        for name, out in outputs.items():
            feats = self.features[name]
            features = feats.inverse(out.features) if inverse else feats(out.features)
            summary = out.summary
            if summary is not None:
                if name not in self.summary:
                    raise ValueError(f"teacher '{name}' has a summary but no PHI-S summary statistics")
                summary = self.summary[name].inverse(summary) if inverse else self.summary[name](summary)
            result[name] = TeacherOutput(summary, features)
        return result

    def standardize(self, outputs: Mapping[str, TeacherOutput]) -> dict[str, TeacherOutput]:
        """Teacher outputs (or predictions in teacher space) -> standardised space."""
        return self._transform(outputs, inverse=False)

    def destandardize(self, outputs: Mapping[str, TeacherOutput]) -> dict[str, TeacherOutput]:
        """Standardised predictions (the heads' outputs) -> each teacher's own space."""
        return self._transform(outputs, inverse=True)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "TeacherStandardizer":
        """Rebuild from ``state_dict()`` (e.g. after ``torch.load(..., weights_only=True)``)."""
        parts: dict[str, dict[str, PhiS]] = {part: {} for part in PARTS}
        names = {(key.split(".")[0], key.split(".")[1]) for key in state if key.count(".") == 2}
        bad = [k for k in state if k.count(".") != 2 or k.split(".")[0] not in PARTS]
        if bad:
            raise ValueError(f"not a PHI-S standardizer state: unexpected keys {bad[:3]}")
        for part, name in sorted(names):
            parts[part][name] = PhiS.from_state_dict(state, f"{part}.{name}.")
        return cls(parts["summary"], parts["features"])

    def describe(self) -> dict[str, dict[str, object]]:
        """Per teacher, what the record should say (samples, scale, rotation) for summary and features."""
        return {name: {"summary": self.summary[name].describe() if name in self.summary else None,
                       "features": self.features[name].describe()} for name in self.names}


class StandardizerEstimator:
    """Statistics for a :class:`TeacherStandardizer`: ``update`` with each batch of teacher outputs."""

    def __init__(self) -> None:
        self.summary: dict[str, PhiSEstimator] = {}
        self.features: dict[str, PhiSEstimator] = {}

    def update(self, outputs: Mapping[str, TeacherOutput]) -> None:
        for name, out in outputs.items():
            self.features.setdefault(name, PhiSEstimator(out.features.shape[1])).update(out.features)
            if out.summary is not None:
                self.summary.setdefault(name, PhiSEstimator(out.summary.shape[1])).update(out.summary)

    def all_reduce(self) -> None:
        for name in sorted(self.features):  # the same order on every rank
            self.features[name].all_reduce()
            if name in self.summary:
                self.summary[name].all_reduce()

    def finalize(self) -> TeacherStandardizer:
        if not self.features:
            raise ValueError("PHI-S statistics: no teacher outputs were given")
        return TeacherStandardizer({k: v.finalize() for k, v in self.summary.items()},
                                   {k: v.finalize() for k, v in self.features.items()})
