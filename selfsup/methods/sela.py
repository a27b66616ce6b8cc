"""SeLa: Asano, Rupprecht, Vedaldi. Self-labelling via simultaneous clustering and representation learning.
ICLR 2020. https://arxiv.org/abs/1911.05371

A classifier on the backbone's features (`heads` linear heads of K outputs each) learns with cross-entropy to
predict each image's pseudo-label from an augmented view. The pseudo-labels are in turn chosen to minimize the same
cross-entropy, under one constraint: every label is given to N / K images (equipartition); without it, one label
for every image would be optimal and the network would learn nothing. With P (N, K) the network's probabilities
for the whole data set, the labelling step is an optimal transport problem: the plan Q (rows summing to 1/N,
columns to 1/K) maximizing <Q, log P> + (1/lambda) H(Q). Sinkhorn-Knopp solves it in a few matrix-vector
products (cluster.sinkhorn with scores log P and epsilon = 1/lambda: Q = diag(a) P^lambda diag(b)), and each
image takes the label of its largest entry in Q (cluster.hard_labels). Both steps lower the same objective, one
over the network's weights, the other over the labels.

The labelling runs at the start of every `relabel_every`-th epoch (`on_epoch_start`; the authors' CIFAR code
re-labels once per epoch, 400 times in 400 epochs; their ImageNet runs 80 times in 400 epochs, every 5). Epochs,
not a count spread over the run: the planned total steps of a minutes budget move while the run goes, an epoch
does not. The probabilities are those of the unaugmented images, the backbone in eval mode, no gradient. Each head
has its own labels, all re-labelled from one feature pass (the authors' ImageNet code; their CIFAR code re-labels
one head per time, in turn); the loss is the mean of the heads' cross-entropies. Before the first labelling the
labels are a random equipartition (each label N / K times, in a random order; the authors' code), or, with
init=sinkhorn, the labelling of the freshly initialized network's predictions.

Unlike DeepCluster's clusters, SeLa's labels come from the heads' own predictions, so label 3 stays label 3 from
one labelling to the next and the heads are not reset.

Logged every step: the pretext accuracy (heads' top-1 on the pseudo-labels, averaged), and of the last labelling,
averaged over the heads: `clusters` (labels in use), `cluster_max_frac` (share of the largest label: 1/K when
equipartitioned), `sinkhorn_col_err` (the plan's largest relative deviation from 1/K column mass: how far the
Sinkhorn iterations got), and from the second labelling on `cluster_nmi` (NMI with the labelling before) and
`cluster_nmi_chance` (what an unrelated labelling of the same sizes scores).

Resume: the labels and the statistics are buffers, so a run resumed inside an epoch trains on that epoch's labels
(the loop does not call on_epoch_start again for it); the random first labelling is drawn from self.generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.cluster import hard_labels, sinkhorn
from selfsup.cluster.pseudolabels import label_stats
from selfsup.config import opt
from selfsup.errors import SelfSupError
from selfsup.evaluate.features import extract
from selfsup.methods.base import Method, MethodConfig
from selfsup.views.recipes import Recipe

STATS = ("clusters", "cluster_max_frac", "sinkhorn_col_err", "cluster_nmi", "cluster_nmi_chance")  # stats buffer


@dataclass
class SeLaConfig(MethodConfig):
    name: str = "sela"
    clusters: int = opt(128, "K, outputs of each head (paper: 3000 on ImageNet; the authors' CIFAR-10 script: 128, "
                        "for 50k images of 10 classes).", min=2)
    heads: int = opt(2, "Classifier heads, each with its own labelling (paper and the authors' CIFAR script: 10). "
                     "Each head adds a Sinkhorn-Knopp solve over the data set to every labelling, about 10 s on a CPU "
                     "thread for 60k images x 128 labels.", min=1)
    lam: float = opt(25.0, "lambda, the sharpness of the labelling: Q = diag(a) P^lambda diag(b) (paper: 25; the "
                     "authors' CIFAR code: 10). Larger: closer to hard labels, slower Sinkhorn convergence.", min=1e-3)
    sinkhorn_iterations: int = opt(100, "Sinkhorn-Knopp iterations per labelling (the authors iterate to a "
                                   "tolerance; sinkhorn_col_err in the logs shows how close these get).", min=1)
    relabel_every: int = opt(1, "Re-label at the start of every this many epochs (the authors' CIFAR code: every "
                             "epoch; ImageNet: every 5).", min=1)
    init: str = opt("random", "Labels before the first labelling. random: a random equipartition (the authors' "
                    "code), re-labelled from the network at the start of epoch relabel_every; sinkhorn: label "
                    "from the freshly initialized network at epoch 0 already.", choices=["random", "sinkhorn"])


class SeLa(Method):
    name = "sela"
    family = "clustering"
    paper = "Asano et al., Self-labelling via simultaneous clustering and representation learning"
    year = 2020
    Config = SeLaConfig
    views_recipe = "simclr"  # the authors' crop (scale 0.2-1), colour jitter 0.4, grayscale 0.2 and flip
    n_views = 1
    uses_indices = True

    labels: torch.Tensor
    stats: torch.Tensor

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: SeLaConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.k = cfg.clusters
        self.heads = nn.ModuleList(nn.Linear(backbone.dim, cfg.clusters) for _ in range(cfg.heads))
        self.register_buffer("labels", torch.full((cfg.heads, 0), -1, dtype=torch.long))  # (H, N), sized by prepare
        self.register_buffer("stats", torch.full((len(STATS),), float("nan"), dtype=torch.float64))
        self._images: torch.Tensor | None = None
        self.notes = []

    def prepare(self, images: torch.Tensor) -> None:
        n = len(images)
        if n < 2:
            raise SelfSupError(f"sela labels the training images and needs at least 2, got {n}")
        if self.cfg.clusters > n:  # N / K images per label needs K <= N
            self.k = n
            self.heads = nn.ModuleList(nn.Linear(self.backbone.dim, n) for _ in range(self.cfg.heads))
            self.notes.append(f"sela: method.clusters={self.cfg.clusters} but only {n} images; {n} labels per head")
        self.labels = torch.full((self.cfg.heads, n), -1, dtype=torch.long)
        self._images = images  # a reference, for a loss() called before any on_epoch_start (outside the loop)

    @property
    def labelled(self) -> bool:
        return self.labels.shape[1] > 0 and bool(self.labels[0, 0] >= 0)

    def on_epoch_start(self, epoch: int, images: torch.Tensor) -> None:
        """The first labels at epoch 0; a new labelling at every relabel_every-th epoch after."""
        if not self.labelled and self.cfg.init == "random":
            self.random_labels()
        elif not self.labelled or epoch % self.cfg.relabel_every == 0:
            self.relabel(images)

    @torch.no_grad()
    def random_labels(self) -> None:
        """Each head: label i % K for image i, in a random order drawn from self.generator (an exact equipartition)."""
        n, k = self.labels.shape[1], self.k
        for h in range(self.cfg.heads):
            order = torch.randperm(n, generator=self.generator, device=self.generator.device)
            self.labels[h] = (order % k).to(self.labels.device)
        stats = label_stats(self.labels[0], k)  # the same for every head
        self.stats.copy_(torch.tensor([stats["clusters"], stats["cluster_max_frac"], 0.0, math.nan, math.nan],
                                      dtype=torch.float64))

    @torch.no_grad()
    def relabel(self, images: torch.Tensor) -> None:
        """images: (N, C, H, W) uint8, all training images -> each head's labels by Sinkhorn-Knopp on its log P."""
        if len(images) != self.labels.shape[1]:
            raise SelfSupError(f"sela: prepare() saw {self.labels.shape[1]} images, re-labelling got {len(images)}; "
                               "give both the same training images")
        device, k = self.labels.device, self.k
        previous = self.labels.clone() if self.labelled else None
        per_head = []
        with torch.autocast(device.type, enabled=False):
            features = extract(self.backbone, images, 512, device, channels_last=False).to(device)  # (N, D)
            for h, head in enumerate(self.heads):
                log_p = F.log_softmax(head(features).float(), dim=1)  # (N, K)
                plan = sinkhorn(log_p, epsilon=1 / self.cfg.lam, iterations=self.cfg.sinkhorn_iterations)  # (N, K)
                col_err = float((plan.sum(0) * k - 1).abs().max())  # columns should hold 1/K of the mass each
                self.labels[h] = hard_labels(plan)
                stats = label_stats(self.labels[h], k, previous[h] if previous is not None else None)
                per_head.append([stats["clusters"], stats["cluster_max_frac"], col_err,
                                 stats.get("cluster_nmi", math.nan), stats.get("cluster_nmi_chance", math.nan)])
        self.stats.copy_(torch.tensor(per_head, dtype=torch.float64).mean(0))

    def loss(self, images: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        indices = self.check_indices(images, indices, "look up its pseudo-labels")
        if not self.labelled:  # called outside the training loop, which labels at the epoch starts
            if self._images is None:
                raise SelfSupError("sela: no labels yet; call prepare(images) and on_epoch_start first")
            self.on_epoch_start(0, self._images.to(images.device))
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1], one view
        h = self.backbone(x)  # (B, D)
        targets = self.labels[:, indices]  # (H, B): each image's own label for every head
        losses, correct = [], 0.0
        for head, target in zip(self.heads, targets):
            logits = head(h).float()  # (B, K)
            losses.append(F.cross_entropy(logits, target))
            correct += (logits.detach().argmax(1) == target).float().mean().item()
        logs = {"pretext_acc": correct / len(self.heads)}
        logs.update({name: v for name, v in zip(STATS, self.stats.tolist()) if not math.isnan(v)})  # NaN: not yet
        return torch.stack(losses).mean(), logs
