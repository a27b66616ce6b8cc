"""k-means, PCA-whitening and Sinkhorn-Knopp (selfsup.cluster), against scikit-learn and the papers' formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.cluster import hard_labels, kmeans, pca_whiten, sinkhorn
from selfsup.cluster.kmeans import kmeans_plus_plus, split_for_empty
from selfsup.errors import SelfSupError

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n_per_blob: int, blobs: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(blobs, dim, generator=g) * 6
    labels = torch.arange(blobs).repeat_interleave(n_per_blob)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b group the points alike, whatever the cluster numbers."""
    pairs = torch.unique(torch.stack([a, b], dim=1), dim=0)  # one row per (cluster in a, cluster in b) that occurs
    return len(pairs) == len(torch.unique(a)) == len(torch.unique(b))


# --- Sinkhorn-Knopp ---------------------------------------------------------------------------------------------

def sinkhorn_reference(scores, epsilon, iterations, r, c):
    """SwAV's distributed_sinkhorn (Caron et al. 2020, Algorithm 1) in float64, with general marginals r and c."""
    q = torch.exp(scores.double() / epsilon).t()  # (K, N)
    q /= q.sum()
    for _ in range(iterations):
        q *= (c.double() / q.sum(dim=1))[:, None]  # every prototype (row of q) to its mass
        q *= (r.double() / q.sum(dim=0))[None, :]  # every sample (column of q) to its mass
    return q.t()


def cosine_scores(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 16, generator=g), dim=1) @ F.normalize(torch.randn(k, 16, generator=g), dim=1).t()


@pytest.mark.parametrize("n,k", [(64, 10), (100, 3), (7, 20), (256, 128)])
@pytest.mark.parametrize("epsilon", [0.05, 0.5, 2.0])
def test_sinkhorn_meets_uniform_marginals(n, k, epsilon):
    plan = sinkhorn(cosine_scores(n, k, seed=n + k), epsilon, iterations=200)
    assert torch.allclose(plan.sum(1), torch.full((n,), 1 / n), rtol=1e-4, atol=0)
    assert torch.allclose(plan.sum(0), torch.full((k,), 1 / k), rtol=1e-4, atol=0)
    assert bool((plan >= 0).all())


@pytest.mark.parametrize("n,k", [(50, 5), (9, 30)])
def test_sinkhorn_meets_given_marginals(n, k):
    g = torch.Generator().manual_seed(3)
    rows, cols = torch.rand(n, generator=g) + 0.1, torch.rand(k, generator=g) + 0.1
    rows, cols = rows / rows.sum() * 2, cols / cols.sum() * 2  # any total mass, the same on both sides
    plan = sinkhorn(cosine_scores(n, k, seed=4), 0.1, iterations=300, row_sums=rows, col_sums=cols)
    assert torch.allclose(plan.sum(1), rows, rtol=1e-4, atol=0)
    assert torch.allclose(plan.sum(0), cols, rtol=1e-4, atol=0)


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_matches_swav_reference(iterations):
    scores = cosine_scores(40, 8, seed=5)
    r = torch.full((40,), 1 / 40, dtype=torch.float64)
    c = torch.full((8,), 1 / 8, dtype=torch.float64)
    plan = sinkhorn(scores.double(), 0.05, iterations)
    assert plan.dtype == torch.float64
    assert torch.allclose(plan, sinkhorn_reference(scores, 0.05, iterations, r, c), rtol=1e-9, atol=1e-15)
    # After any number of iterations the rows, normalized last, are exact; SwAV's codes are the plan times N.
    assert torch.allclose(plan.sum(1) * 40, torch.ones(40, dtype=torch.float64))


def test_sinkhorn_is_stable_where_exp_overflows_in_float32():
    scores = cosine_scores(32, 4, seed=6) * 10
    assert bool(torch.exp(scores / 0.05).isinf().any())  # the plain-space algorithm would divide inf by inf
    plan = sinkhorn(scores, 0.05, iterations=1000)
    assert plan.dtype == torch.float32 and bool(torch.isfinite(plan).all())
    assert torch.allclose(plan.sum(1), torch.full((32,), 1 / 32), rtol=1e-4, atol=0)
    assert torch.allclose(plan.sum(0), torch.full((4,), 1 / 4), rtol=2e-3, atol=0)


def test_sinkhorn_refuses_marginals_of_different_mass():
    with pytest.raises(SelfSupError, match="same mass"):
        sinkhorn(torch.zeros(4, 2), row_sums=torch.full((4,), 0.25), col_sums=torch.full((2,), 1.0))
    with pytest.raises(SelfSupError, match="non-negative"):
        sinkhorn(torch.zeros(4, 2), row_sums=torch.tensor([0.5, 0.5, 0.5, -0.5]))


def test_hard_labels_equipartition_what_argmax_would_collapse():
    # SeLa's point: every sample prefers cluster 0, so argmax of the predictions puts all of them there; the
    # transport plan with SeLa's lambda = 25 spreads them evenly, and its hard labels keep that.
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(120, 4, generator=g) * 0.5
    logits[:, 0] += 3
    assert bool((logits.argmax(1) == 0).all())
    labels = hard_labels(sinkhorn(F.log_softmax(logits, dim=1), epsilon=1 / 25, iterations=500))
    assert labels.shape == (120,) and labels.dtype == torch.int64
    # Rounding does not enforce the column sums exactly, but leaves every cluster near its 30 samples.
    counts = torch.bincount(labels, minlength=4)
    assert int(counts.min()) >= 24 and int(counts.max()) <= 36


# --- k-means ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_agrees_with_scikit_learn_on_separated_blobs(seed):
    from sklearn.cluster import KMeans

    x, truth = blobs(60, 5, 8, 1.0, seed)
    ours = kmeans(x, 5, metric="euclidean", restarts=3, seed=seed)
    theirs = KMeans(5, n_init=3, random_state=seed).fit(x.numpy())
    assert same_partition(ours.assignments, torch.from_numpy(theirs.labels_).long())
    assert same_partition(ours.assignments, truth)
    assert math.isclose(ours.inertia, theirs.inertia_, rel_tol=1e-4)
    # The centroids are the cluster means, and the reported inertia is the summed squared distance to them.
    means = torch.stack([x[ours.assignments == j].mean(0) for j in range(5)])
    assert torch.allclose(ours.centroids, means, atol=1e-5)
    assert math.isclose(ours.inertia, float(((x - means[ours.assignments]) ** 2).sum()), rel_tol=1e-5)


def test_cosine_kmeans_groups_by_direction_not_norm():
    x, truth = blobs(50, 4, 16, 0.5, seed=2)
    scale = torch.rand(len(x), 1, generator=torch.Generator().manual_seed(0)) * 10 + 0.1  # norms vary 100-fold
    result = kmeans(x * scale, 4, restarts=2, seed=0)  # cosine is the default
    assert result.metric == "cosine" and same_partition(result.assignments, truth)
    assert torch.allclose(result.centroids.norm(dim=1), torch.ones(4))
    unit = F.normalize(x, dim=1)
    assert math.isclose(result.inertia, float((1 - (unit * result.centroids[result.assignments]).sum(1)).sum()),
                        rel_tol=1e-4)


def test_kmeans_plus_plus_is_deterministic_under_a_seed():
    x, _ = blobs(40, 6, 8, 2.0, seed=3)
    seeds = [kmeans_plus_plus(x, 6, "euclidean", torch.Generator().manual_seed(s)) for s in (11, 11, 12)]
    assert torch.equal(seeds[0], seeds[1])
    assert not torch.equal(seeds[0], seeds[2])
    # every seed is a data point, and no point is chosen twice
    assert all(bool((x == s).all(1).any()) for s in seeds[0])
    assert len(torch.unique(seeds[0], dim=0)) == 6
    a, b = kmeans(x, 6, seed=5), kmeans(x, 6, seed=5)
    assert torch.equal(a.assignments, b.assignments) and torch.equal(a.centroids, b.centroids)


def test_an_empty_cluster_takes_half_of_a_non_empty_one():
    x, truth = blobs(30, 2, 4, 0.5, seed=4)
    centres = torch.stack([x[truth == 0].mean(0), x[truth == 1].mean(0)])
    far = centres.mean(0, keepdim=True) + 1000  # nearest to no point: cluster 2 is empty after the first assignment
    result = kmeans(x, 3, metric="euclidean", init=torch.cat([centres, far]), seed=0)
    assert result.reseeded >= 1
    sizes = torch.bincount(result.assignments, minlength=3)
    assert bool((sizes > 0).all()) and int(sizes.sum()) == 60
    # One blob was split in two, the other kept whole: the partition refines the true one.
    assert sorted(sizes.tolist())[-1] == 30
    pairs = torch.unique(torch.stack([result.assignments, truth], 1), dim=0)
    assert len(pairs) == 3
    two_clusters = kmeans(x, 2, metric="euclidean", init=centres)
    assert result.inertia < two_clusters.inertia


def test_split_for_empty_splits_a_cluster_by_a_hyperplane():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g)
    assignments = torch.tensor([0] * 19 + [1])  # cluster 1 is a single point, cluster 2 is empty
    split, count = split_for_empty(x, assignments, 3, g)
    assert count == 1
    assert torch.bincount(split, minlength=3)[1] == 1  # a single point cannot be split; the big cluster was
    halves = torch.bincount(split, minlength=3)
    assert halves[0] > 0 and halves[2] > 0 and halves[0] + halves[2] == 19
    # identical points cannot be told apart by a hyperplane: they are split in two halves
    same, count = split_for_empty(torch.ones(6, 3), torch.zeros(6, dtype=torch.long), 2, g)
    assert count == 1 and torch.bincount(same).tolist() == [3, 3]


def test_kmeans_chunks_do_not_change_the_result():
    x, _ = blobs(100, 3, 5, 1.5, seed=6)
    whole, chunked = kmeans(x, 3, seed=1, chunk=4096), kmeans(x, 3, seed=1, chunk=7)
    assert torch.equal(whole.assignments, chunked.assignments)
    assert torch.allclose(whole.centroids, chunked.centroids, atol=1e-6)


def test_kmeans_says_what_is_wrong():
    with pytest.raises(SelfSupError, match="cannot make 5 clusters of 3 points"):
        kmeans(torch.randn(3, 2), 5)
    with pytest.raises(SelfSupError, match="unknown k-means metric 'manhattan'"):
        kmeans(torch.randn(3, 2), 2, metric="manhattan")
    with pytest.raises(SelfSupError, match="init must hold 2 centroids"):
        kmeans(torch.randn(3, 2), 2, init=torch.zeros(3, 2))


# --- PCA-whitening ------------------------------------------------------------------------------------------------

def test_pca_whiten_decorrelates_and_normalizes():
    g = torch.Generator().manual_seed(8)
    mixing = torch.randn(6, 6, generator=g) * torch.tensor([100.0, 30, 10, 3, 1, 0.3])  # strongly anisotropic
    x = torch.randn(20000, 6, generator=g) @ mixing.t() + 5
    out = pca_whiten(x, dim=4)
    assert out.shape == (20000, 4)
    assert torch.allclose(out.norm(dim=1), torch.ones(20000), atol=1e-5)
    # Whitened Gaussian data is isotropic, so its L2-normalized rows are uniform on the sphere: covariance I / d.
    cov = out.double().t() @ out.double() / len(out)
    assert torch.allclose(cov * 4, torch.eye(4, dtype=torch.float64), atol=0.05)
    # Without whitening the normalized data is far from isotropic: one direction holds most of the variance.
    plain = F.normalize(x - x.mean(0), dim=1).double()
    assert torch.linalg.eigvalsh(plain.t() @ plain / len(plain)).max() > 0.5
    assert pca_whiten(x, dim=256).shape == (20000, 6)  # dim larger than the features keeps all of them
