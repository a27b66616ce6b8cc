"""Barlow Twins: Zbontar, Jing, Misra, LeCun, Deny. Barlow Twins: Self-Supervised Learning via Redundancy
Reduction. ICML 2021. https://arxiv.org/abs/2103.03230

Two views of each image go through the backbone and a 3-layer projector; the cross-correlation matrix C (D x D)
of the two batches of embeddings, each dimension standardized along the batch, is pushed to the identity: the
diagonal to 1 (each dimension invariant to the views), the off-diagonal to 0 (no two dimensions redundant). No
negatives, no predictor, no momentum encoder: the standardization and the off-diagonal term prevent collapse.

Lambda. The paper uses lambda = 5e-3 with its 8192-d projector (implementation details); we found no rule in it
for other widths, and its first author wrote that they "don't have a lot of data points for setting lambda with
smaller projector dimensions" (facebookresearch/barlowtwins, issue 9). We default to lambda = 1/D, the setting of
Tsai, Bai, Morency and Salakhutdinov (A Note on Connecting Barlow Twins with Negative-Sample-Free Contrastive
Learning, 2021; their CIFAR-10 runs use 1/128 with a 128-d projector): 2e-3 at our default D = 512, near the
paper's 5e-3. Set method.lambd=0.005 and proj_dim=8192 for the paper's own values.

Loss scale. The method returns the paper's loss times 1/D (method.loss_scale), the mean over dimensions: with
lambda = 1/D that is mean_i (1 - C_ii)^2 + (D - 1)/D * mean_{i != j} C_ij^2, of the size of NT-Xent. LARS makes the
weights' steps independent of the scale but not those of biases and BatchNorm parameters, which it leaves
unadapted: unscaled, their gradients were about 200 times SimCLR's at D = 512. The paper handles this with a 40x lower
learning rate for them (0.0048 against 0.2); the authors' first released code also scaled the loss (0.024 at
8192-d, issue 9 above).

Projector. The paper's is Linear-BN-ReLU, Linear-BN-ReLU, Linear, 8192 wide: 4x the 2048-d features of ResNet-50.
Ours is 512 wide by default: 4x the 128-d features of small-cnn at its default width.

Picture. After pretraining the run folder gets barlow-crosscorrelation.png: C of the LAST TRAINING BATCH, kept in
a buffer (`last_c`, saved in checkpoints, so a resumed run draws it too). Computing C afresh in figures() would
use the 8 images it is given and BatchNorm's running statistics instead of the batch's: a noisy matrix of rank
at most 7, not the one training ended with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.config import opt
from selfsup.distributed import gather
from selfsup.losses import barlow_twins, standardize
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.heads import mlp
from selfsup.views.recipes import Recipe


@dataclass
class BarlowTwinsConfig(MethodConfig):
    name: str = "barlow"
    lambd: float | None = opt(None, "Weight of the off-diagonal (redundancy reduction) term. None: 1 / proj_dim (Tsai et al. 2021; 0.002 at 512-d). Paper: 5e-3 with an 8192-d projector; we found no rule in it for other widths.", min=0)
    loss_scale: float | None = opt(None, "Factor on the paper's loss. None: 1 / proj_dim (the mean over dimensions, of the size of NT-Xent), so that biases and BatchNorm parameters, which LARS leaves unadapted, take steps of a sensible size.", min=1e-12)
    proj_hidden: int = opt(512, "Width of the projector's hidden layers (paper: 8192, 4x ResNet-50's features; 512 is 4x small-cnn's default 128-d features).", min=1)
    proj_dim: int = opt(512, "Output dimension D of the projector; the cross-correlation matrix is D x D (paper: 8192).", min=2)
    proj_layers: int = opt(3, "Layers in the projector (paper: 3).", min=1)


class BarlowTwins(Method):
    name = "barlow"
    family = "non-contrastive"
    paper = "Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
    year = 2021
    Config = BarlowTwinsConfig
    views_recipe = "byol"  # the paper's augmentations follow BYOL's (asymmetric blur and solarization)

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: BarlowTwinsConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers)
        self.lambd = cfg.lambd if cfg.lambd is not None else 1 / cfg.proj_dim
        self.loss_scale = cfg.loss_scale if cfg.loss_scale is not None else 1 / cfg.proj_dim
        self.register_buffer("last_c", torch.zeros(cfg.proj_dim, cfg.proj_dim))  # last_c: D x D
        self.collapse = CollapseMonitor(hint=f"raise method.lambd (now {self.lambd:.3g})")
        self.notes = [f"barlow: lambda = {self.lambd:.3g} for a {cfg.proj_dim}-d projector"
                      + (" (1 / proj_dim; the paper: 5e-3 at 8192-d)" if cfg.lambd is None else "")
                      + f", loss scaled by {self.loss_scale:.3g}"]

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x1, x2 = self.views(images, self.generator)  # each (B, C, H, W) float in [0, 1]
        # One pass per view, as in the authors' code: the projector's BatchNorm normalizes each view's batch alone.
        z1 = self.projector(self.backbone(x1))  # z1: B x D
        z2 = self.projector(self.backbone(x2))  # z2: B x D
        # Under torchrun C is the cross-correlation of the global batch (every process computes the global loss).
        loss, c = barlow_twins(gather(z1), gather(z2), self.lambd)  # c: D x D
        c = c.detach()
        self.last_c.copy_(c)
        diag, off_rms = summary(c)
        # The monitor sees what C is made of: the standardized embeddings (their mean and scale do not matter here).
        stats = self.collapse.stats(standardize(z1.detach().float()))
        return self.loss_scale * loss, {"c_diag": diag, "c_offdiag_rms": off_rms, **stats}

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """barlow-crosscorrelation.png: the cross-correlation matrix of the last training batch (none before
        the first step). `images` is not used: see the module docstring."""
        from selfsup.report.figures import matrix_png

        if not self.last_c.any():
            return []
        d = self.last_c.shape[0]
        diag, off_rms = summary(self.last_c)
        title = (f"Barlow Twins cross-correlation C ({d} x {d}), last training batch\n"
                 f"diagonal mean {diag:.3f} (target 1), off-diagonal RMS {off_rms:.3f} (target 0)")
        return [matrix_png(self.last_c, Path(out_dir) / "barlow-crosscorrelation.png", title=title,
                           description=f"cross-correlation {d}x{d}; diagonal mean {diag:.4f}; "
                                       f"off-diagonal RMS {off_rms:.4f}")]


def summary(c: torch.Tensor) -> tuple[float, float]:
    """(mean of the diagonal, RMS of the off-diagonal entries) of a cross-correlation matrix c (D x D), D >= 2."""
    d = c.shape[0]
    off_sq = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return float(c.diagonal().mean()), float((off_sq / (d * (d - 1))).clamp_min(0).sqrt())
