"""MAE: He, Chen, Xie, Li, Dollár, Girshick. Masked Autoencoders Are Scalable Vision Learners. CVPR 2022.
https://arxiv.org/abs/2111.06377

Hide most of the image's patches and reconstruct their pixels from the rest. With 75% of the patches gone the
task cannot be solved by interpolating from neighbours; the encoder has to understand what it sees.

- Patches and masking (views/patchify.py): the view is cut into the backbone's patches (4 px: 49 on 28 px
  images); per image a uniformly random `mask_ratio` of them is hidden, round((1 - ratio) * N) stay visible
  (12 of 49 at 0.75), drawn from the method's seeded generator.
- Asymmetric encoder / decoder: the encoder is the vit-tiny backbone run on the visible tokens only
  (`forward_tokens(x, keep)`: positions added, then the hidden tokens dropped), so it costs a quarter of a full
  pass and never sees a mask token; a light decoder (nets/heads.MaskedTokenDecoder) gets the encoded visible
  tokens plus a shared learned mask token at each hidden place, with positions, and predicts every patch's pixels.
- Loss (paper Sec. 3, `forward_loss`): the mean squared error per patch, averaged over the hidden patches only.
  With norm_pix_loss the target of a patch is its pixels standardized by the patch's own mean and (unbiased)
  variance, (t - mean) / sqrt(var + 1e-6), which the paper found to give better features (Table 1d).
- Views: a random resized crop and a flip only (the paper's Table 1e: cropping alone works best, colour jitter
  hurts); here the `supervised` recipe (crop 0.6-1, flip) rather than the paper's 0.2-1, since a fifth of a 28 px
  image blown up to 28 px is mostly blur, which is easy to predict from the visible patches.

The encoder we keep is the whole backbone; its pooled features (mean of the patch tokens) are what the evaluation
sees. MAE needs a backbone that can run on a subset of tokens: `model.backbone=vit-tiny` (build_method refuses
any other with that fix).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.config import opt
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets.heads import MaskedTokenDecoder
from selfsup.report.figures import image_grid_png
from selfsup.views.patchify import PatchMask, patchify, random_masking, unpatchify, visible_count
from selfsup.views.recipes import Recipe

# Hidden patches in the figure: a pixel checkerboard of blue and white, which no image region looks like.
HIDDEN_COLOURS = ((0.25, 0.45, 0.85), (0.95, 0.95, 0.95))


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(..., P) patch pixels -> each patch standardized on its own: (t - mean) / sqrt(var + eps), var unbiased as in
    MAE's norm_pix_loss (a flat patch becomes all zeros)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_patch_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the hidden patches: sum_n m_n mean_p (y - t)^2 / sum_n m_n.

    prediction, target: (B, N, P); mask: (B, N), 1 = hidden. Visible patches do not count.
    """
    per_patch = (prediction.float() - target.float()).pow(2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class MAEConfig(MethodConfig):
    name: str = "mae"
    mask_ratio: float = opt(0.75, "Fraction of each image's patches hidden from the encoder (paper: 0.75, best for fine-tuning and linear probing alike). 28 px images in 4 px patches keep round(0.25 * 49) = 12 visible.", min=0.05, max=0.95)
    norm_pix_loss: bool = opt(True, "Reconstruct each patch's pixels standardized by the patch's own mean and std (paper: better features, Table 1d). false: the plain pixels in [0, 1].")
    decoder_dim: int = opt(128, "Width of the decoder (paper: 512). 128 keeps it a small share of a CPU step; thrown away after pretraining.", min=4)
    decoder_depth: int = opt(2, "Transformer blocks of the decoder (paper: 8; its Table 1a: a deeper decoder gives better linear-probe features, by about 8 points from 1 to 8 blocks, and hardly changes fine-tuning). The decoder works on all patches, the encoder on the visible quarter only: 2 blocks of 128 cost about a third of vit-tiny's compute per image.", min=1)


class MAE(Method):
    """vit-tiny on the visible patches -> MaskedTokenDecoder -> every patch's pixels; MSE on the hidden patches."""

    name = "mae"
    family = "masked"
    paper = "He et al., Masked Autoencoders Are Scalable Vision Learners"
    year = 2022
    Config = MAEConfig
    views_recipe = "supervised"  # crop and flip only (paper Table 1e)
    n_views = 1
    requires_backbone = "vit-tiny"

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: MAEConfig):
        super().__init__()
        if not hasattr(backbone, "forward_tokens"):
            raise SelfSupError(f"mae runs its encoder on the visible patches only and needs a ViT backbone, got "
                               f"{type(backbone).__name__}; add --set model.backbone=vit-tiny")
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.patch = backbone.patch_size
        rows, cols = backbone.grid(views.size, views.size)
        n = rows * cols
        keep = visible_count(n, cfg.mask_ratio)  # an impossible ratio fails now, not at the first step
        self.decoder = MaskedTokenDecoder(backbone.dim, self.patch ** 2 * views.channels, cfg.decoder_dim,
                                          cfg.decoder_depth)
        self.notes = [f"mae: {rows}x{cols} patches of {self.patch} px, {n - keep} hidden and {keep} visible per "
                      f"image; targets: {'per-patch normalized' if cfg.norm_pix_loss else 'plain'} pixels",
                      "mae: the paper trains with AdamW (base lr 1.5e-4 per 256 images, weight decay 0.05): --set "
                      "train.optimizer=adamw --set train.lr=1.5e-4 --set train.weight_decay=0.05"]
        if views.size % self.patch:
            self.notes.append(f"mae: {views.size} px is not a multiple of the {self.patch} px patch; the last "
                              f"{views.size % self.patch} rows and columns are neither seen nor reconstructed")

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """(rows, cols) of patches of the batch x (B, C, H, W)."""
        return self.backbone.grid(*x.shape[-2:])

    def mask(self, x: torch.Tensor) -> PatchMask:
        """Which patches of each image of x stay visible, drawn from self.generator."""
        rows, cols = self.grid(x)
        return random_masking(len(x), rows * cols, self.cfg.mask_ratio, self.generator, x.device)

    def predict(self, x: torch.Tensor, mask: PatchMask) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> the decoder's prediction for every patch (B, N, p * p * C), from the visible
        patches alone (targets' space: normalized pixels with norm_pix_loss)."""
        latent = self.backbone.forward_tokens(x, mask.keep)  # (B, n_keep, D): the encoder sees the visible only
        return self.decoder(latent, mask.keep, self.grid(x))  # (B, N, p*p*C)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> its pixels as patches (B, N, p * p * C); pixels past the last whole patch dropped."""
        rows, cols = self.grid(x)
        return patchify(x[..., :rows * self.patch, :cols * self.patch].float(), self.patch)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction targets of x: (B, N, p * p * C), per-patch standardized with norm_pix_loss."""
        patches = self.patches(x)
        return normalize_patches(patches) if self.cfg.norm_pix_loss else patches

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1]
        mask = self.mask(x)
        loss = masked_patch_mse(self.predict(x, mask), self.targets(x), mask.mask)
        return loss, {"masked_mse": loss.item()}

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """original / masked input (hidden patches chequered blue and white) / reconstruction (the visible patches
        pasted beside the predicted hidden ones), as `mae-reconstructions.png`."""
        (x,) = self.views(images, self.generator)
        rows, cols = self.grid(x)
        mask = self.mask(x)
        prediction = self.predict(x, mask).float()  # (B, N, P)
        patches = self.patches(x)  # (B, N, P) pixels
        if self.cfg.norm_pix_loss:  # the prediction is the pattern only: shown at the true patch's mean and std
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            prediction = prediction * (var + 1e-6).sqrt() + mean
        hidden = mask.mask[..., None]  # (B, N, 1)
        reconstruction = unpatchify(patches * (1 - hidden) + prediction * hidden, self.patch, rows, cols)
        colour_patches = self.patches(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)  # colour marks the hole
        colours = torch.tensor(HIDDEN_COLOURS, device=x.device)  # (2, 3)
        p = torch.arange(self.patch, device=x.device)
        checker = (p[:, None] + p[None, :]) % 2  # (p, p): 0, 1 alternating
        fill = colours[checker].reshape(-1)  # (p*p*3,), in patchify's (row, column, channel) order
        masked_input = unpatchify(colour_patches * (1 - hidden) + fill * hidden, self.patch, rows, cols)
        original = x[..., :rows * self.patch, :cols * self.patch]
        n = rows * cols
        title = (f"MAE: {n - mask.keep.shape[1]} of {n} patches ({self.patch} px) hidden (chequered); reconstruction: "
                 f"visible + predicted patches" + (" (norm_pix: at each patch's true mean, std)"
                                                   if self.cfg.norm_pix_loss else ""))
        return [image_grid_png([("original", original), ("masked input", masked_input),
                                ("reconstruction", reconstruction.clamp(0, 1))],
                               Path(out_dir) / "mae-reconstructions.png", title)]
