"""Model-guided multi-objective sampling (``--sampler guided``, the multi-objective default).

A zoo search trial is expensive (a proxy distillation) but a candidate's *cost*
is cheap to describe: its weights and multiply-adds follow from the
architecture's formulas (``SearchSpace.descriptors``, no build). The guided
sampler uses that. After ``n_startup_trials`` random (or enqueued) trials it,
for each new trial:

1. fits one regressor per objective (``model``: a Gaussian process by default,
   see :func:`fit_model`) on the trials so far, with the parameters and the
   descriptors as features (and, with multi-fidelity rungs, the steps each
   result was taken at); maximised objectives that are positive (throughput)
   are modelled as ``-log``, so both are minimised;
2. draws a pool of candidates: uniformly random ones and the neighbours (one
   parameter changed) of the current front's members, then, for a few rounds,
   the neighbours of the best-scoring candidates (a local search on the models);
3. predicts each candidate's objectives, optimistically (mean minus ``kappa``
   times the predictive standard deviation), and proposes the candidate
   whose optimistic point adds the most hypervolume to the front of the
   finished trials (at the last rung) plus the running ones (their predicted points, so parallel
   workers do not propose the same region). When no candidate adds any, the
   most uncertain one is explored.

The figures behind making it the default (hypervolume against random sampling,
NSGA-II, TPE, NSGA-III and GP at 40 trials) are in ``benchmarks/search_efficiency.py``
and the README. Parameters it is not asked for (a per-resolution window of a
resolution the trial did not pick) are ignored by Optuna; anything outside the
relative space falls back to random sampling.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from zoo.errors import ZooError
from zoo.search.attrs import FIDELITY_ATTR, rung_attr
from zoo.search.space import CATEGORICAL, SearchSpace

DEFAULT_STARTUP_TRIALS = 10
DEFAULT_POOL = 256
DEFAULT_KAPPA = 1.0
MODELS = ("gp", "trees", "linear")
DEFAULT_MODEL = "gp"
LOCAL_ROUNDS = 3  # rounds of neighbourhood search on the models per proposal
LEADERS = 8  # best candidates whose neighbourhoods each round explores


def _encode(value: Any, choices: Sequence[Any] | None) -> float:
    """A parameter value as one number: itself when numeric, else its index among the choices."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if choices is not None and value in choices:
        return float(list(choices).index(value))
    return -1.0


class GuidedSampler(optuna.samplers.BaseSampler):
    """See the module docstring; ``space`` is the study's :class:`~zoo.search.space.SearchSpace`."""

    def __init__(self, space: SearchSpace, seed: int | None = None,
                 n_startup_trials: int = DEFAULT_STARTUP_TRIALS, pool_size: int = DEFAULT_POOL,
                 kappa: float = DEFAULT_KAPPA, model: str = DEFAULT_MODEL) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        self.space = space
        self.model = model
        self.n_startup_trials = n_startup_trials
        self.pool_size = pool_size
        self.kappa = kappa
        self._rng = random.Random(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._choices = {p.name: (p.choices if p.kind == CATEGORICAL else None) for p in space.params}
        self._names = [p.name for p in space.params]
        self._descriptor_cache: dict[tuple, list[float]] = {}

    def reseed_rng(self) -> None:
        self._rng = random.Random()
        self._random.reseed_rng()

    # -------------------------------------------------------------- optuna hooks

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.space.params}

    def sample_relative(self, study: Any, trial: Any, search_space: Mapping[str, Any]) -> dict[str, Any]:
        if not search_space:
            return {}
        examples = self.examples(study)
        if len(examples) < self.n_startup_trials:
            return {}
        running = [t.params for t in study._get_trials(deepcopy=False, states=(TrialState.RUNNING,), use_cache=True)
                   if t.number != trial.number and self._complete_params(t.params)]
        return self.propose(examples, running, list(study.directions), _final_steps(study, examples))

    def examples(self, study: Any) -> list[Example]:
        """What the models learn from: each COMPLETE trial's values, and with multi-fidelity rungs each
        trial's values at the highest rung it reached (PRUNED ones too: most trials stop at a low rung)."""
        out = []
        for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True):
            if "skipped" in t.user_attrs or not self._complete_params(t.params):
                continue
            rungs = [t.user_attrs[name] for name in _rung_names(t.user_attrs)]
            if rungs:
                top = max(rungs, key=lambda entry: entry["steps"])
                out.append(Example(t.params, tuple(top["values"]), int(top["steps"]),
                                   bool(top.get("feasible", True)) and _feasible(t)))
            elif t.state == TrialState.COMPLETE and t.values is not None:
                out.append(Example(t.params, tuple(t.values), None, _feasible(t)))
        return out

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    # -------------------------------------------------------------- the model

    def _complete_params(self, params: Mapping[str, Any]) -> bool:
        try:
            self.space.params_to_candidate(params)
        except (ZooError, KeyError):  # an old trial of another space version: not a training example
            return False
        return True

    def features(self, params: Mapping[str, Any]) -> list[float]:
        key = self._key(params)
        if key not in self._descriptor_cache:
            row = [_encode(params[name], self._choices[name]) if name in params else -1.0 for name in self._names]
            describe = getattr(self.space, "descriptors", None)
            if describe is not None:
                row += list(describe(self.space.params_to_candidate(params)).values())
            self._descriptor_cache[key] = row
        return self._descriptor_cache[key]

    def targets(self, values: Sequence[Sequence[float]], directions: Sequence[Any]) -> np.ndarray:
        """Objective values as minimised numbers (``-log`` for a positive maximised objective)."""
        out = np.array(values, dtype=float)
        for k, direction in enumerate(directions):
            if direction == optuna.study.StudyDirection.MAXIMIZE:
                column = out[:, k]
                out[:, k] = -np.log(column) if np.all(column > 0) else -column
        return out

    def propose(self, examples: Sequence[Example], running: Sequence[Mapping[str, Any]], directions: Sequence[Any],
                final_steps: int | None = None) -> dict[str, Any]:
        """The configuration whose predicted point (at ``final_steps``, the last rung) adds most to the front."""

        def rows(params_list: Sequence[Mapping[str, Any]], steps: Sequence[int | None] | None = None) -> np.ndarray:
            x = np.array([self.features(p) for p in params_list], dtype=float).reshape(len(params_list), -1)
            if final_steps is None:
                return x
            steps = steps if steps is not None else [final_steps] * len(params_list)
            return np.column_stack([x, np.log([s or final_steps for s in steps])])

        y = self.targets([e.values for e in examples], directions)
        feasible = np.array([e.feasible for e in examples])
        x = rows([e.params for e in examples], [e.steps for e in examples])
        models = [fit_model(self.model, x, y[:, k], self._rng.randrange(2 ** 31)) for k in range(y.shape[1])]

        seen = {self._key(p) for p in [*(e.params for e in examples), *running]}
        # The front to improve on, at the final fidelity: lower rungs' results moved there by the models.
        at_final = y.copy()
        lower = [i for i, e in enumerate(examples) if e.steps is not None and e.steps != final_steps]
        if lower:
            at_final[lower] = self.predict(models, rows([examples[i].params for i in lower]))[0]
        front = at_final[feasible] if feasible.any() else y[:0]
        if running:
            pending, _ = self.predict(models, rows(running))
            front = np.vstack([front, pending])
        low, high = y.min(axis=0), y.max(axis=0)
        scale = np.where(high > low, high - low, 1.0)
        reference = np.ones(y.shape[1]) * 1.1
        front = (front - low) / scale

        scored: dict[tuple, tuple[float, float, dict]] = {}  # key -> (gain, spread, params)

        def score(batch: list[dict]) -> None:
            if not batch:
                return
            mean, spread = self.predict(models, rows(batch))
            gains = improvement((mean - self.kappa * spread - low) / scale, front, reference)
            for params, gain, width in zip(batch, gains, spread.sum(axis=1)):
                scored[self._key(params)] = (float(gain), float(width), params)

        # Optimise the acquisition on the models: a random pool and the front's neighbourhoods, then the
        # neighbourhoods of the best-scoring candidates, a few rounds (a trial costs minutes, this milliseconds).
        score(self.pool([e.params for e in examples], at_final, feasible, seen))
        for _ in range(LOCAL_ROUNDS):
            leaders = sorted(scored.values(), key=lambda item: -item[0])[:LEADERS]
            fresh = {}
            for _, _, params in leaders:
                for child in self.neighbours(params):
                    key = self._key(child)
                    if key not in scored and key not in seen and key not in fresh:
                        fresh[key] = child
            score(list(fresh.values()))
        if not scored:
            return {}
        gain, _, params = max(scored.values(), key=lambda item: item[0])
        if gain <= 0:  # nothing promises an improvement: learn where the models know least
            _, _, params = max(scored.values(), key=lambda item: item[1])
        return dict(params)

    @staticmethod
    def predict(models: Sequence[Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread of each objective's prediction, one column per objective."""
        outputs = [model(x) for model in models]
        return np.stack([m for m, _ in outputs], axis=1), np.stack([s for _, s in outputs], axis=1)

    def pool(self, params: Sequence[Mapping[str, Any]], y: np.ndarray, feasible: np.ndarray, seen: set) -> list[dict]:
        """Random candidates plus the neighbours of the front's members (of ``params``), none evaluated yet."""
        out: dict[tuple, dict] = {}
        sources = [self.space.random_params(self._rng) for _ in range(self.pool_size)]
        for i in _front_indices(y, feasible):
            sources += self.neighbours(params[i])
        for params in sources:
            key = self._key(params)
            if key not in seen and key not in out and self._complete_params(params):
                out[key] = params
        return list(out.values())

    def neighbours(self, params: Mapping[str, Any]) -> list[dict]:
        """``params`` with one parameter changed: every other choice of a categorical, the nearby values
        (two steps either way) and two random ones of an integer range."""
        out = []
        for name, value in params.items():
            try:
                param = self.space.param(name)
            except (ZooError, AttributeError):
                continue
            values = param.values()
            if param.kind == CATEGORICAL or len(values) <= 8:
                others = [v for v in values if v != value]
            else:
                index = values.index(value) if value in values else 0
                near = {values[min(max(index + step, 0), len(values) - 1)] for step in (-2, -1, 1, 2)}
                others = sorted((near | set(self._rng.sample(values, 2))) - {value})
            for other in others:
                child = dict(params)
                child[name] = other
                if self._complete_params(child):
                    out.append(child)
        return out

    @staticmethod
    def _key(params: Mapping[str, Any]) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in params.items()))



@dataclass(frozen=True)
class Example:
    """One training example: a configuration, its objective values, the proxy steps they were taken at
    (None: single fidelity) and whether it met the constraints."""

    params: Mapping[str, Any]
    values: tuple[float, ...]
    steps: int | None
    feasible: bool


def _rung_names(attrs: Mapping[str, Any]) -> list[str]:
    names, rung = [], 0
    while isinstance(attrs.get(rung_attr(rung)), dict) and "values" in attrs[rung_attr(rung)]:
        names.append(rung_attr(rung))
        rung += 1
    return names


def _final_steps(study: Any, examples: Sequence[Example]) -> int | None:
    """The schedule's last rung (the study's ``zoo_fidelity``), else the most steps seen; None: one fidelity."""
    steps = [e.steps for e in examples if e.steps is not None]
    if not steps:
        return None
    schedule = study.user_attrs.get(FIDELITY_ATTR)
    if isinstance(schedule, Mapping) and schedule.get("steps"):
        return int(max(schedule["steps"]))
    return max(steps)


def fit_model(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """A regressor of ``y`` on ``x``, returned as ``predict(x) -> (mean, spread)``.

    ``gp``: a Gaussian process (Matern 5/2 with one length scale per feature, plus noise) on standardised
    features: it extrapolates smooth trends (quality with capacity, time with multiply-adds) past the
    trials seen. ``trees``: extremely randomised trees, spread = the trees' disagreement. ``linear``:
    Bayesian ridge regression.
    """
    center, width = x.mean(axis=0), x.std(axis=0)
    width = np.where(width > 0, width, 1.0)

    def scaled(values: np.ndarray) -> np.ndarray:
        return (values - center) / width

    if kind == "trees":
        from sklearn.ensemble import ExtraTreesRegressor

        trees = ExtraTreesRegressor(n_estimators=64, random_state=seed).fit(x, y)
        return lambda q: _tree_stats(trees, q)
    if kind == "linear":
        from sklearn.linear_model import BayesianRidge

        ridge = BayesianRidge().fit(scaled(x), y)
        return lambda q: ridge.predict(scaled(q), return_std=True)
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.ones(x.shape[1]), (1e-2, 1e3), nu=2.5)
              + WhiteKernel(1e-2, (1e-6, 1e0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes of the kernel optimiser on tiny data
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=1, random_state=seed)
        gp.fit(scaled(x), y)
    return lambda q: gp.predict(scaled(q), return_std=True)


def _tree_stats(trees: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    per_tree = np.stack([tree.predict(x) for tree in trees.estimators_])
    return per_tree.mean(axis=0), per_tree.std(axis=0)


def _feasible(trial: Any) -> bool:
    """All constraint values <= 0: ``Trial.set_constraint(key, v)`` stores ``constraints:KEY``, a
    ``constraints_func`` the list ``constraints``."""
    attrs = trial.system_attrs
    values = [v for k, v in attrs.items() if k.startswith("constraints:")]
    values += list(attrs.get("constraints") or ())
    return all(float(v) <= 0 for v in values)


def _front_indices(y: np.ndarray, feasible: np.ndarray) -> list[int]:
    """Indices of the non-dominated feasible rows of ``y`` (all minimised)."""
    rows = [i for i in range(len(y)) if feasible[i]]
    return [i for i in rows
            if not any(np.all(y[j] <= y[i]) and np.any(y[j] < y[i]) for j in rows if j != i)]


def improvement(points: np.ndarray, front: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Hypervolume each of ``points`` (minimised, one per row) adds to ``front`` alone, under ``reference``."""
    if points.shape[1] == 1:
        best = front[:, 0].min() if len(front) else reference[0]
        return np.maximum(0.0, best - points[:, 0])
    volume = _hv_2d if points.shape[1] == 2 else _hv_nd
    base = volume(front, reference)
    return np.array([volume(np.vstack([front, p]), reference) - base if np.all(p < reference) else 0.0
                     for p in points])


def _hv_nd(points: np.ndarray, reference: np.ndarray) -> float:
    from optuna._hypervolume import compute_hypervolume

    inside = points[np.all(points < reference, axis=1)]
    return float(compute_hypervolume(inside, reference)) if len(inside) else 0.0


def _hv_2d(points: np.ndarray, reference: np.ndarray) -> float:
    points = points[np.all(points < reference, axis=1)] if len(points) else points
    if not len(points):
        return 0.0
    order = np.argsort(points[:, 0])
    volume, best_y = 0.0, reference[1]
    for x, y in points[order]:
        if y < best_y:
            volume += (reference[0] - x) * (best_y - y)
            best_y = y
    return float(volume)
