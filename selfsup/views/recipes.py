"""Named view pipelines (recipes): uint8 image batches in, a list of float views in [0, 1] out.

A recipe is a list of stages, each a view op with its parameters bound. All views of a batch go through the
stages together as one batch of n_views * B images (every sample still draws its own parameters), which costs
one call per op instead of one per view; on a CPU that batch is cut into cache-sized chunks. Ops that cannot act (saturation on one channel, blur turned off) are
left out of the stages but still listed in `Recipe.names`, marked as skipped, so logs say what really ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from selfsup.config import opt
from selfsup.errors import SelfSupError
from selfsup.views import ops

Stage = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# Float bytes per chunk of views processed together on a CPU: a few MB, about what stays in a core's cache.
CPU_CHUNK_BYTES = 4 << 20


@dataclass
class ViewsConfig:
    recipe: str = opt("simclr", "Named view pipeline: simclr (SimCLR's augmentations), supervised (crop 0.6-1 and flip, for the from-scratch baseline), none (no augmentation, for debugging).", choices=["simclr", "supervised", "none"])
    crop_scale: tuple = opt((0.2, 1.0), "Random resized crop: range of the crop's area as a fraction of the image (SimCLR: 0.08-1 on ImageNet; 0.2-1 suits 28-32 px).")
    crop_ratio: tuple = opt((3 / 4, 4 / 3), "Random resized crop: range of aspect ratios (SimCLR: 3/4-4/3).")
    flip_p: float = opt(0.5, "Probability of a horizontal flip (SimCLR: 0.5).", min=0, max=1)
    color_strength: float = opt(0.5, "Colour jitter strength s: brightness, contrast, saturation 0.8s, hue 0.2s (SimCLR: s=1 on ImageNet, 0.5 on CIFAR-10).", min=0)
    color_p: float = opt(0.8, "Probability of colour jitter (SimCLR: 0.8).", min=0, max=1)
    gray_p: float = opt(0.2, "Probability of converting to grayscale (SimCLR: 0.2); a no-op on one-channel images.", min=0, max=1)
    blur_p: float | None = opt(None, "Probability of Gaussian blur (SimCLR: 0.5 on ImageNet, off on CIFAR); None: 0.5 when images are at least 64 px, else 0.", min=0, max=1)


class Recipe:
    """Callable: (images uint8 (B, C, H, W) on any device, torch.Generator on that device) -> list of float views."""

    names: list[str]  # each op in order with its parameters, skipped ops marked, e.g. "grayscale (skipped: 1 channel)"

    def __init__(self, name: str, stages: list[Stage], names: list[str], channels: int, size: int, n_views: int):
        self.name = name
        self.stages = stages
        self.names = names
        self.channels = channels
        self.size = size
        self.n_views = n_views

    def __repr__(self) -> str:
        return f"Recipe({self.name!r}, {self.n_views} views of {self.size} px: {'; '.join(self.names)})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise SelfSupError(f"views take uint8 image batches (B, C, H, W), "
                               f"got {images.dtype} of shape {tuple(images.shape)}")
        if images.shape[1] != self.channels:
            raise SelfSupError(f"the '{self.name}' views were built for {self.channels}-channel images, "
                               f"got {images.shape[1]} channels")
        if generator.device.type != images.device.type:
            raise SelfSupError(f"the views' generator is on {generator.device} but the images are on "
                               f"{images.device}; create the generator on the images' device")
        if not self.stages:
            x = images.float().div_(255)  # the only uint8 -> float conversion, on the images' device
            if x.shape[-2:] != (self.size, self.size):
                x = ops.resized_crop(x, _whole(x), self.size)
            return [x] + [x.clone() for _ in range(self.n_views - 1)]
        batch = images.repeat(self.n_views, 1, 1, 1)  # still uint8: 1 byte a pixel
        chunk = len(batch)
        if batch.device.type == "cpu":
            # On a CPU every op is a pass over memory; chunks that stay in cache between ops run about twice as
            # fast at 96 px as one pass over the whole batch. A loop over chunks, not samples.
            per_image = 4 * images.shape[1] * max(images.shape[-2] * images.shape[-1], self.size ** 2)
            chunk = max(1, CPU_CHUNK_BYTES // per_image)
        parts = []
        for part in batch.split(chunk):
            x = part.float().div_(255)  # the only uint8 -> float conversion, on the images' device
            for stage in self.stages:
                x = stage(x, generator)
            parts.append(x)
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        return list(x.chunk(self.n_views))


def _whole(x: torch.Tensor) -> torch.Tensor:
    B, _, H, W = x.shape
    return torch.tensor([0, 0, H, W], device=x.device).expand(B, 4)


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _check_cfg(cfg: ViewsConfig) -> None:
    scale, ratio = tuple(cfg.crop_scale), tuple(cfg.crop_ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise SelfSupError(f"views.crop_scale must be two numbers 0 < low <= high <= 1 (e.g. [0.2, 1.0]), "
                           f"got {list(scale)}")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise SelfSupError(f"views.crop_ratio must be two numbers 0 < low <= high (e.g. [0.75, 1.333]), "
                           f"got {list(ratio)}")


def _crop_stage(size: int, scale: tuple, ratio: tuple) -> tuple[Stage, str]:
    name = (f"random resized crop to {size} px (scale {_fmt(scale[0])}-{_fmt(scale[1])}, "
            f"ratio {_fmt(ratio[0])}-{_fmt(ratio[1])})")
    return partial(ops.random_resized_crop, size=size, scale=tuple(scale), ratio=tuple(ratio)), name


def _flip_stage(p: float) -> tuple[Stage | None, str]:
    if p == 0:
        return None, "horizontal flip (off: p=0)"
    return partial(ops.hflip, p=p), f"horizontal flip (p={_fmt(p)})"


def _simclr(cfg: ViewsConfig, channels: int, size: int) -> list[tuple[Stage | None, str]]:
    s = cfg.color_strength
    stages = [_crop_stage(size, cfg.crop_scale, cfg.crop_ratio), _flip_stage(cfg.flip_p)]

    b = c = sat = 0.8 * s
    hue = min(0.2 * s, 0.5)  # a hue shift beyond half a turn is the same as a smaller one the other way
    if s == 0 or cfg.color_p == 0:
        stages.append((None, f"color jitter (off: {'strength 0' if s == 0 else 'p=0'})"))
    elif channels == 1:
        stages.append((partial(ops.color_jitter, brightness=b, contrast=c, saturation=0.0, hue=0.0, p=cfg.color_p),
                       f"color jitter (p={_fmt(cfg.color_p)}; brightness {_fmt(b)}, contrast {_fmt(c)}, random order; "
                       "saturation and hue skipped: 1 channel)"))
    else:
        stages.append((partial(ops.color_jitter, brightness=b, contrast=c, saturation=sat, hue=hue, p=cfg.color_p),
                       f"color jitter (p={_fmt(cfg.color_p)}; brightness {_fmt(b)}, contrast {_fmt(c)}, "
                       f"saturation {_fmt(sat)}, hue {_fmt(hue)}, random order)"))

    if channels == 1:
        stages.append((None, "grayscale (skipped: 1 channel)"))
    elif cfg.gray_p == 0:
        stages.append((None, "grayscale (off: p=0)"))
    else:
        stages.append((partial(ops.random_grayscale, p=cfg.gray_p), f"grayscale (p={_fmt(cfg.gray_p)})"))

    # SimCLR blurs on ImageNet but leaves blur out for CIFAR-10's 32 px images; the default follows by image size.
    blur_p = cfg.blur_p if cfg.blur_p is not None else (0.5 if size >= 64 else 0.0)
    if blur_p == 0:
        reason = "p=0" if cfg.blur_p is not None else "images under 64 px, as SimCLR on CIFAR"
        stages.append((None, f"gaussian blur (off: {reason})"))
    else:
        k = ops.blur_kernel_size(size)
        stages.append((partial(ops.gaussian_blur, sigma=(0.1, 2.0), kernel_size=k, p=blur_p),
                       f"gaussian blur (p={_fmt(blur_p)}; sigma 0.1-2, kernel {k})"))
    return stages


def _supervised(cfg: ViewsConfig, channels: int, size: int) -> list[tuple[Stage | None, str]]:
    return [_crop_stage(size, (0.6, 1.0), cfg.crop_ratio), _flip_stage(cfg.flip_p)]


def _none(cfg: ViewsConfig, channels: int, size: int) -> list[tuple[Stage | None, str]]:
    return [(None, "none (uint8 to float only; every view is the same image)")]


RECIPES: dict[str, Callable[[ViewsConfig, int, int], list[tuple[Stage | None, str]]]] = {
    "simclr": _simclr,
    "supervised": _supervised,
    "none": _none,
}


def build(cfg: ViewsConfig, channels: int, size: int, n_views: int = 2) -> Recipe:
    """The recipe named by cfg.recipe for images with `channels` channels and side `size`."""
    if cfg.recipe not in RECIPES:
        raise SelfSupError(f"unknown views recipe '{cfg.recipe}'; known recipes: {', '.join(sorted(RECIPES))}")
    if channels not in (1, 3):
        raise SelfSupError(f"views work on 1- or 3-channel images, got {channels} channels")
    if n_views < 1:
        raise SelfSupError(f"a recipe makes at least one view, got n_views={n_views}")
    _check_cfg(cfg)
    pairs = RECIPES[cfg.recipe](cfg, channels, size)
    return Recipe(cfg.recipe, [s for s, _ in pairs if s is not None], [n for _, n in pairs], channels, size, n_views)
