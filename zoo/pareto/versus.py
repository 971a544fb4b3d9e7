"""The searched front against the hand-picked one: hypervolumes and the hand-picked backbones a trial dominates.

When a group holds both distillation runs (the zoo's hand-picked backbones)
and search trials measured in the same environment, :func:`compare_kinds`
answers two questions:

* **How much of the objective space does each front cover?** The hypervolume
  of the hand-picked front, of the searched front and of the combined front,
  all in one normalised space so the three numbers compare. Every objective
  is turned into a loss and scaled to [0, 1] over the group's runs and trials
  (0 = the best value among them, 1 = the worst); throughput is scaled on a
  log axis whenever the plot draws it on one (:func:`log_axis`). The
  reference point is 10% of that range beyond the worst value of each
  objective (1.1 in every normalised coordinate), so a front member that is
  worst in one objective still counts. The largest possible value is
  ``1.1 ** k``.
* **Which hand-picked backbones does some searched configuration dominate,
  and which trials?** Dominance is scale-free, so it is decided on the raw
  objective values.

Two objectives use an exact sweep; more use Optuna's exact WFG algorithm
(``optuna._hypervolume.compute_hypervolume``, imported only then).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from zoo.pareto.metrics import Objective, short_label
from zoo.pareto.records import KIND_SEARCH_TRIAL, Record

HAND_PICKED = "distill"
SEARCHED = KIND_SEARCH_TRIAL
REFERENCE = 1.1  # normalised reference point in every objective: 10% of the range beyond the worst value


def log_axis(objective: Objective, values: Iterable[float]) -> bool:
    """Whether ``objective`` is drawn (and normalised) on a log scale: throughput with every value > 0."""
    values = [v for v in values if not math.isnan(v)]
    return bool(objective.name.startswith("throughput") and values and min(values) > 0)


def hypervolume_2d(loss: np.ndarray, reference: Sequence[float]) -> float:
    """Exact area dominated by ``loss`` [n, 2] (both minimised) and bounded by ``reference``.

    Points not strictly better than the reference in both objectives add nothing.
    """
    loss = np.asarray(loss, dtype=float).reshape(-1, 2)
    ref_x, ref_y = float(reference[0]), float(reference[1])
    loss = loss[(loss[:, 0] < ref_x) & (loss[:, 1] < ref_y)]
    area, best_y = 0.0, ref_y
    # Sweep by x: each point adds the strip between its y and the best y seen so far, out to ref_x.
    for x, y in loss[np.lexsort((loss[:, 1], loss[:, 0]))]:
        if y < best_y:
            area += (ref_x - x) * (best_y - y)
            best_y = y
    return area


def hypervolume(loss: np.ndarray, reference: Sequence[float]) -> float:
    """Exact hypervolume of ``loss`` [n, k] (all minimised) up to ``reference``; 0 for no points."""
    loss = np.asarray(loss, dtype=float)
    if loss.size == 0:
        return 0.0
    if loss.shape[1] == 2:
        return hypervolume_2d(loss, reference)
    from optuna._hypervolume import compute_hypervolume  # k > 2 only: keeps `zoo pareto` free of optuna

    ref = np.asarray(reference, dtype=float)
    inside = loss[np.all(loss < ref, axis=1)]
    return float(compute_hypervolume(inside, ref)) if len(inside) else 0.0


class Row(Protocol):
    """What this module reads of a :class:`zoo.pareto.front.Row` (front imports this module, not the reverse)."""

    record: Record
    values: tuple[float, ...]
    missing: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class Scale:
    """How one objective is normalised: ``(transform(v) - best) / (worst - best)``, as a loss."""

    objective: str
    log: bool
    best: float  # raw values, as the user reads them
    worst: float

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "log": self.log, "best": self.best, "worst": self.worst}


def _scale(objective: Objective, values: np.ndarray) -> tuple[Scale, np.ndarray]:
    """The objective's :class:`Scale` over ``values`` and the values normalised with it."""
    log = log_axis(objective, values)
    t = np.log(values) if log else values.astype(float)
    if objective.maximize:
        t = -t
    low, high = float(t.min()), float(t.max())
    span = high - low
    # One distinct value: every record is at the best, which is also the worst.
    normalised = (t - low) / span if span > 0 else np.zeros_like(t)
    best = values[int(np.argmin(t))]
    worst = values[int(np.argmax(t))]
    return Scale(objective.name, log, float(best), float(worst)), normalised


@dataclass(frozen=True)
class Domination:
    """A hand-picked row and the search trials that dominate it (trial-number order)."""

    row: Row
    by: tuple[Row, ...]


@dataclass(frozen=True)
class KindComparison:
    """Hypervolumes of the hand-picked, searched and combined fronts, and the dominated hand-picked rows."""

    hand_picked: float
    searched: float
    combined: float
    scales: tuple[Scale, ...]
    count: int  # runs and trials the normalisation is taken over
    dominated: tuple[Domination, ...]

    @property
    def reference(self) -> str:
        """How the reference point is chosen, in words (printed with the numbers)."""
        worst = ", ".join(f"{short_label(s.objective)} {_plain(s.worst)}" for s in self.scales)
        logged = [short_label(s.objective) for s in self.scales if s.log]
        on_log = f", {' and '.join(logged)} on a log scale" if logged else ""
        return (f"objectives scaled to 0 = best, 1 = worst over the group's {self.count} runs and trials{on_log}; "
                f"reference point {REFERENCE:g} each = worst + 10% of the range (worst: {worst})")

    def summary(self) -> str:
        """``hand-picked 0.81 · searched 0.835 · combined 0.8975``: one line for tables and figures."""
        return (f"hand-picked {self.hand_picked:.4g} · searched {self.searched:.4g} · "
                f"combined {self.combined:.4g}")

    def to_dict(self) -> dict[str, Any]:
        def who(row: Row) -> dict[str, Any]:
            r = row.record
            return {"label": row.label, "backbone": r.backbone, "run_id": r.run_id,
                    "trial_number": r.trial_number, "source": r.source}

        return {
            "hypervolume": {"hand_picked": self.hand_picked, "searched": self.searched, "combined": self.combined,
                            "reference_point": [REFERENCE] * len(self.scales),
                            "normalisation": [s.to_dict() for s in self.scales], "records": self.count,
                            "reference": self.reference},
            "dominated_hand_picked": [{**who(d.row), "dominated_by": [who(t) for t in d.by]}
                                      for d in self.dominated],
        }


def _plain(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """Whether ``a`` is no worse than ``b`` in every objective and better in one."""
    no_worse = all((x >= y) if m else (x <= y) for x, y, m in zip(a, b, maximize))
    return no_worse and any(x != y for x, y in zip(a, b))


def compare_kinds(rows: Sequence[Row], objectives: Sequence[Objective]) -> KindComparison | None:
    """The comparison for one group's rows; ``None`` unless both hand-picked runs and search trials are ranked."""
    ranked = [row for row in rows if not row.missing and row.record.kind in (HAND_PICKED, SEARCHED)]
    hand = [row for row in ranked if row.record.kind == HAND_PICKED]
    trials = sorted((row for row in ranked if row.record.kind == SEARCHED),
                    key=lambda row: (row.record.trial_number is None, row.record.trial_number or 0, row.label))
    if not hand or not trials or len(objectives) < 2:
        return None
    ranked = hand + trials
    raw = np.array([row.values for row in ranked], dtype=float)
    scales, columns = zip(*(_scale(o, raw[:, j]) for j, o in enumerate(objectives)))
    loss = np.stack(columns, axis=1)
    is_hand = np.array([row.record.kind == HAND_PICKED for row in ranked])
    reference = [REFERENCE] * len(objectives)

    def front_volume(mask: np.ndarray) -> float:
        # Dominated points add no volume, so each subset's front is implied.
        return hypervolume(loss[mask], reference)

    maximize = [o.maximize for o in objectives]
    dominated = tuple(Domination(row, tuple(t for t in trials if _dominates(t.values, row.values, maximize)))
                      for row in hand)
    return KindComparison(hand_picked=front_volume(is_hand), searched=front_volume(~is_hand),
                          combined=front_volume(np.ones(len(ranked), dtype=bool)), scales=tuple(scales),
                          count=len(ranked), dominated=tuple(d for d in dominated if d.by))
