"""A search trial as a backbone file (the format of :mod:`zoo.backbones.files`).

``zoo search export NAME_OR_PATH [--trial N]`` writes, for any space::

    name: pick
    family: eradio
    resolution: 224
    config: {dim: 96, depths: [3, 3, 5, 5], window_size: [7, 7], ...}
    source: {storage: ..., study: ..., trial: 7, throughput: ..., fd_loss: ...}

and ``create_backbone("pick.yaml")`` / ``zoo distill --backbone pick.yaml``
build it back through the family's builder, the same one the trial measured.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from zoo.backbones.files import is_backbone_file, write_backbone_file
from zoo.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def export_path(name_or_path: str) -> tuple[str, Path]:
    """``"my-net"`` -> ``("my-net", my-net.yaml)``; ``"dir/x.yaml"`` -> ``("x", dir/x.yaml)``."""
    if is_backbone_file(name_or_path):
        path = Path(name_or_path)
        return path.stem, path
    if "/" in name_or_path or os.sep in name_or_path or not _NAME.match(name_or_path):
        raise ConfigError(f"export takes a name (letters, digits, - _ .) or a .yaml path, got {name_or_path!r}")
    return name_or_path, Path(f"{name_or_path}.yaml")


def pick_trial(study: Any, trial_number: int | None) -> Any:
    """Trial ``trial_number``, or the lowest FD loss on the study's feasible front."""
    from zoo.search.study import find_trial, pareto_trials

    if trial_number is not None:
        return find_trial(study, trial_number)
    front = pareto_trials(study)
    if not front:
        raise ConfigError(f"study {study.study_name!r} has no complete feasible trial to export")
    return front[0]


def export_study_trial(study: Any, target: str, trial_number: int | None = None,
                       storage_url: str | None = None) -> tuple[Path, Any, dict[str, Any]]:
    """Write a trial of ``study`` as the backbone file ``target``; returns (path, trial, its record)."""
    from optuna.trial import TrialState

    from zoo.search.space import Candidate, make_space
    from zoo.search.study import LEGACY_SPACE, study_space, trial_record

    trial = pick_trial(study, trial_number)
    if trial.state != TrialState.COMPLETE:
        raise ConfigError(f"trial {trial.number} is {trial.state.name.lower()}: only complete trials can be exported")
    record = trial_record(trial)
    search = record.get("search") or {}
    space = study_space(study) or make_space(search.get("space", LEGACY_SPACE))
    name, path = export_path(target)
    candidate = Candidate(family=space.family, config=record["backbone_config"], resolution=record["resolution"][0])
    source = {"storage": storage_url, "study": study.study_name, "trial": trial.number, "fd_loss": record["fd_loss"],
              "throughput": (record.get("throughput") or {}).get("median"), "params_m": record.get("params_m"),
              "gmacs": record.get("gmacs")}
    write_backbone_file(path, space.backbone_file(candidate, name, source))
    return path, trial, record
