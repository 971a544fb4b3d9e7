"""The backbone registry: every backbone of the paper's Table 7, the ViT-CPE
students, small CPU-friendly family members, and E-RADIO.

Entries are data (:class:`BackboneEntry`); ``create_backbone(name)`` builds
one behind the contract of :mod:`zoo.backbone`. Plug-in modules (E-RADIO)
add entries with :func:`register`; a name that is not an entry (a backbone
file ``my-net.yaml``) is turned into one by a resolver a plug-in registered
with :func:`register_resolver` (:mod:`zoo.backbones.files`). The registry
imports plug-ins by module name only, so nothing here imports a plug-in, the
search or any engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from zoo.backbone import Backbone, SizeRule, as_hw
from zoo.errors import unknown_name

Builder = Callable[..., Backbone]

CNN_RULE = SizeRule(multiple=1, minimum=32)
MULTIPLE_OF_32 = SizeRule(multiple=32, minimum=64)
SQUARE_MULTIPLE_OF_32 = SizeRule(multiple=32, minimum=64, square=True)


@dataclass(frozen=True)
class BackboneEntry:
    """What the registry knows about a backbone before building it."""

    name: str
    family: str
    builder: Builder
    default_resolution: tuple[int, int] = (224, 224)
    timm_name: str | None = None
    paper_params_m: float | None = None  # Table 7, counted with a 1000-class head
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    in_table7: bool = False

    def build(self, resolution: int | tuple[int, int] | None = None, **overrides: Any) -> Backbone:
        resolution = as_hw(resolution) if resolution is not None else self.default_resolution
        return self.builder(name=self.name, resolution=resolution, **{**self.kwargs, **overrides})


_REGISTRY: dict[str, BackboneEntry] = {}
# Modules that register more entries (or resolvers) when first needed (kept lazy: import cost).
_PLUGIN_MODULES = ["zoo.backbones.eradio_entries", "zoo.backbones.files"]
_plugins_loaded = False
Resolver = Callable[[str], "BackboneEntry | None"]
_RESOLVERS: list[Resolver] = []


def register_resolver(resolver: Resolver) -> Resolver:
    """Add a function ``name -> BackboneEntry | None`` asked for names that are not registered entries."""
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)
    return resolver


def register(entry: BackboneEntry, overwrite: bool = False) -> BackboneEntry:
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(f"backbone '{entry.name}' is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in _PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # a real missing dependency, not an absent plugin
                raise


def _timm_builder(name: str, resolution: tuple[int, int], **kwargs: Any) -> Backbone:
    from zoo.backbones.timm_backbone import TimmBackbone

    return TimmBackbone(name=name, resolution=resolution, **kwargs)


def _vit_cpe_builder(name: str, resolution: tuple[int, int], **kwargs: Any) -> Backbone:
    from zoo.backbones.vit_cpe import VitCpeBackbone

    return VitCpeBackbone(name=name, resolution=resolution, **kwargs)


def _timm(name, family, timm_name, paper=None, table7=True, layout="nchw", rule=CNN_RULE, sized=False,
          resolution=224, description=""):
    return BackboneEntry(
        name=name, family=family, builder=_timm_builder, default_resolution=as_hw(resolution),
        timm_name=timm_name, paper_params_m=paper, in_table7=table7, description=description,
        kwargs=dict(timm_name=timm_name, layout=layout, size_rule=rule, sized_at_build=sized),
    )


def _vit(name, embed_dim, depth, heads, description):
    return BackboneEntry(
        name=name, family="vit-cpe", builder=_vit_cpe_builder, timm_name=None,
        kwargs=dict(embed_dim=embed_dim, depth=depth, num_heads=heads, patch_size=16), description=description,
    )


for _entry in [
    # Table 7, in its order (paper parameter counts include a 1000-class head).
    _timm("efficientnetv2-s", "efficientnetv2", "tf_efficientnetv2_s", 21),
    _timm("resnetv2-101", "resnetv2", "resnetv2_101", 44),
    _timm("regnety-064", "regnety", "regnety_064", 30),
    _timm("efficientvit-l1", "efficientvit", "efficientvit_l1", 38,
          description="timm's EfficientViT-L1 (MIT) has 52.7M params, the paper lists 38M"),
    _timm("convnext-b", "convnext", "convnext_base", 88),
    _timm("nfnet-f3", "nfnet", "nfnet_f3", 254),
    _timm("swinv2-s", "swinv2", "swinv2_small_window8_256", 49, layout="nhwc", rule=MULTIPLE_OF_32, sized=True),
    _timm("maxvit-b", "maxvit", "maxvit_base_tf_224", 119, rule=MULTIPLE_OF_32, sized=True),
    _timm("poolformerv2-m36", "poolformerv2", "poolformerv2_m36", 56),
    _timm("mvitv2-b", "mvitv2", "mvitv2_base", 51, layout="tokens", rule=SQUARE_MULTIPLE_OF_32, sized=True),
    # Small family members that train on a CPU.
    _timm("convnext-atto", "convnext", "convnext_atto", table7=False),
    _timm("efficientnetv2-b0", "efficientnetv2", "tf_efficientnetv2_b0", table7=False),
    _timm("resnet-18", "resnet", "resnet18", table7=False),
    _timm("regnety-004", "regnety", "regnety_004", table7=False),
    _timm("resnetv2-50", "resnetv2", "resnetv2_50", table7=False),
    # ViT students with CLS token and cropped position embeddings (Section 4).
    _vit("vit-t16-cpe", 192, 12, 3, "ViT-Ti/16"),
    _vit("vit-s16-cpe", 384, 12, 6, "ViT-S/16"),
    _vit("vit-b16-cpe", 768, 12, 12, "ViT-B/16"),
    _vit("vit-l16-cpe", 1024, 24, 16, "ViT-L/16"),
    _vit("vit-h16-cpe", 1280, 32, 16, "ViT-H/16 (the paper's best student)"),
]:
    register(_entry)


def list_backbones(family: str | None = None) -> list[BackboneEntry]:
    """All registered entries (optionally one family), in registration order."""
    _load_plugins()
    entries = list(_REGISTRY.values())
    if family is not None:
        families = sorted({e.family for e in entries})
        if family not in families:
            raise unknown_name("family", family, families)
        entries = [e for e in entries if e.family == family]
    return entries


def families() -> list[str]:
    return sorted({e.family for e in list_backbones()})


def get_entry(name: str) -> BackboneEntry:
    """The entry for ``name``; unknown names fail with the closest matches.

    ``name`` may also be a backbone file (``my-net.yaml``, e.g. from ``zoo search export``): its entry
    is named by the file's stem.
    """
    _load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for resolver in _RESOLVERS:
        entry = resolver(str(name))
        if entry is not None:
            return entry
    raise unknown_name("backbone", name, _REGISTRY)


def create_backbone(name: str, resolution: int | tuple[int, int] | None = None, **overrides: Any) -> Backbone:
    """Build backbone ``name`` for ``resolution`` (its default if None).

    ``overrides`` go to the builder (e.g. ``pretrained_file``, ``drop_path_rate``).
    """
    return get_entry(name).build(resolution, **overrides)


def parse_backbone_list(spec: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``, each checked against the registry."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        get_entry(name)
    return names
