"""The student: a registry name, a backbone file (``my-net.yaml``) or a built backbone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.backbone import Backbone
from zoo.errors import ConfigError, ZooError

BACKBONE_FILE_SUFFIXES = (".yaml", ".yml")


@dataclass
class Student:
    """The built backbone and how the run names it."""

    module: Backbone
    name: str  # the record's backbone name: a registry name, or a backbone file's stem
    family: str | None
    config: dict[str, Any]
    spec: str | None  # what builds it again on resume: the registry name or the file's absolute path


def is_backbone_file(name: str) -> bool:
    return str(name).lower().endswith(BACKBONE_FILE_SUFFIXES)


def run_name_of(backbone: str | Backbone) -> str:
    """The backbone's name in run ids and records (a file's stem, not its path)."""
    if isinstance(backbone, str):
        return Path(backbone).stem if is_backbone_file(backbone) else backbone
    return str(getattr(backbone, "name", type(backbone).__name__))


def build_student(backbone: str | Backbone, resolution: tuple[int, int]) -> Student:
    """Build (or check) the student at the recipe resolution; unknown names and bad sizes fail in one line."""
    if isinstance(backbone, str):
        from zoo.registry import create_backbone, get_entry

        entry = get_entry(backbone)
        model = create_backbone(backbone, resolution)
        config = {"timm_name": entry.timm_name, **{k: plain_value(v) for k, v in entry.kwargs.items()}}
        spec = str(Path(backbone).resolve()) if is_backbone_file(backbone) else entry.name
        return Student(model, run_name_of(backbone), entry.family, config, spec)
    if not isinstance(backbone, Backbone):
        raise ConfigError(f"backbone must be a registry name or a zoo.backbone.Backbone, got {type(backbone).__name__}")
    backbone.check_resolution(*resolution)
    name = run_name_of(backbone)
    family = None
    try:
        from zoo.registry import get_entry

        family = get_entry(name).family
    except ZooError:
        family = getattr(backbone, "family", None)
    config = getattr(backbone, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else ({} if config is None else plain_value(config))
    return Student(backbone, name, family, config, None)


def plain_value(value: Any) -> Any:
    """``value`` as JSON-friendly data (unknown objects through ``str``)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return str(value)
