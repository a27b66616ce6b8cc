"""Denoising autoencoder: Vincent, Larochelle, Bengio, Manzagol. Extracting and Composing Robust Features with
Denoising Autoencoders. ICML 2008. Gaussian corruption: Vincent et al., Stacked Denoising Autoencoders, JMLR 2010.

The representation should be robust to noise: each input x is corrupted into x_tilde ~ p(x_tilde | x), either by
masking (a fraction nu of the pixels set to 0, the lecture's "random assignment of a subset of inputs to 0") or by
additive Gaussian noise, and the autoencoder reconstructs the clean x from h(x_tilde). Reconstructing what was
destroyed forces the code to capture how pixels depend on each other rather than to copy them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from selfsup.config import opt
from selfsup.methods.ae import AE, AEConfig
from selfsup.report.figures import image_grid_png


def corrupt(x: torch.Tensor, noise: str, level: float, generator: torch.Generator) -> torch.Tensor:
    """x: (B, C, H, W) float -> corrupted copy x_tilde, drawn from `generator` (on x's device).

    masking: exactly round(level * H * W) pixel positions per image, chosen at random, are set to 0 in every
    channel (Vincent et al. 2008 fix the number of destroyed inputs). gaussian: x + level * N(0, 1) per value, not
    clamped, so the noise has exactly standard deviation `level` in [0, 1] pixel units (clamping would shrink it on
    the black background of Fashion-MNIST).
    """
    b, c, h, w = x.shape
    if noise == "masking":
        n_masked = round(level * h * w)
        scores = torch.rand((b, h * w), generator=generator, device=x.device)
        dropped = scores.argsort(dim=1)[:, :n_masked]  # (B, n_masked) pixel indices per image
        keep = torch.ones((b, h * w), device=x.device, dtype=x.dtype).scatter_(1, dropped, 0.0)
        return x * keep.view(b, 1, h, w)
    if noise == "gaussian":
        return x + level * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"noise must be 'masking' or 'gaussian', got {noise!r}")


@dataclass
class DAEConfig(AEConfig):
    name: str = "dae"
    noise: str = opt("masking", "Corruption p(x_tilde | x): masking (a fraction `level` of the pixels set to 0 in all channels) or gaussian (additive N(0, level^2) noise per value).", choices=["masking", "gaussian"])
    level: float = opt(0.25, "Corruption level: for masking the fraction nu of pixels zeroed (Vincent et al. 2008: 0.25 gave good filters on MNIST; up to 0.5 still works); for gaussian the standard deviation sigma in [0, 1] pixel units (0.1-0.5).", min=0, max=1)


class DAE(AE):
    """An AE whose encoder sees a corrupted input and whose decoder must give back the clean one."""

    name = "dae"
    paper = "Vincent et al., Extracting and Composing Robust Features with Denoising Autoencoders"
    year = 2008
    Config = DAEConfig

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1]
        x_tilde = corrupt(x, self.cfg.noise, self.cfg.level, self.generator)
        h = self.encode(x_tilde)  # (B, code_dim)
        reconstruction = self.reconstruction_error(self.decoder(h), x)  # against the clean input
        loss = reconstruction
        logs = {"reconstruction": reconstruction.item()}
        if self.cfg.sparsity > 0:
            loss = loss + self.sparsity_penalty(h, x[0].numel())
        return loss, logs

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """inputs / corrupted inputs / reconstructions of the corrupted inputs, as `dae-reconstructions.png`."""
        (x,) = self.views(images, self.generator)
        x_tilde = corrupt(x, self.cfg.noise, self.cfg.level, self.generator)
        x_hat = torch.sigmoid(self.decoder(self.encode(x_tilde)))
        title = f"dae: {self.cfg.noise} noise, level {self.cfg.level:g}; code {self.cfg.code_dim}, {self.cfg.loss_type}"
        return [image_grid_png([("input", x), ("corrupted", x_tilde), ("reconstruction", x_hat)],
                               Path(out_dir) / "dae-reconstructions.png", title)]
