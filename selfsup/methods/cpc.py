"""CPC: van den Oord, Li, Vinyals. Representation Learning with Contrastive Predictive Coding. 2018.
https://arxiv.org/abs/1807.03748 -- for images as in Sec. 3.3 there and in Hénaff et al., Data-Efficient Image
Recognition with Contrastive Predictive Coding (CPC v2), ICML 2020. https://arxiv.org/abs/1905.09272

The image is cut into a G x G grid of overlapping patches (50% overlap). The backbone encodes every patch on its
own: z[i, j] (D-d). An autoregressive context network reads the grid top to bottom: c[i, j] may depend on the
rows 0..i of z only (here a stack of residual convolutions that are causal in rows, the role of the paper's
PixelCNN). From the context, a linear map W_k per offset predicts the patch k rows below:
z_hat[i + k, j] = W_k c[i, j], for k = 1..K. InfoNCE: among the encodings of every patch of every image in the
batch, z_hat[i + k, j] must pick the true z[i + k, j] by dot product (the paper's f_k = exp(z^T W_k c), no
normalization), so a patch's negatives are the other patches of its own image and all patches of the others.

Grid (cpc.patch_grid): patches a quarter of the image side, stride half a patch: CPC's 7 x 7 grid of 64 px
patches with stride 32 on 256 px crops, scaled down: 8 px patches, stride 4, a 6 x 6 grid on 28 px images; 8 px,
7 x 7 on 32 px; 24 px, 7 x 7 on 96 px.

The network we keep (make_encoder) is the backbone applied to that grid of patches with the patch features
averaged, the paper's evaluation (Hénaff et al. pool the grid of patch features); it is what the kNN, linear and
few-label evaluations see, and the random-init and scratch baselines get the same wrapper. Hénaff et al. also
replace BN by layer norm in the patch encoder (BN statistics mix patches of one image) and augment every patch on
its own; here the backbone keeps its BN, like every other method's, and the views are the image's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.distributed import gather, rank
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig, input_stats
from selfsup.views.recipes import Recipe


def patch_grid(side: int) -> tuple[int, int, int]:
    """(patch, stride, grid) for side x side images: patch = 2 round(side / 8) px, stride patch / 2."""
    patch = 2 * round(side / 8)
    if patch < 4:
        raise SelfSupError(f"cpc cuts images into patches a quarter of their side; {side} px images would give "
                           f"{patch} px patches and the backbone needs 4 px or more: use images of 16 px or more")
    stride = patch // 2
    return patch, stride, (side - patch) // stride + 1


def cut_patches(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x: (B, C, H, W), H = W -> patches (B * G * G, C, p, p) in (image, row, column) order, and G."""
    b, c, h, w = x.shape
    if h != w:
        raise SelfSupError(f"cpc cuts a square grid of patches; got {h}x{w} images (crop them square)")
    patch, stride, grid = patch_grid(h)
    tiles = x.unfold(2, patch, stride).unfold(3, patch, stride)  # (B, C, G, G, p, p)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(b * grid * grid, c, patch, patch), grid


class PatchGridEncoder(nn.Module):
    """The kept network: a backbone on the grid of patches, features averaged over the grid: (B, C, H, W) -> (B, D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.dim = net.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches, grid = cut_patches(x)
        return self.net(patches).view(len(x), grid * grid, -1).mean(dim=1)


class RowCausalConv(nn.Module):
    """A k x 3 convolution whose output row i sees input rows i - k + 1 .. i only (padding above, none below)."""

    def __init__(self, channels: int, rows: int = 2):
        super().__init__()
        self.rows = rows
        self.conv = nn.Conv2d(channels, channels, (rows, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, self.rows - 1, 0)))  # pad (left, right, top, bottom)


class ContextNet(nn.Module):
    """Residual blocks of row-causal convolutions: (B, D, G, G) -> (B, D, G, G), row i built from rows <= i."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), RowCausalConv(channels), nn.ReLU(), RowCausalConv(channels))
            for _ in range(blocks))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            z = z + block(z)
        return z


@dataclass
class CPCConfig(MethodConfig):
    name: str = "cpc"
    pred_rows: int = opt(3, "Predict the patches 1..K rows below each context (CPC on images: up to 5 rows of a "
                         "7-row grid; 3 of the 6 rows of 28 px images leaves every offset at least 3 source rows).",
                         min=1)
    context_blocks: int = opt(3, "Residual blocks of the context network; each sees 1 more row above, so 3 blocks "
                              "reach 6 rows up (the whole grid of 28 px images).", min=1)


class CPC(Method):
    name = "cpc"
    family = "contrastive"
    paper = "van den Oord et al., Representation Learning with Contrastive Predictive Coding (images: Hénaff et al.)"
    year = 2018
    Config = CPCConfig
    views_recipe = "supervised"  # random crop and flip of the whole image, as CPC v1; CPC v2 augments each patch
    n_views = 1

    @classmethod
    def make_encoder(cls, build: Callable[..., nn.Module], channels: int,
                     sample: torch.Tensor | None = None) -> nn.Module:
        return PatchGridEncoder(build(channels, *input_stats(sample, channels)))

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: CPCConfig):
        super().__init__()
        self.backbone = backbone  # a PatchGridEncoder; training uses its patch network directly
        self.views = views
        self.cfg = cfg
        d = backbone.dim
        self.context = ContextNet(d, cfg.context_blocks)
        self.predictors = nn.ModuleList(nn.Conv2d(d, d, 1, bias=False) for _ in range(cfg.pred_rows))  # W_k
        self.notes = []

    def prepare(self, images: torch.Tensor) -> None:
        grid = patch_grid(images.shape[-1])[2]
        if grid <= self.cfg.pred_rows:
            raise SelfSupError(f"cpc: {images.shape[-1]} px images give a {grid}-row grid, too few to predict "
                               f"{self.cfg.pred_rows} rows ahead; set method.pred_rows={grid - 1} or less")

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1]
        b = len(x)
        patches, g = cut_patches(x)  # (B * G * G, C, p, p)
        z = self.backbone.net(patches)  # (B * G * G, D): one encoding per patch
        # Under torchrun the candidates are every patch of the global batch; this process's rows start at `offset`.
        candidates, offset = gather(z), rank() * len(z)
        d = z.shape[1]
        grid = z.view(b, g, g, d).permute(0, 3, 1, 2)  # (B, D, G, G)
        c = self.context(grid)  # (B, D, G, G), row i from rows <= i
        index = torch.arange(b * g * g, device=z.device).view(b, g, g)  # row of each patch in z
        losses, correct, total = [], 0.0, 0
        for k, w_k in enumerate(self.predictors, start=1):
            pred = w_k(c[:, :, :g - k]).permute(0, 2, 3, 1).reshape(-1, d)  # (B * (G - k) * G, D): z_hat[i + k, j]
            with torch.autocast(z.device.type, enabled=False):
                logits = pred.float() @ candidates.float().t()  # logits: B(G - k)G x BGG, every patch of the batch
            target = index[:, k:].reshape(-1) + offset  # the true patch k rows below
            losses.append(F.cross_entropy(logits, target))
            correct += (logits.detach().argmax(dim=1) == target).sum().item()
            total += len(target)
        loss = torch.stack(losses).mean()
        return loss, {"pretext_acc": correct / total, **{f"loss_k{k}": v.item() for k, v in enumerate(losses, 1)}}
