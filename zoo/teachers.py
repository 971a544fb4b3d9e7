"""Frozen teachers for multi-teacher distillation (paper Sections 3.4 and 4).

A teacher is built from a spec string::

    clip:ViT-H-14:laion2b_s32b_b79k            open_clip model + pretrained tag
    clip:ViT-B-16:/path/to/weights.bin         open_clip model + local file
    dinov2:vit_giant_patch14_reg4_dinov2       timm DINOv2 (weights from the caches)
    dinov2:vit_small_patch14_reg4_dinov2:/path/file.safetensors
    clip:tiny  dinov2:tiny                     small random teachers (tests, smoke)

An optional ``@N`` or ``@HxW`` suffix sets the teacher's input resolution
(``dinov2:vit_large_patch14_dinov2@448``); without it CLIP runs at its
model config's ``image_size`` and DINOv2 at 224.

Every teacher returns :class:`TeacherOutput`: ``summary`` (CLIP: the image
embedding after the projection, so zero-shot works through the student's CLIP
summary head; DINOv2: the normed CLS token) and ``features`` (last-layer patch
tokens, NCHW, register tokens dropped).

Weights come from the spec's file or the local caches (Hugging Face hub cache,
torch hub cache, open_clip's URL cache); the caches are always looked at
first. When the weights are missing the hub is contacted only when online:
``offline=True`` (``--offline``) or ``HF_HUB_OFFLINE=1`` means offline, and
with neither set a 2-second connection probe to the hub decides. Offline, a
:class:`~zoo.errors.WeightsNotFoundError` names the missing file and how to
pass one, in well under a second (open_clip and timm would retry for ~47 s).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from zoo.backbone import SizeRule, as_hw
from zoo.checkpoints import load_state_dict_file
from zoo.errors import ConfigError, ResolutionError, WeightsNotFoundError, unknown_name

TEACHER_KINDS = ("clip", "dinov2")
TINY = "tiny"
# Seed of the random tiny teachers: the same weights in every process and run.
TINY_SEED = 20231211
DINOV2_PATCH_SIZE = 14
DINOV2_DEFAULT_RESOLUTION = (224, 224)
TINY_CLIP_RESOLUTION = (64, 64)
TINY_CLIP_PATCH_SIZE = 16
TINY_DINOV2_RESOLUTION = (70, 70)  # a 5x5 grid: differs from tiny CLIP's 4x4 on purpose
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt", ".npz")
HUB_PROBE_TIMEOUT_S = 2.0


class TeacherOutput(NamedTuple):
    """What a teacher (or a student's adaptor heads for it) produces."""

    summary: torch.Tensor  # [B, Ds]
    features: torch.Tensor  # [B, Df, h, w]


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher spec string."""

    spec: str
    kind: str  # "clip" | "dinov2"
    model: str  # open_clip model name, timm model name (optionally .tag), or "tiny"
    tag: str | None = None  # open_clip pretrained tag
    weights_file: str | None = None  # explicit local weights file
    resolution: tuple[int, int] | None = None  # the @HxW suffix

    @property
    def is_tiny(self) -> bool:
        return self.model == TINY


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or os.sep in text
        or text.startswith(("~", "."))
        or text.lower().endswith(WEIGHT_SUFFIXES)
        or os.path.exists(text)
    )


def _split_resolution(spec: str) -> tuple[str, tuple[int, int] | None]:
    """``"dinov2:x@448"`` -> ``("dinov2:x", (448, 448))``; other ``@`` (paths) stay."""
    match = re.fullmatch(r"(.*)@(\d+(?:[xX]\d+)?)", spec)
    if not match:
        return spec, None
    return match.group(1), as_hw(match.group(2))


def _examples(kind: str) -> str:
    if kind == "clip":
        return "clip:ViT-H-14:laion2b_s32b_b79k, clip:ViT-B-16:/path/to/open_clip_pytorch_model.bin or clip:tiny"
    return (
        "dinov2:vit_giant_patch14_reg4_dinov2, dinov2:vit_small_patch14_dinov2:/path/model.safetensors or dinov2:tiny"
    )


def parse_teacher_spec(spec: str | TeacherSpec) -> TeacherSpec:
    """Parse and validate a spec string; a :class:`~zoo.errors.ZooError` names the problem."""
    if isinstance(spec, TeacherSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty teacher spec; use e.g. {_examples('clip')}")
    text = spec.strip()
    body, resolution = _split_resolution(text)
    kind, _, rest = body.partition(":")
    kind = kind.strip().lower()
    if kind not in TEACHER_KINDS:
        raise unknown_name("teacher kind", kind, TEACHER_KINDS)
    if not rest:
        raise ConfigError(f"teacher spec '{text}' names no model; use e.g. {_examples(kind)}")
    model, _, source = rest.partition(":")
    source = source or None
    if model == TINY:
        if source:
            raise ConfigError(f"teacher spec '{text}': {kind}:tiny is random-initialised and takes no weights")
        if resolution is not None:
            _check_resolution(text, resolution, TINY_CLIP_PATCH_SIZE if kind == "clip" else DINOV2_PATCH_SIZE)
        return TeacherSpec(text, kind, TINY, resolution=resolution)
    if kind == "clip":
        return _parse_clip(text, model, source, resolution)
    return _parse_dinov2(text, model, source, resolution)


def _check_resolution(text: str, resolution: tuple[int, int], patch_size: int) -> None:
    SizeRule(multiple=patch_size, minimum=patch_size).check(*resolution, f"teacher '{text}'")


def _weights_path(text: str, source: str) -> str:
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"teacher spec '{text}': weights file not found: {path}")
    return str(path.resolve())


def _parse_clip(text: str, model: str, source: str | None, resolution) -> TeacherSpec:
    import open_clip

    model = model.replace("/", "-")  # open_clip's own name cleaning ("ViT-B/16" -> "ViT-B-16")
    if model not in open_clip.list_models():
        raise unknown_name("open_clip model", model, open_clip.list_models())
    patch = (open_clip.get_model_config(model) or {}).get("vision_cfg", {}).get("patch_size")
    if resolution is not None and isinstance(patch, int):
        _check_resolution(text, resolution, patch)
    tags = open_clip.list_pretrained_tags_by_model(model)
    if source is None:
        hint = f"tags for {model}: {', '.join(tags)}" if tags else f"{model} has no pretrained tags"
        raise ConfigError(
            f"teacher spec '{text}' needs a pretrained tag or a weights file "
            f"(clip:{model}:TAG or clip:{model}:/path/to/weights.bin); {hint}"
        )
    if _looks_like_path(source):
        return TeacherSpec(text, "clip", model, weights_file=_weights_path(text, source), resolution=resolution)
    if not open_clip.get_pretrained_cfg(model, source):
        raise unknown_name(f"pretrained tag for open_clip {model}", source, tags or ["(none)"])
    return TeacherSpec(text, "clip", model, tag=source, resolution=resolution)


def _parse_dinov2(text: str, model: str, source: str | None, resolution) -> TeacherSpec:
    import timm

    if not timm.is_model(model):
        raise unknown_name("timm DINOv2 model", model, timm.list_models("*dinov2*"))
    if source is not None and not _looks_like_path(source):
        raise ConfigError(
            f"teacher spec '{text}': '{source}' is not a weights file; a timm pretrained tag goes "
            f"after a dot (dinov2:{model}.lvd142m), a file after a colon (dinov2:{model}:/path/model.safetensors)"
        )
    if resolution is not None:
        _check_resolution(text, resolution, DINOV2_PATCH_SIZE)
    weights = _weights_path(text, source) if source else None
    return TeacherSpec(text, "dinov2", model, weights_file=weights, resolution=resolution)


# ------------------------------------------------------------------ weights lookup


@dataclass(frozen=True)
class RemoteWeights:
    """Where a pretrained checkpoint lives remotely and where its local copies would be."""

    hf_repo: str | None  # Hugging Face repo id
    hf_filenames: tuple[str, ...]  # tried in order (safetensors first)
    url: str | None  # plain URL fallback
    url_cache_dir: str | None  # where the URL's file is cached (torch hub / open_clip)
    example_file: str  # the file name to suggest in messages

    def describe(self) -> str:
        parts = []
        if self.hf_repo:
            parts.append(f"{' or '.join(self.hf_filenames)} from Hugging Face repo {self.hf_repo}")
        if self.url:
            parts.append(self.url)
        return " or ".join(parts)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def find_local_weights(remote: RemoteWeights) -> str | None:
    """A local copy of ``remote`` in the HF hub cache or the URL cache, without any network."""
    if remote.hf_repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in remote.hf_filenames:
            found = try_to_load_from_cache(remote.hf_repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if remote.url and remote.url_cache_dir:
        candidate = Path(remote.url_cache_dir) / os.path.basename(urlparse(remote.url).path)
        if candidate.is_file():
            return str(candidate)
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@lru_cache(maxsize=None)
def _reachable(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` s (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the DNS lookup too (getaddrinfo has no timeout of its own).
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Cheap connectivity check: the HF endpoint, or the HTTPS proxy when one is set."""
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else constants.ENDPOINT)
    port = target.port or (443 if target.scheme == "https" else 80)
    return _reachable(target.hostname or "", port, timeout)


def offline_reason(offline: bool | None) -> str | None:
    """Why the hub must not be used (``None``: online). See the module docstring."""
    if offline is True:
        return "offline mode requested (--offline)"
    if offline is False:
        return None
    if _env_flag("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE=1"
    if not hub_reachable():
        return f"no network: the hub did not answer within {HUB_PROBE_TIMEOUT_S:g} s"
    return None


def _download(remote: RemoteWeights) -> str:
    if remote.hf_repo:
        from huggingface_hub import hf_hub_download

        last: Exception | None = None
        for filename in remote.hf_filenames:
            try:
                return hf_hub_download(remote.hf_repo, filename)
            except Exception as err:  # try the next name (.safetensors may not exist)
                last = err
        if not remote.url:
            raise last  # type: ignore[misc]
    assert remote.url and remote.url_cache_dir
    target = Path(remote.url_cache_dir) / os.path.basename(urlparse(remote.url).path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(remote.url, str(target), progress=True)
    return str(target)


def resolve_weights(spec: TeacherSpec, remote: RemoteWeights, offline: bool | None) -> str:
    """The local path of ``spec``'s weights: cache first, then a download when online."""
    local = find_local_weights(remote)
    if local:
        return local
    reason = offline_reason(offline)
    example = f"--teacher {spec.kind}:{spec.model}:/path/to/{remote.example_file}"
    if reason is None:
        try:
            return _download(remote)
        except Exception as err:  # network trouble or a missing file: still the same fix
            reason = f"download failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    where = f"the HF cache ({_hf_cache_dir()})" if remote.hf_repo else ""
    if remote.url_cache_dir:
        where = f"{where} or {remote.url_cache_dir}" if where else remote.url_cache_dir
    raise WeightsNotFoundError(
        f"weights for teacher '{spec.spec}' not found: {remote.describe()} is not in {where} "
        f"and cannot be downloaded ({reason}); pass a local file ({example}) or put the file in the HF cache"
        + (f" (`hf download {remote.hf_repo} {remote.example_file}` on a connected machine)" if remote.hf_repo else "")
    )


def _clip_remote(spec: TeacherSpec) -> RemoteWeights:
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag)
    hf_repo, filenames = None, ()
    if cfg.get("hf_hub"):
        hf_repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" or "org/repo/file.bin"
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else None
        if safe is None and filename.endswith((".bin", ".pth")):
            safe = filename[:-4] + ".safetensors"
        filenames = tuple(n for n in (safe, filename) if n)
    url = cfg.get("url") or None
    return RemoteWeights(
        hf_repo=hf_repo,
        hf_filenames=filenames,
        url=url,
        url_cache_dir=os.path.expanduser("~/.cache/clip") if url else None,  # open_clip's URL cache
        example_file=filenames[-1] if filenames else os.path.basename(url or "weights.bin"),
    )


def _dinov2_remote(spec: TeacherSpec) -> RemoteWeights:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.model)
    if cfg is None:
        raise WeightsNotFoundError(
            f"timm has no pretrained weights for '{spec.model}'; pass a file: "
            f"--teacher dinov2:{spec.model}:/path/to/model.safetensors"
        )
    if cfg.hf_hub_filename:
        filenames: tuple[str, ...] = (cfg.hf_hub_filename,)
    else:
        filenames = ("model.safetensors", "pytorch_model.bin")  # timm's own order
    return RemoteWeights(
        hf_repo=cfg.hf_hub_id or None,
        hf_filenames=filenames if cfg.hf_hub_id else (),
        url=cfg.url or None,
        url_cache_dir=os.path.join(torch.hub.get_dir(), "checkpoints") if cfg.url else None,
        example_file=filenames[0] if cfg.hf_hub_id else os.path.basename(urlparse(cfg.url or "model.safetensors").path),
    )


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) for the process."""
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


# -------------------------------------------------------------------- the teacher


class Teacher(nn.Module):
    """A frozen teacher: resize + normalise + forward without grad, float32 outputs.

    Always in eval mode (``train()`` is a no-op) with ``requires_grad=False``;
    on CUDA it runs under bf16 autocast.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: TeacherSpec,
        *,
        summary_dim: int,
        feature_dim: int,
        resolution: tuple[int, int],
        patch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        is_random: bool,
        weights_file: str | None,
        model_name: str,
        pretrained_tag: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec.spec
        self.kind = spec.kind
        self.name = name or spec.kind
        self.summary_dim = int(summary_dim)
        self.feature_dim = int(feature_dim)
        self.resolution = as_hw(resolution)
        self.patch_size = int(patch_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.is_random = bool(is_random)
        self.weights_file = weights_file
        self.model_name = model_name
        self.pretrained_tag = pretrained_tag
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Teacher":
        """Teachers stay in eval mode whatever the surrounding module does."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def grid_size(self) -> tuple[int, int]:
        """``features``' spatial size at the teacher's resolution."""
        return (self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size -> the teacher's resolution and normalisation."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ResolutionError(f"teacher '{self.name}' expects images [B, 3, H, W], got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        if tuple(images.shape[-2:]) != self.resolution:
            images = F.interpolate(images, size=self.resolution, mode="bilinear", align_corners=False, antialias=True)
        return (images - self._mean) / self._std

    def _forward_model(self, x: torch.Tensor) -> TeacherOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TeacherOutput:
        x = self.preprocess(images)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = self._forward_model(x)
        return TeacherOutput(out.summary.float(), out.features.float().contiguous())

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "spec": self.spec,
            "kind": self.kind,
            "name": self.name,
            "model": self.model_name,
            "pretrained_tag": self.pretrained_tag,
            "summary_dim": self.summary_dim,
            "feature_dim": self.feature_dim,
            "resolution": list(self.resolution),
            "patch_size": self.patch_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "random": self.is_random,
            "weights": "random teacher (fixed-seed random weights, not pretrained)" if self.is_random else "pretrained",
            "weights_file": self.weights_file,
            "weights_sha256": file_sha256(self.weights_file) if self.weights_file else None,
        }
        return info

    def extra_repr(self) -> str:
        return f"name={self.name!r}, spec={self.spec!r}, resolution={self.resolution}, random={self.is_random}"


class ClipTeacher(Teacher):
    """An open_clip model; only the visual tower runs in :meth:`forward`.

    The whole model (text tower included) stays on ``self.model`` for zero-shot
    classification: see :meth:`tokenize` and :meth:`encode_text`.
    """

    def __init__(self, *args: Any, context_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context_length = context_length

    def _forward_model(self, x: torch.Tensor) -> TeacherOutput:
        out = self.model.visual.forward_intermediates(
            x, indices=1, normalize_intermediates=True, output_fmt="NCHW"
        )
        return TeacherOutput(out["image_features"], out["image_intermediates"][-1])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        import open_clip

        if self.is_random:
            tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length or 77)
        else:
            tokenizer = open_clip.get_tokenizer(self.model_name)
        return tokenizer(list(texts))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings [N, summary_dim] (float32) for zero-shot classification."""
        tokens = self.tokenize(texts).to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tokens.device.type == "cuda"):
            out = self.model.encode_text(tokens, normalize=normalize)
        return out.float()


class Dinov2Teacher(Teacher):
    """A timm DINOv2 ViT: summary = normed CLS token, features = patch tokens."""

    def _forward_model(self, x: torch.Tensor) -> TeacherOutput:
        tokens = self.model.forward_features(x)  # [B, prefix + h*w, C], after the final norm
        prefix = int(self.model.num_prefix_tokens)  # CLS + registers
        height, width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = tokens[:, prefix:]
        features = patches.transpose(1, 2).reshape(x.shape[0], -1, height, width)
        return TeacherOutput(tokens[:, 0], features)


# ------------------------------------------------------------------- builders


def _fixed_seed_build(fn, *args: Any, **kwargs: Any):
    """Run a constructor under a fixed seed without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return fn(*args, **kwargs)


def _tiny_clip(spec: TeacherSpec) -> ClipTeacher:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    image_size = spec.resolution or TINY_CLIP_RESOLUTION
    square = image_size[0] == image_size[1]
    vision = CLIPVisionCfg(
        layers=2, width=128, head_width=64, patch_size=TINY_CLIP_PATCH_SIZE,
        image_size=image_size[0] if square else image_size,
    )
    text = CLIPTextCfg(context_length=32, vocab_size=49408, width=64, heads=2, layers=2)
    model = _fixed_seed_build(CLIP, embed_dim=64, vision_cfg=vision, text_cfg=text)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return ClipTeacher(
        model, spec, summary_dim=64, feature_dim=128, resolution=image_size, patch_size=TINY_CLIP_PATCH_SIZE,
        mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, is_random=True, weights_file=None,
        model_name="tiny-clip (2 layers, width 128, patch 16)", context_length=32,
    )


def _tiny_dinov2(spec: TeacherSpec) -> Dinov2Teacher:
    import timm

    resolution = spec.resolution or TINY_DINOV2_RESOLUTION
    # DINOv2 layout (CLS + 4 registers, patch 14, layer scale); init_values=1 keeps the
    # random blocks from collapsing to identity so the features carry some structure.
    model = _fixed_seed_build(
        timm.create_model, "vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0,
        embed_dim=96, depth=2, num_heads=3, img_size=resolution, dynamic_img_size=True, init_values=1.0,
    )
    return Dinov2Teacher(
        model, spec, summary_dim=96, feature_dim=96, resolution=resolution, patch_size=DINOV2_PATCH_SIZE,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, is_random=True, weights_file=None,
        model_name="tiny-dinov2 (2 layers, width 96, 4 registers, patch 14)",
    )


def _visual_dims(visual: nn.Module, resolution: tuple[int, int]) -> tuple[int, int, int]:
    """(embedding dim, token width, patch size) of an open_clip vision tower."""
    width = getattr(getattr(visual, "transformer", None), "width", None)
    patch = getattr(visual, "patch_size", None)
    output_dim = getattr(visual, "output_dim", None)
    if width is not None and patch is not None and output_dim is not None:
        return int(output_dim), int(width), int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    # Other towers (timm trunks, ModifiedResNet): one probe forward says it all.
    with torch.no_grad():
        out = visual.forward_intermediates(
            torch.zeros(1, 3, *resolution), indices=1, normalize_intermediates=True, output_fmt="NCHW"
        )
    features = out["image_intermediates"][-1]
    return int(out["image_features"].shape[-1]), int(features.shape[1]), resolution[0] // features.shape[-2]


def _build_clip(spec: TeacherSpec, weights_file: str) -> ClipTeacher:
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag) if spec.tag else {}
    try:
        model = open_clip.create_model(
            spec.model,
            pretrained=weights_file,
            # A file path bypasses open_clip's tag handling: keep the tag's activation.
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_image_size=spec.resolution,
            pretrained_text=False,  # never fetch separate text-tower weights from a hub
            weights_only=True,
        )
    except (RuntimeError, KeyError, ValueError) as err:  # strict load_state_dict / conversion failures
        raise ConfigError(
            f"teacher '{spec.spec}': weights {weights_file} do not fit open_clip {spec.model}: "
            f"{' '.join(line.strip() for line in str(err).splitlines()[:2])[:300]}"
        ) from err
    preprocess = open_clip.get_model_preprocess_cfg(model)
    mean = tag_cfg.get("mean") or preprocess.get("mean")
    std = tag_cfg.get("std") or preprocess.get("std")
    image_size = model.visual.image_size
    resolution = as_hw(tuple(image_size) if isinstance(image_size, (tuple, list)) else image_size)
    summary_dim, feature_dim, patch = _visual_dims(model.visual, resolution)
    return ClipTeacher(
        model, spec, summary_dim=summary_dim, feature_dim=feature_dim, resolution=resolution,
        patch_size=patch, mean=mean, std=std, is_random=False, weights_file=weights_file,
        model_name=spec.model, pretrained_tag=spec.tag, context_length=getattr(model, "context_length", None),
    )


def _state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """A one-line summary of why ``given`` does not load into a model with ``expected`` (None: it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})")
    return "; ".join(parts) or None


def _build_dinov2(spec: TeacherSpec, weights_file: str) -> Dinov2Teacher:
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    resolution = spec.resolution or DINOV2_DEFAULT_RESOLUTION
    kwargs = dict(pretrained=False, num_classes=0, img_size=resolution, dynamic_img_size=True)
    # Built on the meta device: a ViT-g's random init would take ~half a minute on CPU
    # only to be overwritten; the checkpoint's tensors are assigned in its place.
    with torch.device("meta"):
        model = timm.create_model(spec.model, **kwargs)
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"teacher '{spec.spec}': {spec.model} is not a ViT; dinov2 teachers are timm ViTs")
    state = load_state_dict_file(weights_file)  # weights_only=True / safetensors
    # timm's filter converts original DINOv2 checkpoints and resamples pos_embed to our grid.
    state = checkpoint_filter_fn(state, model)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # num_classes=0
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        raise ConfigError(f"teacher '{spec.spec}': weights {weights_file} do not fit {spec.model}: {problem}")
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = timm.create_model(spec.model, **kwargs)  # a non-persistent buffer: build for real
        model.load_state_dict(state, strict=True)
    mean = tuple(model.pretrained_cfg.get("mean", IMAGENET_MEAN))
    std = tuple(model.pretrained_cfg.get("std", IMAGENET_STD))
    patch = model.patch_embed.patch_size
    return Dinov2Teacher(
        model, spec, summary_dim=model.num_features, feature_dim=model.num_features, resolution=resolution,
        patch_size=int(patch[0]), mean=mean, std=std, is_random=False, weights_file=weights_file,
        model_name=spec.model,
    )


def build_teacher(
    spec: str | TeacherSpec,
    device: str | torch.device = "cpu",
    offline: bool | None = None,
    name: str | None = None,
) -> Teacher:
    """Build one frozen teacher from a spec string (see the module docstring).

    ``offline``: True never contacts a hub, False may download, None decides
    from ``HF_HUB_OFFLINE`` and a 2-second connection probe.
    """
    parsed = parse_teacher_spec(spec)
    if parsed.is_tiny:
        teacher: Teacher = _tiny_clip(parsed) if parsed.kind == "clip" else _tiny_dinov2(parsed)
    elif parsed.kind == "clip":
        weights = parsed.weights_file or resolve_weights(parsed, _clip_remote(parsed), offline)
        teacher = _build_clip(parsed, weights)
    else:
        weights = parsed.weights_file or resolve_weights(parsed, _dinov2_remote(parsed), offline)
        teacher = _build_dinov2(parsed, weights)
    if name:
        teacher.name = name
    return teacher.to(device)


def teacher_names(specs: Sequence[str | TeacherSpec]) -> list[str]:
    """Unique loss-term names: the kind, then ``kind-2``, ``kind-3``... for repeats."""
    counts: dict[str, int] = {}
    names = []
    for spec in specs:
        kind = parse_teacher_spec(spec).kind
        counts[kind] = counts.get(kind, 0) + 1
        names.append(kind if counts[kind] == 1 else f"{kind}-{counts[kind]}")
    return names


def build_teachers(
    specs: Sequence[str | TeacherSpec],
    device: str | torch.device = "cpu",
    offline: bool | None = None,
) -> list[Teacher]:
    """Build every teacher (all specs are parsed first, so a typo fails before any loading)."""
    parsed = [parse_teacher_spec(s) for s in specs]
    if not parsed:
        raise ConfigError(f"no teachers given; use e.g. {_examples('clip')}")
    return [build_teacher(p, device, offline, name) for p, name in zip(parsed, teacher_names(parsed))]


def prepare_teachers(
    teachers: Sequence[str | TeacherSpec | Teacher] | None,
    specs: Sequence[str | TeacherSpec],
    device: str | torch.device = "cpu",
    offline: bool | None = None,
) -> list[Teacher]:
    """The teachers a run uses: ``teachers`` when given, else built from ``specs`` (the recipe's).

    ``teachers`` may be all spec strings (built here) or all built :class:`Teacher`
    objects (moved to ``device``, so several runs can share one set); a mix is a
    :class:`~zoo.errors.ConfigError`.
    """
    if teachers is None:
        return build_teachers(list(specs), device, offline)
    teachers = list(teachers)
    if all(isinstance(t, (str, TeacherSpec)) for t in teachers):
        return build_teachers(teachers, device, offline)
    if not all(isinstance(t, Teacher) for t in teachers):
        raise ConfigError("teachers must be all spec strings or all built Teacher objects")
    return [t.to(device) for t in teachers]
