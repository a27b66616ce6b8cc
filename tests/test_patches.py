"""Grid tiles: every tile is the image content at the reported corner, inside the image, in row-major order."""

import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.views.patches import grid_span, grid_tiles, largest_tile


def test_tiles_are_the_pixels_at_their_corners_and_respect_gap_and_jitter():
    x = torch.rand(5, 3, 40, 44)
    g = torch.Generator().manual_seed(0)
    grid, tile, gap, jitter = 3, 8, 3, 2
    tiles, corners = grid_tiles(x, grid, tile, gap, jitter, g)
    assert tiles.shape == (5, 9, 3, 8, 8) and corners.shape == (5, 9, 2)
    for b in range(5):
        for k in range(9):
            r, c = corners[b, k].tolist()
            assert 0 <= r and r + tile <= 40 and 0 <= c and c + tile <= 44
            assert torch.equal(tiles[b, k], x[b, :, r:r + tile, c:c + tile])
        # Row-major order: neighbours along a row are one pitch apart, up to the two tiles' jitter.
        pitch = tile + gap
        for k in range(9):
            if k % grid:
                d = corners[b, k, 1] - corners[b, k - 1, 1]
                assert pitch - 2 * jitter <= d <= pitch + 2 * jitter
                assert abs(corners[b, k, 0] - corners[b, k - 1, 0]) <= 2 * jitter
            if k >= grid:
                d = corners[b, k, 0] - corners[b, k - grid, 0]
                assert pitch - 2 * jitter <= d <= pitch + 2 * jitter


def test_no_jitter_means_exact_pitch_and_same_seed_same_tiles():
    x = torch.rand(4, 1, 30, 30)
    t1, c1 = grid_tiles(x, 3, 8, 2, 0, torch.Generator().manual_seed(1))
    t2, c2 = grid_tiles(x, 3, 8, 2, 0, torch.Generator().manual_seed(1))
    assert torch.equal(t1, t2) and torch.equal(c1, c2)
    assert ((c1[:, 1:3, 1] - c1[:, 0:2, 1]) == 10).all()
    origins = grid_tiles(torch.rand(16, 1, 40, 40), 3, 8, 2, 0, torch.Generator().manual_seed(2))[1][:, 0]
    assert len({tuple(o.tolist()) for o in origins}) > 1  # each image gets its own grid position


def test_sizes_and_errors():
    assert grid_span(3, 8, 2, 1) == 3 * 8 + 2 * 2 + 2
    assert largest_tile(64, 3, 4, 2) == (64 - 8 - 4) // 3
    with pytest.raises(SelfSupError, match="needs 34 px but the images are 30x30"):
        grid_tiles(torch.rand(1, 1, 30, 30), 3, 10, 2, 0, torch.Generator())
