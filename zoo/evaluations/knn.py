"""DINO's weighted k-NN classifier on summaries (AM-RADIO Section 3.1).

Summaries are L2-normalised; each query's ``k`` most cosine-similar training
images vote for their class with weight ``exp(sim / T)``; top-1/top-5 on the
val split. Cross-checked in the tests against scikit-learn's
``KNeighborsClassifier``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.evaluations.embedding import EMBED_BATCH_SIZE, Embedder, ImageView, embed
from zoo.evaluations.labelled import LabelledData
from zoo.evaluations.metrics import topk_accuracy

KNN_K = 20
KNN_TEMPERATURE = 0.07


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
               num_classes: int, k: int = KNN_K, temperature: float = KNN_TEMPERATURE,
               chunk: int = 1024) -> torch.Tensor:
    """DINO's weighted k-NN votes ``[Nq, num_classes]``."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    train = F.normalize(train_features.float(), dim=1)
    query = F.normalize(query_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, train.shape[0])
    votes = []
    for start in range(0, query.shape[0], chunk):
        similarity = query[start:start + chunk] @ train.T
        top_sim, top_index = similarity.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(top_sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.append(scores.scatter_add_(1, labels[top_index], weights))
    return torch.cat(votes) if votes else torch.zeros(0, num_classes)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 val_labels: torch.Tensor, num_classes: int, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` of the weighted k-NN classifier."""
    scores = knn_scores(train_features, train_labels, val_features, num_classes, k, temperature)
    return {f"top{k_}": v for k_, v in topk_accuracy(scores, val_labels).items()}


def evaluate_knn(data: LabelledData, embedder: Embedder, view: ImageView, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE, batch_size: int = EMBED_BATCH_SIZE,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Embed both splits through ``view`` and score the weighted k-NN: top-1/top-5 plus the settings."""
    train = embed(data.train.items, embedder, view, batch_size, progress)
    val = embed(data.val.items, embedder, view, batch_size, progress)
    accuracy = knn_accuracy(train, torch.from_numpy(data.train.labels), val, torch.from_numpy(data.val.labels),
                            len(data.classes), k, temperature)
    return {"top1": accuracy["top1"], "top5": accuracy["top5"], "k": min(k, len(data.train)),
            "temperature": temperature, "resolution": list(view.size_hw), "transform": view.describe(),
            "feature_dim": int(train.shape[1]), **data.describe()}
