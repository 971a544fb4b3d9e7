"""Resuming: the saved state of a run, and which recipe keys a resumed run may change."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from zoo.errors import BadFileError, ConfigError, ZooError
from zoo.recipe import Recipe, recipe_from_dict
from zoo.runs import STATUS_COMPLETE, RunPaths, RunRecord, read_record

# Keys a resumed run may change: the optimiser (a lower LR after divergence), the length, cadences and
# measurements. Everything else (teachers, data, resolution, batch, seed, loss) defines what the run
# trains, and changing it would make the checkpoint's state a different run's.
RESUMABLE_KEYS = ("name", "description", "optim.", "train.steps", "train.checkpoint_every", "train.log_every",
                  "train.grad_clip", "train.amp", "eval.every", "eval.batch_size", "eval.fd_loss_train_steps",
                  "bench.", "data.workers", "data.verify_limit")
REQUIRED_STATE = ("backbone", "heads", "balancer", "optimizer", "scheduler", "step", "recipe")


def check_state(state: Any, path: Path) -> dict[str, Any]:
    """``state`` if it is a zoo distill checkpoint, else a one-line :class:`BadFileError`."""
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_STATE):
        raise BadFileError(f"{path} is not a zoo distill checkpoint (it lacks "
                           f"{', '.join(k for k in REQUIRED_STATE if not isinstance(state, dict) or k not in state)})")
    return state


def with_teacher_cache(recipe: Recipe, teacher_cache: str | os.PathLike | None = None) -> Recipe:
    """``recipe`` with ``data.teacher_cache`` set to the cache folder the run reads, as an absolute path.

    ``teacher_cache`` (``--teacher-cache``) wins over the recipe's own key; without either the recipe is
    returned as is. The run folder's ``recipe.yaml`` then says which cache made the run, from anywhere.
    """
    folder = teacher_cache if teacher_cache is not None else recipe.data.teacher_cache
    if folder is None:
        return recipe
    absolute = os.path.abspath(os.fspath(folder))
    if absolute == recipe.data.teacher_cache:
        return recipe
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, teacher_cache=absolute))


def finished_record(run_dir: Path, step: int, steps: int) -> RunRecord | None:
    """The record of a run that already ended complete at its checkpoint's ``step`` (``steps`` or more), else None.

    Resuming such a run has nothing to train; it would only evaluate and measure again and write over
    the record. A run whose record is missing or not complete (killed after its last checkpoint) is
    finished by resuming it, so it gets None.
    """
    if step < steps or not RunPaths(run_dir).summary.is_file():
        return None
    try:
        record = read_record(run_dir)
    except (ZooError, TypeError, ValueError):  # an unreadable record: resuming writes a good one
        return None
    if record.status != STATUS_COMPLETE or record.steps != step:
        return None
    return record


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not path.endswith("_weights"):
            flat.update(_flat(value, path + "."))
        else:
            flat[path] = value
    return flat


def changed_keys(saved: Recipe, given: Recipe) -> list[str]:
    """Dotted recipe keys whose value differs between ``saved`` and ``given``."""
    a, b = _flat(saved.to_dict()), _flat(given.to_dict())
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def continue_recipe(saved: Mapping[str, Any], given: Recipe | None) -> Recipe:
    """The recipe a resumed run continues under: the saved one, with the resumable changes of ``given``.

    A change of any other key is refused in one line naming the key (start a new run for it).
    """
    # Cache folders compare as absolute paths: recipe.yaml records one, a search proxy's recipe may give it relative.
    saved_recipe = with_teacher_cache(recipe_from_dict(saved))
    if given is None:
        return saved_recipe
    given = with_teacher_cache(given)
    changed = [k for k in changed_keys(saved_recipe, given) if k not in ("name", "description")]
    fixed = [k for k in changed if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)]
    if fixed:
        key = fixed[0]
        before, after = _flat(saved_recipe.to_dict()).get(key), _flat(given.to_dict()).get(key)
        raise ConfigError(f"recipe key '{key}' cannot change when resuming (saved {before!r}, given {after!r}): it "
                          "changes what the run trains; start a new run instead (a resumed run may change only "
                          "optim.*, train.steps, cadences, eval and bench settings)")
    if not changed:
        return saved_recipe
    data = given.to_dict()
    data["name"], data["description"] = saved_recipe.name, saved_recipe.description
    return recipe_from_dict(data)
