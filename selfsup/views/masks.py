"""Batched hole masks for inpainting (Pathak et al., Context Encoders: Feature Learning by Inpainting, CVPR 2016).

Every generator takes a float batch x (B, C, H, W) only for its shape and device and returns a float mask
(B, 1, H, W) on x's device with 1 = missing (the hole) and 0 = kept. Random kinds draw every image's mask from the
given torch.Generator (on x's device) and from nothing else, so one seed gives one set of masks; images of one
batch get different masks. The three kinds follow Sec. 3.3 of the paper:

- central: one square at the centre covering `fraction` of the area. The paper's central hole is a quarter of
  the area (half the side). It inpaints well but its features latch onto the fixed, sharp hole boundary.
- blocks: several smaller, possibly overlapping random rectangles ("random block" in the paper) added one at a
  time until the target is reached: each image's covered fraction c satisfies fraction <= c < fraction + (area
  of the largest possible block) / (H * W); with the default sides of 1/8 to 1/4 of the image side that is
  fraction <= c < fraction + 1/16 (0.25 -> [0.25, 0.3125)).
- shapes: smooth random blobs without straight edges ("random region" in the paper). The paper pastes deformed
  PASCAL VOC 2012 segmentation masks; we have no segmentation data offline, so the shapes are procedural: a
  smooth random field (uniform noise on a coarse grid, bicubically upsampled, at a random sub-cell offset) is
  thresholded per image at its own quantile, so exactly round(fraction * H * W) pixels are masked in every image
  (ties in the field, which have probability zero, are broken by pixel order). The authors' released training
  script for random masks makes its shapes the same way (thresholded upsampled noise), at a fixed threshold and
  keeping only crops with 20-30% coverage.

The paper found random blocks and random regions give similarly general features, both much better than the
central square, and used random regions for all its feature-learning experiments.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

MASK_KINDS = ("central", "blocks", "shapes")


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ValueError(f"the masked fraction must be in (0, 1), got {fraction}")


def central_block(x: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, 1, H, W) masks of one centred rectangle, the same in every image.

    Its sides are round(sqrt(fraction) * H) x round(sqrt(fraction) * W), so it covers `fraction` of the area up to
    rounding (paper: fraction 1/4, half the side: 14 x 14 of 28 x 28); it starts at ((H - h) // 2, (W - w) // 2).
    `generator` is accepted for a uniform signature and not used.
    """
    _check_fraction(fraction)
    b, _, h, w = x.shape
    side_h, side_w = max(1, round(math.sqrt(fraction) * h)), max(1, round(math.sqrt(fraction) * w))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    mask = torch.zeros((b, 1, h, w), device=x.device)
    mask[:, :, top:top + side_h, left:left + side_w] = 1.0
    return mask


def block_side_range(size: int, side: tuple[float, float] = (1 / 8, 1 / 4)) -> tuple[int, int]:
    """Smallest and largest block side in pixels for an image side of `size`: round(side * size), at least 1."""
    lo, hi = max(1, round(side[0] * size)), max(1, round(side[1] * size))
    return min(lo, hi), max(lo, hi)


def random_blocks(x: torch.Tensor, fraction: float, generator: torch.Generator,
                  side: tuple[float, float] = (1 / 8, 1 / 4), max_rounds: int = 10_000) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, 1, H, W) masks: the union of random axis-aligned rectangles, drawn per image.

    Each round draws one rectangle for every image (height and width uniform integers in block_side_range of H and
    W; position uniform over all placements that overlap the image, cut off at the border, so that a block covers
    every pixel with the same probability: inside-only placement would almost never mask the corners) and adds it
    to the images still below `fraction`; it stops once all are at or above it. So per image: fraction <= covered
    fraction < fraction + h_max * w_max / (H * W), h_max and w_max being the largest block sides. Each round draws
    the same amount of randomness whatever the images, so the masks depend only on the generator's state and the
    batch shape.
    """
    _check_fraction(fraction)
    b, _, h, w = x.shape
    (h_lo, h_hi), (w_lo, w_hi) = block_side_range(h, side), block_side_range(w, side)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    mask = torch.zeros((b, h, w), dtype=torch.bool, device=x.device)
    target = fraction * h * w
    for _ in range(max_rounds):
        active = mask.sum(dim=(1, 2)) < target  # (B,) images still below the target
        if not bool(active.any()):
            return mask.unsqueeze(1).float()
        u = torch.rand((4, b), generator=generator, device=x.device)
        bh = h_lo + (u[0] * (h_hi - h_lo + 1)).long().clamp_max(h_hi - h_lo)  # (B,) block heights
        bw = w_lo + (u[1] * (w_hi - w_lo + 1)).long().clamp_max(w_hi - w_lo)
        top = (u[2] * (h + bh - 1)).long().clamp_max(h + bh - 2) - (bh - 1)  # (B,) in [1 - bh, h - 1]
        left = (u[3] * (w + bw - 1)).long().clamp_max(w + bw - 2) - (bw - 1)
        in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])  # (B, H)
        in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])  # (B, W)
        block = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
        mask |= block & active[:, None, None]
    raise RuntimeError(f"random_blocks did not reach {fraction} coverage in {max_rounds} rounds")


def smooth_field(x: torch.Tensor, generator: torch.Generator, cells: int = 4) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, H, W) smooth random fields: uniform noise at the nodes of a grid with `cells` cells
    across the longer side, bicubically interpolated, then cut at a random offset within one cell per image (so
    blobs are not tied to fixed grid positions). More cells give smaller, more numerous blobs.
    """
    b, _, h, w = x.shape
    step = math.ceil(max(h, w) / cells)  # pixels per cell
    nodes = torch.rand((b, 1, cells + 2, cells + 2), generator=generator, device=x.device)
    side = (cells + 1) * step + 1  # node i lands exactly on pixel i * step (align_corners=True)
    canvas = F.interpolate(nodes, size=(side, side), mode="bicubic", align_corners=True)[:, 0]  # (B, side, side)
    offset = (torch.rand((2, b), generator=generator, device=x.device) * step).long().clamp_max(step - 1)  # (2, B)
    rows = offset[0][:, None] + torch.arange(h, device=x.device)  # (B, H); at most step - 1 + h - 1 < side
    cols = offset[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return canvas[batch, rows[:, :, None], cols[:, None, :]]


def random_shapes(x: torch.Tensor, fraction: float, generator: torch.Generator, cells: int = 4) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, 1, H, W) masks of smooth random blobs covering exactly round(fraction * H * W)
    pixels in every image: the lowest values of a `smooth_field` (its per-image `fraction` quantile).
    """
    _check_fraction(fraction)
    b, _, h, w = x.shape
    field = smooth_field(x, generator, cells).reshape(b, h * w)
    n_masked = round(fraction * h * w)
    lowest = field.argsort(dim=1)[:, :n_masked]  # (B, n_masked) pixel indices
    mask = torch.zeros((b, h * w), device=x.device).scatter_(1, lowest, 1.0)
    return mask.view(b, 1, h, w)


MASKS: dict[str, Callable[..., torch.Tensor]] = {"central": central_block, "blocks": random_blocks,
                                                 "shapes": random_shapes}


def make_mask(kind: str, x: torch.Tensor, fraction: float, generator: torch.Generator,
              cells: int = 4) -> torch.Tensor:
    """One of MASK_KINDS for the batch x (B, C, H, W): (B, 1, H, W) float, 1 = missing. `cells`: shapes only."""
    if kind == "shapes":
        return random_shapes(x, fraction, generator, cells)
    if kind in MASKS:
        return MASKS[kind](x, fraction, generator)
    raise ValueError(f"mask must be one of {', '.join(MASK_KINDS)}, got {kind!r}")
