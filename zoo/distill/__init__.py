"""The distillation engine: one student, several frozen teachers, one recipe.

``distill(backbone, recipe)`` trains the backbone plus per-teacher adaptor
heads (AdamW, linear warm-up then cosine, AMP where the device has it,
gradient clipping), evaluates the held-out FD loss, measures throughput and
FLOPs, and writes the run folder ``<out_dir>/<run-id>/`` of :mod:`zoo.runs`
(``recipe.yaml``, ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json``).

Resuming is exact: every batch is a pure function of ``(seed, step)`` and the
global RNG is re-seeded from ``(seed, step, rank)`` before each step, so a run
stopped and resumed ends with the weights of an uninterrupted run.

A run that diverges (a NaN/inf loss, gradient norm or weight) stops without
writing over its last good checkpoint and raises :class:`~zoo.errors.DivergedError`
(exit status 3); Ctrl-C and SIGTERM save a checkpoint and raise
:class:`DistillInterrupted` (exit status 130 / 143).

Under ``torchrun`` the same call trains one model with DistributedDataParallel
(gloo on CPU, NCCL on CUDA); the recipe's batch size stays the global one.

Modules: :mod:`~zoo.distill.trainer` (the run's steps), :mod:`~zoo.distill.model`
(model, optimiser, schedule, AMP), :mod:`~zoo.distill.guard` (divergence),
:mod:`~zoo.distill.evaluation` (FD losses, measurement), :mod:`~zoo.distill.resume`,
:mod:`~zoo.distill.student`, :mod:`~zoo.distill.folder`, :mod:`~zoo.distill.stop`,
:mod:`~zoo.distill.parallel`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from zoo.backbone import Backbone
from zoo.distill.evaluation import HeldOut, measure_backbone
from zoo.distill.model import DistillModel, amp_dtype, build_optimizer, lr_factor
from zoo.distill.parallel import DistContext, setup_distributed
from zoo.distill.resume import RESUMABLE_KEYS, continue_recipe
from zoo.distill.trainer import DistillInterrupted, RunRequest, TrainingRun
from zoo.recipe import Recipe

__all__ = [
    "RESUMABLE_KEYS", "DistContext", "DistillInterrupted", "DistillModel", "HeldOut", "RunRequest", "TrainingRun",
    "amp_dtype", "build_optimizer", "continue_recipe", "distill", "lr_factor", "measure_backbone",
    "setup_distributed",
]


def distill(
    backbone: str | Backbone,
    recipe: Recipe | str,
    out_dir: str | os.PathLike = "runs",
    run_name: str | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    teachers: Sequence[Any] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    offline: bool | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    teacher_cache: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    on_start: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Distill ``backbone`` from the recipe's teachers; returns the run record (``summary.json`` content).

    Args:
        backbone: a registry name or backbone file (built at the recipe resolution), or a built :class:`Backbone`.
        recipe: a :class:`Recipe` or a recipe name/path. On resume the run continues under its saved recipe;
            a given recipe may change only :data:`RESUMABLE_KEYS` (e.g. ``optim.lr`` after a divergence).
        out_dir: parent of the run folder ``<out_dir>/<run_name>``.
        run_name: the run id (default ``<backbone>-<recipe>-<UTC time>``).
        resume: continue ``<out_dir>/<run_name>`` (or the folder ``run_name``) from its checkpoint.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: a rich progress bar on stderr (rank 0).
        teachers: teacher spec strings, or built teachers to reuse across backbones (default: the recipe's).
        on_eval: called ``(step, fd_loss)`` after each held-out evaluation (e.g. Optuna pruning; may raise).
        offline: passed to :func:`zoo.teachers.build_teachers`.
        on_step: called ``(step, metrics)`` at each logged step (tests, custom logging).
        teacher_cache: a :mod:`zoo.cache` folder: training targets are read from it (memory-mapped) instead of
            running the teachers; the student sees the stored views. A cache that does not fit is refused.
            Default: the recipe's ``data.teacher_cache`` (so ``--set data.teacher_cache=DIR`` reaches the search proxy).
            The run folder's ``recipe.yaml`` (and checkpoint) record the folder used as an absolute path.
        trust_checkpoint: on resume, load a checkpoint that holds pickled Python objects (only a trusted file).
        on_start: called once the run is accepted (nothing left to refuse) and its folder open, before the first
            step, with ``{"run_dir", "resume", "step", "steps", "random_teacher"}`` (warnings belong here).

    A resumed run that had already ended complete (its record complete at the checkpoint's step, and no
    more ``train.steps``) is not trained, evaluated or measured again: its record is returned unchanged.

    Raises:
        DistillInterrupted: Ctrl-C / SIGTERM; a checkpoint was saved (``.record``, ``.exit_code`` 130 / 143).
        zoo.errors.DivergedError: a non-finite loss, gradient norm or weight; the last good checkpoint is kept.
    """
    ctx = setup_distributed(device)
    request = RunRequest(backbone, recipe, Path(out_dir), run_name, resume, device, progress, teachers, on_eval,
                         offline, on_step, teacher_cache, trust_checkpoint, on_start)
    return TrainingRun(request, ctx).run()
