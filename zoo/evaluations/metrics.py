"""Classification metrics shared by the evaluations."""

from __future__ import annotations

from typing import Sequence

import torch

from zoo.errors import ZooError

TOPK = (1, 5)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOPK) -> dict[int, float]:
    """``{k: fraction of rows whose label is among the k best scores}``.

    Ties go to the smaller class index (a stable sort), as scikit-learn does.
    ``k`` larger than the number of classes counts every row as correct.
    """
    if scores.shape[0] == 0:
        raise ZooError("no validation images to score")
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    hits = order == labels.long().view(-1, 1).to(order.device)
    return {k: int(hits[:, :k].any(dim=1).sum()) / hits.shape[0] for k in ks}
