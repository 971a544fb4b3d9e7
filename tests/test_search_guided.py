"""The guided sampler (zoo.search.guided) and the analytic descriptors it learns from."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import optuna
import pytest
import torch
from optuna._hypervolume import compute_hypervolume
from torch.utils.flop_counter import FlopCounterMode

from zoo.search import study as runner
from zoo.search.guided import GuidedSampler, fit_model, improvement
from zoo.search.spaces.eradio import ERadioSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
RESOLUTION = 64


@pytest.fixture(scope="module")
def space() -> ERadioSpace:
    return ERadioSpace((RESOLUTION,))


def objective_values(space: ERadioSpace, params: dict) -> tuple[float, float]:
    """A cheap stand-in objective: notional throughput from multiply-adds and blocks, the space's surrogate
    FD loss from the weights (what benchmarks/search_efficiency.py does with exact counts)."""
    candidate = space.params_to_candidate(params)
    described = space.descriptors(candidate)
    blocks = sum(candidate.config.depths) * (1 + len(candidate.config.mra_ratios))
    throughput = 1000.0 / (math.exp(described["log_macs"]) / 1e9 + 0.05 * blocks)
    return throughput, space.surrogate_fd_loss(candidate, math.exp(described["log_weights"]) / 1e6)


def hypervolume(points: list[tuple[float, float]], reference: np.ndarray) -> float:
    values = np.array([[-math.log10(t), f] for t, f in points])
    values = values[np.all(values < reference, axis=1)]
    return float(compute_hypervolume(values, reference)) if len(values) else 0.0


def run(space: ERadioSpace, sampler, trials: int) -> list[tuple[float, float]]:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def objective(trial):
        space.sample(trial)
        return objective_values(space, trial.params)

    study.optimize(objective, n_trials=trials)
    return [tuple(t.values) for t in study.trials]


def test_descriptors_match_exact_counts(space):
    """The formulas count weights and multiply-adds to within a few percent of the built network."""
    rng = random.Random(3)
    for _ in range(6):
        candidate = space.params_to_candidate(space.random_params(rng))
        described = space.descriptors(candidate)
        model = candidate.build(device="meta").eval()
        weights = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, RESOLUTION, RESOLUTION, device="meta"))
        macs = counter.get_total_flops() / 2
        assert math.exp(described["log_weights"]) == pytest.approx(weights, rel=0.06)
        assert math.exp(described["log_macs"]) == pytest.approx(macs, rel=0.08)


def test_improvement_is_the_hypervolume_gain():
    rng = np.random.default_rng(0)
    front = rng.random((7, 2))
    points = rng.random((20, 2))
    reference = np.array([1.1, 1.1])
    base = compute_hypervolume(front, reference)
    expected = [compute_hypervolume(np.vstack([front, p]), reference) - base for p in points]
    assert improvement(points, front, reference) == pytest.approx(expected, abs=1e-12)
    assert improvement(points[:, :1], front[:, :1], reference[:1]).min() >= 0


@pytest.mark.parametrize("kind", ["gp", "trees", "linear"])
def test_models_learn_a_trend_and_know_where_they_are_unsure(kind):
    rng = np.random.default_rng(1)
    x = rng.random((30, 3))
    y = 2 * x[:, 0] - x[:, 1] + 0.01 * rng.standard_normal(30)
    predict = fit_model(kind, x, y, seed=0)
    inside = rng.random((10, 3))
    mean, spread = predict(inside)
    assert np.abs(mean - (2 * inside[:, 0] - inside[:, 1])).mean() < 0.25
    assert spread.shape == mean.shape and np.all(spread >= 0)


def test_guided_beats_random_on_the_stand_in_objective(space):
    """At an equal small budget the guided sampler's front covers clearly more hypervolume than random
    sampling's (seeded: deterministic)."""
    trials, seeds = 18, (0, 1)
    rng = random.Random(12345)
    pool = [objective_values(space, space.random_params(rng)) for _ in range(200)]
    reference = np.array([[-math.log10(t), f] for t, f in pool]).max(axis=0)
    reference = reference + 0.05 * np.abs(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guided = [hypervolume(run(space, GuidedSampler(space, seed=s, n_startup_trials=8, pool_size=128), trials),
                              reference) for s in seeds]
        rand = [hypervolume(run(space, optuna.samplers.RandomSampler(seed=s), trials), reference) for s in seeds]
    assert np.mean(guided) > 1.1 * np.mean(rand), (guided, rand)


def test_proposals_are_new_and_spread_over_running_trials(space):
    """After start-up a proposal never repeats a finished configuration, and a second worker asking while
    the first one's trial still runs gets another configuration."""
    sampler = GuidedSampler(space, seed=0, n_startup_trials=5)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def objective(trial):
        space.sample(trial)
        return objective_values(space, trial.params)

    study.optimize(objective, n_trials=8)
    first = study.ask()
    space.sample(first)
    second = study.ask()
    space.sample(second)
    finished = [t.params for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert first.params not in finished and second.params not in finished
    assert first.params != second.params


def test_infeasible_trials_do_not_make_the_front(space):
    sampler = GuidedSampler(space, seed=0, n_startup_trials=4)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = random.Random(0)
    for index in range(6):
        params = space.random_params(rng)
        trial = optuna.trial.create_trial(
            params=params, distributions={p.name: p.distribution() for p in space.params if p.name in params},
            values=list(objective_values(space, params)),
            system_attrs={"constraints": [1.0 if index == 0 else -1.0]} if index < 3
            else {"constraints:max_params": 2.0 if index == 3 else -1.0})  # set_constraint's form
        study.add_trial(trial)
    finished = study.trials
    y = sampler.targets([t.values for t in finished], study.directions)
    from zoo.search.guided import _feasible, _front_indices

    front = _front_indices(y, np.array([_feasible(t) for t in finished]))
    assert 0 not in front and 3 not in front and front


def test_make_sampler_defaults_to_guided_and_needs_the_space(space):
    sampler = runner.make_sampler(None, "multi", 40, seed=0, space=space)
    assert isinstance(sampler, GuidedSampler)
    with pytest.raises(ValueError, match="search space"):
        runner.make_sampler("guided", "multi", 40)
    assert isinstance(runner.make_sampler(None, "fd_loss", 40), optuna.samplers.TPESampler)


def test_multi_fidelity_trials_teach_the_models_at_their_highest_rung(space):
    """With rungs, PRUNED trials (most of them) are examples at the steps they reached, and proposals are
    scored at the schedule's last rung."""
    from optuna.trial import TrialState

    from zoo.search.fidelity import FIDELITY_ATTR, Fidelity, rung_attr

    sampler = GuidedSampler(space, seed=0, n_startup_trials=6)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.set_user_attr(FIDELITY_ATTR, Fidelity((10, 30)).describe())
    rng = random.Random(1)
    distributions = {p.name: p.distribution() for p in space.params}
    for index in range(8):
        params = space.random_params(rng)
        throughput, fd_loss = objective_values(space, params)
        attrs = {rung_attr(0): {"rung": 0, "steps": 10, "values": [throughput, fd_loss + 0.1], "feasible": True}}
        state = TrialState.PRUNED if index % 3 else TrialState.COMPLETE
        if state == TrialState.COMPLETE:
            attrs[rung_attr(1)] = {"rung": 1, "steps": 30, "values": [throughput, fd_loss], "feasible": True}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: v for k, v in distributions.items() if k in params}, state=state,
            values=[throughput, fd_loss] if state == TrialState.COMPLETE else None, user_attrs=attrs))
    examples = sampler.examples(study)
    assert len(examples) == 8
    assert sorted({e.steps for e in examples}) == [10, 30]
    trial = study.ask()
    space.sample(trial)  # proposed by the models (8 examples >= 6 start-up), not a repeat
    assert trial.params not in [t.params for t in study.trials[:-1]]
    assert sampler.propose(examples, [], study.directions, final_steps=30)
