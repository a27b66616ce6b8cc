"""SimSiam: Chen, He. Exploring Simple Siamese Representation Learning. CVPR 2021. https://arxiv.org/abs/2011.10566

BYOL without the momentum encoder: one network (backbone, projector) encodes both views, a predictor maps one
view's projection to the other's, and the other side of the loss is cut off by a stop-gradient:
L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2 with D the negative cosine. No negatives, no EMA, no large batches;
without the stop-gradient it collapses at once (paper Fig. 2). Features for evaluation are the backbone.

The paper also keeps the predictor's learning rate fixed (not decayed), which helps slightly (Sec. 4.2); here the
predictor follows the same schedule as everything else, since the training loop has one learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.config import opt
from selfsup.losses import simsiam_loss
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.heads import mlp
from selfsup.views.recipes import Recipe


@dataclass
class SimSiamConfig(MethodConfig):
    name: str = "simsiam"
    proj_hidden: int = opt(512, "Hidden width of the projector (paper: 2048 on ResNet-50; 512 here, cheap on a CPU "
                           "and 4x small-cnn's 128-d features).", min=1)
    proj_dim: int = opt(512, "Output of projector and predictor (paper: 2048).", min=4)
    proj_layers: int = opt(2, "Projector layers, each Linear then BN, ReLU between (paper: 3 on ImageNet, 2 on "
                           "CIFAR-10).", min=1)
    pred_hidden: int | None = opt(None, "Predictor bottleneck width; None: proj_dim / 4 (paper: 512 for a 2048-d "
                                  "output).", min=1)


class SimSiam(Method):
    name = "simsiam"
    family = "non-contrastive"
    paper = "Chen & He, Exploring Simple Siamese Representation Learning"
    year = 2021
    Config = SimSiamConfig
    views_recipe = "moco-v2"  # the paper uses MoCo v2's augmentation

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: SimSiamConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        # Projector: BN on every layer, the output BN without affine parameters (the paper's code).
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers, last_bn=True)
        # Predictor: Linear-BN-ReLU-Linear with a bottleneck, no BN on the output.
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden or cfg.proj_dim // 4, cfg.proj_dim, layers=2)
        # SimSiam's only defences against collapse are the predictor and the stop-gradient; the paper watches the
        # std of z / ||z|| (its Fig. 2), which the monitor logs as z_std with the effective rank z_rank.
        self.collapse = CollapseMonitor()

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x1, x2 = self.views(images, self.generator)  # each (B, C, H, W) float in [0, 1]
        z1 = self.projector(self.backbone(x1))  # (B, proj_dim), one pass per view as in the paper
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)  # (B, proj_dim)
        loss = simsiam_loss(p1, p2, z1, z2)  # the stop-gradient on z is inside
        return loss, self.collapse.stats(z1)  # z_std, z_rank: see methods/collapse.py
