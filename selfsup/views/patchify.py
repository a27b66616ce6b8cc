"""Images as sequences of patches, and random patch masking: the shared part of masked image modelling.

After He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022 (`models_mae.py`: patchify,
unpatchify, random_masking). A patch is flattened in (row, column, channel) order, MAE's layout, and patches are
numbered row-major over the grid, the order of the vit-tiny backbone's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.errors import SelfSupError


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """x: (B, C, H, W), H and W multiples of patch -> (B, N, patch * patch * C), N = (H / patch) * (W / patch)."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patchify needs sides that are multiples of the {patch} px patch, got {h}x{w}")
    rows, cols = h // patch, w // patch
    x = x.reshape(b, c, rows, patch, cols, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, rows * cols, patch * patch * c)  # (B, N, p*p*C)


def unpatchify(patches: torch.Tensor, patch: int, rows: int, cols: int) -> torch.Tensor:
    """patches: (B, rows * cols, patch * patch * C) -> images (B, C, rows * patch, cols * patch); undoes patchify."""
    b, n, d = patches.shape
    c = d // (patch * patch)
    if n != rows * cols or d != patch * patch * c:
        raise ValueError(f"{n} patches of {d} values are not a {rows}x{cols} grid of {patch} px patches")
    x = patches.reshape(b, rows, cols, patch, patch, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, rows, p, cols, p)
    return x.reshape(b, c, rows * patch, cols * patch)


@dataclass
class PatchMask:
    """Which patches of each image the encoder sees. Index tensors are ascending along dim 1."""

    keep: torch.Tensor  # (B, n_keep) int64: the visible patches
    masked: torch.Tensor  # (B, N - n_keep) int64: the hidden patches, to reconstruct
    mask: torch.Tensor  # (B, N) float: 1 = hidden, 0 = visible (MAE's convention)


def visible_count(n: int, ratio: float) -> int:
    """round((1 - ratio) * n) patches stay visible (Python's rounding: halves go to the even number)."""
    keep = round((1 - ratio) * n)
    if not 0 < keep < n:
        raise SelfSupError(f"masking {ratio:g} of {n} patches leaves {keep} visible, but masked image modelling "
                           f"needs at least one visible and one hidden patch; choose a mask ratio (method.mask_ratio) "
                           f"between {1.5 / n:.2f} and {1 - 1.5 / n:.2f}, or smaller patches")
    return keep


def random_masking(batch: int, n: int, ratio: float, generator: torch.Generator,
                   device: torch.device | str | None = None) -> PatchMask:
    """A random subset of `ratio` of the n patches hidden in each of `batch` images, drawn per image from generator.

    Every image keeps exactly round((1 - ratio) * n) patches, chosen uniformly (the first of a random permutation,
    MAE's argsort of uniform noise); images of one batch get different subsets, and one generator state gives one
    set of masks.
    """
    n_keep = visible_count(n, ratio)
    noise = torch.rand((batch, n), generator=generator, device=device)
    order = noise.argsort(dim=1)  # (B, N): a uniform random permutation per image
    keep = order[:, :n_keep].sort(dim=1).values
    masked = order[:, n_keep:].sort(dim=1).values
    mask = torch.ones((batch, n), device=noise.device).scatter_(1, keep, 0.0)
    return PatchMask(keep, masked, mask)
