"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, the protocol of solo-learn/lightly).

Cosine similarity; each of the k neighbours votes for its class with weight exp(similarity / temperature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Predicted class per test row. train_features: (N, D), train_labels: (N,), test_features: (M, D) -> (M,)."""
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test_features.shape[0], chunk):
        query = F.normalize(test_features[start:start + chunk].float(), dim=1)
        sim, idx = (query @ train.t()).topk(k, dim=1)  # (m, k) similarities and neighbour indices
        votes = torch.zeros(query.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, train_labels.to(idx.device)[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of the weighted kNN classifier."""
    pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return float((pred == test_labels).float().mean())
