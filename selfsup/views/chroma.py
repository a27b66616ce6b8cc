"""Colour ops for patch pretext tasks: the lens fault that gives a patch's position away, and three defences.

Chromatic aberration: a lens bends wavelengths by slightly different amounts, so the colour planes of a photo are
scaled a little differently about the lens centre (Doersch et al. 2015 saw green shrunk toward the centre relative
to red and blue). The colour fringes it leaves at edges point away from the centre and grow with the distance to
it, so a network can read where a patch sat in the photo from the fringes alone, and relative position from that.

Defences, each applied per patch (Doersch et al. 2015, Sec. 3; the third is a simpler relative of colour dropping):
  drop     keep one random channel, replace the other two by Gaussian noise (std ~1/100 of the kept channel's);
  project  remove each pixel's component along the green-magenta axis a = (-1, 2, -1) (multiply by I - a a^T / a^T a);
  replace  copy one random channel into all three.

Every op takes float (N, C, H, W) images and, where it draws anything, a torch.Generator on their device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError

# The green-magenta axis in RGB, unit length: the colour direction in which lateral aberration shows up.
GREEN_MAGENTA = (-1 / math.sqrt(6), 2 / math.sqrt(6), -1 / math.sqrt(6))

DEFENCES = ("none", "drop", "project", "replace")


def _rgb(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise SelfSupError(f"{what} works on RGB batches (N, 3, H, W), got shape {tuple(x.shape)}")


def chromatic_aberration(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Synthetic lateral aberration: red and blue magnified by (1 + strength) about the image centre, green kept.

    x: (N, 3, H, W) float. A pixel at distance r from the centre sees red and blue shifted outward by about
    strength * r pixels, nothing at the centre: the fringe a lens whose green focuses smaller leaves behind.
    """
    _rgb(x, "chromatic aberration")
    if strength == 0:
        return x
    if strength < 0 or strength >= 1:
        raise SelfSupError(f"aberration strength must be in [0, 1), got {strength}: use e.g. 0.03")
    N, _, H, W = x.shape
    # Normalized sampling grid (align_corners=False): output pixel p reads input position p / (1 + s), so the
    # content of red and blue moves outward; every read stays inside the image, no padding shows.
    ys = (torch.arange(H, device=x.device, dtype=x.dtype) + 0.5) / H * 2 - 1
    xs = (torch.arange(W, device=x.device, dtype=x.dtype) + 0.5) / W * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1) / (1 + strength)  # (H, W, 2) as (x, y)
    outer = F.grid_sample(x[:, [0, 2]], grid.expand(N, H, W, 2), mode="bilinear", align_corners=False)
    return torch.stack([outer[:, 0], x[:, 1], outer[:, 1]], dim=1)


def drop_channels(x: torch.Tensor, generator: torch.Generator, noise: float = 0.01) -> torch.Tensor:
    """Doersch's colour dropping: per image keep one random channel; the others become Gaussian noise.

    The noise has the kept channel's mean and `noise` times its standard deviation (paper: about 1/100), so the
    dropped channels carry no image structure and no colour misalignment.
    """
    _rgb(x, "colour dropping")
    N = x.shape[0]
    keep = torch.randint(0, 3, (N,), generator=generator, device=x.device)
    kept = x[torch.arange(N, device=x.device), keep]  # (N, H, W)
    mean = kept.mean(dim=(1, 2)).view(N, 1, 1, 1)
    std = kept.std(dim=(1, 2)).view(N, 1, 1, 1)
    filler = mean + noise * std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    is_kept = torch.arange(3, device=x.device).view(1, 3, 1, 1) == keep.view(N, 1, 1, 1)
    return torch.where(is_kept, x, filler)


def project_green_magenta(x: torch.Tensor) -> torch.Tensor:
    """Doersch's projection: remove every pixel's component along the green-magenta axis (gray and red-blue stay).

    Values can leave [0, 1] slightly (pure red becomes (5/6, 1/3, -1/6)); they are not clamped, since clamping
    would bring a green-magenta component back.
    """
    _rgb(x, "green-magenta projection")
    a = torch.tensor(GREEN_MAGENTA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x - (x * a).sum(dim=1, keepdim=True) * a


def replicate_channel(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random channel replacement: per image one random channel is copied into all three (a gray image of it)."""
    _rgb(x, "channel replacement")
    N = x.shape[0]
    keep = torch.randint(0, 3, (N,), generator=generator, device=x.device)
    return x[torch.arange(N, device=x.device), keep].unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def chroma_defence(x: torch.Tensor, name: str, generator: torch.Generator, noise: float = 0.01) -> torch.Tensor:
    """Apply the defence called `name` (none, drop, project, replace) to RGB patches; 1-channel input is returned as is."""
    if name not in DEFENCES:
        raise SelfSupError(f"unknown chroma defence '{name}'; choose one of {', '.join(DEFENCES)}")
    if name == "none" or x.shape[1] == 1:
        return x
    if name == "drop":
        return drop_channels(x, generator, noise)
    if name == "project":
        return project_green_magenta(x)
    return replicate_channel(x, generator)
