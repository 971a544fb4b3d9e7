"""One distillation run, as named steps: plan -> prepare -> restore -> open the folder -> train -> finish.

:class:`TrainingRun` holds what the steps share; :func:`zoo.distill.distill` runs them in order::

    plan()         the recipe, the device, the run folder's name, the saved state on resume
    prepare()      images, student, teachers, heads, optimiser, teacher cache, held-out targets, PHI-S
    restore()      the saved state into all of it (resume)
    open_folder()  only now, once nothing can be refused: the folder, recipe.yaml, metrics trimmed
    train()        the loop: step, log, evaluate, checkpoint; the divergence guard; a clean stop
    finish()       final held-out evaluation, measurement, the record, the outcome

Nothing is created on disk before ``open_folder``: a start refused for a bad recipe key, resolution,
backbone, teacher weights or cache leaves no half-made run folder.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from zoo.backbone import Backbone
from zoo.checkpoints import atomic_torch_save, load_checkpoint
from zoo.data import CropDataset, default_workers, load_recipe_images, shared_resolution, student_view, train_loader
from zoo.distill.evaluation import HeldOut, RecentMean, measure_backbone
from zoo.distill.folder import append_metrics, finite_or_none, remove_killed_writes, trim_metrics
from zoo.distill.guard import DivergenceGuard
from zoo.distill.model import (DistillModel, StepLosses, amp_dtype, apply_optim_settings, autocast_factory,
                               build_optimizer, build_scheduler, fd_teacher_name, rng_state, seed_step, set_rng_state)
from zoo.distill.parallel import DistContext, any_rank, broadcast, mean_over_ranks, train_device
from zoo.distill.resume import check_state, continue_recipe, finished_record, with_teacher_cache
from zoo.distill.stop import StopFlag, exit_status
from zoo.distill.student import Student, build_student, run_name_of
from zoo.errors import ConfigError, DivergedError, ZooError
from zoo.recipe import Recipe, load_recipe
from zoo.runs import (BACKBONE_FILE, CHECKPOINT_FILE, KIND_DISTILL, RANDOM_TEACHER_NOTE, STATUS_COMPLETE,
                      STATUS_DIVERGED, STATUS_INTERRUPTED, RunPaths, RunRecord, find_run_dir, new_run_id, write_record)
from zoo.versions import versions

SKIPPED_EXAMPLES = 5  # unreadable training images named in the record


class DistillInterrupted(ZooError):
    """The run stopped on Ctrl-C/SIGTERM after saving a checkpoint; exit status 130 (Ctrl-C) or 143 (SIGTERM)."""

    def __init__(self, message: str, record: dict[str, Any], signal_name: str | None = None) -> None:
        super().__init__(message)
        self.record = record
        self.signal_name = signal_name
        self.exit_code = exit_status(signal_name)


@dataclass
class RunRequest:
    """What :func:`zoo.distill.distill` was asked to do (its arguments)."""

    backbone: str | Backbone
    recipe: Recipe | str
    out_dir: Path
    run_name: str | None = None
    resume: bool = False
    device: str = "auto"
    progress: bool = True
    teachers: Sequence[Any] | None = None
    on_eval: Callable[[int, float], None] | None = None
    offline: bool | None = None
    on_step: Callable[[int, dict], None] | None = None
    teacher_cache: str | os.PathLike | None = None
    trust_checkpoint: bool = False
    # Called (every rank) once the run is accepted and its folder open, before the first step: the place
    # for "this run uses random teachers" warnings, so a refused start prints its one error line and nothing else.
    on_start: Callable[[dict], None] | None = None


class TrainingRun:
    """The state one run's steps share (see the module docstring for the order)."""

    def __init__(self, request: RunRequest, ctx: DistContext) -> None:
        self.request, self.ctx = request, ctx
        self.state: dict[str, Any] | None = None  # the checkpoint a resumed run continues from
        self.step = 0
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.elapsed_before = 0.0
        self.last_checkpoint_step: int | None = None
        self.fd_loss: float | None = None
        self.eval_losses: dict[str, float] = {}
        self.eval_step: int | None = None
        self.signal_name: str | None = None
        self.finished: RunRecord | None = None  # the record of a resumed run that had already ended

    # ------------------------------------------------------------------ steps

    def run(self) -> dict[str, Any]:
        self.plan()
        if self.finished is not None:  # nothing left to train: its record stands (no re-measuring, no rewrite)
            return self.finished.to_dict()
        self.prepare()
        self.restore()
        self.open_folder()
        if self.request.on_start is not None:
            self.request.on_start({"run_dir": str(self.paths.root), "resume": self.state is not None,
                                   "step": self.step, "steps": self.recipe.train.steps,
                                   "random_teacher": any(t.is_random for t in self.teachers)})
        status = self.train()
        return self.finish(status)

    def plan(self) -> None:
        """The recipe, the device and the run folder's name; on resume, the saved state (nothing is written)."""
        r, ctx = self.request, self.ctx
        recipe = r.recipe if isinstance(r.recipe, Recipe) else load_recipe(r.recipe)
        self.device = train_device(r.device, ctx)
        if r.resume:
            if r.run_name is None:
                raise ConfigError("resume needs the run name (or folder) to continue")
            run_dir = find_run_dir(r.run_name, r.out_dir, needs=CHECKPOINT_FILE)
            if ctx.is_main:
                remove_killed_writes(RunPaths(run_dir))
            path = run_dir / CHECKPOINT_FILE
            self.state = check_state(load_checkpoint(path, trust=r.trust_checkpoint, map_location="cpu"), path)
            recipe = continue_recipe(self.state["recipe"], recipe)  # the run's own recipe, resumable keys changed
            self.last_checkpoint_step = int(self.state["step"])
            self.finished = finished_record(run_dir, self.last_checkpoint_step, recipe.train.steps)
        else:
            run_id = broadcast(r.run_name or new_run_id(run_name_of(r.backbone), recipe.name, r.out_dir), ctx)
            run_dir = r.out_dir / run_id
            if (run_dir / CHECKPOINT_FILE).exists() or RunPaths(run_dir).has_record():
                raise ZooError(f"run folder {run_dir} already holds a run; resume it with --resume {run_dir} "
                               "or choose another --run-name")
        if recipe.train.batch_size % ctx.world_size:
            raise ConfigError(f"recipe key 'train.batch_size' ({recipe.train.batch_size}) must be divisible by the "
                              f"number of processes ({ctx.world_size})")
        # recipe.yaml and the checkpoint name the cache folder actually read (--teacher-cache or the recipe's)
        self.recipe = with_teacher_cache(recipe, r.teacher_cache)
        self.paths = RunPaths(run_dir)
        self.run_id = run_dir.name

    def prepare(self) -> None:
        """Everything the loop needs; every refusal (images, backbone, teachers, cache) happens here."""
        from zoo.heads import AdaptorHeads
        from zoo.losses import LossBalancer, loss_term_names
        from zoo.teachers import prepare_teachers

        r, recipe, device = self.request, self.recipe, self.device
        if r.resume and isinstance(r.backbone, str) and self.state.get("backbone_spec"):
            backbone = self._saved_backbone_spec()
        else:
            backbone = r.backbone
        # folders, lists, bundled images or WebDataset shards; held-out images from eval.path or the split
        self.images = load_recipe_images(recipe, warn=self.ctx.is_main)
        torch.manual_seed(recipe.train.seed)  # a registry backbone and the heads start from the recipe's seed
        self.student: Student = build_student(backbone, recipe.resolution)
        if self.state is not None and self.state.get("backbone_name"):
            self.student.name = str(self.state["backbone_name"])
        self.teachers = prepare_teachers(r.teachers, recipe.teachers, device, r.offline)
        self.shared_hw = shared_resolution(recipe.resolution, *[t.resolution for t in self.teachers])
        self.fd_teacher = fd_teacher_name(recipe)
        backbone_module = self.student.module
        heads = AdaptorHeads(backbone_module.summary_dim, backbone_module.feature_dim, self.teachers)
        terms = loss_term_names(self.teachers, recipe.loss.summary_weights, recipe.loss.feature_weights)
        balancer = LossBalancer(recipe.loss.balancing, terms, backbone_module.summary_dim)
        self.model = DistillModel(backbone_module, heads, balancer, recipe).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, recipe)
        self.scheduler = build_scheduler(self.optimizer, recipe)
        self.dtype = amp_dtype(recipe, device)
        self.autocast = autocast_factory(device, self.dtype)
        # fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a pass-through).
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.guard = DivergenceGuard(device, check_grad_norm=not self.scaler.is_enabled())
        self.fd_window = RecentMean(recipe.eval.fd_loss_train_steps, device)
        self._prepare_data()
        self.held_out = HeldOut(self.images.holdout, self.shared_hw, recipe.resolution, self.teachers,
                                recipe.eval.batch_size, device)
        self.standardizer, self.standardize_source = self._prepare_standardizer()

    def _saved_backbone_spec(self) -> str:
        """A resumed run's backbone: its copy of a backbone file, else the saved registry name or path."""
        copy = self.paths.root / BACKBONE_FILE
        return str(copy) if copy.is_file() else str(self.state["backbone_spec"])

    def _prepare_data(self) -> None:
        recipe = self.recipe
        dataset = CropDataset(self.images.train, self.shared_hw, recipe.train.seed, recipe.train.batch_size,
                              recipe.augment.scale, recipe.augment.ratio, recipe.augment.hflip)
        self.cache = None
        cache_dir = recipe.data.teacher_cache  # plan() put a --teacher-cache folder there
        if cache_dir is not None:
            from zoo.cache import CachedCropDataset, open_for_training

            self.cache = open_for_training(cache_dir, recipe, self.teachers, self.images, self.shared_hw)
            dataset = CachedCropDataset(dataset, self.cache)
        self.dataset = dataset

    def _prepare_standardizer(self) -> tuple[Any, str | None]:
        """PHI-S (``loss.standardize: phi-s``): the per-teacher transforms the heads learn in, and where they came
        from: the resumed checkpoint, the teacher cache's build, or a pass over the first training batches."""
        if self.recipe.loss.standardize != "phi-s":
            return None, None
        from zoo.standardize import TeacherStandardizer

        if self.state is not None and self.state.get("standardizer"):
            source = self.state.get("standardize_source") or "checkpoint"
            return _on_device(TeacherStandardizer.from_state_dict(self.state["standardizer"]), self.device), source
        if self.cache is not None:
            standardizer = getattr(self.cache, "standardizer", None)
            if standardizer is None:
                raise ConfigError(f"teacher cache {self.cache.path} holds no PHI-S statistics (built by an older "
                                  "zoo); run the same zoo cache build command again to add them (no teacher runs)")
            return _on_device(standardizer, self.device), "cache"
        return _on_device(self._estimate_standardizer(), self.device), "estimated"

    def _estimate_standardizer(self) -> Any:
        """Teacher statistics over the first ``loss.standardize_batches`` training batches (all ranks' shares)."""
        from zoo.standardize import StandardizerEstimator

        recipe, batches = self.recipe, self.recipe.loss.standardize_batches
        loader = train_loader(self.dataset, 0, batches, recipe.train.batch_size, self.ctx.rank, self.ctx.world_size,
                              0, pin_memory=False)
        estimator = StandardizerEstimator()
        with torch.no_grad():
            for batch in loader:
                batch = batch.to(self.device)
                estimator.update({t.name: t(batch) for t in self.teachers})
        estimator.all_reduce()
        try:
            return estimator.finalize()
        except ValueError as err:
            raise ConfigError(f"recipe key 'loss.standardize_batches' ({batches}): too little data for the PHI-S "
                              f"statistics ({err}); use more batches") from None

    def restore(self) -> None:
        """Load the saved state of a resumed run into the model, optimiser, schedule, scaler and RNG."""
        if self.state is None:
            return
        state, model = self.state, self.model
        model.backbone.load_state_dict(state["backbone"])
        model.heads.load_state_dict(state["heads"])
        model.balancer.load_state_dict(state["balancer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if self.recipe.optim != continue_recipe(state["recipe"], None).optim:
            apply_optim_settings(self.optimizer, self.scheduler, self.recipe, self.step)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if state.get("fd_train_window") is not None:
            self.fd_window.load_state_dict(state["fd_train_window"])
        set_rng_state(state.get("rng", {}))
        self.first_loss = state.get("train_loss_first")
        self.last_loss = state.get("train_loss_last")
        self.elapsed_before = float(state.get("wall_time_s", 0.0))

    def open_folder(self) -> None:
        """Create the run folder (rank 0) now that nothing can be refused; the recipe as run goes in."""
        if not self.ctx.is_main:
            return
        paths = self.paths
        paths.root.mkdir(parents=True, exist_ok=True)
        from zoo.atomic import atomic_write_text

        atomic_write_text(paths.recipe, self.recipe.to_yaml())
        spec = self.student.spec
        if spec and Path(spec).is_file() and Path(spec).resolve() != (paths.root / BACKBONE_FILE).resolve():
            shutil.copyfile(spec, paths.root / BACKBONE_FILE)  # the run resumes (and loads) without the original
        if self.state is not None:
            trim_metrics(paths.metrics, self.step)
        elif paths.metrics.exists():
            paths.metrics.unlink()

    # ------------------------------------------------------------------ the loop

    def train(self) -> str:
        """Train to ``train.steps``; the status: complete, interrupted (Ctrl-C/SIGTERM) or diverged."""
        from zoo.progress import progress_bar

        recipe, ctx, device = self.recipe, self.ctx, self.device
        workers = recipe.data.workers if recipe.data.workers is not None else default_workers(device)
        loader = train_loader(self.dataset, self.step, recipe.train.steps, recipe.train.batch_size, ctx.rank,
                              ctx.world_size, workers, pin_memory=device.type == "cuda")
        self.trained = self._wrap_ddp()
        self.start_time = time.perf_counter()
        self.window_start, self.window_images = time.perf_counter(), 0
        bar = progress_bar(self.request.progress and ctx.is_main)
        task = bar.add_task(f"distill {self.student.name}", total=recipe.train.steps, completed=self.step, info="")
        self.trained.train()
        try:
            with bar, StopFlag() as stop:
                for batch in loader:
                    seed_step(recipe.train.seed, self.step, ctx.rank)
                    x, targets, raw_targets = self._inputs(batch)
                    losses, grad_norm, lr = self._update(x, targets)
                    self.step += 1
                    self.window_images += recipe.train.batch_size
                    self.guard.observe(self.step, losses.total, grad_norm)
                    fd_term = self._fd_term(losses, raw_targets)
                    if fd_term is not None:
                        self.fd_window.add(fd_term)
                    if self._due(recipe.train.log_every) or self.first_loss is None:
                        self._log(losses, grad_norm, lr, bar, task)
                        if self.guard.check(ctx, self.step):
                            return STATUS_DIVERGED
                    else:
                        bar.update(task, completed=self.step)
                    if recipe.eval.every and self._due(recipe.eval.every) and self.step < recipe.train.steps:
                        if self.guard.check(ctx, self.step):
                            return STATUS_DIVERGED
                        self._evaluate()
                    if self._due(recipe.train.checkpoint_every) and self.step < recipe.train.steps:
                        if not self._save_checkpoint():
                            return STATUS_DIVERGED
                    if any_rank(stop.requested, ctx, device) and self.step < recipe.train.steps:
                        self.signal_name = stop.signal_name
                        raise KeyboardInterrupt(stop.signal_name or "stop requested")
        except KeyboardInterrupt:
            return STATUS_DIVERGED if not self._save_checkpoint() else STATUS_INTERRUPTED
        return STATUS_COMPLETE if self._save_checkpoint() else STATUS_DIVERGED

    def _wrap_ddp(self) -> nn.Module:
        if not self.ctx.active:
            return self.model
        loss = self.recipe.loss
        unused = any(v == 0 for v in [*loss.summary_weights.values(), *loss.feature_weights.values()])
        # a dropped term (or a teacher without a summary) leaves a head without gradients
        unused = unused or any(not getattr(t, "has_summary", True) for t in self.teachers)
        device = self.device
        return nn.parallel.DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)

    def _due(self, every: int) -> bool:
        return bool(every) and (self.step % every == 0 or self.step == self.recipe.train.steps)

    def _inputs(self, batch: Any) -> tuple[torch.Tensor, dict, dict]:
        """The student's view, the training targets and the teachers' own outputs of one batch.

        Targets come from the cache or the live teachers; under PHI-S the training targets are standardised.
        """
        device = self.device
        if self.cache is not None:  # (crops, cache rows): the stored teacher outputs of exactly these views
            batch, rows = batch
            targets = self.cache.targets(rows, device)
            batch = batch.to(device, non_blocking=True)
        else:
            batch = batch.to(device, non_blocking=True)
            with torch.no_grad():
                targets = {t.name: t(batch) for t in self.teachers}
        x = student_view(batch, self.recipe.resolution)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if self.standardizer is None:
            return x, targets, targets
        return x, self.standardizer.standardize(targets), targets

    def _fd_term(self, losses: StepLosses, raw_targets: dict) -> torch.Tensor | None:
        """This step's FD-teacher feature term in the teacher's own space (for ``fd_loss_train``).

        Without PHI-S it is the training term itself; with PHI-S the heads predict standardised features,
        which are mapped back first, so the figure is comparable between runs with and without it.
        """
        if self.standardizer is None or losses.fd_prediction is None:
            return losses.fd_term
        from zoo.losses import feature_loss

        with torch.no_grad():
            prediction = self.standardizer.features[self.fd_teacher].inverse(losses.fd_prediction)
            return feature_loss(prediction, raw_targets[self.fd_teacher].features, self.recipe.loss.alpha,
                                self.recipe.loss.beta)

    def _update(self, x: torch.Tensor, targets: dict) -> tuple[StepLosses, torch.Tensor | None, float]:
        """Forward, backward, clip, optimiser and schedule step; returns the losses, the gradient norm and the LR."""
        with self.autocast():
            losses = self.trained(x, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        self.scaler.unscale_(self.optimizer)
        # Kept as a tensor (float() would synchronise a GPU every step); the guard reads it later.
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if self.recipe.train.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.recipe.train.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses, grad_norm, lr

    def _log(self, losses: StepLosses, grad_norm: torch.Tensor | None, lr: float, bar: Any, task: Any) -> None:
        """One metrics line (rank 0), the bar, ``on_step``; the one sync point of ordinary steps."""
        values = mean_over_ranks({"total": losses.total.detach(), **{k: v.detach() for k, v in losses.terms.items()}},
                                 self.ctx)
        if self.first_loss is None:
            self.first_loss = values["total"]
        self.last_loss = values["total"]
        now = time.perf_counter()
        rate = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        line = {"step": self.step, "lr": lr, "loss": values, "total": values["total"], "img_per_s": rate,
                "grad_norm": None if grad_norm is None else float(grad_norm), "weights": {k: float(v) for k, v in losses.weights.items()},
                "time": self.elapsed_before + now - self.start_time}
        if self.ctx.is_main:
            append_metrics(self.paths.metrics, line)
        bar.update(task, completed=self.step, info=_bar_info(values, rate))
        if self.request.on_step is not None:
            self.request.on_step(self.step, finite_or_none(line))

    def _evaluate(self) -> None:
        """The held-out FD loss now (logged, and passed to ``on_eval``)."""
        to_teacher_space = self.standardizer.destandardize if self.standardizer is not None else None
        self.fd_loss, self.eval_losses = self.held_out.evaluate(self.model.backbone, self.model.heads, self.recipe,
                                                                self.fd_teacher, self.autocast, to_teacher_space)
        self.eval_step = self.step
        if self.ctx.is_main:
            append_metrics(self.paths.metrics, {"step": self.step, "eval": True, "fd_loss": self.fd_loss,
                                                "losses": self.eval_losses})
        if self.request.on_eval is not None and self.fd_loss is not None:
            self.request.on_eval(self.step, self.fd_loss)

    def _save_checkpoint(self) -> bool:
        """Write the checkpoint unless the run has diverged (then False: the last good one stays)."""
        if self.guard.check(self.ctx, self.step, self.model.parameters()):
            return False
        if self.ctx.is_main:
            atomic_torch_save(self._checkpoint_state(), self.paths.checkpoint)
        self.last_checkpoint_step = self.step
        return True

    def _checkpoint_state(self) -> dict[str, Any]:
        model = self.model
        return {
            "backbone": model.backbone.state_dict(), "heads": model.heads.state_dict(),
            "balancer": model.balancer.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
            "rng": rng_state(), "recipe": self.recipe.to_dict(), "run_id": self.run_id,
            "backbone_name": self.student.name, "backbone_spec": self.student.spec,
            "train_loss_first": self.first_loss, "train_loss_last": self.last_loss,
            "fd_train_window": self.fd_window.state_dict(),
            "wall_time_s": self.elapsed_before + time.perf_counter() - self.start_time,
            # PHI-S: the heads predict standardised targets; loading maps their outputs back with these
            "standardizer": ({k: v.detach().cpu() for k, v in self.standardizer.state_dict().items()}
                             if self.standardizer is not None else None),
            "standardize_source": self.standardize_source,
        }

    # ------------------------------------------------------------------ after the loop

    def finish(self, status: str) -> dict[str, Any]:
        """Final evaluation and measurement of a complete run, the record, and the outcome."""
        wall = self.elapsed_before + time.perf_counter() - self.start_time
        self._gather_skipped()
        if status == STATUS_COMPLETE and self.eval_step != self.step:
            self._evaluate()
        fd_loss_train = self.fd_window.mean(self.ctx.world_size)
        params_m, gmacs, throughput = None, None, None
        if self.ctx.is_main:
            if status == STATUS_COMPLETE:
                params_m, gmacs, throughput = measure_backbone(self.model.backbone, self.student.name,
                                                               self.student.family, self.recipe, self.device)
            else:
                from zoo.bench import count_params_m

                params_m = count_params_m(self.model.backbone)
        record = self._record(status, wall, params_m, gmacs, throughput, fd_loss_train)
        if self.ctx.is_main:
            write_record(self.paths.root, record)
        return self._outcome(status, record.to_dict())

    def _gather_skipped(self) -> None:
        """Images found unreadable while training, on any rank, into rank 0's count (each rank has its own log)."""
        log = getattr(self.images, "bad_log", None)
        if log is None or not self.ctx.active:
            return
        import torch.distributed as dist

        found: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(found, log.ids().tolist())
        for ids in found:
            for index in ids:
                log.add(int(index))

    def _record(self, status: str, wall: float, params_m: float | None, gmacs: float | None,
                throughput: dict | None, fd_loss_train: float | None) -> RunRecord:
        recipe, teachers = self.recipe, self.teachers
        random_teacher = any(t.is_random for t in teachers)
        diverged = status == STATUS_DIVERGED
        fd_loss = None if diverged else self.fd_loss
        notes = [RANDOM_TEACHER_NOTE] if random_teacher else []
        if diverged:
            notes.append(f"diverged at step {self.guard.diverged_step}: non-finite loss or gradient norm")
        elif fd_loss is None:
            notes.append(f"fd_loss is null: no {self.fd_teacher} teacher in this run"
                         if self.fd_teacher not in [t.name for t in teachers]
                         else "fd_loss is null: the run stopped before evaluation")
        images = self.images
        record = RunRecord(
            run_id=self.run_id, backbone=self.student.name, kind=KIND_DISTILL, status=status,
            run_dir=str(self.paths.root), family=self.student.family, backbone_config=self.student.config,
            params_m=params_m, gmacs=gmacs, resolution=list(recipe.resolution), throughput=throughput,
            fd_loss=fd_loss, fd_loss_train=None if diverged else finite_or_none(fd_loss_train),
            losses={} if diverged else dict(self.eval_losses),
            train_loss_first=finite_or_none(self.first_loss), train_loss_last=finite_or_none(self.last_loss),
            steps=self.step, wall_time_s=wall, teachers=[t.describe() for t in teachers],
            random_teacher=random_teacher, note="; ".join(notes) if notes else None, recipe=recipe.name,
            balancing=recipe.loss.balancing, device=str(self.device), world_size=self.ctx.world_size,
            versions=versions(), diverged_step=self.guard.diverged_step if diverged else None,
            data_skipped=len(images.skipped), data_skipped_examples=_skipped_names(images),
            standardize=self._describe_standardizer(),
        )
        if hasattr(images, "describe"):
            record.extra["data"] = images.describe()  # counts, duplicates, verify pass and its cost
        if self.cache is not None:
            record.extra["teacher_cache"] = str(self.cache.path)
        return record

    def _describe_standardizer(self) -> dict[str, Any] | None:
        if self.standardizer is None:
            return None
        batches = self.recipe.loss.standardize_batches if self.standardize_source == "estimated" else None
        return {"method": "phi-s", "source": self.standardize_source, "batches": batches,
                "teachers": self.standardizer.describe(),
                "note": "heads learn standardised targets; fd_loss and fd_loss_train are in each teacher's own space"}

    def _outcome(self, status: str, record: dict[str, Any]) -> dict[str, Any]:
        total = self.recipe.train.steps
        if status == STATUS_INTERRUPTED:
            raise DistillInterrupted(
                f"interrupted at step {self.step}/{total}; checkpoint saved in {self.paths.root}. "
                f"Resume with: zoo distill --resume {self.paths.root}", record, self.signal_name)
        if status == STATUS_DIVERGED:
            raise DivergedError(self._diverged_message(), record)
        return record

    def _diverged_message(self) -> str:
        lower = f"{self.recipe.optim.lr / 10:g}"
        head = (f"diverged at step {self.guard.diverged_step}/{self.recipe.train.steps}: the loss, gradient norm "
                f"or weights became NaN or infinite (nothing non-finite was saved).")
        if self.last_checkpoint_step is not None:
            return (f"{head} Last good checkpoint: {self.paths.checkpoint} (step {self.last_checkpoint_step}). "
                    f"Resume it with a lower learning rate: zoo distill --resume {self.paths.root} "
                    f"--set optim.lr={lower}")
        return (f"{head} No checkpoint was written before it (the first was due at step "
                f"{self.recipe.train.checkpoint_every}). Start again with a lower learning rate: zoo distill "
                f"--backbone {self.student.spec or self.student.name} --recipe {self.paths.recipe} "
                f"--set optim.lr={lower}")


def _on_device(standardizer: Any, device: torch.device) -> Any:
    # Each part on its own: TeacherStandardizer's own _apply(outputs, inverse) shadows nn.Module._apply,
    # so TeacherStandardizer.to() fails.
    standardizer.summary.to(device)
    standardizer.features.to(device)
    return standardizer


def _skipped_names(images: Any) -> list[str]:
    """The first few unreadable training images, relative to the source root."""
    if hasattr(images, "skipped_names"):
        return list(images.skipped_names)
    names = []
    for path in images.skipped[:SKIPPED_EXAMPLES]:
        try:
            names.append(Path(path).relative_to(images.root).as_posix() if images.root else Path(path).name)
        except ValueError:
            names.append(Path(path).name)
    return names


def _bar_info(values: dict[str, float], rate: float) -> str:
    parts = [f"loss {values['total']:.4f}"]
    parts += [f"{k} {v:.3f}" for k, v in values.items() if k != "total"]
    return " ".join(parts) + f" {rate:.1f} img/s"
