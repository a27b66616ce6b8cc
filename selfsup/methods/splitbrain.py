"""Split-brain autoencoder: Zhang, Isola, Efros. Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel
Prediction. CVPR 2017. https://arxiv.org/abs/1611.09842

The network is split in two halves along its channels, and the input along its channels too: on a colour image in
CIE Lab, one half F1 sees the lightness L and predicts the colour ab (colorization), the other half F2 sees ab and
predicts L. Neither half ever sees what it predicts, so each must learn how the two channel groups relate, and
together the two halves see the whole input: the representation is the concatenation [F1(L), F2(ab)]. An ordinary
autoencoder on the whole image could copy its input; a cross-channel one cannot.

Here each half is a backbone of half the configured width (the paper halves the channels of every layer, so the
whole network has about the usual size); on small-cnn with width w each half gives 2w features and the encoder
4w, as a single backbone would. resnet18 ignores the width: split-brain on it is two full ResNet-18s (1024-d).

Two losses (`method.loss`):

- classification (the paper's better choice: in its ablations cross-channel classification gave better features
  than regression): ab is quantized into the shared bins of side 10 of `views/lab.ab_quantizer` (Q = 261 here;
  the paper's 313), L into `l_bins` uniform bins over [0, 100] (the paper: 50, each 2 L units wide). Targets
  are hard by default: each pixel's class is its nearest ab bin and its L bin, and the loss is the sum of the two
  halves' cross-entropies. Hard targets treat both directions alike (uniform L bins have no natural soft
  encoding) and cost nothing; `ab_target=soft` uses colorization's soft encoding of ab instead (5 nearest bins,
  Gaussian sigma 5). No class rebalancing: colorization reweights rare colours for vivid pictures, and here the
  features are the goal.
- regression: L2 on L/100 and ab/110 (the scale networks see), summed over the two halves.

Predictions are made at the resolution of each half's feature map (a quarter of the side on small-cnn, an eighth
on resnet18; `upsample` doublings more if wanted), as our colorization does: the heads stay cheap, and the target
of each prediction cell is the area average of L or ab over it. The picture upsamples the predictions bilinearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.methods.base import Method, MethodConfig, input_stats
from selfsup.methods.colorization import check_upsample
from selfsup.nets.encoders import SplitBrainEncoder
from selfsup.nets.heads import DenseDecoder
from selfsup.report.figures import image_grid_png
from selfsup.views.lab import AB_SCALE, ab_quantizer, lab_scaled, scaled_to_rgb
from selfsup.views.recipes import Recipe


@dataclass
class SplitBrainConfig(MethodConfig):
    name: str = "splitbrain"
    loss: str = opt("classification", "classification: cross-entropy over quantized ab (shared bins of side 10) "
                    "and L (l_bins uniform bins) in both directions (the paper's better choice); regression: L2 on "
                    "L/100 and ab/110.", choices=["classification", "regression"])
    l_bins: int = opt(50, "Uniform bins of the lightness L over [0, 100] for the classification loss (paper: 50, "
                      "2 L units each).", min=2, max=1000)
    ab_target: str = opt("hard", "Classification target of ab: hard (the nearest bin, like the L bins) or soft (the "
                         "5 nearest bins with Gaussian weights, sigma 5, as in colorization).",
                         choices=["hard", "soft"])
    temperature: float = opt(0.38, "Annealed-mean temperature turning a predicted ab distribution into a colour for "
                             "the picture (colorization paper: 0.38). Training does not use it.", min=0.01, max=1)
    upsample: int = opt(0, "Doublings of the predictions' resolution above the backbones' feature map (0: a quarter "
                        "of the side on small-cnn; each step costs 4x more in the heads).", min=0, max=3)
    decoder_width: int = opt(32, "Channel width of each of the two prediction heads (thrown away after "
                             "pretraining).", min=4)


class LightnessBins:
    """L in [0, 100] cut into n uniform bins [k * 100/n, (k+1) * 100/n); L = 100 falls into the last bin."""

    def __init__(self, n: int = 50):
        self.n = n
        self.width = 100.0 / n

    def encode(self, L: torch.Tensor) -> torch.Tensor:
        """L in Lab units (any shape) -> bin index (same shape), int64 in 0..n-1 (values outside [0, 100] clamp)."""
        return torch.floor(L / self.width).long().clamp(0, self.n - 1)

    def centers(self, device: torch.device | None = None) -> torch.Tensor:
        """(n,) the bin centres in Lab units: (k + 0.5) * 100 / n."""
        return (torch.arange(self.n, device=device, dtype=torch.float32) + 0.5) * self.width

    def expectation(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, n, H, W) -> the expected L in Lab units (B, 1, H, W) under their softmax."""
        p = torch.softmax(logits.float(), dim=1)
        return torch.einsum("bnhw,n->bhw", p, self.centers(logits.device)).unsqueeze(1)


class SplitBrain(Method):
    name = "splitbrain"
    family = "pretext"
    paper = "Zhang et al., Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel Prediction"
    year = 2017
    Config = SplitBrainConfig
    views_recipe = "supervised"  # crop and flip only: a colour jitter would change the very channels to predict
    n_views = 1
    min_channels = 3

    @classmethod
    def make_encoder(cls, build: Callable[..., nn.Module], channels: int,
                     sample: torch.Tensor | None = None) -> nn.Module:
        """Two half-width backbones: one on L/100 (1 channel), one on ab/110 (2 channels), each normalized by the
        statistics of its channels in the sample (None: placeholders, the saved ones are loaded next)."""
        lab = None if sample is None else torch.cat([lab_scaled(part) for part in sample.split(1000)])  # saves memory
        net_l = build(1, *input_stats(None if lab is None else lab[:, :1], 1), width_scale=0.5)
        net_ab = build(2, *input_stats(None if lab is None else lab[:, 1:], 2), width_scale=0.5)
        return SplitBrainEncoder(net_l, net_ab)

    def __init__(self, backbone: SplitBrainEncoder, views: Recipe, cfg: SplitBrainConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.quantizer = ab_quantizer(10.0)
        self.l_bins = LightnessBins(cfg.l_bins)
        classify = cfg.loss == "classification"
        check_upsample(cfg.upsample, backbone.net_l)
        self.to_ab = DenseDecoder(backbone.net_l.dim, self.quantizer.q if classify else 2, cfg.upsample,
                                  cfg.decoder_width)  # L -> ab, on net_l's feature map
        self.to_l = DenseDecoder(backbone.net_ab.dim, cfg.l_bins if classify else 1, cfg.upsample,
                                 cfg.decoder_width)  # ab -> L, on net_ab's feature map
        self.notes = []

    def predict_lab(self, L: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L/100 (B, 1, H, W), ab/110 (B, 2, H, W) -> (ab prediction from L alone, L prediction from ab alone).

        Classification: logits (B, Q, h, w) and (B, l_bins, h, w); regression: ab/110 (B, 2, h, w) and L/100
        (B, 1, h, w); h, w: the feature map's side times 2^upsample.
        """
        return self.to_ab(self.backbone.net_l.feature_map(L)), self.to_l(self.backbone.net_ab.feature_map(ab))

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) in [0, 1] -> predict_lab of its Lab channels."""
        return self.predict_lab(*self.backbone.split(x))

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)
        L, ab = self.backbone.split(x)
        out_ab, out_l = self.predict_lab(L, ab)
        ab_t = F.adaptive_avg_pool2d(ab, out_ab.shape[-2:])  # targets: area averages over each prediction cell
        l_t = F.adaptive_avg_pool2d(L, out_l.shape[-2:])
        if self.cfg.loss == "regression":
            loss_ab, loss_l = F.mse_loss(out_ab.float(), ab_t), F.mse_loss(out_l.float(), l_t)
            return loss_ab + loss_l, {"ab_rmse": (loss_ab.detach().sqrt() * AB_SCALE).item(),
                                      "l_rmse": (loss_l.detach().sqrt() * 100).item()}
        if self.cfg.ab_target == "soft":  # the 5 nearest bins, Gaussian weights of width 5, as in colorization
            loss_ab = self.quantizer.cross_entropy(out_ab, ab_t * AB_SCALE, 5, 5.0).mean()
        else:
            loss_ab = F.cross_entropy(out_ab.float(), self.quantizer.nearest(ab_t.permute(0, 2, 3, 1) * AB_SCALE))
        loss_l = F.cross_entropy(out_l.float(), self.l_bins.encode(l_t[:, 0] * 100))
        return loss_ab + loss_l, {"ab_cross_entropy": loss_ab.item(), "l_cross_entropy": loss_l.item()}

    def decode(self, out_ab: torch.Tensor, out_l: torch.Tensor, size: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions -> (ab/110 (B, 2, *size), L/100 (B, 1, *size)), upsampled bilinearly. Classification: the
        annealed mean (T = cfg.temperature) of the ab distribution, the expected L of the L distribution."""
        if self.cfg.loss == "classification":
            ab = self.quantizer.annealed_mean(out_ab, self.cfg.temperature) / AB_SCALE
            L = self.l_bins.expectation(out_l) / 100
        else:
            ab, L = out_ab.float(), out_l.float()
        ab = F.interpolate(ab, size=size, mode="bilinear", align_corners=False)
        return ab, F.interpolate(L, size=size, mode="bilinear", align_corners=False)

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """input L / predicted ab (on the true L) / input ab (at L = 50) / predicted L / truth, as `splitbrain.png`.

        Both predictions decoded (see `decode`) and upsampled to the image size."""
        (x,) = self.views(images, self.generator)
        L, ab = self.backbone.split(x)
        pred_ab, pred_l = self.decode(*self.predict_lab(L, ab), x.shape[-2:])
        rows = [("input L", L), ("predicted ab", scaled_to_rgb(L, pred_ab)),  # on the true L
                ("input ab (L=50)", scaled_to_rgb(torch.full_like(L, 0.5), ab)),
                ("predicted L", pred_l.clamp(0, 1)), ("truth", x)]
        title = f"split-brain, {self.cfg.loss}" + (
            f" (L {self.cfg.l_bins} bins, ab {self.cfg.ab_target}, T={self.cfg.temperature:g})"
            if self.cfg.loss == "classification" else "") + "; predicted ab shown on the true L"
        return [image_grid_png(rows, Path(out_dir) / "splitbrain.png", title)]
