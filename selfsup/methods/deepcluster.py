"""DeepCluster: Caron, Bojanowski, Joulin, Douze. Deep Clustering for Unsupervised Learning of Visual Features.
ECCV 2018. https://arxiv.org/abs/1807.05520

Two steps in turn. At the start of every epoch (`on_epoch_start`) the backbone embeds every training image
(eval mode, unaugmented, no gradient); the features are PCA-whitened to 256 dims and L2-normalized
(cluster.pca_whiten) and k-means (cluster.kmeans) groups them into k clusters: each image's cluster is its
pseudo-label for the epoch. During the epoch a linear classifier on the backbone's features learns to predict the
pseudo-label of an augmented view of each image (cross-entropy), and the backbone learns with it. Good features
give clusters that mean something; learning to predict them improves the features.

What keeps it from trivial solutions (paper Sec. 3.3):
- Empty clusters: a cluster k-means leaves empty takes half of a random non-empty one (cluster.kmeans.
  split_for_empty, the paper's rule); `clusters` in the logs counts the non-empty ones.
- A few big clusters: if most images fall in a few clusters, predicting those is easy and teaches little. The paper
  samples images uniformly over clusters. The loop here draws its own batches (a seeded permutation per epoch), so
  the balance comes from per-image loss weights w_i = N / (k' n_c(i)) (cluster.pseudolabels.balanced_weights; n_c
  the size of image i's cluster, k' the non-empty clusters): they sum to N, every cluster's to N / k', and the
  batch mean of w_i l_i is an unbiased estimate of (1/k') sum_c mean_{i in c} l_i, the expected loss under the
  paper's sampler (a cluster uniformly, then an image in it). The sampler repeats the images of small clusters
  within an epoch where the weights scale their gradient instead: equal in expectation, noisier when clusters
  differ much in size.
- The classifier is re-initialized at every re-clustering (weights N(0, 0.01), bias 0, as the authors' code):
  cluster 3 of this epoch has nothing to do with cluster 3 of the last.

Logged every step: the pretext accuracy (the classifier's top-1 on the pseudo-labels of the views), and of the
epoch's clustering: `clusters` (non-empty), `cluster_max_frac` (share of the images in the largest),
`kmeans_reseeded` (empty clusters split), and from the second clustering on `cluster_nmi`, the NMI between
this clustering and the one before (the paper's Fig. 2(b): it rises as the features, and so the clusters, settle),
beside `cluster_nmi_chance`, what unrelated clusterings of the same sizes score (high for small clusters).

Resume: the pseudo-labels, the weights and the clustering's statistics are buffers, so a checkpoint carries them
and a run resumed inside an epoch trains on that epoch's clusters (the loop does not call on_epoch_start again
for it). The k-means seed and the classifier's fresh weights are drawn from self.generator, so a run resumed at
an epoch boundary re-clusters exactly as the uninterrupted run did.

Not here: the paper's Sobel filter in front of the network (it removes colour, which k-means would otherwise
cluster by; the simclr views' colour jitter and grey conversion take that role here) and its MLP (fc6-fc7)
between the convolutions and the classifier; the features for both clustering and evaluation are the backbone's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.cluster import kmeans, pca_whiten
from selfsup.cluster.kmeans import METRICS
from selfsup.cluster.pseudolabels import balanced_weights, label_stats
from selfsup.config import opt
from selfsup.errors import SelfSupError
from selfsup.evaluate.features import extract
from selfsup.methods.base import Method, MethodConfig
from selfsup.views.recipes import Recipe

STATS = ("clusters", "cluster_max_frac", "kmeans_reseeded", "cluster_nmi", "cluster_nmi_chance")  # stats buffer


@dataclass
class DeepClusterConfig(MethodConfig):
    name: str = "deepcluster"
    clusters: int = opt(100, "k, the k-means clusters (paper: 10,000 for ImageNet's 1.3M images of 1000 classes, "
                        "10x the classes, over-segmenting on purpose: its Fig. 3 finds it better than 1000). 100 is "
                        "10x the classes of Fashion-MNIST and CIFAR-10, 600 images a cluster on their 60k.", min=2)
    pca_dim: int = opt(256, "PCA-whitening dimension before k-means (paper: 256); features with fewer dimensions "
                       "keep all of theirs.", min=1)
    kmeans_metric: str = opt("euclidean", "k-means on the whitened unit vectors: euclidean (the paper's Faiss "
                             "k-means) or cosine (spherical k-means).", choices=list(METRICS))
    kmeans_iterations: int = opt(20, "Lloyd iterations per clustering (the authors' code: 20).", min=1)
    recluster_every: int = opt(1, "Re-cluster (and reset the classifier) at the start of every this many epochs "
                               "(paper: 1).", min=1)
    balance: str = opt("weights", "How clusters are balanced. weights: per-image loss weights inversely "
                       "proportional to the cluster's size, equal in expectation to the paper's uniform sampling "
                       "over clusters; none: plain cross-entropy, big clusters count more.",
                       choices=["weights", "none"])


class DeepCluster(Method):
    name = "deepcluster"
    family = "clustering"
    paper = "Caron et al., Deep Clustering for Unsupervised Learning of Visual Features"
    year = 2018
    Config = DeepClusterConfig
    views_recipe = "simclr"  # the paper's random crop and flip, plus colour jitter in place of its Sobel filter
    n_views = 1
    uses_indices = True

    labels: torch.Tensor
    weights: torch.Tensor
    stats: torch.Tensor

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: DeepClusterConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.k = cfg.clusters
        self.classifier = nn.Linear(backbone.dim, cfg.clusters)  # the paper's top layer, reset at each clustering
        # Sized by prepare(), which knows N: -1 until the first clustering.
        self.register_buffer("labels", torch.full((0,), -1, dtype=torch.long))  # (N,) each image's cluster
        self.register_buffer("weights", torch.zeros(0))  # (N,) each image's loss weight
        self.register_buffer("stats", torch.full((len(STATS),), float("nan"), dtype=torch.float64))
        self._images: torch.Tensor | None = None
        self.notes = []

    def prepare(self, images: torch.Tensor) -> None:
        n = len(images)
        if n < 2:
            raise SelfSupError(f"deepcluster clusters the training images and needs at least 2, got {n}")
        if self.cfg.clusters > n:
            self.k = n
            self.classifier = nn.Linear(self.backbone.dim, n)
            self.notes.append(f"deepcluster: method.clusters={self.cfg.clusters} but only {n} images; {n} clusters")
        self.labels = torch.full((n,), -1, dtype=torch.long)
        self.weights = torch.zeros(n)
        self._images = images  # a reference, for a loss() called before any on_epoch_start (outside the loop)

    @property
    def clustered(self) -> bool:
        return len(self.labels) > 0 and bool(self.labels[0] >= 0)

    def on_epoch_start(self, epoch: int, images: torch.Tensor) -> None:
        """Re-cluster at epoch 0 and every recluster_every epochs after; other epochs keep the last clusters."""
        if epoch % self.cfg.recluster_every == 0 or not self.clustered:
            self.recluster(images)

    @torch.no_grad()
    def recluster(self, images: torch.Tensor) -> None:
        """images: (N, C, H, W) uint8, all training images -> new labels, weights and stats; a fresh classifier."""
        if len(images) != len(self.labels):
            raise SelfSupError(f"deepcluster: prepare() saw {len(self.labels)} images, re-clustering got "
                               f"{len(images)}; give both the same training images")
        device = self.labels.device
        with torch.autocast(device.type, enabled=False):
            features = extract(self.backbone, images, 512, device, channels_last=False).to(device)  # (N, D)
            whitened = pca_whiten(features, self.cfg.pca_dim)  # (N, min(256, D)), unit rows
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator, device=self.generator.device))
            result = kmeans(whitened, self.k, self.cfg.kmeans_metric, self.cfg.kmeans_iterations, seed=seed)
        labels = result.assignments.to(device)  # (N,) in [0, k)
        stats = label_stats(labels, self.k, self.labels if self.clustered else None)
        stats["kmeans_reseeded"] = float(result.reseeded)
        self.stats.copy_(torch.tensor([stats.get(name, float("nan")) for name in STATS], dtype=torch.float64))
        self.labels.copy_(labels)
        if self.cfg.balance == "weights":
            self.weights.copy_(balanced_weights(labels, self.k))
        else:
            self.weights.fill_(1.0)
        self.reset_classifier()

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """A fresh draw of the classifier from self.generator: weights N(0, 0.01), bias 0 (the authors' code)."""
        weight = self.classifier.weight
        draw = torch.randn(weight.shape, generator=self.generator, device=self.generator.device)
        weight.copy_(0.01 * draw.to(weight))
        self.classifier.bias.zero_()

    def loss(self, images: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        indices = self.check_indices(images, indices, "look up its pseudo-label")
        if not self.clustered:  # called outside the training loop, which clusters at every epoch start
            if self._images is None:
                raise SelfSupError("deepcluster: no clusters yet; call prepare(images) and on_epoch_start first")
            self.on_epoch_start(0, self._images.to(images.device))
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1], one view
        logits = self.classifier(self.backbone(x))  # (B, k)
        target = self.labels[indices]  # (B,) each image's own pseudo-label
        with torch.autocast(logits.device.type, enabled=False):
            per_image = F.cross_entropy(logits.float(), target, reduction="none")  # (B,)
            loss = (self.weights[indices] * per_image).mean()
        logs = {"pretext_acc": (logits.detach().argmax(1) == target).float().mean().item()}
        logs.update({name: v for name, v in zip(STATS, self.stats.tolist()) if not math.isnan(v)})  # NaN: not yet
        return loss, logs
