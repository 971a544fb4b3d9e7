"""What a sweep will cost, said before it starts: candidates' sizes, disk, and (once known) time.

Parameters are counted on the meta device (no memory, no compute) for a fixed
sample of candidates. A proxy run's checkpoint holds the backbone's fp32
weights and AdamW's two moments, about 12 bytes per parameter (the adaptor
heads add a little more); by default each checkpoint is deleted when its
trial ends, so a worker needs room for one at a time, plus a few kilobytes of
record and metrics per trial.

Time per trial comes from the study's finished trials (their ``trial_seconds``)
once there are some. Before the first one, the median sampled candidate's
trial is costed piece by piece (:func:`zoo.search.cost.measure_trial_cost`:
one real distillation step with the teachers, the model build, an inference
forward, a FLOP count, this disk's write rate) for what a trial does
(:func:`trial_plan`: proxy steps, FD-loss evaluations, checkpoint writes, the
throughput measurement's forward passes, one proxy run per rung reached).
"""

from __future__ import annotations

import random
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.search.cost import human_bytes
from zoo.ui import duration

BYTES_PER_PARAM = 12  # fp32 weights + AdamW exp_avg + exp_avg_sq
RECORD_BYTES = 20_000  # summary.json + metrics.jsonl + recipe.yaml of one proxy run, about
PREVIEW_SAMPLES = 8


@dataclass
class SweepPreview:
    """The estimate printed before a sweep; :meth:`line` is the one line shown."""

    space: str
    n_trials: int
    remaining: int
    params_m: tuple[float, float, float]  # min, median, max of the sampled candidates
    checkpoint_bytes: tuple[float, float]  # median, max
    disk_bytes: float
    free_bytes: float | None
    keep_checkpoints: bool
    dry_run: bool
    seconds_per_trial: float | None
    memory_bytes: tuple[float, float] | None = None  # min, max training memory of the sampled candidates
    memory_cap_gb: float | None = None
    over_cap: int = 0  # sampled candidates over the cap
    fidelity: Any = None  # zoo.search.fidelity.Fidelity
    steps_per_trial: float | None = None  # proxy steps of an average trial
    step_seconds: float | None = None  # one proxy step of a median candidate (teachers included), measured now
    estimate_seconds: float | None = None  # one average trial of the median candidate (cost model), before any ran
    cost: Any = None  # zoo.search.cost.TrialCost of the median candidate
    plan: Any = None  # zoo.search.cost.TrialPlan of an average trial

    def line(self) -> str:
        low, mid, high = self.params_m
        parts = [f"sweep: {self.remaining} of {self.n_trials} trials to run; {self.space} candidates "
                 f"{low:.2f}-{high:.2f}M params (median {mid:.2f}M, {PREVIEW_SAMPLES} sampled)"]
        if self.memory_bytes is not None:
            text = f"training memory ~{human_bytes(self.memory_bytes[0])}-{human_bytes(self.memory_bytes[1])} each"
            if self.memory_cap_gb is not None:
                text += (f" (cap {self.memory_cap_gb:.1f} GB: {self.over_cap} of {PREVIEW_SAMPLES} sampled are over "
                         "it and would be skipped; --max-memory changes it)")
            parts.append(text)
        if self.fidelity is not None:
            reach = "/".join(f"{c:.0f}" for c in self.fidelity.expected_counts(self.remaining))
            parts.append(f"rungs {','.join(map(str, self.fidelity.steps))} proxy steps (eta {self.fidelity.eta}): "
                         f"~{self.steps_per_trial:.0f} steps per trial on average, ~{reach} trials reach each rung")
        if self.dry_run:
            parts.append(f"disk ~{human_bytes(self.disk_bytes)} (dry run: records only)")
        elif self.keep_checkpoints:
            parts.append(f"disk ~{human_bytes(self.disk_bytes)} (checkpoints kept, "
                         f"~{human_bytes(self.checkpoint_bytes[0])} each)")
        else:
            parts.append(f"disk ~{human_bytes(self.disk_bytes)} (one checkpoint of up to "
                         f"~{human_bytes(self.checkpoint_bytes[1])} at a time, deleted when its trial ends; "
                         "--keep-checkpoints keeps them)")
        if self.free_bytes is not None and self.disk_bytes > self.free_bytes:
            parts.append(f"WARNING: only {human_bytes(self.free_bytes)} free")
        if self.seconds_per_trial is not None:
            parts.append(f"time ~{duration(self.seconds_per_trial * self.remaining)} for one worker "
                         f"(~{duration(self.seconds_per_trial)} per trial so far)")
        elif self.estimate_seconds is not None:
            parts.append(f"time ~{duration(self.estimate_seconds * self.remaining)} for one worker "
                         f"(~{duration(self.estimate_seconds)} per trial: {self._pieces()}; larger candidates "
                         "take longer)")
        else:
            parts.append("time: estimated after the first trial")
        return "; ".join(parts)

    def _pieces(self) -> str:
        """Where a median candidate's trial time goes."""
        cost, plan = self.cost, self.plan
        pieces = [f"{plan.steps:.0f} steps of {cost.step_s:.2f} s (a median candidate's training step takes "
                  f"{cost.step_s:.2f} s here, teachers included)"]
        if plan.bench_forwards:
            bench = cost.build_s + cost.gmacs_s + plan.bench_forwards * cost.forward_s
            pieces.append(f"throughput measurement ~{duration(bench)}")
        if plan.checkpoints:
            pieces.append(f"{plan.checkpoints:.0f} checkpoint writes of ~{human_bytes(cost.checkpoint_bytes)} "
                          f"~{duration(plan.checkpoints * cost.checkpoint_s())}")
        other = plan.runs * (cost.build_s + cost.gmacs_s) + plan.evaluations * cost.eval_s(plan.eval_images)
        pieces.append(f"build, evaluation and FLOP count ~{duration(other)}")
        return ", ".join(pieces)

    def per_trial_seconds(self, study: Any = None) -> float | None:
        """Seconds per trial: the study's mean so far, else the estimate made before the first trial."""
        seconds = mean_trial_seconds(study) if study is not None else self.seconds_per_trial
        return seconds if seconds is not None else self.estimate_seconds

    def eta_after(self, study: Any, n_trials: int) -> str:
        """`` (~T left for one worker)`` from the study's finished trials, or empty."""
        from zoo.search.study import trial_counts

        seconds = mean_trial_seconds(study)
        if seconds is None:
            return ""
        left = max(0, n_trials - trial_counts(study).counted)
        return f" (~{duration(seconds * left)} left for one worker)" if left else ""


def mean_trial_seconds(study: Any) -> float | None:
    """Mean ``trial_seconds`` of the study's complete and pruned trials (multi-fidelity: most stop early), or None."""
    from optuna.trial import TrialState

    values = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        search = (trial.user_attrs.get("record") or {}).get("search") or {}
        if isinstance(search.get("trial_seconds"), (int, float)):
            values.append(float(search["trial_seconds"]))
    return statistics.fmean(values) if values else None


def sample_param_counts(space: Any, samples: int = PREVIEW_SAMPLES, seed: int = 0) -> list[float]:
    """Millions of parameters of ``samples`` random candidates, counted on the meta device."""
    rng = random.Random(seed)
    counts = []
    for _ in range(samples):
        model = space.params_to_candidate(space.random_params(rng)).build(device="meta")
        counts.append(sum(p.numel() for p in model.parameters()) / 1e6)
    return counts


def sweep_preview(space: Any, settings: Any, n_trials: int, study: Any, objective: Any = None,
                  fidelity: Any = None, time_steps: bool = False) -> SweepPreview:
    """The estimate for running ``study`` up to ``n_trials`` trials with ``settings`` (ObjectiveSettings).

    With ``objective`` (a :class:`zoo.search.objective.SearchObjective`), the training memory of the sampled
    candidates at the proxy's batch is estimated on the meta device (against ``settings.max_memory_gb``);
    with ``time_steps`` too, one training step of the median candidate is timed, so the time of the sweep
    is said before its first trial. ``fidelity``: the rung schedule (steps per trial on average).
    """
    from zoo.search.study import trial_counts

    remaining = max(0, n_trials - trial_counts(study).counted)
    rng = random.Random(0)
    candidates = [space.params_to_candidate(space.random_params(rng)) for _ in range(PREVIEW_SAMPLES)]
    memory = None
    if objective is not None:
        from zoo.search.cost import train_costs

        costs = [train_costs(c, objective.train_batch_size(c.resolution)) for c in candidates]
        counts = [p / 1e6 for p, _ in costs]
        memory = [m for _, m in costs]
    else:
        counts = sample_param_counts(space)
    cap = settings.max_memory_gb
    over = sum(m > cap * 1e9 for m in memory) if memory is not None and cap is not None else 0
    ordered = sorted(counts)
    checkpoints = (statistics.median(ordered) * 1e6 * BYTES_PER_PARAM, ordered[-1] * 1e6 * BYTES_PER_PARAM)
    records = remaining * RECORD_BYTES
    if settings.dry_run:
        disk = records
    elif settings.keep_checkpoints:
        disk = records + remaining * checkpoints[0]
    else:
        disk = records + checkpoints[1]
    steps = step_time = estimate = cost = plan = None
    if objective is not None and not settings.dry_run:
        plan = trial_plan(objective)
        steps = plan.steps
        if time_steps:
            from zoo.search.cost import measure_trial_cost

            fitting = [c for c, m in zip(candidates, memory) if cap is None or m <= cap * 1e9] or candidates
            median = sorted(fitting, key=lambda c: counts[candidates.index(c)])[len(fitting) // 2]
            recipe = objective.recipe(median.resolution)
            cost = measure_trial_cost(median, recipe, objective.teachers(recipe),  # built once, kept for the trials
                                      int(settings.bench_settings(median.resolution).batch_size),
                                      _device(settings.device), out_dir=settings.out_dir)
            step_time = cost.step_s
            estimate = cost.seconds(plan)
    elif fidelity is not None:
        steps = fidelity.expected_steps()
    return SweepPreview(space=space.name, n_trials=n_trials, remaining=remaining,
                        params_m=(ordered[0], statistics.median(ordered), ordered[-1]), checkpoint_bytes=checkpoints,
                        disk_bytes=disk, free_bytes=_free_bytes(Path(settings.out_dir)),
                        keep_checkpoints=settings.keep_checkpoints, dry_run=settings.dry_run,
                        seconds_per_trial=mean_trial_seconds(study),
                        memory_bytes=(min(memory), max(memory)) if memory else None, memory_cap_gb=cap,
                        over_cap=over, fidelity=fidelity, steps_per_trial=steps, step_seconds=step_time,
                        estimate_seconds=estimate, cost=cost, plan=plan)


def trial_plan(objective: Any) -> Any:
    """What an average trial of ``objective`` (a real, not dry, search objective) does: proxy steps, FD-loss
    evaluations, checkpoint writes and proxy runs (one per rung reached, each trial reaching rung ``r`` with
    probability ``eta**-r``), and the forward passes of its throughput measurement (none when predicted)."""
    from zoo.search.cost import TrialPlan

    resolution = objective.space.resolutions[0]
    recipe = objective.recipe(resolution)
    every_ckpt = int(recipe.train.checkpoint_every or 0)
    fidelity = getattr(objective, "fidelity", None)
    bench = objective.settings.bench_settings(resolution)
    forwards = 0 if getattr(objective, "tables", None) else bench.warmup + bench.repeats * bench.steps_per_repeat
    if fidelity is None:
        total, every_eval = int(recipe.train.steps), int(recipe.eval.every or 0)
        return TrialPlan(steps=float(total), evaluations=float(_marks(0, total, every_eval) + 1),
                         eval_images=int(recipe.eval.images), checkpoints=float(_marks(0, total, every_ckpt) + 1),
                         runs=1.0, bench_forwards=forwards)
    reach = [1.0 / fidelity.eta ** rung for rung in range(fidelity.rungs)]
    previous, checkpoints = 0, 0.0
    for share, steps in zip(reach, fidelity.steps):
        checkpoints += share * (_marks(previous, steps, every_ckpt) + 1)  # every C steps in the rung, and its end
        previous = steps
    return TrialPlan(steps=fidelity.expected_steps(), evaluations=sum(reach), eval_images=int(recipe.eval.images),
                     checkpoints=checkpoints, runs=sum(reach), bench_forwards=forwards)


def _marks(start: int, end: int, every: int) -> int:
    """Steps in ``(start, end)`` that are multiples of ``every`` (periodic evaluations/checkpoints before a run's end)."""
    if every <= 0 or end <= start:
        return 0
    return (end - 1) // every - start // every


def _device(spec: str) -> str:
    from zoo.devices import resolve_device

    return str(resolve_device(spec))


def _free_bytes(path: Path) -> float | None:
    for folder in (path, *path.resolve().parents):
        if folder.exists():
            return float(shutil.disk_usage(folder).free)
    return None


