"""What a sweep will cost, said before it starts: candidates' sizes, disk, and (once known) time.

Parameters are counted on the meta device (no memory, no compute) for a fixed
sample of candidates. A proxy run's checkpoint holds the backbone's fp32
weights and AdamW's two moments, about 12 bytes per parameter (the adaptor
heads add a little more); by default each checkpoint is deleted when its
trial ends, so a worker needs room for one at a time, plus a few kilobytes of
record and metrics per trial. Time per trial comes from the study's finished
trials (their ``trial_seconds``), so a fresh study says it after its first trial.
"""

from __future__ import annotations

import random
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def line(self) -> str:
        low, mid, high = self.params_m
        parts = [f"sweep: {self.remaining} of {self.n_trials} trials to run; {self.space} candidates "
                 f"{low:.2f}-{high:.2f}M params (median {mid:.2f}M, {PREVIEW_SAMPLES} sampled)"]
        if self.dry_run:
            parts.append(f"disk ~{_human(self.disk_bytes)} (dry run: records only)")
        elif self.keep_checkpoints:
            parts.append(f"disk ~{_human(self.disk_bytes)} (checkpoints kept, ~{_human(self.checkpoint_bytes[0])} each)")
        else:
            parts.append(f"disk ~{_human(self.disk_bytes)} (one checkpoint of up to "
                         f"~{_human(self.checkpoint_bytes[1])} at a time, deleted when its trial ends; "
                         "--keep-checkpoints keeps them)")
        if self.free_bytes is not None and self.disk_bytes > self.free_bytes:
            parts.append(f"WARNING: only {_human(self.free_bytes)} free")
        if self.seconds_per_trial is not None:
            parts.append(f"time ~{_duration(self.seconds_per_trial * self.remaining)} for one worker "
                         f"(~{_duration(self.seconds_per_trial)} per trial so far)")
        else:
            parts.append("time: estimated after the first trial")
        return "; ".join(parts)

    def eta_after(self, study: Any, n_trials: int) -> str:
        """`` (~T left for one worker)`` from the study's finished trials, or empty."""
        from zoo.search.study import trial_counts

        seconds = mean_trial_seconds(study)
        if seconds is None:
            return ""
        left = max(0, n_trials - trial_counts(study).counted)
        return f" (~{_duration(seconds * left)} left for one worker)" if left else ""


def mean_trial_seconds(study: Any) -> float | None:
    """Mean ``trial_seconds`` of the study's complete trials, or None."""
    from optuna.trial import TrialState

    values = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
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


def sweep_preview(space: Any, settings: Any, n_trials: int, study: Any) -> SweepPreview:
    """The estimate for running ``study`` up to ``n_trials`` trials with ``settings`` (ObjectiveSettings)."""
    from zoo.search.study import trial_counts

    counts = sorted(sample_param_counts(space))
    remaining = max(0, n_trials - trial_counts(study).counted)
    checkpoints = (statistics.median(counts) * 1e6 * BYTES_PER_PARAM, counts[-1] * 1e6 * BYTES_PER_PARAM)
    records = remaining * RECORD_BYTES
    if settings.dry_run:
        disk = records
    elif settings.keep_checkpoints:
        disk = records + remaining * checkpoints[0]
    else:
        disk = records + checkpoints[1]
    return SweepPreview(space=space.name, n_trials=n_trials, remaining=remaining,
                        params_m=(counts[0], statistics.median(counts), counts[-1]), checkpoint_bytes=checkpoints,
                        disk_bytes=disk, free_bytes=_free_bytes(Path(settings.out_dir)),
                        keep_checkpoints=settings.keep_checkpoints, dry_run=settings.dry_run,
                        seconds_per_trial=mean_trial_seconds(study))


def _free_bytes(path: Path) -> float | None:
    for folder in (path, *path.resolve().parents):
        if folder.exists():
            return float(shutil.disk_usage(folder).free)
    return None


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
