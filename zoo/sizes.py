"""Input sizes: the one resolution parser and the size rules architectures declare (no torch import)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

from zoo.errors import ResolutionError


def as_hw(resolution: int | str | Sequence[int]) -> tuple[int, int]:
    """The one resolution parser: ``224`` or ``"224"`` -> ``(224, 224)``; ``"224x320"`` or ``(224, 320)`` -> ``(224, 320)``.

    A comma is never part of one size (lists of sizes are comma-separated: :func:`as_hw_list`).
    Zero, negative and non-integer sides are refused with a :class:`ResolutionError`.
    """
    if isinstance(resolution, str):
        parts = resolution.strip().lower().replace("×", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ResolutionError(f"resolution '{resolution}' is not N or HxW (e.g. 224 or 320x480)") from None
        if len(values) not in (1, 2):
            raise ResolutionError(f"resolution '{resolution}' is not N or HxW (e.g. 224 or 320x480)")
        resolution = values[0] if len(values) == 1 else values
    if isinstance(resolution, bool):
        raise ResolutionError(f"resolution {resolution!r} is not N or HxW (e.g. 224 or 320x480)")
    if isinstance(resolution, int):
        h = w = resolution
    else:
        try:
            values = [int(v) for v in resolution]
        except (TypeError, ValueError):
            raise ResolutionError(f"resolution {resolution!r} is not N or HxW (e.g. 224 or 320x480)") from None
        if len(values) not in (1, 2):
            raise ResolutionError(f"resolution {list(values)} is not N or HxW (e.g. 224 or 320x480)")
        h, w = values[0], values[-1]
    if h <= 0 or w <= 0:
        raise ResolutionError(f"resolution {h}x{w} must be positive (e.g. 224 or 320x480)")
    return (h, w)


def as_hw_list(text: str | Sequence[int | str | Sequence[int]]) -> list[tuple[int, int]]:
    """A comma-separated list of sizes: ``"224,448"`` -> ``[(224, 224), (448, 448)]``; ``"224x320,448"`` too."""
    items = [part.strip() for part in text.split(",")] if isinstance(text, str) else list(text)
    items = [item for item in items if item != ""]
    if not items:
        raise ResolutionError(f"no resolution in {text!r} (e.g. 224 or 224,448 or 224x320)")
    return [as_hw(item) for item in items]


def nearest_multiples(size: int, multiple: int, minimum: int | None = None) -> list[int]:
    """The multiples of ``multiple`` just below and above ``size`` (for error hints)."""
    minimum = minimum or multiple
    below = max(minimum, (size // multiple) * multiple)
    above = max(minimum, -(-size // multiple) * multiple)
    return sorted({below, above})


class SizeRule(NamedTuple):
    """Which input sizes an architecture accepts.

    ``multiple``: each side must be a multiple of it; ``minimum``/``maximum``
    bound each side; ``square``: height must equal width.
    """

    multiple: int = 1
    minimum: int = 32
    maximum: int | None = None
    square: bool = False

    def describe(self) -> str:
        parts = []
        if self.multiple > 1:
            parts.append(f"multiples of {self.multiple}")
        parts.append(f"at least {self.minimum}")
        if self.maximum:
            parts.append(f"at most {self.maximum}")
        text = "sides " + ", ".join(parts)
        return text + (", square only" if self.square else "")

    def check(self, height: int, width: int, model_name: str = "this backbone") -> None:
        """Raise a :class:`ResolutionError` naming valid sizes if ``height×width`` is refused."""
        problems = []
        for side_name, side in (("height", height), ("width", width)):
            if side < self.minimum:
                problems.append(f"{side_name} {side} < {self.minimum}")
            elif self.maximum and side > self.maximum:
                problems.append(f"{side_name} {side} > {self.maximum}")
            elif side % self.multiple:
                near = " or ".join(str(v) for v in nearest_multiples(side, self.multiple, self.minimum))
                problems.append(f"{side_name} {side} is not a multiple of {self.multiple} (try {near})")
        if self.square and height != width:
            problems.append(f"{height}x{width} is not square (try {max(height, width)}x{max(height, width)})")
        if problems:
            raise ResolutionError(
                f"{model_name} cannot take {height}x{width}: {'; '.join(problems)} ({self.describe()})"
            )
