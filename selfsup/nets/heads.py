"""Heads: small modules put on top of a backbone during pretraining and thrown away afterwards."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.nets.transformer import TransformerBlock, attention_heads, init_transformer_weights, sincos_2d


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Projector/predictor MLP: (Linear-BN-ReLU) x (layers-1), then Linear (+ BN without affine if last_bn).

    SimCLR uses 2 layers with a 128-d output; BYOL/SimSiam add BN in every hidden layer; Barlow Twins uses 3.
    """
    if layers < 1:
        raise ValueError("an MLP needs at least one layer")
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        blocks.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*blocks)


class ConvDecoder(nn.Module):
    """Code vector -> image logits: (B, code_dim) -> (B, channels, size, size); sigmoid of them is the image in [0, 1].

    A linear layer makes a grid of at most 8x8 with 4*width channels; each stage doubles the side (nearest-neighbour
    upsampling then a 3x3 conv, which avoids the checkerboard of transposed convolutions) and halves the channels
    down to `width`; a last 3x3 conv gives the channels, resized to exactly `size` when the side is not 8 * 2^k
    (28 px: 7 -> 14 -> 28; 32 px: 8 -> 16 -> 32; 96 px: 6 -> 12 -> 24 -> 48 -> 96). It returns logits so a
    cross-entropy loss can use them directly, which is more stable than taking the log of a sigmoid.

    GroupNorm, not BatchNorm: each image is decoded on its own, so eval mode decodes exactly as training does. With
    BatchNorm the running statistics lagged the fast-moving weights: after 30 AdamW steps on Fashion-MNIST the
    eval-mode reconstruction error was 4x the training one, and the reconstruction figures showed grey blurs.
    """

    def __init__(self, code_dim: int, channels: int, size: int, width: int = 32):
        super().__init__()
        self.channels, self.size = channels, size
        stages = max(0, math.ceil(math.log2(size / 8)))  # doublings so that the first grid is at most 8 x 8
        self.grid = math.ceil(size / 2 ** stages)
        widths = [max(width, 4 * width // 2 ** i) for i in range(stages + 1)]  # 4w, 2w, w, w, ...
        self.project = nn.Linear(code_dim, widths[0] * self.grid ** 2, bias=False)
        self.width0 = widths[0]
        blocks: list[nn.Module] = [nn.GroupNorm(math.gcd(8, widths[0]), widths[0]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(math.gcd(8, c_out), c_out),
                       nn.ReLU(inplace=True)]
        blocks.append(nn.Conv2d(widths[-1], channels, 3, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.project(code).view(-1, self.width0, self.grid, self.grid)
        x = self.blocks(x)  # (B, channels, grid * 2^stages, same)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


class DenseDecoder(nn.Module):
    """A backbone's feature map -> a dense prediction: (B, in_dim, h, w) -> (B, out_channels, size, size).

    For the dense pretext tasks (colorization, inpainting, split-brain, super-resolution). `upsample` stages each
    double the side (nearest-neighbour upsampling, 3x3 conv, GroupNorm, ReLU; no checkerboard of transposed
    convolutions); a last 3x3 conv gives the output channels, resized to exactly `size` when it is given and the
    side differs (28 px on a stride-8 ResNet: 4 -> 32 -> 28). upsample=0 predicts at the feature map's resolution
    (Zhang et al. 2016 predict colour at a quarter of the input side). Thrown away after pretraining.
    """

    def __init__(self, in_dim: int, out_channels: int, upsample: int, width: int = 32, size: int | None = None):
        super().__init__()
        self.size = size
        widths = [max(width, min(in_dim, 4 * width) // 2 ** i) for i in range(upsample + 1)]  # 4w, 2w, w, w, ...
        c = widths[0]
        blocks: list[nn.Module] = [nn.Conv2d(in_dim, c, 3, padding=1, bias=False), nn.GroupNorm(math.gcd(8, c), c),
                                   nn.ReLU(inplace=True)]
        for c_out in widths[1:]:
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_out, 3, padding=1, bias=False),
                       nn.GroupNorm(math.gcd(8, c_out), c_out), nn.ReLU(inplace=True)]
            c = c_out
        blocks.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.blocks(features)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


class Discriminator(nn.Module):
    """A small conv net: (B, C, S, S) images in [0, 1] -> one real/fake logit per image (B,).

    For the optional adversarial terms (context encoder, SRGAN): strided 4x4 convs with LeakyReLU(0.2) as in DCGAN,
    no normalization (each image is judged on its own, which also keeps the one-optimizer trick in
    `adversarial_losses` exact), global average pool, linear.
    """

    def __init__(self, channels: int, width: int = 32, stages: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        c = channels
        for i in range(stages):
            c_out = width * 2 ** i
            blocks += [nn.Conv2d(c, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c = c_out
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x * 2 - 1)).squeeze(1)


def adversarial_losses(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator loss, generator loss) for one step of a GAN trained with a single optimizer.

    The discriminator's loss -log D(real) - log(1 - D(fake)) sees `fake` detached, so it moves only the
    discriminator; the generator's non-saturating loss -log D(fake) is computed with the discriminator's weights
    detached (torch.func.functional_call), so it moves only the generator. Their sum can then be minimized by the
    method's one optimizer, and the GAN's two opposite objectives never share a gradient.
    """
    d_real, d_fake = disc(real), disc(fake.detach())
    d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    frozen = {name: p.detach() for name, p in disc.named_parameters()}
    g_fake = torch.func.functional_call(disc, frozen, (fake,))
    g_loss = F.binary_cross_entropy_with_logits(g_fake, torch.ones_like(g_fake))
    return d_loss, g_loss


class MaskedTokenDecoder(nn.Module):
    """MAE's light decoder (He et al. 2022): the encoded visible tokens plus a shared learned mask token at every
    hidden position -> a prediction for every patch.

    (B, n_keep, in_dim) visible tokens, keep (B, n_keep), grid (rows, cols) -> (B, rows * cols, out_dim). The
    visible tokens are projected to `dim`, scattered to their places in the full grid, the other places get the mask
    token; fixed 2D sine-cosine positions are added to all (without them a mask token would not know where it is);
    then `depth` pre-norm transformer blocks, LayerNorm and a linear map to the patch's pixels. Paper: 512 wide, 8
    blocks (about a tenth of ViT-L's compute per token); thrown away after pretraining.
    """

    def __init__(self, in_dim: int, out_dim: int, dim: int = 128, depth: int = 2):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, attention_heads(dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.apply(init_transformer_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        rows, cols = grid
        x = self.embed(visible)  # (B, n_keep, dim)
        b = x.shape[0]
        full = self.mask_token.to(x.dtype).expand(b, rows * cols, self.dim)  # (B, N, dim): mask tokens everywhere
        full = full.scatter(1, keep[..., None].expand(-1, -1, self.dim), x)  # the visible tokens in their places
        full = full + sincos_2d(rows, cols, self.dim, x.device).to(x.dtype)
        for block in self.blocks:
            full = block(full)
        return self.head(self.norm(full))  # (B, N, out_dim)
