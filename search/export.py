"""Searched configurations as backbone files.

``zoo search --export NAME_OR_PATH`` writes one trial as YAML::

    name: eradio-s7
    base: eradio
    resolution: 224
    config: {dim: 96, depths: [3, 3, 5, 5], window_size: [7, 7], ...}
    source: {storage: ..., study: ..., trial: 7, throughput: ..., fd_loss: ...}

and :func:`load_backbone_file` builds it back behind the backbone contract
(the attention windows searched for ``resolution`` are kept; at another
resolution the window is picked again like any E-RADIO).
:func:`file_entry` wraps the file as a :class:`zoo.registry.BackboneEntry`,
so ``create_backbone("path/to/file.yaml")`` can accept it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from zoo.atomic import atomic_write_text
from zoo.backbone import as_hw
from zoo.errors import ConfigError

BASE = "eradio"
SUFFIXES = (".yaml", ".yml")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_backbone_file(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(SUFFIXES)


def export_path(name_or_path: str) -> tuple[str, Path]:
    """``"my-net"`` -> ``("my-net", my-net.yaml)``; ``"dir/x.yaml"`` -> ``("x", dir/x.yaml)``."""
    if is_backbone_file(name_or_path):
        path = Path(name_or_path)
        return path.stem, path
    if "/" in name_or_path or os.sep in name_or_path or not _NAME.match(name_or_path):
        raise ConfigError(f"--export takes a name (letters, digits, - _ .) or a .yaml path, got {name_or_path!r}")
    return name_or_path, Path(f"{name_or_path}.yaml")


def backbone_document(name: str, config: Mapping[str, Any], resolution: int,
                      source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from eradio import ERadioConfig

    ERadioConfig.from_dict(config)  # refuse to write a file that would not load
    document = {"name": name, "base": BASE, "resolution": int(resolution), "config": dict(config)}
    if source:
        document["source"] = dict(source)
    return document


def write_backbone_file(path: str | os.PathLike, document: Mapping[str, Any]) -> Path:
    import yaml

    return atomic_write_text(path, yaml.safe_dump(dict(document), sort_keys=False))


def read_backbone_file(path: str | os.PathLike) -> dict[str, Any]:
    """The validated document of a backbone file (ConfigError naming the file otherwise)."""
    import yaml

    from eradio import ERadioConfig
    from zoo.search.space import check_resolution

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"backbone file not found: {path}")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the backbone file ({str(err).splitlines()[0]})") from err
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: a backbone file is a mapping with name, base, resolution, config")
    missing = [key for key in ("base", "resolution", "config") if key not in document]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    if document["base"] != BASE:
        raise ConfigError(f"{path}: base {document['base']!r} is not supported (only {BASE!r})")
    if not isinstance(document["config"], dict):
        raise ConfigError(f"{path}: 'config' must be a mapping of ERadioConfig fields")
    try:
        config = ERadioConfig.from_dict(document["config"])
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    resolution = check_resolution(document["resolution"])
    name = str(document.get("name") or path.stem)
    return {**document, "name": name, "resolution": resolution, "config": config}


def load_backbone_file(path: str | os.PathLike, resolution: int | tuple[int, int] | None = None,
                       **kwargs: Any) -> Any:
    """Build the backbone a file describes, for its resolution (or ``resolution``).

    At the file's own resolution the searched windows are used as they are;
    at another one the window is picked for it (:func:`eradio.pick_window_size`).
    ``kwargs`` go to :func:`zoo.backbones.eradio_entries.build_eradio_backbone`
    (``pretrained_file``, ...).
    """
    document = read_backbone_file(path)
    return build_from_document(document["name"], document["config"], document["resolution"], resolution, **kwargs)


def build_from_document(name: str, config: Any, searched: int, resolution: int | tuple[int, int] | None = None,
                        **kwargs: Any) -> Any:
    from eradio import as_config
    from zoo.backbones.eradio_entries import build_eradio_backbone

    config = as_config(config)
    wanted = as_hw(resolution) if resolution is not None else (searched, searched)
    backbone = build_eradio_backbone(config, wanted, name=name, **kwargs)
    if wanted == (searched, searched):
        backbone.set_window_size(*config.window_size)  # the windows the search chose for this resolution
    return backbone


def _file_builder(name: str, resolution: tuple[int, int], config: dict[str, Any], searched_resolution: int,
                  **overrides: Any) -> Any:
    return build_from_document(name, config, searched_resolution, resolution, **overrides)


def file_entry(path: str | os.PathLike) -> Any:
    """A registry entry for a backbone file (``create_backbone(path)`` / ``get_entry(path)``).

    The entry is named by the path (so ``get_entry(path)`` finds it again) and
    carries the config itself, which run records then show.
    """
    from zoo.registry import BackboneEntry

    document = read_backbone_file(path)
    config = document["config"]
    neck = f"neck {config.neck_dim}" if config.neck_dim else "no neck"
    return BackboneEntry(
        name=str(path), family=BASE, builder=_file_builder,
        default_resolution=(document["resolution"], document["resolution"]),
        kwargs={"config": config.to_dict(), "searched_resolution": document["resolution"]},
        description=f"searched E-RADIO {document['name']}: d={config.dim}, depths "
                    f"{'-'.join(map(str, config.depths))}, {neck}",
    )
