"""BYOL: Grill, Strub, Altche, Tallec, Richemond, Buchatskaya, Doersch, Pires, Guo, Azar, Piot, Kavukcuoglu,
Munos, Valko. Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning. NeurIPS 2020.
https://arxiv.org/abs/2006.07733

No negatives: the online network (backbone, projector, predictor) predicts the target network's projection of the
other view, and the target network (backbone, projector) is an EMA of the online one, not trained by gradients.
The loss is the normalized MSE 2 - 2 cos(p, z') summed over both view orders. What keeps it from collapsing to a
constant is the predictor together with the slowly moving target. The EMA momentum follows a cosine from
tau_base to 1 over the run. Features for evaluation are the online backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.config import opt
from selfsup.losses import byol_loss
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.heads import mlp
from selfsup.nets.momentum import EMA, cosine_momentum
from selfsup.views.recipes import Recipe


@dataclass
class BYOLConfig(MethodConfig):
    name: str = "byol"
    proj_hidden: int = opt(512, "Hidden width of the projector, Linear-BN-ReLU-Linear (paper: 4096 on a 2048-d "
                           "ResNet-50; 512 here, 4x small-cnn's 128-d features and 1x resnet18's 512, cheap on a CPU).",
                           min=1)
    proj_dim: int = opt(256, "Output of projector and predictor (paper: 256).", min=1)
    pred_hidden: int = opt(512, "Hidden width of the predictor, same shape as the projector (paper: 4096).", min=1)
    momentum_base: float = opt(0.99, "Target EMA momentum tau at the first step, rising by a cosine to momentum_final "
                               "at the last. Paper: 0.996 on ImageNet, a 1/(1-tau) = 250-step averaging window in runs "
                               "of 100k-300k steps. Runs here are far shorter (an epoch of 60k images at batch 256 is "
                               "234 steps; a 15-minute CPU run about 700): at 0.996 over a third of the target would "
                               "still be its random init after 250 steps (0.996^250 = 0.37), more as the cosine raises "
                               "tau. 0.99 averages over 100 steps, as solo-learn's CIFAR setting of BYOL does.",
                               min=0, max=1)
    momentum_final: float = opt(1.0, "Target EMA momentum at the end of the run (paper: 1).", min=0, max=1)


class BYOL(Method):
    name = "byol"
    family = "non-contrastive"
    paper = "Grill et al., Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning"
    year = 2020
    Config = BYOLConfig
    views_recipe = "byol"  # asymmetric: view 1 always blurred, view 2 rarely blurred and sometimes solarized

    tau: torch.Tensor

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: BYOLConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, layers=2)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, layers=2)
        # The target starts as a copy of the online backbone and projector (no predictor) and follows them by EMA.
        self.target_backbone = EMA(self.backbone)
        self.target_projector = EMA(self.projector)
        # The momentum of the latest target update (tau_base before the first), kept for the logs and checkpoints.
        self.register_buffer("tau", torch.tensor(cfg.momentum_base))
        # A target that follows too fast lets BYOL collapse (paper: at tau = 0, a copy of the online network, it does).
        self.collapse = CollapseMonitor(hint=f"raise method.momentum_base (now {cfg.momentum_base:g})")

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x1, x2 = self.views(images, self.generator)  # each (B, C, H, W) float in [0, 1]
        # One pass per view, as in the paper: BN statistics of each view's batch (the two views differ in kind).
        z1_online = self.projector(self.backbone(x1))  # (B, proj_dim) online projections
        p1 = self.predictor(z1_online)  # (B, proj_dim) online predictions
        p2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            z1 = self.target_projector(self.target_backbone(x1))  # (B, proj_dim) target projections
            z2 = self.target_projector(self.target_backbone(x2))
        loss = byol_loss(p1, p2, z1, z2)  # p1 regresses z2 and p2 regresses z1
        return loss, {"momentum": float(self.tau), **self.collapse.stats(z1_online)}  # z_std, z_rank: collapse.py

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After optimizer step `step` (1-based) of total_steps: target <- tau target + (1 - tau) online."""
        tau = cosine_momentum(step - 1, total_steps, self.cfg.momentum_base, self.cfg.momentum_final)
        self.target_backbone.update(self.backbone, tau)
        self.target_projector.update(self.projector, tau)
        self.tau.fill_(tau)
