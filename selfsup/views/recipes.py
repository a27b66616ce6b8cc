"""Named view pipelines (recipes): uint8 image batches in, a list of float views in [0, 1] out.

A recipe is a list of stages, each a view op with its parameters bound. All views of a batch go through the
stages together as one batch of n_views * B images (every sample still draws its own parameters), which costs
one call per op instead of one per view; on a CPU that batch is cut into cache-sized chunks. Stages work in place
on the recipe's own buffers, and a flip right after the crop is folded into the crop's sampling grid; both give
the same views as the ops applied one by one. Ops that cannot act (saturation on one channel, blur turned off)
are left out of the stages but still listed in `Recipe.names`, marked as skipped, so logs say what really ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from selfsup.config import opt
from selfsup.errors import SelfSupError
from selfsup.views import kernels, ops

# A stage may overwrite its input: a recipe only passes it batches the recipe made itself.
Stage = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# Float bytes per chunk of views processed together on a CPU: a few MB, about what stays in a core's cache.
CPU_CHUNK_BYTES = 4 << 20


@dataclass
class CropConfig:
    scale: tuple = opt((0.2, 1.0), "Random resized crop: range of the crop's area as a fraction of the image (SimCLR: 0.08-1 on ImageNet; 0.2-1 suits 28-32 px; BYOL: 0.08-1).")
    ratio: tuple = opt((3 / 4, 4 / 3), "Random resized crop: range of aspect ratios (SimCLR: 3/4-4/3).")


@dataclass
class FlipConfig:
    p: float = opt(0.5, "Probability of a horizontal flip (SimCLR: 0.5).", min=0, max=1)


@dataclass
class ColorConfig:
    strength: float = opt(0.5, "Colour jitter strength s: brightness, contrast, saturation 0.8s, hue 0.2s (SimCLR: s=1 on ImageNet, 0.5 on CIFAR-10). On one channel only brightness and contrast act.", min=0)
    p: float = opt(0.8, "Probability of colour jitter (SimCLR, BYOL: 0.8).", min=0, max=1)


@dataclass
class GrayConfig:
    p: float = opt(0.2, "Probability of converting to grayscale (SimCLR: 0.2); a no-op on one-channel images.", min=0, max=1)


@dataclass
class BlurConfig:
    p: float | None = opt(None, "Probability of Gaussian blur; None takes the recipe's default (simclr: 0.5 at 64 px and up, else off, as SimCLR on CIFAR; moco-v2: 0.5; byol: 1.0 on view 1, 0.1 on view 2).", min=0, max=1)
    sigma: tuple = opt((0.1, 2.0), "Range of the blur's sigma in pixels (SimCLR, BYOL: 0.1-2.0); the kernel is about 10% of the image side, at least 3.")


@dataclass
class SolarizeConfig:
    p: float | None = opt(None, "Probability of solarization; None takes the recipe's default (byol: 0 on view 1, 0.2 on view 2; others: off).", min=0, max=1)


@dataclass
class MulticropConfig:
    n_local: int = opt(6, "Local (small) crops per image besides the 2 global ones (SwAV: 6, DINO: 8-10).", min=0)
    local_size: int | None = opt(None, "Side of local crops in pixels; None: 96/224 of the image side (SwAV's proportion), at least 8.", min=4)
    global_scale: tuple = opt((0.14, 1.0), "Area range of global crops (SwAV: 0.14-1; DINO: 0.4-1).")
    local_scale: tuple = opt((0.05, 0.14), "Area range of local crops (SwAV: 0.05-0.14; DINO: 0.05-0.4).")


@dataclass
class ViewsConfig:
    recipe: str = opt("auto", "Named view pipeline: auto (the method's own: simclr for SimCLR, supervised for RotNet, none for autoencoders; see `selfsup methods`), simclr, moco-v2, byol (asymmetric blur/solarize between the two views), multicrop (2 global + n_local local crops), supervised (crop 0.6-1 and flip, for the from-scratch baseline), none (no augmentation).", choices=["auto", "simclr", "moco-v2", "byol", "multicrop", "supervised", "none"])
    crop: CropConfig = opt(CropConfig, "Random resized crop.")
    flip: FlipConfig = opt(FlipConfig, "Horizontal flip.")
    color: ColorConfig = opt(ColorConfig, "Colour jitter (brightness, contrast, saturation, hue in random order).")
    gray: GrayConfig = opt(GrayConfig, "Random grayscale (colour drop).")
    blur: BlurConfig = opt(BlurConfig, "Gaussian blur.")
    solarize: SolarizeConfig = opt(SolarizeConfig, "Solarization (BYOL's second view).")
    multicrop: MulticropConfig = opt(MulticropConfig, "Multi-crop (SwAV, DINO): used by the multicrop recipe.")


@dataclass
class ViewGroup:
    """`count` views made by the same stages (one batch of count * B images through each op)."""

    count: int
    stages: list[Stage]
    size: int


class Recipe:
    """Callable: (images uint8 (B, C, H, W) on any device, torch.Generator on that device) -> list of float views.

    Views come from groups: symmetric recipes have one group of n_views views; byol has two groups of one view
    each (different blur/solarize); multicrop has a global and a local group, with views of two sizes.
    """

    names: list[str]  # each op in order with its parameters, skipped ops marked, e.g. "grayscale (skipped: 1 channel)"

    def __init__(self, name: str, groups: list[ViewGroup], names: list[str], channels: int):
        self.name = name
        self.groups = groups
        self.names = names
        self.channels = channels
        self.size = groups[0].size
        self.n_views = sum(g.count for g in groups)

    @property
    def stages(self) -> list[Stage]:
        """The stages of the first group (all of them, for symmetric recipes)."""
        return self.groups[0].stages

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
        views: list[torch.Tensor] = []
        for group in self.groups:
            views += self._run(group, images, generator)
        return views

    def _run(self, group: ViewGroup, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        if not group.stages:
            x = _to_float(images)
            if x.shape[-2:] != (group.size, group.size):
                x = ops.resized_crop(x, _whole(x), group.size)
            return [x] + [x.clone() for _ in range(group.count - 1)]
        n, total = len(images), group.count * len(images)
        chunk = total
        if images.device.type == "cpu":
            # On a CPU every op is a pass over memory; chunks that stay in cache between ops run about twice as
            # fast at 96 px as one pass over the whole batch. A loop over chunks, not samples.
            per_image = 4 * images.shape[1] * max(images.shape[-2] * images.shape[-1], group.size ** 2)
            chunk = max(1, CPU_CHUNK_BYTES // per_image)
            crop = group.stages[0]
            if (getattr(crop, "func", None) is ops.random_resized_crop and crop.keywords.get("size") == group.size
                    and kernels.get() is not None):
                return self._run_kernels(group, images, generator, chunk)
        if chunk >= total:
            x = _to_float(images.repeat(group.count, 1, 1, 1))
            for stage in group.stages:
                x = stage(x, generator)
            return list(x.chunk(group.count))
        # Sample i of the count * n views is image i % n. Each chunk's result is copied straight into its views:
        # one output tensor per view rather than a final torch.cat into one, which at 96 px (56 MB) is over the
        # largest block glibc's malloc recycles (32 MB), so it is mapped and page-faulted anew on every call.
        # Stages may overwrite the chunk (see Stage).
        views: list[torch.Tensor] = []
        # One float buffer for every chunk's input: a fresh one per chunk costs page faults as the C allocator
        # hands multi-MB blocks back to the system and takes them again, as much as the conversion itself.
        scratch = torch.empty((chunk, *images.shape[1:]), dtype=torch.float32, device=images.device)
        for start in range(0, total, chunk):
            end = min(start + chunk, total)
            pieces = [images[a:b] for _, a, b in _spans(start, end, n)]
            x = scratch[:end - start]
            if len(pieces) == 1:
                x.copy_(pieces[0])
            else:
                torch.cat(pieces, out=x)
            x = x.div_(255)  # as _to_float, without allocating
            for stage in group.stages:
                x = stage(x, generator)
            if not views:
                views = [x.new_empty((n, *x.shape[1:])) for _ in range(group.count)]
            for view, a, b in _spans(start, end, n):
                views[view][a:b] = x[view * n + a - start:view * n + b - start]
        return views

    def _run_kernels(self, group: ViewGroup, images: torch.Tensor, generator: torch.Generator,
                     chunk: int) -> list[torch.Tensor]:
        """_run's chunk loop with the C++ kernels (views/kernels.py): the crop reads the uint8 images directly,
        and the same chunks draw the same parameters, so the views are _run's up to float rounding."""
        crop, rest = group.stages[0], group.stages[1:]
        n, total, size = len(images), group.count * len(images), group.size
        views = [torch.empty((n, images.shape[1], size, size)) for _ in range(group.count)]
        scratch = torch.empty((min(chunk, total), images.shape[1], size, size))
        kw = {k: v for k, v in crop.keywords.items() if k != "size"}
        for start in range(0, total, chunk):
            end = min(start + chunk, total)
            pieces = [images[a:b] for _, a, b in _spans(start, end, n)]
            x = ops.random_resized_crop_uint8_into(pieces[0] if len(pieces) == 1 else torch.cat(pieces), generator,
                                                   scratch[:end - start], **kw)
            for stage in rest:
                x = stage(x, generator)
            for view, a, b in _spans(start, end, n):
                views[view][a:b] = x[view * n + a - start:view * n + b - start]
        return views


def _spans(start: int, end: int, n: int) -> list[tuple[int, int, int]]:
    """Samples start..end of views of n samples each, as (view, first, last + 1) ranges within single views."""
    spans = []
    while start < end:
        view, a = divmod(start, n)
        b = min(n, a + end - start)
        spans.append((view, a, b))
        start += b - a
    return spans


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1]: the only conversion, on the images' device."""
    return images.float().div_(255)


def _whole(x: torch.Tensor) -> torch.Tensor:
    B, _, H, W = x.shape
    return torch.tensor([0, 0, H, W], device=x.device).expand(B, 4)


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _check_range(key: str, pair: tuple, upper: float | None, example: str) -> None:
    pair = tuple(pair)
    if len(pair) != 2 or not 0 < pair[0] <= pair[1] or (upper is not None and pair[1] > upper):
        bound = f" <= {upper:g}" if upper is not None else ""
        raise SelfSupError(f"views.{key} must be two numbers 0 < low <= high{bound} (e.g. {example}), got {list(pair)}")


def _check_cfg(cfg: ViewsConfig) -> None:
    _check_range("crop.scale", cfg.crop.scale, 1, "[0.2, 1.0]")
    _check_range("crop.ratio", cfg.crop.ratio, None, "[0.75, 1.333]")
    _check_range("blur.sigma", cfg.blur.sigma, None, "[0.1, 2.0]")
    _check_range("multicrop.global_scale", cfg.multicrop.global_scale, 1, "[0.14, 1.0]")
    _check_range("multicrop.local_scale", cfg.multicrop.local_scale, 1, "[0.05, 0.14]")


Named = tuple[Stage | None, str]


def crop_stage(size: int, scale: tuple, ratio: tuple, flip_p: float = 0.0) -> Named:
    """Random resized crop; flip_p > 0 folds a horizontal flip into it (see `crop_and_flip`), same name."""
    name = (f"random resized crop to {size} px (scale {_fmt(scale[0])}-{_fmt(scale[1])}, "
            f"ratio {_fmt(ratio[0])}-{_fmt(ratio[1])})")
    return partial(ops.random_resized_crop, size=size, scale=tuple(scale), ratio=tuple(ratio), flip_p=flip_p), name


def flip_stage(p: float) -> Named:
    if p == 0:
        return None, "horizontal flip (off: p=0)"
    return partial(ops.hflip, p=p), f"horizontal flip (p={_fmt(p)})"


def crop_and_flip(size: int, scale: tuple, ratio: tuple, flip_p: float) -> list[Named]:
    """Crop then flip as one stage: the flip mirrors the crop's sampling grid, bit-identical to a separate flip
    stage on the same generator but without its passes over the batch. The flip keeps its entry in the names."""
    return [crop_stage(size, scale, ratio, flip_p), (None, flip_stage(flip_p)[1])]


def color_stage(channels: int, strength: float, p: float, saturation: float | None = None,
                hue: float | None = None) -> Named:
    """SimCLR's jitter of strength s (brightness = contrast = saturation = 0.8 s, hue = 0.2 s) unless given."""
    b = c = 0.8 * strength
    sat = 0.8 * strength if saturation is None else saturation
    hue = min(0.2 * strength if hue is None else hue, 0.5)  # a hue shift beyond half a turn is a smaller one
    if strength == 0 or p == 0:
        return None, f"color jitter (off: {'strength 0' if strength == 0 else 'p=0'})"
    if channels == 1:
        return (partial(ops.color_jitter, brightness=b, contrast=c, saturation=0.0, hue=0.0, p=p, inplace=True),
                f"color jitter (p={_fmt(p)}; brightness {_fmt(b)}, contrast {_fmt(c)}, random order; "
                "saturation and hue skipped: 1 channel)")
    return (partial(ops.color_jitter, brightness=b, contrast=c, saturation=sat, hue=hue, p=p, inplace=True),
            f"color jitter (p={_fmt(p)}; brightness {_fmt(b)}, contrast {_fmt(c)}, "
            f"saturation {_fmt(sat)}, hue {_fmt(hue)}, random order)")


def gray_stage(channels: int, p: float) -> Named:
    if channels == 1:
        return None, "grayscale (skipped: 1 channel)"
    if p == 0:
        return None, "grayscale (off: p=0)"
    return partial(ops.random_grayscale, p=p, inplace=True), f"grayscale (p={_fmt(p)})"


def blur_stage(size: int, p: float, sigma: tuple, reason_off: str = "p=0") -> Named:
    """Gaussian blur, sigma in pixels, kernel about 10% of the side (SimCLR's choice)."""
    if p == 0:
        return None, f"gaussian blur (off: {reason_off})"
    k = ops.blur_kernel_size(size)
    lo, hi = (float(v) for v in sigma)
    return (partial(ops.gaussian_blur, sigma=(lo, hi), kernel_size=k, p=p, inplace=True),
            f"gaussian blur (p={_fmt(p)}; sigma {_fmt(lo)}-{_fmt(hi)}, kernel {k})")


def solarize_stage(p: float) -> Named:
    if p == 0:
        return None, "solarize (off)"
    return partial(ops.solarize, threshold=0.5, p=p), f"solarize (p={_fmt(p)}, threshold 0.5)"


def _simclr_like(cfg: ViewsConfig, channels: int, size: int, default_blur: float, why_off: str) -> list[Named]:
    blur_p = cfg.blur.p if cfg.blur.p is not None else default_blur
    solarize_p = cfg.solarize.p or 0.0
    stages = [*crop_and_flip(size, cfg.crop.scale, cfg.crop.ratio, cfg.flip.p),
              color_stage(channels, cfg.color.strength, cfg.color.p), gray_stage(channels, cfg.gray.p),
              blur_stage(size, blur_p, cfg.blur.sigma, "p=0" if cfg.blur.p is not None else why_off)]
    # Solarization is not part of SimCLR or MoCo v2: listed only when asked for (views.solarize.p).
    return stages + [solarize_stage(solarize_p)] if solarize_p > 0 else stages


def _simclr(cfg: ViewsConfig, channels: int, size: int, n_views: int) -> list[tuple[int, list[Named], int]]:
    # SimCLR blurs on ImageNet but leaves blur out for CIFAR-10's 32 px images; the default follows by image size.
    return [(n_views, _simclr_like(cfg, channels, size, 0.5 if size >= 64 else 0.0,
                                   "images under 64 px, as SimCLR on CIFAR"), size)]


def _moco_v2(cfg: ViewsConfig, channels: int, size: int, n_views: int) -> list[tuple[int, list[Named], int]]:
    # MoCo v2 = MoCo's augmentation + SimCLR's blur (p=0.5) at every size; its jitter (0.4, 0.4, 0.4, 0.1) is s=0.5.
    return [(n_views, _simclr_like(cfg, channels, size, 0.5, ""), size)]


def _byol(cfg: ViewsConfig, channels: int, size: int, n_views: int) -> list[tuple[int, list[Named], int]]:
    """BYOL's asymmetric pair (Grill et al. 2020, Table 6): blur 1.0 / 0.1, solarize 0 / 0.2, saturation 0.2, hue 0.1."""
    if n_views != 2:
        raise SelfSupError(f"the byol views are an asymmetric pair; n_views must be 2, got {n_views}")
    groups = []
    for view, (blur_p, solarize_p) in enumerate([(1.0, 0.0), (0.1, 0.2)], start=1):
        blur_p = cfg.blur.p if cfg.blur.p is not None else blur_p
        solarize_p = cfg.solarize.p if cfg.solarize.p is not None else solarize_p
        stages = [*crop_and_flip(size, cfg.crop.scale, cfg.crop.ratio, cfg.flip.p),
                  color_stage(channels, cfg.color.strength, cfg.color.p, saturation=0.2 * cfg.color.strength / 0.5,
                              hue=0.1 * cfg.color.strength / 0.5),
                  gray_stage(channels, cfg.gray.p), blur_stage(size, blur_p, cfg.blur.sigma),
                  solarize_stage(solarize_p)]
        groups.append((1, [(stage, f"view {view}: {name}") for stage, name in stages], size))
    return groups


def _multicrop(cfg: ViewsConfig, channels: int, size: int, n_views: int) -> list[tuple[int, list[Named], int]]:
    """SwAV's multi-crop: 2 global crops at the image size and n_local small crops, each with SimCLR's colour ops."""
    m = cfg.multicrop
    local = m.local_size or ops.multicrop_sizes(size)[1]
    groups = []
    for kind, count, side, scale in [("global", 2, size, m.global_scale), ("local", m.n_local, local, m.local_scale)]:
        if count == 0:
            continue
        blur_p = cfg.blur.p if cfg.blur.p is not None else (0.5 if side >= 64 else 0.0)
        stages = [*crop_and_flip(side, scale, cfg.crop.ratio, cfg.flip.p),
                  color_stage(channels, cfg.color.strength, cfg.color.p), gray_stage(channels, cfg.gray.p),
                  blur_stage(side, blur_p, cfg.blur.sigma, "p=0" if cfg.blur.p is not None else "crops under 64 px")]
        groups.append((count, [(stage, f"{count} {kind}: {name}") for stage, name in stages], side))
    return groups


def _supervised(cfg: ViewsConfig, channels: int, size: int, n_views: int) -> list[tuple[int, list[Named], int]]:
    return [(n_views, crop_and_flip(size, (0.6, 1.0), cfg.crop.ratio, cfg.flip.p), size)]


def _none(cfg: ViewsConfig, channels: int, size: int, n_views: int) -> list[tuple[int, list[Named], int]]:
    return [(n_views, [(None, "none (uint8 to float only; every view is the same image)")], size)]


RECIPES: dict[str, Callable[[ViewsConfig, int, int, int], list[tuple[int, list[Named], int]]]] = {
    "simclr": _simclr,
    "moco-v2": _moco_v2,
    "byol": _byol,
    "multicrop": _multicrop,
    "supervised": _supervised,
    "none": _none,
}


def assemble(name: str, groups: list[tuple[int, list[Named], int]], channels: int) -> Recipe:
    """A Recipe from (count, named stages, size) groups; skipped stages stay in the names only."""
    return Recipe(name, [ViewGroup(count, [s for s, _ in stages if s is not None], size) for count, stages, size in groups],
                  [n for _, stages, _ in groups for _, n in stages], channels)


def build(cfg: ViewsConfig, channels: int, size: int, n_views: int = 2) -> Recipe:
    """The recipe named by cfg.recipe for images with `channels` channels and side `size` (multicrop: n_views unused)."""
    if cfg.recipe == "auto":  # a method resolves auto to its own recipe first; on its own, auto means simclr
        cfg = replace(cfg, recipe="simclr")
    if cfg.recipe not in RECIPES:
        raise SelfSupError(f"unknown views recipe '{cfg.recipe}'; known recipes: {', '.join(sorted(RECIPES))}")
    if channels not in (1, 3):
        raise SelfSupError(f"views work on 1- or 3-channel images, got {channels} channels")
    if n_views < 1:
        raise SelfSupError(f"a recipe makes at least one view, got n_views={n_views}")
    _check_cfg(cfg)
    return assemble(cfg.recipe, RECIPES[cfg.recipe](cfg, channels, size, n_views), channels)
