"""Backbones: the networks whose features we keep. Each takes float images in [0, 1] and exposes `.dim`.

Input normalization (per-channel mean/std of the training data) lives inside the backbone as buffers, so an
exported encoder carries it and every consumer feeds plain [0, 1] images.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torchvision
from torch import nn

from selfsup.errors import SelfSupError


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
    """torchvision's ResNet-18 with the small-image stem used for CIFAR (3x3 conv, stride 1, no max-pool); dim 512."""

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


BACKBONES: dict[str, Callable[..., nn.Module]] = {"small-cnn": SmallCNN, "resnet18": ResNet18}


def build_backbone(name: str, in_channels: int, width: int = 32, mean=None, std=None) -> nn.Module:
    """A backbone by name; `mean`/`std` are the per-channel statistics of the training images in [0, 1]."""
    if name not in BACKBONES:
        raise SelfSupError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels, width=width, mean=mean, std=std)


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images (N, C, H, W), uint8 (scaled to [0, 1]) or float, from at most `max_images`.

    A seeded random sample, not the first images: folders come sorted by class.
    """
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:max_images].sort().values
    x = images[pick].float().div_(255) if images.dtype == torch.uint8 else images[pick].float()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()
