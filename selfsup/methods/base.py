"""The method contract: an nn.Module that owns everything between raw uint8 images and a scalar loss.

A method exposes `backbone` (the part we keep), `loss(images) -> (scalar, logs)` and optional hooks. It draws
its randomness (views, masks, pretext labels) from `self.generator`, which the training loop creates, seeds and
checkpoints, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass
class MethodConfig:
    """Base of every method's config; `name` selects the method in the registry."""

    name: str = "simclr"


class Method(nn.Module):
    """Base class: holds nothing but the contract. Subclasses set the class attributes and implement `loss`."""

    name: ClassVar[str]
    family: ClassVar[str]  # "contrastive", "non-contrastive", "pretext", "clustering", "masked"
    paper: ClassVar[str]  # "Chen et al., A Simple Framework for Contrastive Learning ..."
    year: ClassVar[int]
    Config: ClassVar[type]

    backbone: nn.Module
    generator: torch.Generator

    def set_generator(self, generator: torch.Generator) -> None:
        """Give the method the seeded generator its views and pretext labels are drawn from."""
        self.generator = generator

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """images: (B, C, H, W) uint8 on the training device -> (scalar loss, floats to log)."""
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (momentum updates, schedules). Default: nothing."""
