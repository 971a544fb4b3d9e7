"""E-RADIO's own exceptions (the family is standalone: it imports nothing from ``zoo``).

Every message is one line that names the field, size or key at fault and, where
there is one, a value that works. A wrapper (``zoo.backbones.eradio_entries``)
translates them into its own error types with the same text.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class ERadioError(Exception):
    """Base of every error E-RADIO raises on purpose (a caller's mistake, not a bug)."""


class ERadioConfigError(ERadioError, ValueError):
    """A configuration field (or keyword argument) the network cannot be built with."""


class UnknownVariantError(ERadioConfigError):
    """A variant name that does not exist; the message lists the closest names."""


class ERadioResolutionError(ERadioError, ValueError):
    """An input size (or window) E-RADIO cannot run at; the message names sizes that work."""


class StateDictError(ERadioError, ValueError):
    """A state dict that does not fit the model: an unmappable, missing or mis-shaped key."""


class WeightsNotFoundError(ERadioError, FileNotFoundError):
    """``pretrained=True`` without a local weights file (E-RADIO downloads nothing)."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name``, best first (for 'did you mean')."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    return found or [c for c in candidates if name.lower() in c.lower()][:n]


def one_line(text: str) -> str:
    """Collapse a message onto one line (messages quote user input, which may hold newlines)."""
    return " ".join(str(text).split())
