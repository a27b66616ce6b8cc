"""Super-resolution as a pretext task. The network: Dong, Loy, He, Tang. Image Super-Resolution Using Deep
Convolutional Networks (SRCNN). ECCV 2014 / TPAMI 2016; Kim, Lee, Lee. Accurate Image Super-Resolution Using Very
Deep Convolutional Networks (VDSR). CVPR 2016. The adversarial term: Ledig et al. Photo-Realistic Single Image
Super-Resolution Using a Generative Adversarial Network (SRGAN). CVPR 2017.

Each image x (B, C, H, W) is shrunk by `factor` (2 or 4) by area averaging: every low-resolution pixel is the mean
of a factor x factor block. To restore the detail the averaging removed (edges, textures, strokes) the network has
to know what kind of thing the image shows, so its features are useful.

The backbone does not see the small image itself: as SRCNN and VDSR feed their networks, the small image is first
upsampled back to H x W by bicubic interpolation (clamped to [0, 1]), so the same backbone later evaluates
full-size images as they are. A DenseDecoder on the backbone's feature map (`log2(stride)` doublings, back to the
full side) predicts the residual over that bicubic image, as VDSR does: the prediction is bicubic + residual, and
the loss the mean squared error against x. The decoder's last layer starts small (weights x 0.01, no bias), so
training starts at the bicubic image's error (within 0.01 dB here) while gradients still reach the backbone (a
zero layer would block them at the first step; x 0.1 started 0.3-0.5 dB below bicubic). Logs give the PSNR of the
prediction and of the bicubic image, so one sees whether the network beats plain interpolation.

Optional adversarial term (`adversarial=true`), as SRGAN's perceptual loss: a discriminator (nets/heads) learns to
tell real full-resolution images from predictions, and the predictor is also pushed to fool it:
total = mse + adversarial_weight * g_loss + d_loss, with SRGAN's weight 1e-3 (SRGAN's best variant pairs it with a
VGG feature loss; we keep the pixel MSE, as its SRGAN-MSE variant does). `adversarial_losses` lets the one
optimizer train both players without their gradients mixing.

Works on grey and colour images. The side must be a multiple of `factor` with at least 4 low-resolution pixels
(bicubic interpolation reads a 4 x 4 neighbourhood): 28 px allows x2 (14 px) and x4 (7 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets.heads import DenseDecoder, Discriminator, adversarial_losses
from selfsup.report.figures import image_grid_png
from selfsup.views.recipes import Recipe

MIN_LOW_SIDE = 4  # low-resolution pixels per side: bicubic interpolation reads 4 x 4 neighbourhoods


@dataclass
class SuperResConfig(MethodConfig):
    name: str = "superres"
    factor: int = opt(2, "Downsampling factor: the image is shrunk by area averaging of factor x factor blocks and "
                      "the network restores it (2 or 4; the image side must be a multiple of it).", choices=[2, 4])
    adversarial: bool = opt(False, "Add SRGAN's adversarial term: a discriminator judges predictions against real "
                            "images and the predictor learns to fool it (Ledig et al. 2017).")
    adversarial_weight: float = opt(1e-3, "Weight of the adversarial term next to the MSE (SRGAN: 1e-3). Only with "
                                    "adversarial=true.", min=0)
    decoder_width: int = opt(32, "Channel width at full resolution of the residual decoder (4x this on the feature "
                             "map; thrown away after pretraining).", min=4)
    discriminator_width: int = opt(32, "Channel width of the discriminator's first conv (doubles per stage; only "
                                   "with adversarial=true).", min=4)


def check_side(side: int, factor: int) -> None:
    """Raise SelfSupError naming the fix unless a side of `side` px can be shrunk by `factor`."""
    if side % factor:
        fits = ", ".join(str(f) for f in (2, 4) if side % f == 0 and side // f >= MIN_LOW_SIDE) or "none"
        raise SelfSupError(f"superres shrinks images by method.factor={factor}, but their side {side} px is not a "
                           f"multiple of {factor}; use a factor that divides it (here: {fits}) or set "
                           f"data.image_size to a multiple of {factor}")
    if side // factor < MIN_LOW_SIDE:
        raise SelfSupError(f"superres with method.factor={factor} would shrink {side} px images to "
                           f"{side // factor} px, fewer than {MIN_LOW_SIDE} (bicubic upsampling needs a 4 x 4 "
                           f"neighbourhood); use a smaller factor or data.image_size >= {MIN_LOW_SIDE * factor}")


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/factor, W/factor): each pixel the mean of a factor x factor block (area averaging)."""
    return F.avg_pool2d(x, factor)


def bicubic_up(low: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, h, w) in [0, 1] -> (B, C, h * factor, w * factor), bicubic, clamped to [0, 1] (bicubic overshoots)."""
    return F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)


class SuperRes(Method):
    name = "superres"
    family = "pretext"
    paper = "Ledig et al., Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial Network"
    year = 2017
    Config = SuperResConfig
    views_recipe = "none"  # a resized crop would resample the image: its fine detail, the target, would be blurred
    n_views = 1

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: SuperResConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.side = views.size
        check_side(self.side, cfg.factor)
        stride = getattr(backbone, "stride", None)
        if not stride or 2 ** round(math.log2(stride)) != stride:
            raise SelfSupError(f"superres decodes from the backbone's feature map and needs a backbone whose stride "
                               f"is a power of 2, got {stride}; use model.backbone=small-cnn or resnet18")
        channels = views.channels
        self.decoder = DenseDecoder(backbone.dim, channels, round(math.log2(stride)), cfg.decoder_width, size=self.side)
        last = self.decoder.blocks[-1]
        with torch.no_grad():  # start near the bicubic image, but not at it: gradients must reach the backbone
            last.weight.mul_(0.01)
            last.bias.zero_()
        self.discriminator = Discriminator(channels, cfg.discriminator_width) if cfg.adversarial else None
        self.notes = []

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) in [0, 1] -> (low-res (B, C, H/f, W/f), bicubic (B, C, H, W), prediction (B, C, H, W)).

        The prediction is bicubic + the decoded residual, not clamped (the loss sees what the network outputs).
        """
        if x.shape[-1] != x.shape[-2]:
            raise SelfSupError(f"superres takes square images, got {x.shape[-2]} x {x.shape[-1]}")
        check_side(x.shape[-1], self.cfg.factor)
        low = downsample(x, self.cfg.factor)
        up = bicubic_up(low, self.cfg.factor)
        residual = self.decoder(self.backbone.feature_map(up))
        return low, up, up + residual.to(up.dtype)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)
        _, up, pred = self.predict(x)
        mse = F.mse_loss(pred.float(), x)
        bicubic_mse = F.mse_loss(up.detach(), x)
        logs = {"mse": mse.item(), "psnr": _psnr(mse), "bicubic_psnr": _psnr(bicubic_mse)}
        loss = mse
        if self.discriminator is not None:
            d_loss, g_loss = adversarial_losses(self.discriminator, x, pred.float())
            loss = mse + self.cfg.adversarial_weight * g_loss + d_loss
            logs.update(d_loss=d_loss.item(), g_loss=g_loss.item())
        return loss, logs

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """low-res (nearest-upsampled, pixels visible) / bicubic / prediction / truth, as `superres.png`."""
        (x,) = self.views(images, self.generator)
        low, up, pred = self.predict(x)
        f = self.cfg.factor
        rows = [(f"low-res (1/{f})", F.interpolate(low, scale_factor=f, mode="nearest")), ("bicubic", up),
                ("prediction", pred.float().clamp(0, 1)), ("truth", x)]
        title = (f"super-resolution x{f}: PSNR {_psnr(F.mse_loss(pred.float().clamp(0, 1), x)):.1f} dB, "
                 f"bicubic {_psnr(F.mse_loss(up, x)):.1f} dB" + (", adversarial" if self.cfg.adversarial else ""))
        return [image_grid_png(rows, Path(out_dir) / "superres.png", title)]


def _psnr(mse: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: 10 log10(1 / mse)."""
    return float(10 * torch.log10(1 / mse.detach().clamp_min(1e-10)))
