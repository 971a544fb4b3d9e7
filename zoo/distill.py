"""The distillation engine: one student, several frozen teachers, one recipe.

``distill(backbone, recipe)`` trains the backbone plus per-teacher adaptor
heads (AdamW, linear warm-up then cosine, AMP where the device has it,
gradient clipping), evaluates the held-out FD loss, measures throughput and
FLOPs, and writes ``<out_dir>/<run-id>/`` with ``recipe.yaml``,
``metrics.jsonl``, ``checkpoint.pt`` and ``summary.json``.

Resuming is exact: every batch is a pure function of ``(seed, step)`` and the
global RNG is re-seeded from ``(seed, step, rank)`` before each step, so a run
stopped and resumed ends with the weights of an uninterrupted run.

Under ``torchrun`` the same call trains one model with DistributedDataParallel
(gloo on CPU, NCCL on CUDA); the recipe's batch size stays the global one.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from zoo.backbone import Backbone
from zoo.checkpoints import atomic_torch_save, atomic_write_json, atomic_write_text, load_checkpoint
from zoo.data import (CropDataset, default_workers, eval_batches, load_images, shared_resolution, student_view,
                      train_loader)
from zoo.errors import ConfigError, ZooError
from zoo.recipe import Recipe, load_recipe, recipe_from_dict

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.yaml"
SUMMARY_FILE = "summary.json"
FD_TEACHER_KIND = "dinov2"  # the FD loss is the DINOv2 teacher's feature loss (paper Table 7)
RANDOM_TEACHER_NOTE = "random teacher: not a real distillation result"


class DistillInterrupted(ZooError):
    """The run stopped on Ctrl-C/SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


# --------------------------------------------------------------------------- processes


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> DistContext:
    """Join the ``torchrun`` process group (if the environment describes one)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    # Kept for the process's lifetime: several backbones in one command reuse the group
    # (re-creating it on torchrun's rendezvous store hangs).
    atexit.register(_destroy_group)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_train_device(spec: str, ctx: DistContext) -> torch.device:
    from zoo.bench import resolve_device

    device = resolve_device(spec)
    if device.type == "cuda" and ctx.active:
        device = torch.device("cuda", ctx.local_rank)
    return device


def _broadcast(value: Any, ctx: DistContext) -> Any:
    if not ctx.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any of them (all ranks stop together)."""
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# --------------------------------------------------------------------------- model pieces


class DistillModel(nn.Module):
    """Backbone + adaptor heads + loss balancer: one module, so DDP syncs all gradients."""

    def __init__(self, backbone: Backbone, heads: nn.Module, balancer: nn.Module) -> None:
        super().__init__()
        self.backbone, self.heads, self.balancer = backbone, heads, balancer

    def forward(self, x: torch.Tensor, targets: dict, recipe: Recipe) -> tuple[torch.Tensor, dict, dict]:
        from zoo.losses import distillation_losses

        out = self.backbone(x)
        predictions = self.heads(out)
        losses = distillation_losses(predictions, targets, recipe.loss.summary_weights, recipe.loss.feature_weights,
                                     recipe.loss.alpha, recipe.loss.beta)
        total, weights = self.balancer(losses, out[0])
        return total, losses, weights


def lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up to 1, then cosine down to ``min_lr / lr`` at the last step."""
    warmup, total = recipe.optim.warmup_steps, recipe.train.steps
    floor = recipe.optim.min_lr / recipe.optim.lr
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and other 1-D parameters (timm's convention)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.optim.lr, betas=tuple(recipe.optim.betas))


def amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA by default, none (fp32) on CPU by default."""
    mode = recipe.train.amp
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if mode == "off":
        return None
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("recipe key 'train.amp' fp16 needs a CUDA device; use bf16 or off on CPU")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _seed_step(seed: int, step: int, rank: int) -> None:
    """Re-seed the global RNGs (dropout, drop-path) from (seed, step, rank): exact resume."""
    torch.manual_seed((int(seed) * 1_000_003 + int(step) * 101 + int(rank)) % (2**63 - 1))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- teachers and backbone


def _prepare_teachers(teachers: Sequence[Any] | None, recipe: Recipe, device: torch.device,
                      offline: bool | None) -> list[Any]:
    from zoo.teachers import Teacher, build_teachers

    if teachers is None:
        return build_teachers(recipe.teachers, device, offline)
    if all(isinstance(t, str) for t in teachers):
        return build_teachers(list(teachers), device, offline)
    if not all(isinstance(t, Teacher) for t in teachers):
        raise ConfigError("teachers must be all spec strings or all built Teacher objects")
    return [t.to(device) for t in teachers]


def _prepare_backbone(backbone: str | Backbone, resolution: tuple[int, int]) -> tuple[Backbone, str, str | None, dict]:
    """``(module, name, family, config)`` of the student."""
    if isinstance(backbone, str):
        from zoo.registry import create_backbone, get_entry

        entry = get_entry(backbone)
        model = create_backbone(backbone, resolution)
        config = {"timm_name": entry.timm_name, **{k: _plain_value(v) for k, v in entry.kwargs.items()}}
        return model, entry.name, entry.family, config
    if not isinstance(backbone, Backbone):
        raise ConfigError(f"backbone must be a registry name or a zoo.backbone.Backbone, got {type(backbone).__name__}")
    backbone.check_resolution(*resolution)
    name = getattr(backbone, "name", type(backbone).__name__)
    family = None
    try:
        from zoo.registry import get_entry

        family = get_entry(name).family
    except ZooError:
        family = getattr(backbone, "family", None)
    config = getattr(backbone, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else ({} if config is None else _plain_value(config))
    return backbone, name, family, config


def _plain_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    return str(value)


# --------------------------------------------------------------------------- evaluation


class HeldOut:
    """The held-out images with the teachers' targets computed once (teachers are frozen)."""

    def __init__(self, paths: Sequence[Path], shared_hw: tuple[int, int], student_hw: tuple[int, int],
                 teachers: Sequence[Any], batch_size: int, device: torch.device) -> None:
        self.student_hw = student_hw
        self.batches: list[tuple[torch.Tensor, dict]] = []
        for images in eval_batches(list(paths), shared_hw, student_hw, batch_size):
            images = images.to(device)
            targets = {t.name: t(images) for t in teachers}
            self.batches.append((student_view(images, student_hw), targets))

    @torch.no_grad()
    def evaluate(self, backbone: nn.Module, heads: nn.Module, recipe: Recipe,
                 autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[float | None, dict[str, float]]:
        """``(fd_loss, {"<teacher>/summary": ..., "<teacher>/features": ...})``, unweighted (λ = γ = 1)."""
        from zoo.losses import distillation_losses, feature_loss

        was_training = backbone.training, heads.training
        backbone.eval(), heads.eval()
        sums: dict[str, float] = {}
        fd_sum, count = 0.0, 0
        fd_name = _fd_teacher(self.batches[0][1]) if self.batches else None
        try:
            for x, targets in self.batches:
                with autocast():
                    predictions = heads(backbone(x))
                n = x.shape[0]
                losses = distillation_losses(predictions, targets, alpha=recipe.loss.alpha, beta=recipe.loss.beta)
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * n
                if fd_name is not None:
                    fd_sum += float(feature_loss(predictions[fd_name].features, targets[fd_name].features,
                                                 recipe.loss.alpha, recipe.loss.beta)) * n
                count += n
        finally:
            backbone.train(was_training[0]), heads.train(was_training[1])
        losses = {k: v / count for k, v in sums.items()}
        return (fd_sum / count if fd_name is not None else None), losses


def _fd_teacher(targets: dict) -> str | None:
    return FD_TEACHER_KIND if FD_TEACHER_KIND in targets else None


# --------------------------------------------------------------------------- run folder


def new_run_id(backbone_name: str, recipe: Recipe, out_dir: str | os.PathLike = "runs") -> str:
    """``<backbone>-<recipe>-<UTC time>``, with ``-2``, ``-3``... when runs start within the same second."""
    if backbone_name.lower().endswith((".yaml", ".yml")):  # a backbone file from `zoo search --export`
        backbone_name = Path(backbone_name).stem
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{backbone_name}-{recipe.name}-{stamp}".replace("/", "_")
    run_id, number = base, 1
    while (Path(out_dir) / run_id).exists():
        number += 1
        run_id = f"{base}-{number}"
    return run_id


def find_run_dir(run: str | os.PathLike, out_dir: str | os.PathLike = "runs") -> Path:
    """A run folder given as a path or as a name under ``out_dir``; it must hold a checkpoint."""
    for candidate in (Path(run), Path(out_dir) / str(run)):
        if (candidate / CHECKPOINT_FILE).is_file():
            return candidate
    raise ZooError(f"no checkpoint to resume in '{run}' (looked for {Path(run) / CHECKPOINT_FILE} and "
                   f"{Path(out_dir) / str(run) / CHECKPOINT_FILE})")


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines past the checkpoint (they are logged again after resuming)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and stops. A second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------- measurement


def measure_backbone(backbone: nn.Module, name: str, family: str | None, recipe: Recipe,
                     device: torch.device) -> tuple[float, float | None, dict | None]:
    """``(params_m, gmacs, throughput)`` of a copy of the trained backbone (eval mode, recipe resolution)."""
    from zoo.bench import BenchSettings, bench_model, count_params_m
    from zoo.flops import count_gmacs

    model = copy.deepcopy(backbone).eval()
    params_m = count_params_m(model)
    if not recipe.bench.enabled:
        return params_m, count_gmacs(model, recipe.resolution, device="cpu").gmacs, None
    settings = BenchSettings(resolution=recipe.resolution, batch_size=recipe.bench.batch_size, device=str(device),
                             warmup=recipe.bench.warmup, repeats=recipe.bench.repeats,
                             steps_per_repeat=recipe.bench.steps_per_repeat, flops=True)
    result = bench_model(model, settings, name=name, family=family)
    return params_m, result.gmacs, dict(result.throughput)


def _versions() -> dict[str, str]:
    from zoo.bench import versions

    info = dict(versions())
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except Exception:  # noqa: BLE001 - optional in the record
        info["open_clip"] = None
    return info


# --------------------------------------------------------------------------- the engine


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
) -> dict[str, Any]:
    """Distill ``backbone`` from the recipe's teachers; returns the run record (``summary.json``).

    Args:
        backbone: a registry name (built at the recipe resolution) or a built :class:`Backbone`.
        recipe: a :class:`Recipe` or a recipe name/path.
        out_dir: parent of the run folder ``<out_dir>/<run_name>``.
        run_name: the run id (default ``<backbone>-<recipe>-<UTC time>``).
        resume: continue ``<out_dir>/<run_name>`` from its checkpoint (the saved recipe is used).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: a rich progress bar on stderr (rank 0).
        teachers: teacher spec strings, or built teachers to reuse across backbones (default: the recipe's).
        on_eval: called ``(step, fd_loss)`` after each held-out evaluation (e.g. Optuna pruning; may raise).
        offline: passed to :func:`zoo.teachers.build_teachers`.
        on_step: called ``(step, metrics)`` after each optimiser step (tests, custom logging).
        teacher_cache: a :mod:`zoo.cache` folder: training targets are read from it (memory-mapped) instead of
            running the teachers; the student sees the stored views. A cache that does not fit is refused.
            Default: the recipe's ``data.teacher_cache`` (so ``--set data.teacher_cache=DIR`` reaches the search proxy).
    """
    ctx = setup_distributed(device)
    return _distill(backbone, recipe, Path(out_dir), run_name, resume, device, progress, teachers, on_eval,
                    offline, on_step, ctx, teacher_cache)


def _distill(backbone, recipe, out_dir, run_name, resume, device_spec, progress, teachers, on_eval, offline,
             on_step, ctx: DistContext, teacher_cache=None) -> dict[str, Any]:
    from zoo.heads import AdaptorHeads
    from zoo.losses import LossBalancer, loss_term_names

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    device = resolve_train_device(device_spec, ctx)
    student_hw = recipe.resolution
    if recipe.train.batch_size % ctx.world_size:
        raise ConfigError(f"recipe key 'train.batch_size' ({recipe.train.batch_size}) must be divisible by the "
                          f"number of processes ({ctx.world_size})")

    # ---- run folder and (on resume) the saved state
    state = None
    if resume:
        if run_name is None:
            raise ConfigError("resume needs the run name (or folder) to continue")
        run_dir = find_run_dir(run_name, out_dir)
        state = load_checkpoint(run_dir / CHECKPOINT_FILE, map_location="cpu")
        recipe = recipe_from_dict(state["recipe"])  # the run continues under its own recipe
        student_hw = recipe.resolution
    else:
        name_for_id = backbone if isinstance(backbone, str) else getattr(backbone, "name", "backbone")
        run_id = _broadcast(run_name or new_run_id(str(name_for_id), recipe, out_dir), ctx)
        run_dir = out_dir / run_id
        if (run_dir / CHECKPOINT_FILE).exists() or (run_dir / SUMMARY_FILE).exists():
            raise ZooError(f"run folder {run_dir} already holds a run; resume it with --resume {run_dir} "
                           "or choose another --run-name")
    run_id = run_dir.name

    # ---- data, teachers, model
    images = load_images(recipe.data.source, recipe.data.path, recipe.eval.images, recipe.data.verify_limit,
                         warn=ctx.is_main)
    torch.manual_seed(recipe.train.seed)  # a registry backbone and the heads start from the recipe's seed
    model_backbone, name, family, config = _prepare_backbone(backbone, student_hw)
    teacher_list = _prepare_teachers(teachers, recipe, device, offline)
    shared_hw = shared_resolution(student_hw, *[t.resolution for t in teacher_list])
    names = [t.name for t in teacher_list]
    terms = loss_term_names(names, recipe.loss.summary_weights, recipe.loss.feature_weights)
    heads = AdaptorHeads(model_backbone.summary_dim, model_backbone.feature_dim, teacher_list)
    balancer = LossBalancer(recipe.loss.balancing, terms, model_backbone.summary_dim)
    model = DistillModel(model_backbone, heads, balancer).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, recipe))
    start_step, first_loss, elapsed_before = 0, None, 0.0
    if state is not None:
        model.backbone.load_state_dict(state["backbone"])
        model.heads.load_state_dict(state["heads"])
        model.balancer.load_state_dict(state["balancer"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state.get("rng", {}))
        start_step = int(state["step"])
        first_loss = state.get("train_loss_first")
        elapsed_before = float(state.get("wall_time_s", 0.0))
    trained = model
    if ctx.active:
        weights = list(recipe.loss.summary_weights.values()) + list(recipe.loss.feature_weights.values())
        unused = any(v == 0 for v in weights)  # a dropped term leaves its head without gradients
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)

    dtype = amp_dtype(recipe, device)
    # fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a pass-through).
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if state is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RECIPE_FILE, recipe.to_yaml())
        if state is not None:
            _trim_metrics(run_dir / METRICS_FILE, start_step)
        elif (run_dir / METRICS_FILE).exists():
            (run_dir / METRICS_FILE).unlink()
    held_out = HeldOut(images.holdout, shared_hw, student_hw, teacher_list, recipe.eval.batch_size, device)

    dataset = CropDataset(images.train, shared_hw, recipe.train.seed, recipe.train.batch_size,
                          recipe.augment.scale, recipe.augment.ratio, recipe.augment.hflip)
    cache = None
    teacher_cache = teacher_cache if teacher_cache is not None else recipe.data.teacher_cache
    if teacher_cache is not None:
        from zoo.cache import CachedCropDataset, open_for_training

        cache = open_for_training(teacher_cache, recipe, teacher_list, images, shared_hw)
        dataset = CachedCropDataset(dataset, cache)
    workers = recipe.data.workers if recipe.data.workers is not None else default_workers(device)
    loader = train_loader(dataset, start_step, recipe.train.steps, recipe.train.batch_size, ctx.rank,
                          ctx.world_size, workers, pin_memory=device.type == "cuda")

    def save(step: int, last_loss: float | None, wall: float) -> None:
        if not ctx.is_main:
            return
        atomic_torch_save({
            "backbone": model.backbone.state_dict(), "heads": model.heads.state_dict(),
            "balancer": model.balancer.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step, "rng": _rng_state(),
            "recipe": recipe.to_dict(),
            "run_id": run_id, "backbone_name": name, "train_loss_first": first_loss, "train_loss_last": last_loss,
            "wall_time_s": wall,
        }, run_dir / CHECKPOINT_FILE)

    last_loss = state.get("train_loss_last") if state is not None else None
    fd_loss, eval_losses, eval_step = None, {}, None
    start_time = time.perf_counter()
    step = start_step
    status = "complete"
    bar = _progress_bar(progress and ctx.is_main)
    task = bar.add_task(f"distill {name}", total=recipe.train.steps, completed=start_step, info="")
    metrics_path = run_dir / METRICS_FILE
    trained.train()
    try:
        with bar, _StopFlag() as stop:
            window_start, window_images = time.perf_counter(), 0
            for batch in loader:
                _seed_step(recipe.train.seed, step, ctx.rank)
                if cache is not None:  # (crops, cache rows): the stored teacher outputs of exactly these views
                    batch, rows = batch
                    targets = cache.targets(rows, device)
                    batch = batch.to(device, non_blocking=True)
                else:
                    batch = batch.to(device, non_blocking=True)
                    with torch.no_grad():
                        targets = {t.name: t(batch) for t in teacher_list}
                x = student_view(batch, student_hw)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    total, losses, weights = trained(x, targets, recipe)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
                if recipe.train.grad_clip:
                    # kept as a tensor: float() here would synchronise a GPU every step
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
                else:
                    grad_norm = None
                lr = optimizer.param_groups[0]["lr"]
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                window_images += recipe.train.batch_size

                values = _mean_over_ranks({"total": total.detach(), **{k: v.detach() for k, v in losses.items()}},
                                          ctx) if (step % recipe.train.log_every == 0 or step == recipe.train.steps
                                                   or first_loss is None) else None
                if values is not None:
                    if first_loss is None:
                        first_loss = values["total"]
                    last_loss = values["total"]
                    now = time.perf_counter()
                    rate = window_images / max(now - window_start, 1e-9)
                    window_start, window_images = now, 0
                    record = {"step": step, "lr": lr, "loss": values, "total": values["total"], "img_per_s": rate,
                              "grad_norm": None if grad_norm is None else float(grad_norm), "weights": weights,
                              "time": elapsed_before + now - start_time}
                    if ctx.is_main:
                        with open(metrics_path, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(record) + "\n")
                    bar.update(task, completed=step, info=_bar_info(values, rate))
                    if on_step is not None:
                        on_step(step, record)
                else:
                    bar.update(task, completed=step)

                if recipe.eval.every and step % recipe.eval.every == 0 and step < recipe.train.steps:
                    fd_loss, eval_losses = held_out.evaluate(model.backbone, model.heads, recipe, autocast)
                    eval_step = step
                    _log_eval(metrics_path, step, fd_loss, eval_losses, ctx)
                    if on_eval is not None and fd_loss is not None:
                        on_eval(step, fd_loss)
                if step % recipe.train.checkpoint_every == 0 and step < recipe.train.steps:
                    save(step, last_loss, elapsed_before + time.perf_counter() - start_time)
                if _any_rank(stop.requested, ctx, device) and step < recipe.train.steps:
                    raise KeyboardInterrupt(stop.signal_name or "stop requested")
    except KeyboardInterrupt:
        status = "interrupted"
    wall = elapsed_before + time.perf_counter() - start_time
    save(step, last_loss, wall)

    if status == "complete" and eval_step != step:
        fd_loss, eval_losses = held_out.evaluate(model.backbone, model.heads, recipe, autocast)
        _log_eval(metrics_path, step, fd_loss, eval_losses, ctx)
        if on_eval is not None and fd_loss is not None:
            on_eval(step, fd_loss)
    params_m, gmacs, throughput = None, None, None
    if ctx.is_main:
        if status == "complete":
            params_m, gmacs, throughput = measure_backbone(model.backbone, name, family, recipe, device)
        else:
            from zoo.bench import count_params_m

            params_m = count_params_m(model.backbone)
    record = _record(run_id, run_dir, name, family, config, params_m, gmacs, student_hw, throughput, fd_loss,
                     eval_losses, first_loss, last_loss, step, wall, teacher_list, recipe, device, ctx, status)
    if cache is not None:
        record["teacher_cache"] = str(cache.path)
    if ctx.is_main:
        atomic_write_json(run_dir / SUMMARY_FILE, record)
    if status == "interrupted":
        raise DistillInterrupted(
            f"interrupted at step {step}/{recipe.train.steps}; checkpoint saved in {run_dir}. "
            f"Resume with: zoo distill --backbone {name} --resume {run_dir}", record)
    return record


def _mean_over_ranks(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    keys = list(values)
    stacked = torch.stack([values[k].float().reshape(()) for k in keys])
    if ctx.active:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return dict(zip(keys, stacked.tolist()))


def _log_eval(path: Path, step: int, fd_loss: float | None, losses: dict[str, float], ctx: DistContext) -> None:
    if ctx.is_main:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "eval": True, "fd_loss": fd_loss, "losses": losses}) + "\n")


def _record(run_id, run_dir, name, family, config, params_m, gmacs, resolution, throughput, fd_loss, losses,
            first_loss, last_loss, steps, wall, teachers, recipe, device, ctx, status) -> dict[str, Any]:
    described = [t.describe() for t in teachers]
    random_teacher = any(t.is_random for t in teachers)
    notes = []
    if random_teacher:
        notes.append(RANDOM_TEACHER_NOTE)
    if fd_loss is None:
        notes.append("fd_loss is null: no dinov2 teacher in this run" if FD_TEACHER_KIND not in
                     [t.name for t in teachers] else "fd_loss is null: the run stopped before evaluation")
    return {
        "kind": "distill",
        "run_id": run_id,
        "run_dir": str(run_dir),
        "backbone": name,
        "family": family,
        "backbone_config": config,
        "params_m": params_m,
        "gmacs": gmacs,
        "resolution": list(resolution),
        "throughput": throughput,
        "fd_loss": fd_loss,
        "losses": losses,
        "train_loss_first": first_loss,
        "train_loss_last": last_loss,
        "steps": steps,
        "wall_time_s": wall,
        "teachers": described,
        "random_teacher": random_teacher,
        "note": "; ".join(notes) if notes else None,
        "recipe": recipe.name,
        "balancing": recipe.loss.balancing,
        "device": str(device),
        "world_size": ctx.world_size,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": status,
    }


def _bar_info(values: dict[str, float], rate: float) -> str:
    parts = [f"loss {values['total']:.4f}"]
    parts += [f"{k} {v:.3f}" for k, v in values.items() if k != "total"]
    return " ".join(parts) + f" {rate:.1f} img/s"


def _progress_bar(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from zoo.ui import err_console

    return Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=err_console, disable=not enabled)
