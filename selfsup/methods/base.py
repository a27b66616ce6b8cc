"""The method contract: an nn.Module that owns everything between raw uint8 images and a scalar loss.

A method exposes `backbone` (the part we keep), `loss(images) -> (scalar, logs)` and optional hooks. It draws
its randomness (views, masks, pretext labels) from `self.generator`, which the training loop creates, seeds and
checkpoints, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn

from selfsup.errors import SelfSupError


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
    views_recipe: ClassVar[str] = "simclr"  # the recipe `views.recipe=auto` means for this method
    n_views: ClassVar[int] = 2  # views per image the method's recipe makes; 0: as many as the recipe makes (multi-crop)
    min_channels: ClassVar[int] = 1  # 3 for methods that only make sense on colour images
    # A model.backbone the method cannot work without (MAE: "vit-tiny", whose encoder can run on a subset of the
    # patch tokens); build_method refuses any other with the fix. None: any backbone.
    requires_backbone: ClassVar[str | None] = None
    # True: the training loop calls loss(images, indices), indices (B,) each image's row in the training tensor
    # (NPID's memory bank). False: loss(images).
    uses_indices: ClassVar[bool] = False
    # False for a method that sets BatchNorm statistics itself (MoCo's shuffling BN): under torchrun its BatchNorm
    # layers stay per process even with train.sync_batchnorm (distributed.py).
    global_batchnorm: ClassVar[bool] = True
    notes: list[str]  # lines for the run log: defences that are off, ops skipped on this data, ...

    backbone: nn.Module
    generator: torch.Generator

    @classmethod
    def make_encoder(cls, build: Callable[..., nn.Module], channels: int,
                     sample: torch.Tensor | None = None) -> nn.Module:
        """The network this method trains and exports, for images with `channels` channels.

        build(in_channels, mean, std, width=None, width_scale=1.0) makes a backbone of the configured architecture
        (width: the configured one unless given; width_scale multiplies it, split-brain takes halves) that normalizes
        its input by (mean, std) per channel. sample: a seeded sample of the training images, float in [0, 1],
        whose statistics set that normalization; None when saved weights (normalization included) are loaded next.
        Default: one backbone on the image. Colorization and split-brain wrap theirs (nets/encoders.py).
        """
        return build(channels, *input_stats(sample, channels))

    def prepare(self, images: torch.Tensor) -> None:
        """Called once with all training images (uint8, on the CPU) before training and again before a resume, so
        what it computes must depend on the images and the seed only (colorization's colour prior). Default: nothing.
        """

    def set_generator(self, generator: torch.Generator) -> None:
        """Give the method the seeded generator its views and pretext labels are drawn from."""
        self.generator = generator

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """images: (B, C, H, W) uint8 on the training device -> (scalar loss, floats to log).

        A method with uses_indices takes loss(images, indices) instead; `step_loss` calls either.
        """
        raise NotImplementedError

    def check_indices(self, images: torch.Tensor, indices: torch.Tensor | None, purpose: str) -> torch.Tensor:
        """For methods with uses_indices: indices (B,) for a batch of B images, or one clear error saying why."""
        if indices is None:
            raise SelfSupError(f"{self.name} needs each image's row in the training set (loss(images, indices)) to "
                               f"{purpose}; the training loop gives it")
        if indices.shape != images.shape[:1]:
            raise ValueError(f"{self.name}: {len(images)} images but indices of shape {tuple(indices.shape)}")
        return indices

    def step_loss(self, images: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """loss(images, indices) for a method that uses indices, else loss(images)."""
        return self.loss(images, indices) if self.uses_indices else self.loss(images)

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (momentum updates, schedules). Default: nothing."""

    def on_epoch_start(self, epoch: int, images: torch.Tensor) -> None:
        """Called by the training loop before the first step of every epoch (re-clustering, new pseudo-labels).

        epoch: 0, 1, ... (an epoch is len(images) // batch_size steps); images: all training images (N, C, H, W),
        uint8, on the training device (in pinned host memory for a data set too large for the GPU: move chunks
        with .to(device)), rows in the order `indices` refer to. Runs outside autocast with gradients
        enabled and the method in training mode, which it must leave as it found it. Default: nothing.

        Resume: what the hook computes must live in the method's state_dict (buffers), because a run resumed in
        the middle of an epoch does not call it again for that epoch: the checkpoint carries its results. A run
        resumed exactly at an epoch boundary calls it, as the uninterrupted run would have at that point. Draw its
        randomness from `self.generator` (checkpointed), so both runs compute the same thing.
        """

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """After pretraining: write PNGs of what the method predicts (reconstructions, ...) into out_dir.

        images: (B, C, H, W) uint8, a fixed seeded sample of training images on the training device; called in
        eval mode under torch.no_grad(). Returns the paths written. Default: none.
        """
        return []


def input_stats(sample: torch.Tensor | None, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) of a float sample in the space a backbone sees; (0, 1) placeholders without one."""
    if sample is None:
        return [0.0] * channels, [1.0] * channels
    from selfsup.nets.backbones import channel_stats

    return channel_stats(sample)
