"""Clustering evaluation: k-means on frozen features with one cluster per class, scored against the labels.

The labels are used only to score the partition, never to make it, so this asks whether the classes are the
natural groups of the representation (the question DeepCluster, SeLa and SwAV are built around), where kNN and
the linear probe ask whether the classes can be told apart given labels. Three scores, each 1 for a partition
equal to the classes up to renaming:
  nmi       normalized mutual information, I(classes; clusters) / mean(H(classes), H(clusters)); 0 when the
            clusters say nothing about the classes.
  ari       adjusted Rand index (Hubert & Arabie 1985): agreement on which pairs of images share a group,
            corrected for chance, so 0 is the expectation for a random partition (it can go below 0).
  accuracy  the share of images whose cluster, renamed to a class by the best one-to-one matching (Hungarian
            algorithm on the cluster-class counts), is their class; the usual "clustering accuracy" of IIC/SCAN.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.cluster.kmeans import KMeansResult, costs_to, kmeans
from selfsup.errors import SelfSupError
from selfsup.report.figures import image_grid_png


def contingency(labels: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """Counts (clusters, classes): entry [j, c] is the number of images of class c in cluster j."""
    if labels.shape != clusters.shape or labels.dim() != 1 or labels.numel() == 0:
        raise SelfSupError(f"labels and clusters must be two non-empty (N,) tensors, got {tuple(labels.shape)} and "
                           f"{tuple(clusters.shape)}")
    if bool((labels < 0).any()) or bool((clusters < 0).any()):
        raise SelfSupError("clustering scores need a known class and a cluster for every image; drop the images "
                           "labelled -1 (unknown) first")
    labels, clusters = labels.long().cpu(), clusters.long().cpu()
    n_classes, n_clusters = int(labels.max()) + 1, int(clusters.max()) + 1
    flat = torch.bincount(clusters * n_classes + labels, minlength=n_clusters * n_classes)
    return flat.view(n_clusters, n_classes)


def hungarian_accuracy(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """Accuracy in [0, 1] after renaming clusters to classes by the one-to-one matching that maximizes it.

    Counts of a cluster or class left unmatched (when their numbers differ) count as errors.
    """
    from scipy.optimize import linear_sum_assignment  # here: scipy takes most of a second to import

    counts = contingency(labels, clusters)  # (clusters, classes)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    return float(counts[rows, cols].sum()) / max(1, labels.numel())


def clustering_scores(labels: torch.Tensor, clusters: torch.Tensor) -> dict:
    """{"nmi", "ari", "accuracy"} of a partition `clusters` (N,) against the classes `labels` (N,)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score  # here: slow to import

    y, c = labels.cpu().numpy(), clusters.cpu().numpy()
    return {"nmi": float(normalized_mutual_info_score(y, c)), "ari": float(adjusted_rand_score(y, c)),
            "accuracy": hungarian_accuracy(labels, clusters)}


def cluster_and_score(features: torch.Tensor, labels: torch.Tensor, k: int, seed: int, metric: str = "cosine",
                      restarts: int = 3) -> tuple[dict, KMeansResult]:
    """k-means into k clusters of features (N, D), scored against labels (N,) -> (scores and settings, k-means)."""
    result = kmeans(features, k, metric=metric, restarts=restarts, seed=seed)
    scores = clustering_scores(labels, result.assignments)
    return {**scores, "k": k, "metric": metric, "restarts": restarts, "inertia": result.inertia}, result


def largest_clusters_png(images: torch.Tensor, labels: torch.Tensor, features: torch.Tensor, result: KMeansResult,
                         class_names: list[str], path: str | Path, rows: int = 10, per_row: int = 8,
                         title: str = "") -> Path:
    """A PNG with one row per cluster, largest first: the `per_row` images nearest its centroid, labelled with
    the cluster's size, its majority class and that class's share of the cluster (its purity).

    images: (N, C, H, W) uint8; labels (N,); features (N, D), the ones that were clustered.
    """
    assignments, centroids, labels = result.assignments.cpu(), result.centroids.cpu().float(), labels.cpu()
    sizes = torch.bincount(assignments, minlength=centroids.shape[0])  # (K,)
    grid = []
    for j in sizes.argsort(descending=True, stable=True)[:rows].tolist():
        if int(sizes[j]) == 0:
            break
        members = (assignments == j).nonzero().flatten()  # (m,)
        x = features[members].float().cpu()
        x = F.normalize(x, dim=1) if result.metric == "cosine" else x
        cost = costs_to(x, centroids[j:j + 1], result.metric)[:, 0]  # (m,)
        nearest = members[cost.argsort()[:per_row]]
        majority = int(torch.bincount(labels[members]).argmax())
        purity = float((labels[members] == majority).float().mean())
        name = class_names[majority] if majority < len(class_names) else str(majority)
        grid.append((f"cluster {j}, {int(sizes[j])} images\n{name}: {purity:.0%}", images[nearest].float() / 255))
    longest = max((len(line) for label, _ in grid for line in label.split("\n")), default=0)
    return image_grid_png(grid, path, title, label_width=max(1.3, 0.075 * longest + 0.25))  # ~0.075 in a character
