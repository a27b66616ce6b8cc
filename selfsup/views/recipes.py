"""Named view pipelines (recipes): uint8 image batches in, a list of float views in [0, 1] out.

SKELETON written by the lead: the helper implementing views fills in the bodies, keeping these names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.config import opt


@dataclass
class ViewsConfig:
    recipe: str = opt("simclr", "Named view pipeline.", choices=["simclr", "none"])
    crop_scale: tuple = opt((0.2, 1.0), "Random resized crop: range of the crop's area as a fraction of the image (SimCLR: 0.08-1 on ImageNet; 0.2-1 suits 28-32 px).")
    crop_ratio: tuple = opt((3 / 4, 4 / 3), "Random resized crop: range of aspect ratios (SimCLR: 3/4-4/3).")
    flip_p: float = opt(0.5, "Probability of a horizontal flip (SimCLR: 0.5).", min=0, max=1)
    color_strength: float = opt(0.5, "Colour jitter strength s: brightness, contrast, saturation 0.8s, hue 0.2s (SimCLR: s=1 on ImageNet, 0.5 on CIFAR-10).", min=0)
    color_p: float = opt(0.8, "Probability of colour jitter (SimCLR: 0.8).", min=0, max=1)
    gray_p: float = opt(0.2, "Probability of converting to grayscale (SimCLR: 0.2); a no-op on one-channel images.", min=0, max=1)
    blur_p: float | None = opt(None, "Probability of Gaussian blur (SimCLR: 0.5 on ImageNet, off on CIFAR); None: 0.5 when images are at least 64 px, else 0.", min=0, max=1)


class Recipe:
    """Callable: (images uint8 (B, C, H, W) on any device, torch.Generator on that device) -> list of float views."""

    names: list[str]  # what each op does, for logs and docs, e.g. ["crop(0.2-1)", "flip", "color (brightness/contrast only: 1 channel)"]

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        raise NotImplementedError


def build(cfg: ViewsConfig, channels: int, size: int, n_views: int = 2) -> Recipe:
    """The recipe named by cfg.recipe for images with `channels` channels and side `size`."""
    raise NotImplementedError
