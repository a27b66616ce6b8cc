"""Encoders that are more than one backbone on the raw image: the network a method keeps and exports.

Most methods keep their backbone as is. Colorization keeps a one-channel backbone that sees lightness only;
split-brain keeps two half-width backbones, one on L and one on ab, side by side. These wrappers hold no weights
of their own (their state dict is their backbones'), take images in [0, 1] with 1 or 3 channels, and expose what
the evaluation uses: `dim`, `forward` (pooled features) and, where the backbones have it, `feature_map`.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.views.lab import lab_scaled, lightness


class LightnessEncoder(nn.Module):
    """A one-channel backbone on L/100 of the image: colour and grey images alike (grey is R = G = B)."""

    any_channels = True  # 1 or 3 channels: evaluation data need no channel adapter

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.dim = net.dim
        self.stride = getattr(net, "stride", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(lightness(x))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.feature_map(lightness(x))


class SplitBrainEncoder(nn.Module):
    """Two backbones on the two channel groups of Lab: `net_l` on L/100, `net_ab` on (a, b)/110; the features are
    the concatenation (Zhang et al. 2017 split the network's channels in half, so the whole has the usual size).
    Grey images have a = b = 0, so on them the ab half gives the same features for every image."""

    any_channels = True

    def __init__(self, net_l: nn.Module, net_ab: nn.Module):
        super().__init__()
        self.net_l, self.net_ab = net_l, net_ab
        self.dim = net_l.dim + net_ab.dim

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] -> (L/100 (B, 1, H, W), ab/110 (B, 2, H, W))."""
        lab = lab_scaled(x)
        return lab[:, :1], lab[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L, ab = self.split(x)
        return torch.cat([self.net_l(L), self.net_ab(ab)], dim=1)


class ChannelAdapter(nn.Module):
    """Feeds an encoder trained on `channels`-channel images with images of another channel count: grey images are
    repeated into R = G = B, colour images become grey by the ITU-R 601 luma weights (as torchvision's grayscale).
    Used when the evaluation data differ from the pretraining data (`--eval-data`)."""

    def __init__(self, encoder: nn.Module, channels: int):
        super().__init__()
        self.encoder, self.channels = encoder, channels
        self.dim = encoder.dim

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.channels:
            return x
        if x.shape[1] == 1 and self.channels == 3:
            return x.expand(-1, 3, -1, -1)
        if x.shape[1] == 3 and self.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            return (x * w).sum(dim=1, keepdim=True)
        raise ValueError(f"cannot feed {x.shape[1]}-channel images to an encoder trained on {self.channels} channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.adapt(x))


def adapt_channels(encoder: nn.Module, trained_channels: int, data_channels: int) -> nn.Module:
    """The encoder itself when it takes `data_channels`-channel images, else wrapped in a ChannelAdapter."""
    if trained_channels == data_channels or getattr(encoder, "any_channels", False):
        return encoder
    return ChannelAdapter(encoder, trained_channels)
