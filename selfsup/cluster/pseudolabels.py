"""Pseudo-labels from clustering (DeepCluster, SeLa): their statistics, and DeepCluster's balance over clusters."""

from __future__ import annotations

import torch


def label_stats(labels: torch.Tensor, k: int, previous: torch.Tensor | None = None) -> dict[str, float]:
    """Statistics of a labelling labels (N,) in [0, k): {"clusters", "cluster_max_frac"} (+ the two NMIs).

    clusters: how many of the k labels are used; cluster_max_frac: the share of the images in the largest cluster
    (1/k when equipartitioned, 1 when collapsed into one). With `previous` (N,), the labelling before:
    cluster_nmi, their normalized mutual information I(A; B) / sqrt(H(A) H(B)), the geometric mean as DeepCluster
    defines it (Caron et al. 2018, eq. 5; scikit-learn's default is the arithmetic mean, which differs little for
    two labellings of similar entropy): 1 when the clusters stayed the same up to their numbering, near 0 when the
    new ones tell nothing about the old. DeepCluster's Fig. 2(b) plots it between consecutive epochs.
    cluster_nmi_chance: the NMI with a fixed shuffle of the previous labels (same cluster sizes, no relation), the
    level unrelated labellings reach. It is far from 0 when clusters are small: two random labellings of 4,000
    images into 100 clusters score about 0.25 (60,000 images: 0.02).
    """
    counts = torch.bincount(labels.flatten().cpu(), minlength=k)  # (k,)
    stats = {"clusters": float((counts > 0).sum()), "cluster_max_frac": float(counts.max()) / max(1, labels.numel())}
    if previous is not None:
        from sklearn.metrics import normalized_mutual_info_score  # here: slow to import

        new, old = labels.cpu().numpy(), previous.cpu()
        shuffled = old[torch.randperm(len(old), generator=torch.Generator().manual_seed(0))].numpy()
        stats["cluster_nmi"] = float(normalized_mutual_info_score(old.numpy(), new, average_method="geometric"))
        stats["cluster_nmi_chance"] = float(normalized_mutual_info_score(shuffled, new, average_method="geometric"))
    return stats


def balanced_weights(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-image loss weights that make every non-empty cluster count the same: labels (N,) -> weights (N,) float32.

    w_i = N / (k' n_c(i)), with n_c the size of image i's cluster and k' the number of non-empty clusters. The
    weights sum to N (mean 1) and every cluster's weights to N / k'. So for an image drawn uniformly from the data,
    E[w_i l_i] = (1/N) sum_i w_i l_i = (1/k') sum_c mean_{i in c} l_i: the expected loss under DeepCluster's
    sampler, which draws a cluster uniformly and then an image in it (Caron et al. 2018, Sec. 3.3).
    """
    counts = torch.bincount(labels, minlength=k)  # (k,)
    nonempty = int((counts > 0).sum())
    return (labels.numel() / (nonempty * counts[labels].float())).float()
