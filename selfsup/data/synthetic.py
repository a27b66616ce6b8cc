"""Synthetic images: procedural shapes (disc, square, triangle, ...) with known classes, generated from a seed.

Deterministic in (seed, split), balanced across the 10 classes, with random size, position, small rotation,
levels (or colours) and noise per image; train and test never share an image. For tests and demos.
"""

from __future__ import annotations

import numpy as np
import torch

SYNTHETIC_CLASSES = ["disc", "square", "triangle", "cross", "ring", "horizontal bars", "vertical bars",
                     "diagonal stripes", "dot grid", "x"]


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels inside shape number `shape`, in shape coordinates u (right), v (down), the shape filling about [-1, 1]."""
    box = (np.abs(u) < 0.85) & (np.abs(v) < 0.85)
    radius = np.hypot(u, v)
    if shape == 0:  # disc
        return radius < 0.8
    if shape == 1:  # square
        return (np.abs(u) < 0.7) & (np.abs(v) < 0.7)
    if shape == 2:  # triangle, apex up
        return (v < 0.7) & (np.abs(u) < (v + 0.85) * 0.55)
    if shape == 3:  # plus-shaped cross
        return box & ((np.abs(u) < 0.22) | (np.abs(v) < 0.22))
    if shape == 4:  # ring
        return (radius > 0.5) & (radius < 0.85)
    if shape == 5:  # horizontal bars
        return box & (np.cos(v * 3 * np.pi) > 0)
    if shape == 6:  # vertical bars
        return box & (np.cos(u * 3 * np.pi) > 0)
    if shape == 7:  # diagonal stripes
        return box & (np.cos((u + v) * 2.5 * np.pi) > 0)
    if shape == 8:  # 3x3 grid of dots
        du, dv = u - 0.6 * np.round(u / 0.6), v - 0.6 * np.round(v / 0.6)
        return box & (du * du + dv * dv < 0.2 ** 2)
    return box & (np.minimum(np.abs(u - v), np.abs(u + v)) < 0.3)  # X


def synthetic_images(n: int, image_size: int = 28, channels: int = 1, seed: int = 0,
                     split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """n procedural shape images (n, channels, S, S) uint8 and their labels; deterministic in (seed, split)."""
    # Train and test draw from different streams of the same seed, so they never share an image.
    rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, 0 if split == "train" else 1])
    n_classes = len(SYNTHETIC_CLASSES)
    labels = rng.permutation(np.arange(n) % n_classes)  # balanced: every class present once n >= 10
    # Per image: half-size, centre (kept inside the frame), small rotation, levels and noise.
    half = rng.uniform(0.45, 0.75, n)
    centre = rng.uniform(-1, 1, (2, n)) * (1 - half)
    angle = rng.uniform(-0.26, 0.26, n)  # +-15 degrees: bars stay horizontal or vertical
    foreground = rng.uniform(0.6, 1.0, (n, channels))
    background = rng.uniform(0.0, 0.35, (n, channels))
    if channels == 3:
        # Random colours whose brightest channel carries the level, so the shape always stands out somewhere.
        hue_fg, hue_bg = rng.uniform(0.1, 1.0, (2, n, 3))
        foreground = foreground[:, :1] * hue_fg / hue_fg.max(1, keepdims=True)
        background = background[:, :1] * hue_bg / hue_bg.max(1, keepdims=True)
    noise_level = rng.uniform(0.02, 0.1, n)

    axis = (np.arange(image_size) + 0.5) / image_size * 2 - 1  # pixel centres in [-1, 1]
    dx = axis[None, None, :] - centre[0][:, None, None]
    dy = axis[None, :, None] - centre[1][:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = ((cos * dx + sin * dy) / half[:, None, None]).astype(np.float32)
    v = ((-sin * dx + cos * dy) / half[:, None, None]).astype(np.float32)
    mask = np.zeros((n, image_size, image_size), dtype=np.float32)
    for shape in range(n_classes):
        members = labels == shape
        mask[members] = _shape_mask(shape, u[members], v[members])
    pixels = background[:, :, None, None] + (foreground - background)[:, :, None, None] * mask[:, None]
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * noise_level[:, None, None, None]
    images = np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
