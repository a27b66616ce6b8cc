"""Inpainting (context encoder): Pathak, Krähenbühl, Donahue, Darrell, Efros. Context Encoders: Feature Learning by
Inpainting. CVPR 2016. https://arxiv.org/abs/1604.07379

A region of each image is removed and the network fills it in from the context around it. To fill a hole
plausibly it has to understand what the image shows, so the encoder that reads the context learns useful features.

- The hole: a mask M (1 = missing) from views/masks.py: a central square, random blocks or random shapes covering
  about `mask_fraction` of the image (paper: a quarter). The missing pixels are set to the backbone's input mean
  (the paper fills them with the mean pixel), which is exactly 0 after the backbone's normalization.
- Encoder = the backbone; decoder = a DenseDecoder from its feature map (B, dim, H/stride, W/stride) with
  log2(stride) upsampling stages back to the image side, predicting the whole image x_hat = sigmoid(logits).
- Reconstruction loss (paper Eq. 1, the normalized masked L2): L_rec = sum(M * (x_hat - x)^2) / (C * sum(M)), the
  mean squared error over the missing pixels of all channels; the predicted context is not scored.
- Optional adversarial loss (paper Eq. 2-3): a small Discriminator tells real images from composited ones (the
  prediction in the hole, the truth elsewhere), and the total is
      lambda_rec * L_rec + lambda_adv * g_loss + d_loss    (paper: lambda_rec = 0.999, lambda_adv = 0.001).
  heads.adversarial_losses makes d_loss reach only the discriminator's weights (the fake is detached) and g_loss
  only the generator's (the discriminator's weights are detached), so the method's one optimizer trains both
  players; d_loss is added unweighted because nothing but the discriminator sees it. The paper adds the
  adversarial term to sharpen the inpainted pixels, which L2 alone leaves blurry; it is off by default here.

The paper found random blocks and random regions give similarly general features, both clearly better than the
central square (whose features latch onto its fixed sharp boundary), and used random regions for its feature
experiments; `shapes` is our procedural stand-in for those regions, hence the default. Not implemented: the
paper's variant predicting a slightly larger central patch with a 10x loss weight on the overlap, and its
channel-wise fully connected bottleneck (the encoder here is whatever backbone is configured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.config import opt
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets.heads import DenseDecoder, Discriminator, adversarial_losses
from selfsup.report.figures import image_grid_png
from selfsup.views.masks import MASK_KINDS, make_mask
from selfsup.views.recipes import Recipe


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the missing pixels only: sum(M * (prediction - target)^2) / (C * sum(M)).

    prediction, target: (B, C, H, W); mask: (B, 1, H, W) with 1 = missing. Every channel of a missing pixel counts,
    pixels outside the hole do not; a batch without any missing pixel gives 0.
    """
    squared = (prediction.float() - target.float()).pow(2) * mask
    count = mask.sum() * prediction.shape[1]
    return squared.sum() / count.clamp_min(1.0)


@dataclass
class InpaintingConfig(MethodConfig):
    name: str = "inpainting"
    mask: str = opt("shapes", "Holes to fill: central (one centred square, the paper's inpainting setting), blocks (random overlapping rectangles) or shapes (smooth random blobs, our stand-in for the paper's random regions). The paper's features were best with random regions or blocks, far better than central.", choices=list(MASK_KINDS))
    mask_fraction: float = opt(0.25, "Area fraction to remove (paper: 1/4, i.e. a central square of half the side). central: exact up to rounding the side; blocks: at least this, less than this plus one block (1/16 of the image); shapes: exact.", min=0.01, max=0.75)
    shape_cells: int = opt(4, "shapes only: noise-grid cells across the image side; more cells make smaller, more numerous blobs (4 on 28 px: blobs of about 7 px).", min=1, max=64)
    adversarial: bool = opt(False, "Add the paper's adversarial loss: a small discriminator judges the image with the prediction pasted into the hole against the real one (sharper fills; costs about two discriminator passes per step).")
    lambda_rec: float = opt(0.999, "Weight of the masked L2 loss next to the adversarial term (paper: 0.999). Used only with adversarial=true; alone the L2 loss is used as it is.", min=0)
    lambda_adv: float = opt(0.001, "Weight of the generator's adversarial loss (paper: 0.001). Used only with adversarial=true.", min=0)
    decoder_width: int = opt(32, "Channel width of the DenseDecoder that paints the image back from the feature map (thrown away after pretraining).", min=4)


class Inpainting(Method):
    """Backbone on the image with a hole -> DenseDecoder -> the whole image; L2 on the hole (+ adversarial)."""

    name = "inpainting"
    family = "pretext"
    paper = "Pathak et al., Context Encoders: Feature Learning by Inpainting"
    year = 2016
    Config = InpaintingConfig
    views_recipe = "supervised"  # crop and flip; colour jitter would only change the colours to paint back
    n_views = 1
    min_channels = 1

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: InpaintingConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        upsample = max(0, round(math.log2(backbone.stride)))  # feature map side -> image side
        self.decoder = DenseDecoder(backbone.dim, views.channels, upsample, cfg.decoder_width, size=views.size)
        self.discriminator = Discriminator(views.channels) if cfg.adversarial else None
        self.notes = []
        if cfg.mask == "shapes":
            self.notes.append("inpainting shapes are procedural (thresholded smooth noise), not the PASCAL VOC "
                              "segmentation shapes of the paper's random-region masks")

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, 1, H, W) float mask, 1 = missing, drawn from self.generator."""
        return make_mask(self.cfg.mask, x, self.cfg.mask_fraction, self.generator, cells=self.cfg.shape_cells)

    def with_hole(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x with the missing pixels set to the backbone's input mean (0 after its normalization): (B, C, H, W)."""
        mean = self.backbone.normalize.mean.to(x.dtype)  # (1, C, 1, 1)
        return x * (1 - mask) + mean * mask

    def predict(self, x_hole: torch.Tensor) -> torch.Tensor:
        """x_hole: (B, C, H, W) in [0, 1] -> the predicted whole image (B, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decoder(self.backbone.feature_map(x_hole)).float())

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1]
        mask = self.mask(x)
        prediction = self.predict(self.with_hole(x, mask))
        rec = masked_mse(prediction, x, mask)
        logs = {"masked_mse": rec.item(), "hole_fraction": mask.mean().item()}
        if self.discriminator is None:
            return rec, logs
        composite = x * (1 - mask) + prediction * mask  # the truth outside the hole
        d_loss, g_loss = adversarial_losses(self.discriminator, x, composite)
        loss = self.cfg.lambda_rec * rec + self.cfg.lambda_adv * g_loss + d_loss
        with torch.no_grad():
            logs["d_loss"] = d_loss.item()
            logs["g_loss"] = g_loss.item()
            logs["d_real_acc"] = (self.discriminator(x) > 0).float().mean().item()
            logs["d_fake_acc"] = (self.discriminator(composite) < 0).float().mean().item()
        return loss, logs

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """input with the hole / prediction pasted into the hole / truth, as `inpainting.png`."""
        (x,) = self.views(images, self.generator)
        mask = self.mask(x)
        x_hole = self.with_hole(x, mask)
        composite = x * (1 - mask) + self.predict(x_hole) * mask
        title = (f"inpainting: {self.cfg.mask} masks, {self.cfg.mask_fraction:g} of the area"
                 + (", with adversarial loss" if self.cfg.adversarial else ", L2 only"))
        return [image_grid_png([("input (hole)", x_hole), ("prediction", composite), ("truth", x)],
                               Path(out_dir) / "inpainting.png", title)]
