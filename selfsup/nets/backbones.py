"""Backbones: the networks whose features we keep. Each takes float images in [0, 1] and exposes `.dim` (pooled
features), `.stride` and `.feature_map(x)` (the last spatial features, (B, dim, H/stride, W/stride), for the dense
pretext tasks).

Input normalization (per-channel mean/std of the training data) lives inside the backbone as buffers, so an
exported encoder carries it and every consumer feeds plain [0, 1] images.

Each backbone class says its `default_width` (what model.width means when it is not set) and its `options`: the
settings only it has, with their defaults (vit-tiny: depth and patch_size); `build_backbone` refuses an option the
chosen backbone does not have.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torchvision
from torch import nn

from selfsup.errors import SelfSupError
from selfsup.nets.transformer import TransformerBlock, attention_heads, init_transformer_weights, sincos_2d


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std stored as buffers (saved with the weights)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A plain VGG-style conv net for 28-96 px images: 3 stages of two 3x3 conv-BN-ReLU, max-pool between, global average pool.

    x: (B, C, H, W) in [0, 1] -> features (B, 4 * width). Cheap enough to pretrain on a laptop CPU.
    """

    default_width = 32
    options: dict = {}

    def __init__(self, in_channels: int, width: int = 32, mean=None, std=None):
        super().__init__()
        w = width
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
        self.features = nn.Sequential(
            conv_bn(in_channels, w), conv_bn(w, w), nn.MaxPool2d(2),
            conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            conv_bn(2 * w, 4 * w), conv_bn(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dim = 4 * w
        self.stride = 4  # the feature map is a quarter of the image side

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> the last conv stage before pooling: (B, 4 * width, H // 4, W // 4).

        Dense pretext tasks (colorization, inpainting, super-resolution) decode from it; forward() pools it.
        """
        return self.features[:-2](self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 with the small-image stem used for CIFAR (3x3 conv, stride 1, no max-pool); dim 512.

    The width is fixed (64 channels in the first stage); model.width is ignored."""

    default_width = 64
    options: dict = {}

    def __init__(self, in_channels: int, width: int = 64, mean=None, std=None):
        super().__init__()
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.dim = 512
        self.stride = 8  # stride-1 stem, then layers 2-4 halve the side

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> layer4's output before pooling: (B, 512, H/8, W/8) (rounded up)."""
        n = self.net
        x = n.relu(n.bn1(n.conv1(self.normalize(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class VisionTransformer(nn.Module):
    """vit-tiny: a ViT for small images (Dosovitskiy et al. 2021) at DeiT-Ti's size (Touvron et al., Training
    data-efficient image transformers & distillation through attention, ICML 2021): embedding width 192, 12
    pre-norm blocks, 3 heads of 64, MLP 4x wide.

    x: (B, C, H, W) in [0, 1] -> features (B, width). The image is cut into patch_size x patch_size patches (4 px:
    a 7x7 grid of 49 tokens on 28 px images, 8x8 on 32 px; at 96 px set patch_size=12 for 8x8), each embedded by
    one linear map (a stride-p convolution); pixels beyond the last whole patch (the bottom rows and right columns
    when the side is not a multiple of the patch) are not seen.

    - Width: model.width is the embedding width (default 192). Heads: `attention_heads(width)`, about width / 64,
      at least 1, dividing the width (so tiny test widths such as 4 have one head of 4).
    - Positions: fixed 2D sine-cosine embeddings (MAE's choice, He et al. 2022) computed at forward time for the
      grid of the image in hand and added to the patch embeddings. Nothing in the weights depends on the image
      size, so the backbone is built without knowing it, and one encoder serves 28 px Fashion-MNIST, 32 px CIFAR,
      the 8 px patches CPC feeds it and the tiles of jigsaw and relative patch location. (A learned table, as in
      ViT and DeiT, would have to be built for one grid and interpolated for others.)
    - Pooling: the mean of the final (LayerNorm-ed) patch tokens, not a CLS token. Every loss then trains the
      features the evaluation reads: the dense methods (inpainting, colorization, super-resolution) and MAE train
      the patch tokens only and would leave a CLS output unused in pretraining; He et al. report that MAE works as
      well with average pooling as with a CLS token; and `forward_tokens` has no special first token to keep.
    - Dense features: feature_map(x) is the patch tokens as a (B, width, H/p, W/p) map, stride = patch size.
    - MAE: forward_tokens(x, keep) embeds all patches, adds their positions, then drops all but `keep` before the
      blocks, so the encoder's cost is that of the visible tokens only.
    No dropout or stochastic depth (DeiT-Ti trains with drop path 0.1 on ImageNet for 300 epochs; runs here are
    minutes long).
    """

    default_width = 192
    options: dict = {"depth": 12, "patch_size": 4}

    def __init__(self, in_channels: int, width: int = 192, mean=None, std=None, depth: int = 12,
                 patch_size: int = 4):
        super().__init__()
        if width < 1 or depth < 1 or patch_size < 1:
            raise SelfSupError(f"vit-tiny needs width, depth and patch_size of at least 1, got {width}, {depth}, "
                               f"{patch_size}; fix model.width, model.depth or model.patch_size")
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.heads = attention_heads(width)
        self.blocks = nn.ModuleList(TransformerBlock(width, self.heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.dim = width
        self.depth = depth
        self.patch_size = patch_size
        self.stride = patch_size  # one feature-map cell per patch
        self.apply(init_transformer_weights)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear map of the flattened patch (MAE)
        nn.init.zeros_(self.patch_embed.bias)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of patches in a height x width image."""
        rows, cols = height // self.patch_size, width // self.patch_size
        if rows < 1 or cols < 1:
            raise SelfSupError(f"vit-tiny cuts images into {self.patch_size} px patches but got {height}x{width} px "
                               f"images, smaller than one patch; lower model.patch_size (e.g. --set "
                               f"model.patch_size={max(1, min(height, width) // 2)})")
        return rows, cols

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> patch embeddings plus positions (B, N, width), N = rows * cols, row-major."""
        rows, cols = self.grid(*x.shape[-2:])
        tokens = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2)  # (B, N, D)
        return tokens + sincos_2d(rows, cols, self.dim, x.device).to(tokens.dtype)

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1], keep: (B, n_keep) indices into the row-major patch grid (None: all) ->
        the encoded tokens of those patches, in keep's order, after the final LayerNorm: (B, n_keep, width).

        Positions are added before the other tokens are dropped, so each kept token knows where it sits.
        """
        tokens = self.embed(x)  # (B, N, D)
        if keep is not None:
            if keep.dim() != 2 or keep.shape[0] != tokens.shape[0]:
                raise ValueError(f"keep must be (B, n_keep) patch indices for B={tokens.shape[0]}, "
                                 f"got shape {tuple(keep.shape)}")
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, n_keep, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> the patch tokens as a map (B, width, H // p, W // p)."""
        rows, cols = self.grid(*x.shape[-2:])
        return self.forward_tokens(x).transpose(1, 2).reshape(len(x), self.dim, rows, cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x).mean(dim=1)  # (B, width): mean over the patch tokens


BACKBONES: dict[str, Callable[..., nn.Module]] = {"small-cnn": SmallCNN, "resnet18": ResNet18,
                                                  "vit-tiny": VisionTransformer}


def default_width(name: str) -> int:
    """What model.width means for backbone `name` when it is not set (small-cnn: 32, vit-tiny: 192)."""
    return _backbone_class(name).default_width


def resolved_options(name: str, **options) -> dict:
    """The backbone-only settings of `name` with its defaults filled in where options leave them None or out."""
    cls = _backbone_class(name)
    for key in options:
        if key not in cls.options:
            owners = [n for n, c in BACKBONES.items() if key in getattr(c, "options", {})]
            if not owners:
                raise SelfSupError(f"no backbone has a setting '{key}'; backbone settings are: "
                                   f"{', '.join(sorted({k for c in BACKBONES.values() for k in c.options}))}")
            raise SelfSupError(f"model.{key} is a setting of {', '.join(owners)} and {name} has none; remove "
                               f"model.{key} or use --set model.backbone={owners[0]}")
    return {**cls.options, **{k: v for k, v in options.items() if v is not None}}


def _backbone_class(name: str) -> type:
    if name not in BACKBONES:
        raise SelfSupError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str, in_channels: int, width: int | None = None, mean=None, std=None,
                   **options) -> nn.Module:
    """A backbone by name; `mean`/`std` are the per-channel statistics of the training images in [0, 1].

    width None: the backbone's default_width. options: settings only some backbones have (vit-tiny: depth,
    patch_size); None or left out takes the backbone's default, one the backbone lacks is a SelfSupError.
    """
    cls = _backbone_class(name)
    return cls(in_channels, width=width or cls.default_width, mean=mean, std=std, **resolved_options(name, **options))


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images (N, C, H, W), uint8 (scaled to [0, 1]) or float, from at most `max_images`.

    A seeded random sample, not the first images: folders come sorted by class.
    """
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:max_images].sort().values
    x = images[pick].float().div_(255) if images.dtype == torch.uint8 else images[pick].float()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()
