"""Contractive autoencoder: Rifai, Vincent, Muller, Glorot, Bengio. Contractive Auto-Encoders: Explicit Invariance
During Feature Extraction. ICML 2011.

The loss adds to the reconstruction error l(f(x)) the squared Frobenius norm of the encoder's Jacobian,
lambda * ||dh(x)/dx||_F^2 = lambda * sum_jk (dh_j / dx_k)^2. Reconstruction asks the code to keep the information
that distinguishes training images; the penalty asks it to ignore every direction of input change, so the code
stays sensitive only to the variations the training data shows. Unlike denoising, the objective is deterministic
(the lecture's "which autoencoder?" slide). For a deep encoder the Jacobian is taken by double backpropagation,
exactly (one pass per code unit) or as an unbiased random-projection estimate (one pass per draw).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from selfsup.config import opt
from selfsup.losses import jacobian_frobenius_sq
from selfsup.methods.ae import AE, AEConfig
from selfsup.nets.transformer import twice_differentiable
from selfsup.report.figures import image_grid_png


@dataclass
class CAEConfig(AEConfig):
    name: str = "cae"
    penalty: float = opt(0.1, "Weight lambda of ||J_h(x)||_F^2 next to the summed reconstruction error of an image. Rifai et al. 2011 picked it by validation for a single sigmoid layer. Here (Fashion-MNIST, short runs against an ae run): 0.1 shrank the Jacobian 1.6x at no cost in reconstruction, 1 shrank it 3.7x and cost a little, 10 flattened the code and lost 14 kNN points. Watch the logged jacobian_sq beside reconstruction.", min=0)
    jacobian: str = opt("projection", "How the penalty is computed: projection (unbiased estimate E_v ||v^T J||^2 with Rademacher v, one extra backward pass per draw) or exact (one backward pass per code unit; only for small code_dim, e.g. <= 16).", choices=["projection", "exact"])
    projections: int = opt(1, "Random projections per step for jacobian=projection; more lowers the estimate's variance at one backward pass each (1 is enough: the noise averages out over steps).", min=1)


class CAE(AE):
    """An AE with the contractive penalty on the code's Jacobian with respect to the [0, 1] input pixels.

    With BatchNorm in the backbone, a code in train mode also depends on the other images of the batch; the
    penalty is then that of the batch map, which differs from the per-image Jacobian by terms of relative size
    about 1/batch (see `jacobian_frobenius_sq`). We accept that: it is small at the usual batch sizes, and computing
    a per-image Jacobian through batch statistics would need one backward pass per image and code unit.
    """

    name = "cae"
    paper = "Rifai et al., Contractive Auto-Encoders: Explicit Invariance During Feature Extraction"
    year = 2011
    Config = CAEConfig

    def __init__(self, backbone, views, cfg: CAEConfig):
        super().__init__(backbone, views, cfg)
        if cfg.jacobian == "exact" and cfg.code_dim > 32:
            self.notes.append(f"jacobian=exact takes {cfg.code_dim} extra backward passes per step (one per code "
                              f"unit); jacobian=projection estimates the same penalty with one")

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1]
        x = x.detach().requires_grad_(True)  # the Jacobian is with respect to the pixels
        with twice_differentiable():  # the penalty's gradient differentiates the backward pass (vit-tiny's attention)
            h = self.encode(x)  # (B, code_dim)
            reconstruction = self.reconstruction_error(self.decoder(h), x.detach())
            jacobian_sq = jacobian_frobenius_sq(h, x, self.cfg.jacobian, self.cfg.projections, self.generator)
        loss = reconstruction + self.cfg.penalty * jacobian_sq / x[0].numel()
        if self.cfg.sparsity > 0:
            loss = loss + self.sparsity_penalty(h, x[0].numel())
        return loss, {"reconstruction": reconstruction.item(), "jacobian_sq": jacobian_sq.item()}

    def sensitivity(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel sum_j (dh_j / dx_p)^2 summed over channels: (B, 1, H, W). Exact; meant for eval mode."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            h = self.encode(x)
            total = torch.zeros_like(x[:, :1])
            for j in range(h.shape[1]):
                (grad,) = torch.autograd.grad(h[:, j].sum(), x, retain_graph=True)
                total += grad.pow(2).sum(dim=1, keepdim=True)
        return total

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """inputs / reconstructions / where the code is sensitive (each map scaled to its own maximum)."""
        (x,) = self.views(images, self.generator)
        x_hat = torch.sigmoid(self.decoder(self.encode(x)))
        s = self.sensitivity(x)
        s = s / s.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        title = f"cae: lambda {self.cfg.penalty:g}, code {self.cfg.code_dim} ({self.cfg.code_activation}); " \
                f"bottom: ||dh/dx_p||^2 per pixel"
        return [image_grid_png([("input", x), ("reconstruction", x_hat), ("sensitivity", s)],
                               Path(out_dir) / "cae-reconstructions.png", title)]
