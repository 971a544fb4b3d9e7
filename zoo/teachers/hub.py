"""Where teacher weights come from: the spec's file, the local caches, or the hub when online.

The caches (Hugging Face hub cache, torch hub cache, open_clip's URL cache) are
always looked at first. When the weights are missing the hub is contacted only
when online: ``offline=True`` (``--offline``) or ``HF_HUB_OFFLINE=1`` means
offline, and with neither set a 2-second connection probe to the hub decides.
Offline, a :class:`~zoo.errors.WeightsNotFoundError` names the missing file
and how to pass one, in well under a second (open_clip and timm would retry
for ~47 s).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zoo.errors import WeightsNotFoundError

HUB_PROBE_TIMEOUT_S = 2.0


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
    import torch

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


def resolve_weights(spec: Any, remote: RemoteWeights, offline: bool | None) -> str:
    """The local path of ``spec``'s weights (a :class:`~zoo.teachers.TeacherSpec`): cache first, then a download when online."""
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


def timm_remote(spec: Any) -> RemoteWeights:
    """Where timm keeps ``spec.model``'s pretrained weights (HF repo and/or URL)."""
    import torch
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.model)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsNotFoundError(
            f"timm has no pretrained weights for '{spec.model}'; pass a file: "
            f"--teacher {spec.kind}:{spec.model}:/path/to/model.safetensors"
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
