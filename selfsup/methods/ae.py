"""Autoencoder: Hinton, Salakhutdinov. Reducing the Dimensionality of Data with Neural Networks. Science 2006.
Sparse (overcomplete) variant: Ranzato, Boureau, LeCun. Sparse Feature Learning for Deep Belief Networks. NIPS 2007.

In the notation of Courville's lecture: the encoder maps an input x to a code h(x), the decoder maps the code back
to a reconstruction x_hat = f(x), and the loss l(f(x)) compares x_hat with x (summed squared differences for real
inputs, summed Bernoulli cross-entropies for inputs in [0, 1]). An undercomplete code (fewer units than input
values) must compress; an overcomplete code could copy its input, so an L1 penalty on h keeps few units active.
Here the encoder is the backbone plus one linear layer to the code; a ConvDecoder reconstructs; only the backbone
is kept. Train autoencoders with AdamW (`--set train.optimizer=adamw --set train.lr=0.001 --set
train.weight_decay=0`): under the default LARS the reconstruction leaves the mean image only slowly
(docs/pretext-autoencoders.md has the comparison).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets.heads import ConvDecoder
from selfsup.report.figures import image_grid_png
from selfsup.views.recipes import Recipe

CODE_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "linear": nn.Identity}


@dataclass
class AEConfig(MethodConfig):
    name: str = "ae"
    code_dim: int = opt(64, "Units in the code h(x), a linear layer on the backbone features. Fewer than the input values (784 on 28x28) makes the autoencoder undercomplete; more (e.g. 1024) overcomplete, which needs `sparsity` > 0. Note the code still sees the image only through the backbone's 4*width features.", min=1)
    code_activation: str = opt("sigmoid", "Non-linearity of the code: sigmoid as in the lecture's h(x) = sigm(b + Wx) and the contractive AE paper; relu gives exact zeros, which suits the sparse variant; linear for none.", choices=list(CODE_ACTIVATIONS))
    sparsity: float = opt(0.0, "Weight beta of the L1 penalty beta * ||h(x)||_1 next to the summed reconstruction error of an image (0: off). For the overcomplete variant (code_dim 1024, relu) try 0.1-1: at 1 about 1% of the units stay active per image; higher and every unit dies.", min=0)
    loss_type: str = opt("mse", "Reconstruction loss l: mse (squared differences, the lecture's choice for real-valued inputs) or bce (Bernoulli cross-entropy, its choice for binary inputs; also fine for grey levels in [0, 1]).", choices=["mse", "bce"])
    decoder_width: int = opt(16, "Base channel width of the ConvDecoder (4x this on its smallest grid); 16 costs about a quarter of the encoder, 32 about as much as the encoder. Thrown away after pretraining.", min=4)


class AE(Method):
    """Encoder = backbone + linear code layer; decoder = ConvDecoder; loss = reconstruction (+ L1 on the code).

    Every loss term is the lecture's per-image sum divided by the number of input values D = C*H*W (for mse without
    the lecture's 1/2), so the learning rate does not depend on the image size while the penalty weights keep the
    meaning they have next to a summed reconstruction error in the papers.
    """

    name = "ae"
    family = "pretext"
    paper = "Hinton & Salakhutdinov, Reducing the Dimensionality of Data with Neural Networks"
    year = 2006
    Config = AEConfig
    views_recipe = "none"
    n_views = 1

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: AEConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.code = nn.Sequential(nn.Linear(backbone.dim, cfg.code_dim), CODE_ACTIVATIONS[cfg.code_activation]())
        self.decoder = ConvDecoder(cfg.code_dim, views.channels, views.size, cfg.decoder_width)
        # The method does not see the train config, so this is said every time: it is the most common surprise.
        self.notes = ["autoencoders learn much faster with AdamW than with the default LARS: --set "
                      "train.optimizer=adamw --set train.lr=0.001 --set train.weight_decay=0"]
        pixels = views.channels * views.size ** 2
        if cfg.code_dim > pixels and cfg.sparsity == 0 and type(self) is AE:
            self.notes.append(f"overcomplete code ({cfg.code_dim} units > {pixels} input values) without a sparsity "
                              f"penalty: nothing stops it from learning an identity-like map; set method.sparsity")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) float in [0, 1] -> code h(x): (B, code_dim)."""
        return self.code(self.backbone(x))

    def reconstruction_error(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean over images of l(f(x)) / D: squared error or Bernoulli cross-entropy per input value."""
        if self.cfg.loss_type == "bce":
            return F.binary_cross_entropy_with_logits(logits.float(), x.float())
        return F.mse_loss(torch.sigmoid(logits.float()), x.float())

    def sparsity_penalty(self, h: torch.Tensor, pixels: int) -> torch.Tensor:
        """beta * ||h||_1 / D, averaged over the batch."""
        return self.cfg.sparsity * h.float().abs().sum(dim=1).mean() / pixels

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1]
        h = self.encode(x)  # (B, code_dim)
        reconstruction = self.reconstruction_error(self.decoder(h), x)
        loss = reconstruction
        logs = {"reconstruction": reconstruction.item()}
        if self.cfg.sparsity > 0:
            loss = loss + self.sparsity_penalty(h, x[0].numel())
            logs["code_active"] = (h.detach().abs() > 1e-2).float().mean().item()
        return loss, logs

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """inputs / reconstructions, as `ae-reconstructions.png`."""
        (x,) = self.views(images, self.generator)
        x_hat = torch.sigmoid(self.decoder(self.encode(x)))
        title = f"{self.name}: code {self.cfg.code_dim} ({self.cfg.code_activation}), {self.cfg.loss_type}"
        return [image_grid_png([("input", x), ("reconstruction", x_hat)],
                               Path(out_dir) / f"{self.name}-reconstructions.png", title)]
