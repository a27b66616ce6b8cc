"""Frozen features: the backbone in eval mode over un-augmented images, extracted once per protocol run."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def extract(backbone: nn.Module, images: torch.Tensor, batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """images: (N, C, H, W) uint8 -> features (N, backbone.dim) float32 on the CPU, backbone in eval mode."""
    was_training = backbone.training
    backbone.eval()
    backbone.to(device)
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
        chunks.append(backbone(x).float().cpu())
    backbone.train(was_training)
    if not chunks:
        return torch.zeros(0, getattr(backbone, "dim", 0))
    return torch.cat(chunks)
