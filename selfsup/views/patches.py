"""Cutting a grid of tiles out of every image of a batch: the shared part of relative patch location and jigsaw.

Layout of one grid (one axis; the other is the same):

    | jitter | tile | gap | tile | gap | tile | jitter |      span = grid * tile + (grid - 1) * gap + 2 * jitter

The whole grid is placed at a random position in each image; each tile then moves by its own random shift in
[-jitter, jitter] on each axis. The gap (Doersch et al. 2015: half a patch; Noroozi & Favaro 2016: ~11 px of 75)
keeps low-level cues such as continuing edges and textures from giving the answer away; the jitter keeps the
network from measuring the exact spacing of lines across tiles.
"""

from __future__ import annotations

import torch

from selfsup.errors import SelfSupError


def grid_span(grid: int, tile: int, gap: int, jitter: int) -> int:
    """Side in pixels of the square a grid of tiles needs (jitter margins included)."""
    return grid * tile + (grid - 1) * gap + 2 * jitter


def largest_tile(size: int, grid: int, gap: int, jitter: int) -> int:
    """The biggest tile side for which the grid fits in a size x size image."""
    return (size - (grid - 1) * gap - 2 * jitter) // grid


def grid_tiles(x: torch.Tensor, grid: int, tile: int, gap: int, jitter: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, C, H, W) -> tiles (B, grid*grid, C, tile, tile) in row-major order, and their top-left corners (B, grid*grid, 2).

    Tile k sits at row k // grid, column k % grid of the grid. Every position and shift is drawn from `generator`
    on x's device, per sample and per tile.
    """
    B, C, H, W = x.shape
    span = grid_span(grid, tile, gap, jitter)
    if tile < 1 or span > min(H, W):
        raise SelfSupError(f"a {grid}x{grid} grid of {tile} px tiles with gap {gap} and jitter {jitter} needs "
                           f"{span} px but the images are {H}x{W}; lower the tile size, gap or jitter, or upsample")
    dev = x.device
    origin = torch.stack([torch.randint(0, H - span + 1, (B,), generator=generator, device=dev),
                          torch.randint(0, W - span + 1, (B,), generator=generator, device=dev)], dim=1)  # (B, 2)
    k = torch.arange(grid * grid, device=dev)
    nominal = torch.stack([k // grid, k % grid], dim=1) * (tile + gap) + jitter  # (K, 2)
    shift = torch.randint(-jitter, jitter + 1, (B, grid * grid, 2), generator=generator, device=dev)
    corners = origin[:, None, :] + nominal[None] + shift  # (B, K, 2)
    offsets = torch.arange(tile, device=dev)
    rows = corners[..., 0, None] + offsets  # (B, K, tile)
    cols = corners[..., 1, None] + offsets
    b = torch.arange(B, device=dev)[:, None, None, None]
    # Advanced indices around a slice: the result is (B, K, tile, tile, C).
    tiles = x[b, :, rows[:, :, :, None], cols[:, :, None, :]]
    return tiles.permute(0, 1, 4, 2, 3).contiguous(), corners


def fit_grid(size: int, grid: int, gap: float, jitter: float, tile: int = 0,
             upsample: int = 0) -> tuple[int, int, int, int]:
    """(working image side, tile, gap, jitter) in pixels for a grid cut from size x size images.

    gap and jitter are fractions of the tile side; images under `upsample` px are enlarged to it first; tile=0
    picks the largest tile that fits. Tiles under 4 px are refused: the small CNN pools twice.
    """
    working = upsample if upsample and size < upsample else size

    def fitted(t: int) -> tuple[int, int]:
        return round(gap * t), round(jitter * t)

    if tile:
        span = grid_span(grid, tile, *fitted(tile))
        if tile < 4 or span > working:
            raise SelfSupError(f"method.tile={tile} px needs {span} px for a {grid}x{grid} grid with its gap and "
                               f"jitter and at least 4 px for the backbone's two poolings, but the working images "
                               f"are {working} px; set method.tile=0 (the largest that fits) or raise method.upsample")
        return (working, tile, *fitted(tile))
    tile = int(working / (grid + (grid - 1) * gap + 2 * jitter))
    while tile > 1 and grid_span(grid, tile, *fitted(tile)) > working:
        tile -= 1
    if tile < 4:
        raise SelfSupError(f"{working} px images leave only {tile} px tiles for a {grid}x{grid} grid with gap {gap:g} "
                           f"and jitter {jitter:g} (fractions of a tile); enlarge them with method.upsample=64 or "
                           "lower the gap")
    return (working, tile, *fitted(tile))
