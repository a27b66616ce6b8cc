"""SimCLR: Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of Visual
Representations. ICML 2020. https://arxiv.org/abs/2002.05709

Two augmented views of each image go through the backbone and an MLP projector; NT-Xent pulls the two
projections of an image together and pushes the other 2B - 2 projections in the batch away. The projector is
discarded: features for evaluation are the backbone's output, before the projector (Sec. 4.2 of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.config import opt
from selfsup.distributed import gather
from selfsup.losses import nt_xent
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.heads import mlp
from selfsup.views.recipes import Recipe


@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    temperature: float = opt(0.2, "NT-Xent temperature tau (paper: 0.1 for large batches on ImageNet, 0.5 on CIFAR-10 with batch 512-1024; 0.2 works well at batch 256).", min=1e-4)
    proj_hidden: int = opt(512, "Hidden width of the projector MLP (paper: the backbone width, 2048 for ResNet-50).", min=1)
    proj_dim: int = opt(128, "Output dimension of the projector (paper: 128).", min=1)
    proj_layers: int = opt(2, "Layers in the projector (SimCLR v1: 2; v2: 3).", min=1)


class SimCLR(Method):
    name = "simclr"
    family = "contrastive"
    paper = "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations"
    year = 2020
    Config = SimCLRConfig

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: SimCLRConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers)
        self.collapse = CollapseMonitor()  # embedding statistics for the logs, and a warning on collapse

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x1, x2 = self.views(images, self.generator)  # each (B, C, H, W) float in [0, 1]
        # One forward pass over both views: BN statistics then come from 2B images, as in the paper's global BN.
        z = self.projector(self.backbone(torch.cat([x1, x2])))  # (2B, proj_dim)
        z1, z2 = z.chunk(2)
        # Under torchrun the negatives are the whole global batch: every process computes the global loss.
        loss = nt_xent(gather(z1), gather(z2), self.cfg.temperature)
        return loss, self.collapse.stats(z1)  # z_std, z_rank: see methods/collapse.py
