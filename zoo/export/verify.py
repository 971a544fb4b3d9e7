"""How an export is checked: the same input through the export and through eager PyTorch.

Every exported output is compared with the eager student's output for the
same input; per output the report holds the largest absolute difference, the
cosine similarity (flattened, per sample, lowest sample) and the reference's
largest magnitude. An export is accepted when, for every output,

    max |export - eager| <= tolerance * max(1, max |eager|)   and   cosine >= MIN_COSINE

(a relative bound: features of a random-init student reach tens, a trained
CLIP head's summary a few hundredths). The report is stored beside the file
(``model.onnx.json``, ``export.json`` in a folder) with the sha256 of every
exported file, so :func:`check_files` refuses a file changed or truncated
after the export in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from zoo.errors import BadFileError, ZooError

DEFAULT_TOLERANCE = 1e-3  # max abs diff relative to max(1, max |eager|)
MIN_COSINE = 0.9999
REPORT_SUFFIX = ".json"  # model.onnx -> model.onnx.json


class ExportMismatchError(ZooError):
    """An export whose outputs differ from the eager student's beyond the tolerance (exit 2)."""


@dataclass
class OutputDiff:
    """One output of the export against the eager student's."""

    name: str
    shape: list[int]
    max_abs_diff: float
    cosine: float
    max_abs_ref: float

    def within(self, tolerance: float) -> bool:
        bound = tolerance * max(1.0, self.max_abs_ref)
        return (math.isfinite(self.max_abs_diff) and self.max_abs_diff <= bound
                and math.isfinite(self.cosine) and self.cosine >= MIN_COSINE)

    def describe(self) -> str:
        return f"{self.name}: max abs diff {self.max_abs_diff:.2e}, cosine {self.cosine:.6f}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": self.shape, "max_abs_diff": self.max_abs_diff, "cosine": self.cosine,
                "max_abs_ref": self.max_abs_ref}


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def compare(name: str, exported: Any, reference: Any) -> OutputDiff:
    """Max abs difference and the lowest per-sample cosine of ``exported`` against ``reference``."""
    got, ref = _as_numpy(exported), _as_numpy(reference)
    if got.shape != ref.shape:
        return OutputDiff(name, list(ref.shape), math.inf, -1.0, float(np.abs(ref).max(initial=0.0)))
    diff = float(np.abs(got - ref).max(initial=0.0))
    a = got.reshape(got.shape[0], -1) if got.ndim > 1 else got.reshape(1, -1)
    b = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300),
                       np.where(np.abs(a - b).max(axis=1) == 0, 1.0, 0.0))
    return OutputDiff(name, list(ref.shape), diff, float(cosines.min()), float(np.abs(ref).max(initial=0.0)))


@dataclass
class CheckReport:
    """Every output compared, on which input, against which tolerance."""

    diffs: list[OutputDiff]
    tolerance: float
    inputs: list[list[int]]  # the input shapes checked
    runtime: str  # what ran the export (onnxruntime, timm.create_model, zoo.load)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.within(self.tolerance) for d in self.diffs)

    @property
    def max_abs_diff(self) -> float:
        return max(d.max_abs_diff for d in self.diffs)

    @property
    def min_cosine(self) -> float:
        return min(d.cosine for d in self.diffs)

    def worst(self) -> OutputDiff:
        return max(self.diffs, key=lambda d: (not d.within(self.tolerance), d.max_abs_diff / max(1.0, d.max_abs_ref)))

    def summary_line(self) -> str:
        return (f"{self.runtime} vs eager PyTorch on {len(self.inputs)} input(s): max abs diff {self.max_abs_diff:.2e}, "
                f"min cosine {self.min_cosine:.6f} (tolerance {self.tolerance:g} x max(1, max|eager|), "
                f"cosine >= {MIN_COSINE})")

    def raise_if_bad(self, what: str) -> None:
        if not self.ok:
            worst = self.worst()
            raise ExportMismatchError(
                f"refused: {what} differs from the eager student beyond the tolerance ({worst.describe()}, "
                f"allowed {self.tolerance * max(1.0, worst.max_abs_ref):.2e} and cosine >= {MIN_COSINE}); "
                "nothing was written")

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "tolerance": self.tolerance, "min_cosine_allowed": MIN_COSINE,
                "ok": self.ok, "max_abs_diff": self.max_abs_diff, "min_cosine": self.min_cosine,
                "inputs": self.inputs, "outputs": [d.to_dict() for d in self.diffs], "notes": self.notes}


def merge(reports: list[CheckReport]) -> CheckReport:
    """One report over several checked inputs (e.g. two sizes of a dynamic-size export)."""
    notes = [n for r in reports for n in r.notes]
    return CheckReport([d for r in reports for d in r.diffs], reports[0].tolerance,
                       [s for r in reports for s in r.inputs], reports[0].runtime, list(dict.fromkeys(notes)))


# --------------------------------------------------------------------------- file integrity


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(root: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256(root / name) for name in names}


def read_report(path: str | Path) -> dict[str, Any]:
    """An export report (``model.onnx.json`` / ``export.json``); one line for a missing or unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise BadFileError(f"{path} is missing: not a zoo export, or its check report was removed "
                           "(export again with zoo export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BadFileError(f"{path} is not a readable export report ({type(err).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise BadFileError(f"{path} is not a zoo export report (no 'files' entry)")
    return data


def check_files(root: Path, report: Mapping[str, Any]) -> None:
    """Refuse (one line) when an exported file is missing or differs from what the export wrote."""
    for name, expected in report["files"].items():
        file = root / name
        if not file.is_file():
            raise BadFileError(f"{file} is missing (the export wrote it; export again)")
        if sha256(file) != expected:
            raise BadFileError(f"refused: {file} is not the file zoo export wrote and checked (its sha256 differs: "
                               "changed, truncated or replaced); export again")


@dataclass
class ExportResult:
    """What ``zoo export`` wrote and how it checked it."""

    format: str
    path: Path
    report: CheckReport
    files: list[str]
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # format-specific (dynamic axes, architecture, ...)
