"""Batched k-means in torch on the data's device, with DeepCluster's handling of empty clusters (Caron et al. 2018).

Lloyd's algorithm (assign every point to its nearest centroid, move every centroid to the mean of its points)
started from greedy k-means++ seeds (Arthur & Vassilvitskii 2007). Distances are computed in chunks of rows, so memory
is (chunk, K), never (N, N) or even (N, K): DeepCluster clusters 1.3M ImageNet features into K = 10000.

Two metrics:
  cosine     (default) spherical k-means (Dhillon & Modha 2001): points and centroids live on the unit sphere,
             a point goes to the centroid of highest cosine similarity, a centroid is the normalized mean of its
             points, and a point's cost is 1 - cos. It is the default because the rest of the evaluation judges
             features by angle (the kNN monitor votes by cosine similarity), contrastive and distillation losses
             compare embeddings by angle, so pretraining did not shape their norm, and one image with a large
             norm cannot pull a centroid to itself. DeepCluster L2-normalizes too, after PCA-whitening (see
             pca_whiten).
  euclidean  classic k-means: squared Euclidean distance, centroids are plain means (what scikit-learn does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError

METRICS = ("cosine", "euclidean")


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (K, D); unit rows under the cosine metric
    assignments: torch.Tensor  # (N,) int64, the nearest centroid of every point
    inertia: float  # summed cost of every point to its centroid: squared distance, or 1 - cos
    iterations: int  # Lloyd iterations of the kept restart
    reseeded: int  # empty clusters re-seeded by splitting a non-empty one, over the kept restart
    metric: str  # "cosine" or "euclidean"


def _prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    x = x.float()
    return F.normalize(x, dim=1) if metric == "cosine" else x


def costs_to(x: torch.Tensor, centroids: torch.Tensor, metric: str) -> torch.Tensor:
    """Cost of every point to every centroid: x (n, D), centroids (K, D), prepared for the metric -> (n, K)."""
    if metric == "cosine":
        return (1 - x @ centroids.t()).clamp_min(0)
    sq = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.t() + (centroids * centroids).sum(1)
    return sq.clamp_min(0)  # squared distances; rounding can make a zero slightly negative


def point_costs(x: torch.Tensor, centroids: torch.Tensor, metric: str,
                chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and its cost for every row: x (N, D), centroids (K, D) -> assignments (N,), costs (N,).

    x must already be prepared for the metric (unit rows for cosine). Rows go in chunks of `chunk` points.
    """
    assignments, costs = [], []
    for start in range(0, x.shape[0], chunk):
        cost, idx = costs_to(x[start:start + chunk], centroids, metric).min(dim=1)  # (n,), (n,)
        assignments.append(idx)
        costs.append(cost)
    return torch.cat(assignments), torch.cat(costs)


def kmeans_plus_plus(x: torch.Tensor, k: int, metric: str = "cosine", generator: torch.Generator | None = None,
                     chunk: int = 4096) -> torch.Tensor:
    """Greedy k-means++ seeds (Arthur & Vassilvitskii 2007): x (N, D) prepared for the metric -> centroids (k, D).

    The first seed is a uniform draw. Every next seed: draw 2 + ln k candidate points, each with probability
    proportional to its cost to the nearest seed so far (squared distance; 1 - cos is half the squared distance
    between unit vectors), and keep the candidate that lowers the total cost most. The candidates are what
    scikit-learn does too; one candidate per seed (the paper's plain rule) more often puts two seeds in one
    cluster, from which Lloyd's algorithm cannot recover.
    """
    n, device = x.shape[0], generator.device if generator is not None else x.device
    trials = 2 + int(math.log(k))
    first = torch.randint(n, (1,), generator=generator, device=device).to(x.device)
    seeds = [x[first]]  # list of (1, D)
    _, best = point_costs(x, seeds[0], metric, chunk)  # (N,) cost to the nearest seed
    for _ in range(1, k):
        weights = best.double()
        if float(weights.sum()) <= 0:  # every point coincides with a seed: any point is as good as another
            weights = torch.ones_like(weights)
        picks = torch.multinomial(weights.to(device), trials, replacement=True, generator=generator).to(x.device)
        candidate_costs = torch.cat([torch.minimum(best[start:start + chunk, None],
                                                   costs_to(x[start:start + chunk], x[picks], metric))
                                     for start in range(0, n, chunk)])  # (N, trials) cost with each candidate
        choice = int(candidate_costs.double().sum(0).argmin())
        seeds.append(x[picks[choice:choice + 1]])
        best = candidate_costs[:, choice]
    return torch.cat(seeds)


def split_for_empty(x: torch.Tensor, assignments: torch.Tensor, k: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """DeepCluster's rule for empty clusters: each empty cluster takes half of a non-empty one. -> (assignments, count)

    Caron et al. 2018 (Sec. 3.3, "empty clusters"): pick a random non-empty cluster, give the empty one its centroid
    plus a small random perturbation, and reassign the points of the chosen cluster to the two. Centroids c + d and
    c - d send each point to the side of the hyperplane through c, normal to d, that it lies on, whatever the size
    of d; so we split the points that way directly, by a random direction d through the mean of the cluster's
    points. As in the Faiss k-means DeepCluster ran, the cluster to split is drawn with probability proportional to
    its size minus one (a single point cannot be split; large clusters are split first). Points that all coincide
    are split in two halves by index.
    """
    counts = torch.bincount(assignments, minlength=k)  # (K,)
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return assignments, 0
    assignments = assignments.clone()
    device = generator.device if generator is not None else x.device
    for target in empty:
        weights = (counts - 1).clamp_min(0).double()
        if float(weights.sum()) == 0:
            break  # every cluster holds one point: nothing left to split (only when N < K, refused by kmeans)
        source = int(torch.multinomial(weights.to(device), 1, generator=generator))
        members = (assignments == source).nonzero().flatten()  # (m,)
        points = x[members]
        direction = torch.randn(x.shape[1], generator=generator, device=device).to(x)  # (D,)
        side = (points - points.mean(0)) @ direction > 0  # (m,) which of c + d, c - d is nearer
        if bool(side.all()) or not bool(side.any()):
            side = torch.arange(len(members), device=x.device) < len(members) // 2
        assignments[members[side]] = target
        counts[target], counts[source] = int(side.sum()), int((~side).sum())
    return assignments, len(empty)


def centroids_of(x: torch.Tensor, assignments: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    """Mean of each cluster's points (K, D), normalized to unit length under the cosine metric."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, assignments, x)  # (K, D)
    if metric == "cosine":
        return F.normalize(sums, dim=1)  # the normalized sum is the normalized mean
    counts = torch.bincount(assignments, minlength=k).clamp_min(1).to(x.dtype)  # (K,)
    return sums / counts[:, None]


def kmeans(x: torch.Tensor, k: int, metric: str = "cosine", iterations: int = 100, tol: float = 1e-6,
           restarts: int = 1, seed: int = 0, init: torch.Tensor | None = None, chunk: int = 4096) -> KMeansResult:
    """Cluster the rows of x (N, D) into k clusters with Lloyd's algorithm from greedy k-means++ seeds.

    metric: "cosine" (spherical k-means, the default; see the module docstring) or "euclidean".
    iterations: at most this many Lloyd steps; a restart stops early when no point changes cluster or the
    inertia improves by less than `tol` (relative). restarts: independent k-means++ starts, the lowest inertia
    wins (scikit-learn's n_init). seed: all randomness (seeds, empty-cluster splits) comes from one
    torch.Generator on x's device seeded with it, so a result is reproducible on a given device.
    init: starting centroids (k, D) instead of k-means++ seeds (then there is one start, whatever `restarts`).
    Runs on x's device in float32; the returned assignments are those of the returned centroids, and no cluster is
    empty unless the data has fewer distinct points than k (or the last allowed step emptied one).
    """
    if metric not in METRICS:
        raise SelfSupError(f"unknown k-means metric '{metric}'; choose one of: {', '.join(METRICS)}")
    if x.dim() != 2:
        raise SelfSupError(f"k-means clusters the rows of a 2-d tensor (N, D), got shape {tuple(x.shape)}: "
                           "flatten the features first")
    if not 1 <= k <= x.shape[0]:
        raise SelfSupError(f"k-means cannot make {k} clusters of {x.shape[0]} points: k must be between 1 and "
                           "the number of points; use fewer clusters or more points")
    if restarts < 1 or iterations < 1:
        raise SelfSupError(f"k-means needs restarts >= 1 and iterations >= 1, got {restarts} and {iterations}")
    if init is not None and tuple(init.shape) != (k, x.shape[1]):
        raise SelfSupError(f"k-means init must hold {k} centroids of {x.shape[1]} dims, got shape {tuple(init.shape)}")
    x = _prepare(x, metric)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(1 if init is not None else restarts):
        if init is not None:
            start = _prepare(init.to(x.device), metric)
        else:
            start = kmeans_plus_plus(x, k, metric, generator, chunk)
        result = _lloyd(x, start, metric, iterations, tol, generator, chunk)
        if best is None or result.inertia < best.inertia:
            best = result
    return best


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, metric: str, iterations: int, tol: float,
           generator: torch.Generator, chunk: int) -> KMeansResult:
    k = centroids.shape[0]
    assignments, costs = point_costs(x, centroids, metric, chunk)
    inertia, reseeded, step = float(costs.double().sum()), 0, 0
    for step in range(1, iterations + 1):
        assignments, split = split_for_empty(x, assignments, k, generator)
        reseeded += split
        centroids = centroids_of(x, assignments, k, metric)
        new_assignments, costs = point_costs(x, centroids, metric, chunk)
        new_inertia = float(costs.double().sum())
        unchanged = bool((new_assignments == assignments).all())
        improvement = inertia - new_inertia
        assignments, inertia = new_assignments, new_inertia
        if improvement > 0 and bool((torch.bincount(assignments, minlength=k) == 0).any()):
            continue  # not done while a cluster is empty and splits still help: the next step re-seeds it
        if unchanged or improvement <= tol * max(inertia, 1e-30):
            break
    return KMeansResult(centroids, assignments, inertia, step, reseeded, metric)


def pca_whiten(x: torch.Tensor, dim: int = 256, eps: float = 1e-5) -> torch.Tensor:
    """DeepCluster's pre-processing (Caron et al. 2018, Sec. 3.3): PCA to `dim` dimensions, whitening, L2 norm.

    x: (N, D) -> (N, min(dim, D)) unit rows. Centre the features, project them on the `dim` principal directions
    of largest variance, divide each by the square root of its variance (+ eps, so near-constant directions are
    not blown up into noise), then L2-normalize every row. The covariance is decomposed in float64.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise SelfSupError(f"PCA-whitening needs features (N, D) with N >= 2, got shape {tuple(x.shape)}")
    xd = x.double()
    centred = xd - xd.mean(0)
    cov = centred.t() @ centred / (x.shape[0] - 1)  # (D, D)
    variances, directions = torch.linalg.eigh(cov)  # ascending
    keep = min(dim, x.shape[1])
    variances, directions = variances.flip(0)[:keep], directions.flip(1)[:, :keep]  # (keep,), (D, keep)
    whitened = centred @ directions / (variances.clamp_min(0) + eps).sqrt()  # (N, keep)
    return F.normalize(whitened, dim=1).to(x.dtype if x.is_floating_point() else torch.float32)
