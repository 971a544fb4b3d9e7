"""Backbone files: an architecture as a small YAML file that ``create_backbone`` builds.

``zoo search export`` writes one (any family with a builder below), and
``create_backbone("my-net.yaml")`` / ``zoo distill --backbone my-net.yaml``
read it back::

    name: my-net
    family: eradio            # a key of FILE_FAMILIES ("base:" in files of older versions)
    resolution: 224           # the (square) resolution it was searched at
    config: {dim: 96, depths: [3, 3, 5, 5], window_size: [7, 7], ...}
    source: {storage: ..., study: ..., trial: 7, throughput: ..., fd_loss: ...}   # optional, not read

The backbone is named by the file's stem (``my-net``), which run ids and
records then show. A family's builder receives the config mapping, the
resolution to build for and the searched resolution; E-RADIO keeps the
searched attention windows at the searched resolution and picks them again at
any other one (:func:`zoo.backbones.eradio_entries.build_eradio_backbone`).

A new family adds one entry to :data:`FILE_FAMILIES` (or calls
:func:`register_file_family`): a config validator and a builder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from zoo.atomic import atomic_write_text
from zoo.backbone import Backbone
from zoo.errors import ConfigError, ResolutionError, unknown_name
from zoo.registry import BackboneEntry, register_resolver
from zoo.sizes import as_hw

SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 1 << 20  # a backbone file is a few hundred bytes


def _load_yaml(text: str, where: str) -> Any:
    """YAML without anchors/aliases (a file a few lines long needs none; aliases can expand without bound)."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ConfigError(f"{where}: line {mark.line + 1}: YAML aliases are not allowed in a backbone file")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(err).split())[:200]})") from None


@dataclass(frozen=True)
class FileFamily:
    """How a backbone file of one family is checked and built.

    Args:
        validate: config mapping -> the family's config object (raises ConfigError naming the field).
        build: ``(config, resolution, name, searched_resolution, **overrides) -> Backbone``.
    """

    validate: Callable[[Mapping[str, Any]], Any]
    build: Callable[..., Backbone]


def _eradio_config(config: Mapping[str, Any]) -> Any:
    from zoo.backbones.eradio_entries import eradio_config

    return eradio_config(dict(config))


def _build_eradio(config: Mapping[str, Any], resolution: tuple[int, int], name: str,
                  searched_resolution: int | None = None, **overrides: Any) -> Backbone:
    from zoo.backbones.eradio_entries import build_eradio_backbone

    # At the searched resolution: the windows the search chose (in the config); elsewhere picked for the size.
    searched = searched_resolution is not None and tuple(resolution) == (searched_resolution, searched_resolution)
    overrides.setdefault("window", "config" if searched else "auto")
    return build_eradio_backbone(_eradio_config(config), resolution, name=name, **overrides)


def _vit_cpe_config(config: Mapping[str, Any]) -> Any:
    from zoo.backbones.vit_cpe import VitCpeConfig

    return VitCpeConfig.from_dict(config)


def _build_vit_cpe(config: Mapping[str, Any], resolution: tuple[int, int], name: str,
                   searched_resolution: int | None = None, **overrides: Any) -> Backbone:
    from zoo.backbones.vit_cpe import build_vit_cpe_backbone

    return build_vit_cpe_backbone(_vit_cpe_config(config), resolution, name=name, **overrides)


FILE_FAMILIES: dict[str, FileFamily] = {
    "eradio": FileFamily(_eradio_config, _build_eradio),
    "vit-cpe": FileFamily(_vit_cpe_config, _build_vit_cpe),
}


def register_file_family(family: str, validate: Callable[[Mapping[str, Any]], Any], build: Callable[..., Backbone],
                         overwrite: bool = False) -> None:
    """Let backbone files (and search spaces) of ``family`` be built."""
    if family in FILE_FAMILIES and not overwrite:
        raise ValueError(f"backbone-file family '{family}' is already registered")
    FILE_FAMILIES[family] = FileFamily(validate, build)


def file_family(family: str) -> FileFamily:
    if family not in FILE_FAMILIES:
        raise unknown_name("backbone-file family", family, FILE_FAMILIES)
    return FILE_FAMILIES[family]


def is_backbone_file(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(SUFFIXES)


@dataclass(frozen=True)
class BackboneFile:
    """The checked content of a backbone file (``config`` as a plain mapping)."""

    name: str
    family: str
    resolution: int
    config: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"name": self.name, "family": self.family, "resolution": int(self.resolution),
                                    "config": dict(self.config)}
        if self.source:
            document["source"] = dict(self.source)
        return document

    def build(self, resolution: int | tuple[int, int] | None = None, name: str | None = None,
              **overrides: Any) -> Backbone:
        """The backbone at ``resolution`` (default: the searched one)."""
        return build_from_config(self.family, self.config, resolution if resolution is not None else self.resolution,
                                 name=name or self.name, searched_resolution=self.resolution, **overrides)

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.family} backbone file{where}, searched at {self.resolution} px"


def build_from_config(family: str, config: Mapping[str, Any], resolution: int | tuple[int, int], name: str,
                      searched_resolution: int | None = None, **overrides: Any) -> Backbone:
    """Build a ``family`` backbone from its config mapping: the one path of files and search candidates."""
    return file_family(family).build(dict(config), as_hw(resolution), name, searched_resolution, **overrides)


def check_document(document: Any, where: str) -> BackboneFile:
    """A backbone-file mapping, checked: ConfigError naming ``where`` and the problem otherwise."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"{where}: a backbone file is a mapping with name, family, resolution, config")
    family = document.get("family", document.get("base"))  # "base" in files of zoo before 0.3
    missing = [key for key, value in (("family", family), ("resolution", document.get("resolution")),
                                      ("config", document.get("config"))) if value is None]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    if family not in FILE_FAMILIES:
        near = unknown_name("family", str(family), FILE_FAMILIES)
        raise ConfigError(f"{where}: backbone-file family {family!r} is not supported ({str(near).split('; ')[-1]})")
    resolution = document["resolution"]
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ResolutionError(f"{where}: resolution must be a positive integer (square), got {resolution!r}")
    if not isinstance(document["config"], Mapping):
        raise ConfigError(f"{where}: 'config' must be a mapping of {family} config fields")
    try:
        checked = FILE_FAMILIES[family].validate(document["config"])
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from err
    config = checked.to_dict() if hasattr(checked, "to_dict") else dict(document["config"])
    source = document.get("source") or {}
    name = str(document.get("name") or Path(where).stem)
    return BackboneFile(name=name, family=str(family), resolution=resolution, config=config,
                        source=dict(source) if isinstance(source, Mapping) else {})


def read_backbone_file(path: str | os.PathLike) -> BackboneFile:
    """The checked backbone file at ``path``; ConfigError (one line, naming the file) otherwise.

    The backbone's name is the file's stem, whatever its ``name:`` says (run ids and records show it).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"backbone file not found: {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a backbone file "
                          f"(at most {MAX_FILE_BYTES:,})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the backbone file ({err.strerror or err})") from None
    document = _load_yaml(text, str(path))
    checked = check_document(document, str(path))
    return BackboneFile(name=path.stem, family=checked.family, resolution=checked.resolution, config=checked.config,
                        source=checked.source, path=path)


def write_backbone_file(path: str | os.PathLike, backbone_file: BackboneFile) -> Path:
    """Write ``backbone_file`` atomically as YAML; a config that would not load is refused first."""
    import yaml

    checked = check_document(backbone_file.to_document(), str(path))
    document = {**checked.to_document(), "name": backbone_file.name}
    return atomic_write_text(path, yaml.safe_dump(document, sort_keys=False))


def file_entry_kwargs(backbone_file: BackboneFile) -> dict[str, Any]:
    """What a registry entry for the file passes its builder (and run records show as the backbone config)."""
    return {"family": backbone_file.family, "config": dict(backbone_file.config),
            "searched_resolution": backbone_file.resolution,
            "backbone_file": str(backbone_file.path) if backbone_file.path else None}


def build_file_entry(name: str, resolution: tuple[int, int], family: str, config: Mapping[str, Any],
                     searched_resolution: int, backbone_file: str | None = None, **overrides: Any) -> Backbone:
    """The builder of a registry entry made from a backbone file (see :func:`zoo.registry.get_entry`)."""
    return build_from_config(family, config, resolution, name=name, searched_resolution=searched_resolution,
                             **overrides)


def file_entry(path: str | os.PathLike) -> BackboneEntry:
    """A :class:`zoo.registry.BackboneEntry` for the backbone file at ``path``, named by its stem."""
    backbone_file = read_backbone_file(path)
    return BackboneEntry(
        name=backbone_file.name, family=backbone_file.family, builder=build_file_entry,
        default_resolution=(backbone_file.resolution, backbone_file.resolution),
        kwargs=file_entry_kwargs(backbone_file), description=backbone_file.describe(),
    )


@register_resolver
def _resolve(name: str) -> BackboneEntry | None:
    """The registry's resolver: a ``.yaml``/``.yml`` name is a backbone file."""
    return file_entry(name) if is_backbone_file(name) else None
