"""VICReg: Bardes, Ponce, LeCun. VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning. ICLR 2022. https://arxiv.org/abs/2105.04906

Two views of each image go through the backbone and a 3-layer expander (the paper's name for the projector). Three
terms on the two batches of embeddings: invariance pulls the embeddings of an image's two views together (mean
squared error); variance keeps the standard deviation of every dimension above gamma = 1 with a hinge, in each
branch, so the embeddings cannot shrink to a point; covariance pushes the off-diagonal covariances of each branch to
0, so the dimensions carry different information. Weights 25 / 25 / 1 (paper). No negatives, no predictor, no
momentum encoder, no normalization of the embeddings.

Expander. The paper's is Linear-BN-ReLU, Linear-BN-ReLU, Linear, 8192 wide: 4x the 2048-d features of ResNet-50.
Ours is 512 wide by default: 4x the 128-d features of small-cnn at its default width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.config import opt
from selfsup.distributed import gather
from selfsup.losses import vicreg
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.heads import mlp
from selfsup.views.recipes import Recipe


@dataclass
class VICRegConfig(MethodConfig):
    name: str = "vicreg"
    inv_weight: float = opt(25.0, "Weight lambda of the invariance term, the mean squared error between the two views' embeddings (paper: 25).", min=0)
    var_weight: float = opt(25.0, "Weight mu of the variance term, a hinge on each dimension's standard deviation (paper: 25).", min=0)
    cov_weight: float = opt(1.0, "Weight nu of the covariance term, the squared off-diagonal covariances / D (paper: 1).", min=0)
    gamma: float = opt(1.0, "Target standard deviation of each embedding dimension in the variance hinge (paper: 1).", min=0)
    proj_hidden: int = opt(512, "Width of the expander's hidden layers (paper: 8192, 4x ResNet-50's features; 512 is 4x small-cnn's default 128-d features).", min=1)
    proj_dim: int = opt(512, "Output dimension D of the expander (paper: 8192).", min=2)
    proj_layers: int = opt(3, "Layers in the expander (paper: 3).", min=1)


class VICReg(Method):
    name = "vicreg"
    family = "non-contrastive"
    paper = "Bardes et al., VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning"
    year = 2022
    Config = VICRegConfig
    views_recipe = "byol"  # the paper follows BYOL's augmentations (asymmetric blur and solarization)

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: VICRegConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers)
        self.collapse = CollapseMonitor(hint=f"raise method.var_weight (now {cfg.var_weight:g})")

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x1, x2 = self.views(images, self.generator)  # each (B, C, H, W) float in [0, 1]
        # One pass per view, as in the authors' code: the expander's BatchNorm normalizes each view's batch alone.
        z1 = self.projector(self.backbone(x1))  # z1: B x D
        z2 = self.projector(self.backbone(x2))  # z2: B x D
        c = self.cfg
        # Under torchrun the variance and covariance are those of the global batch (every process: the global loss).
        loss, terms = vicreg(gather(z1), gather(z2), c.inv_weight, c.var_weight, c.cov_weight, c.gamma)
        # The unweighted terms: loss = inv_weight * invariance + var_weight * variance + cov_weight * covariance.
        return loss, {**{k: v.item() for k, v in terms.items()}, **self.collapse.stats(z1)}
