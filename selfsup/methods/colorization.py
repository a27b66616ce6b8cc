"""Colorization: Zhang, Isola, Efros. Colorful Image Colorization. ECCV 2016. https://arxiv.org/abs/1603.08511

The network sees the lightness L of a colour image (CIE Lab) and predicts its two colour channels ab. To colour a
photo plausibly it has to recognise what is in it (sky, leaves, skin), so its features are useful. Two losses:

- regression: L2 between predicted and true ab. Where the colour is uncertain (a car may be red or blue) the L2
  optimum is the mean of the possible colours, which is greyish: the predictions come out desaturated.
- classification (the paper's): ab is cut into Q bins of side 10 (views/lab.py); the network predicts a
  distribution over them per pixel, trained with cross-entropy against a soft target (the 5 nearest bins,
  Gaussian weights, sigma 5). Class rebalancing reweights each pixel by w(q*) of its nearest bin,
  w proportional to ((1 - lambda) p~ + lambda / Q)^-1 with p~ the smoothed empirical bin distribution of the
  training images and lambda = 0.5, normalized so the expected weight is 1: the many grey-brown pixels no longer
  drown the rare saturated ones. A distribution is turned back into a colour by the annealed mean (T = 0.38).

Prediction is at the resolution of the backbone's feature map (a quarter of the side for small-cnn; the paper
also predicts at a quarter) and upsampled for display. The encoder kept is the one-channel backbone on L, wrapped
so it takes colour or grey images (nets/encoders.LightnessEncoder): trained on colour photos, it evaluates on
grey Fashion-MNIST as it is (`--eval-data fashion-mnist`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig, input_stats
from selfsup.nets.encoders import LightnessEncoder
from selfsup.nets.heads import DenseDecoder
from selfsup.report.figures import image_grid_png
from selfsup.views.lab import AB_SCALE, ab_quantizer, lab_scaled, lightness, scaled_to_rgb
from selfsup.views.recipes import Recipe


@dataclass
class ColorizationConfig(MethodConfig):
    name: str = "colorization"
    loss: str = opt("classification", "classification: cross-entropy over quantized ab bins with class rebalancing (the paper's; vivid colours); regression: L2 on ab (the lecture's counter-example; desaturated colours).", choices=["classification", "regression"])
    rebalance_lambda: float = opt(0.5, "lambda of the class rebalancing: weights ((1 - lambda) p~ + lambda/Q)^-1 (paper: 0.5). 1 gives every bin the same weight (no rebalancing); near 0 divides by the prior itself (rare bins weigh enormously; 0 is refused, bins no training pixel falls near would weigh infinitely).", min=0.001, max=1)
    temperature: float = opt(0.38, "Annealed-mean temperature T used to turn a predicted distribution into a colour (paper: 0.38; 1 = mean, 0 = mode). Only for pictures: training does not use it.", min=0.01, max=1)
    sigma: float = opt(5.0, "Gaussian width in ab units of the soft targets and of the prior's smoothing (paper: 5).", min=0.1)
    neighbours: int = opt(5, "Bins in each pixel's soft target (paper: 5).", min=1, max=5)
    upsample: int = opt(0, "Doublings of the prediction's resolution above the backbone's feature map (0: a quarter of the side on small-cnn, as in the paper; each step costs 4x more in the classification head).", min=0, max=3)
    decoder_width: int = opt(32, "Channel width of the prediction head (thrown away after pretraining).", min=4)
    prior_images: int = opt(2000, "Training images (a seeded sample) whose ab pixels give the empirical bin distribution p~.", min=1)


def check_upsample(upsample: int, backbone: nn.Module) -> None:
    """Predictions finer than the image would only replicate the targets (and cost Q x 4^upsample per pixel)."""
    stride = getattr(backbone, "stride", None) or getattr(getattr(backbone, "net_l", None), "stride", None) or 1
    most = max(0, round(math.log2(stride)))
    if upsample > most:
        raise SelfSupError(f"method.upsample={upsample} would predict at more than the image's resolution: the "
                           f"backbone's feature map is 1/{stride} of the side, so use method.upsample={most} or less")


class Colorization(Method):
    name = "colorization"
    family = "pretext"
    paper = "Zhang et al., Colorful Image Colorization"
    year = 2016
    Config = ColorizationConfig
    views_recipe = "supervised"  # crop and flip only: a colour jitter would change the very colours to predict
    n_views = 1
    min_channels = 3

    @classmethod
    def make_encoder(cls, build: Callable[..., nn.Module], channels: int,
                     sample: torch.Tensor | None = None) -> nn.Module:
        """A one-channel backbone on L/100, normalized by the lightness statistics of the sample."""
        return LightnessEncoder(build(1, *input_stats(None if sample is None else lightness(sample), 1)))

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: ColorizationConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.quantizer = ab_quantizer(10.0)
        q = self.quantizer.q
        check_upsample(cfg.upsample, backbone)
        out = q if cfg.loss == "classification" else 2
        self.decoder = DenseDecoder(backbone.dim, out, cfg.upsample, cfg.decoder_width)
        # Filled by prepare() from the training images; buffers, so checkpoints carry them.
        self.register_buffer("prior", torch.full((q,), 1.0 / q))
        self.register_buffer("weights", torch.ones(q))
        self.notes = []

    def prepare(self, images: torch.Tensor) -> None:
        """p~ (smoothed bin distribution) and the rebalancing weights from a seeded sample of training images."""
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:self.cfg.prior_images]
        counts = torch.zeros(self.quantizer.q, dtype=torch.float64)
        for chunk in pick.split(200):  # Lab of 2000 STL-10 images at once would take 1.7 GB
            ab = lab_scaled(images[chunk].float().div(255))[:, 1:] * AB_SCALE  # (n, 2, H, W) in Lab units
            counts += self.quantizer.counts(ab.permute(0, 2, 3, 1))
        prior = self.quantizer.prior(counts=counts, sigma=self.cfg.sigma)
        self.prior.copy_(prior)
        self.weights.copy_(self.quantizer.rebalancing_weights(prior, self.cfg.rebalance_lambda))
        used = int((prior > 1e-4).sum())
        self.notes.append(f"colour prior from {len(pick)} images: {used} of {self.quantizer.q} ab bins hold more "
                          f"than 0.01% of the pixels; rebalancing weights {float(self.weights.min()):.2f}.."
                          f"{float(self.weights.max()):.2f}")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1] -> logits (B, Q, h, w) or ab/110 (B, 2, h, w), from L alone."""
        return self.decoder(self.backbone.feature_map(x))

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)
        out = self.predict(x)
        ab = F.adaptive_avg_pool2d(lab_scaled(x)[:, 1:], out.shape[-2:])  # target at the prediction's resolution
        if self.cfg.loss == "regression":
            loss = F.mse_loss(out.float(), ab)
            return loss, {"ab_rmse": (loss.detach().sqrt() * AB_SCALE).item()}
        per_pixel = self.quantizer.cross_entropy(out, ab * AB_SCALE, self.cfg.neighbours, self.cfg.sigma)  # (B, h, w)
        idx = self.quantizer.nearest(ab.permute(0, 2, 3, 1) * AB_SCALE)  # (B, h, w): each pixel's q*
        loss = (self.weights[idx] * per_pixel).mean()
        return loss, {"cross_entropy": per_pixel.detach().mean().item()}

    def colorize(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1] -> the predicted colour image (B, 3, H, W): the true L, the predicted ab."""
        out = self.predict(x)
        if self.cfg.loss == "classification":
            ab = self.quantizer.annealed_mean(out, temperature or self.cfg.temperature) / AB_SCALE
        else:
            ab = out.float()
        ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return scaled_to_rgb(lightness(x), ab)

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """L input / prediction (/ plain mean for the classification loss) / truth, as `colorization.png`."""
        (x,) = self.views(images, self.generator)
        rows = [("input L", lightness(x)), (f"predicted (T={self.cfg.temperature:g})", self.colorize(x))]
        if self.cfg.loss == "classification":
            rows.append(("mean (T=1)", self.colorize(x, 1.0)))
        rows.append(("truth", x))
        title = f"colorization, {self.cfg.loss} loss" + (
            f", rebalancing lambda {self.cfg.rebalance_lambda:g}" if self.cfg.loss == "classification" else "")
        return [image_grid_png(rows, Path(out_dir) / "colorization.png", title)]
