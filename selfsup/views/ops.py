"""View ops: batched image augmentations that draw their parameters per sample from a torch.Generator.

Every random op has the form `op(x, g, ...) -> Tensor` where `x` is a float batch (B, C, H, W) in [0, 1] on any
device and `g` a torch.Generator on the same device. Parameters are drawn per sample from `g` only (never the
global RNG), in a fixed order that does not depend on the data or on the channel count, so one seed gives one
output and a seed gives the same crops on 1- and 3-channel images. The hot path is batched: no Python loop over
samples, no PIL. Outputs are float32 in [0, 1] on the input's device.

Each random op calls a deterministic function with explicit per-sample parameters (`resized_crop`,
`adjust_hue`, `blur`, ...); those follow torchvision.transforms.v2.functional's semantics and are what the tests
compare against torchvision. Ops accept 1- and 3-channel images; colour ops that need hue (saturation, hue,
grayscale) leave one-channel images unchanged, as torchvision and PIL do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.views import kernels

Range = float | tuple[float, float]

# ITU-R BT.601 luma weights; torchvision uses 0.2989 for red, which differs by at most 1e-4 on [0, 1] images.
LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------- helpers

def _check(x: Tensor) -> Tensor:
    """x as float32 (B, C, H, W) with C in {1, 3}, or a SelfSupError naming the problem."""
    if x.dim() != 4:
        raise SelfSupError(f"view ops take a batch (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise SelfSupError(f"view ops take 1- or 3-channel images, got {x.shape[1]} channels")
    return x if x.dtype == torch.float32 else x.float()


def _uniform(g: torch.Generator, shape: int | tuple, lo: float, hi: float, device: torch.device) -> Tensor:
    shape = (shape,) if isinstance(shape, int) else shape
    return torch.rand(shape, generator=g, device=device).mul_(hi - lo).add_(lo)


def _coins(g: torch.Generator, n: int, p: float, device: torch.device) -> Tensor:
    # rand is in [0, 1): p=0 never applies and p=1 always does.
    return torch.rand(n, generator=g, device=device) < p


def _per_sample(v: float | Tensor, n: int, device: torch.device) -> Tensor:
    """A scalar or (B,) parameter as a float32 (B, 1, 1, 1) tensor."""
    t = torch.as_tensor(v, dtype=torch.float32, device=device)
    return t.expand(n).reshape(n, 1, 1, 1) if t.dim() == 0 else t.reshape(n, 1, 1, 1)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def _factor_range(v: Range, name: str) -> tuple[float, float]:
    """Colour-jitter strength as torchvision reads it: b -> (max(0, 1-b), 1+b); a pair is taken as given."""
    if isinstance(v, (tuple, list)):
        lo, hi = float(v[0]), float(v[1])
    else:
        if v < 0:
            raise SelfSupError(f"{name} must be >= 0, got {v}")
        lo, hi = max(0.0, 1.0 - v), 1.0 + v
    if not 0 <= lo <= hi:
        raise SelfSupError(f"{name} range must satisfy 0 <= low <= high, got ({lo}, {hi})")
    return lo, hi


def _on_subset(x: Tensor, mask: Tensor, fn: Callable[[Tensor, Tensor], Tensor], inplace: bool = False) -> Tensor:
    """fn(x[idx], idx) written back into a copy of x (into x itself if inplace), for the samples where mask is
    True; the others untouched.

    Running an expensive op only on the samples it applies to costs one index gather/scatter instead of
    computing it for the whole batch and throwing most of it away.
    """
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return x.copy_(fn(x, idx)) if inplace else fn(x, idx).to(x.dtype)
    # .to(x.dtype): under autocast an op may come back in bf16 while the batch is fp32.
    return (x if inplace else x.clone()).index_copy_(0, idx, fn(x.index_select(0, idx), idx).to(x.dtype))


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per sample a where mask is True, else b (broadcast as torch.where), computed as lerp(b, a, mask).

    lerp is exact at weights 0 and 1 for finite values, and on a CPU it runs several times faster than
    torch.where with a broadcast (B, 1, 1, 1) condition.
    """
    return torch.lerp(b, a, mask.to(a.dtype).view(-1, 1, 1, 1))


# ------------------------------------------------------------------------------------- crops and resizing

def resized_crop(x: Tensor, boxes: Tensor, size: int | tuple[int, int], flip: Tensor | None = None) -> Tensor:
    """Crop box (top, left, height, width) of each sample, resized bilinearly to `size`, in one grid_sample call.

    Matches torchvision's `resized_crop(..., antialias=False)` bilinear: output pixel centres map into the crop
    with align_corners=False and sample coordinates are clamped to the crop (as `interpolate` clamps to its
    input), so pixels outside the box never bleed in. Boxes must lie inside the image; fractional boxes work.
    Without antialiasing, shrinking a crop by more than 2x aliases; the recipes only enlarge crops.
    flip: optional (B,) bool, mirror those crops left-right, bit-exactly as `hflip` on the output would, for free:
    only the sampling grid's columns are reversed.
    """
    x = _check(x)
    B, _, H, W = x.shape
    oh, ow = _pair(size)
    boxes = boxes.to(device=x.device, dtype=torch.float32).reshape(B, 4)
    fused = kernels.usable(x)
    if fused is not None:  # the same arithmetic in one C++ pass per image (views/kernels.py)
        out = x.new_empty((B, x.shape[1], oh, ow))
        fused.resized_crop_into(x, boxes, out, _mirror(flip))
        return out
    top, left, h, w = boxes.unbind(1)

    def axis(start: Tensor, length: Tensor, n_out: int, n_in: int) -> Tensor:
        centres = (torch.arange(n_out, device=x.device, dtype=torch.float32) + 0.5) / n_out  # (n_out,)
        pix = start[:, None] + centres[None] * length[:, None] - 0.5
        pix = torch.minimum(torch.maximum(pix, start[:, None]), start[:, None] + length[:, None] - 1)
        return (2 * pix + 1) / n_in - 1  # pixel -> normalized coordinate for align_corners=False

    gx, gy = axis(left, w, ow, W), axis(top, h, oh, H)
    if flip is not None:
        gx = torch.where(flip.to(x.device).view(B, 1), gx.flip(1), gx)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, oh, ow, 2) as (x, y)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _mirror(flip: Tensor | None) -> Tensor:
    return flip.to(device="cpu", dtype=torch.uint8) if flip is not None else torch.empty(0, dtype=torch.uint8)


def crop_boxes(g: torch.Generator, n: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), device: torch.device | str = "cpu") -> Tensor:
    """(n, 4) integer boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop draws them.

    Per sample: 10 attempts of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio); the first box that
    fits the image wins and is placed uniformly; if none fits, the largest centred box with an aspect ratio inside
    `ratio`. All 10 attempts are drawn at once for the whole batch.
    """
    if not (0 < scale[0] <= scale[1] <= 1):
        raise SelfSupError(f"crop scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
    if not (0 < ratio[0] <= ratio[1]):
        raise SelfSupError(f"crop ratio must satisfy 0 < low <= high, got {tuple(ratio)}")
    attempts = 10
    area = _uniform(g, (n, attempts), scale[0], scale[1], device) * (height * width)
    aspect = _uniform(g, (n, attempts), math.log(ratio[0]), math.log(ratio[1]), device).exp_()
    w = (area * aspect).sqrt_().round_()
    h = (area / aspect).sqrt_().round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # argmax returns the first maximal index
    found = fits.any(1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))
    u = torch.rand((n, 2), generator=g, device=device)
    # Float32 u * count can round up to count itself, hence the clamp.
    top = torch.minimum((u[:, 0] * (height - h + 1)).floor_(), height - h)
    left = torch.minimum((u[:, 1] * (width - w + 1)).floor_(), width - w)
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).long()


def random_resized_crop(x: Tensor, g: torch.Generator, size: int | tuple[int, int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.0) -> Tensor:
    """A random crop of area fraction in `scale` and aspect ratio in `ratio` per sample, resized to `size`.

    Paper default (SimCLR, Inception-style crop): scale (0.08, 1), ratio (3/4, 4/3), then resize to 224. Works the
    same on any channel count. flip_p > 0 also mirrors each crop with that probability, drawing the coins after
    the boxes: the same output as this op followed by `hflip(p=flip_p)` on the same generator, without the
    flip's two passes over the batch (the recipes fuse crop and flip this way).
    """
    x = _check(x)
    B, _, H, W = x.shape
    boxes, flip = _crop_draws(g, B, H, W, scale, ratio, flip_p, x.device)
    return resized_crop(x, boxes, size, flip)


def _crop_draws(g: torch.Generator, n: int, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float], flip_p: float, device: torch.device) -> tuple[Tensor, Tensor | None]:
    boxes = crop_boxes(g, n, height, width, scale, ratio, device)
    return boxes, (_coins(g, n, flip_p, device) if flip_p > 0 else None)


def random_resized_crop_uint8_into(images: Tensor, g: torch.Generator, out: Tensor,
                                   scale: tuple[float, float] = (0.08, 1.0),
                                   ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.0) -> Tensor:
    """random_resized_crop(images / 255, ...) written into `out` (B, C, size, size): the same draws and views,
    without the float copy of the input. Needs the C++ kernels (kernels.get()); the recipes use it on the CPU."""
    fused = kernels.get()
    if fused is None:
        raise SelfSupError("random_resized_crop_uint8_into needs the view kernels (python -m selfsup.views.kernels)")
    B, _, H, W = images.shape
    boxes, flip = _crop_draws(g, B, H, W, scale, ratio, flip_p, images.device)
    fused.resized_crop_into(images.contiguous(), boxes.float(), out, _mirror(flip))
    return out


def multicrop_sizes(size: int) -> tuple[int, int]:
    """(global, local) crop sides for images of side `size`, in SwAV's proportion 224 : 96."""
    return size, max(8, int(round(size * 96 / 224)))


def multicrop(x: Tensor, g: torch.Generator, global_size: int, local_size: int, n_global: int = 2,
              n_local: int = 6, global_scale: tuple[float, float] = (0.14, 1.0),
              local_scale: tuple[float, float] = (0.05, 0.14),
              ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[list[Tensor], list[Tensor]]:
    """(n_global crops at global_size, n_local crops at local_size), each a full batch of random resized crops.

    Paper default (SwAV): 2 global crops of 224 px with scale (0.14, 1) and 6 local crops of 96 px with scale
    (0.05, 0.14); DINO uses (0.4, 1) / (0.05, 0.4). Further ops (flip, colour...) are applied by the caller.
    Channel count does not matter.
    """
    x = _check(x)
    B, _, H, W = x.shape

    def crops(n: int, size: int, scale: tuple[float, float]) -> list[Tensor]:
        if n == 0:
            return []
        boxes = crop_boxes(g, n * B, H, W, scale, ratio, x.device)
        # One resampling call for all n crops of the batch.
        return list(resized_crop(x.repeat(n, 1, 1, 1), boxes, size).chunk(n))

    return crops(n_global, global_size, global_scale), crops(n_local, local_size, local_scale)


# ------------------------------------------------------------------------------------------------ geometry

def hflip(x: Tensor, g: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right with probability p (SimCLR: 0.5). Any channel count."""
    x = _check(x)
    return _where(_coins(g, x.shape[0], p, x.device), x.flip(-1), x)


def rotate90(x: Tensor, k: int | Tensor) -> Tensor:
    """Rotate by k quarter turns counter-clockwise (torch.rot90 on (H, W)); k an int or a (B,) tensor per sample.

    RotNet's pretext task (Gidaris et al. 2018) predicts k in {0, 1, 2, 3}. A per-sample k needs square images.
    Any channel count.
    """
    x = _check(x)
    if not torch.is_tensor(k):
        return torch.rot90(x, int(k) % 4, dims=(-2, -1))
    if x.shape[-1] != x.shape[-2]:
        raise SelfSupError(f"rotate90 with a per-sample k needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    k = k.to(x.device).reshape(-1) % 4
    out = x
    for turns in (1, 2, 3):
        out = _where(k == turns, torch.rot90(x, turns, dims=(-2, -1)), out)
    return out


def rotate_by(x: Tensor, degrees: float | Tensor) -> Tensor:
    """Rotate each sample counter-clockwise about its centre by `degrees` (scalar or (B,)), bilinear, corners 0.

    Same convention as torchvision's `rotate(..., interpolation=BILINEAR, expand=False)`.
    """
    x = _check(x)
    B, _, H, W = x.shape
    a = torch.deg2rad(_per_sample(degrees, B, x.device).view(B))
    cos, sin = a.cos(), a.sin()
    # Output pixel offset (dx, dy) from the centre (y down) samples input offset (cos dx - sin dy, sin dx + cos dy);
    # written in normalized coordinates, which scale x by 2/W and y by 2/H.
    theta = torch.stack([
        torch.stack([cos, -sin * H / W, torch.zeros_like(a)], 1),
        torch.stack([sin * W / H, cos, torch.zeros_like(a)], 1),
    ], 1)
    grid = F.affine_grid(theta, [B, x.shape[1], H, W], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(x: Tensor, g: torch.Generator, degrees: Range = 180.0, p: float = 1.0) -> Tensor:
    """Rotate each sample by an angle ~ U(-degrees, degrees) (or U(low, high) for a pair) with probability p.

    SimCLR's augmentation study rotates by one of {90, 180, 270}; use `rotate90` for that. Corners become 0.
    Any channel count.
    """
    x = _check(x)
    B = x.shape[0]
    lo, hi = (-float(degrees), float(degrees)) if not isinstance(degrees, (tuple, list)) else map(float, degrees)
    angle = _uniform(g, B, lo, hi, x.device)
    apply = _coins(g, B, p, x.device)
    return _on_subset(x, apply, lambda xs, idx: rotate_by(xs, angle[idx]))


# -------------------------------------------------------------------------------------------------- colour

def luma(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma with ITU-R 601 weights; a one-channel image is its own luma."""
    x = _check(x)
    if x.shape[1] == 1:
        return x
    B, C, H, W = x.shape
    r, g, b = x.reshape(B, C, H * W).unbind(1)  # (B, H*W) rows: see adjust_hue
    return (LUMA[0] * r).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).view(B, 1, H, W)


def grayscale(x: Tensor) -> Tensor:
    """Luma repeated over the image's C channels (torchvision's rgb_to_grayscale with num_output_channels=C)."""
    x = _check(x)
    return luma(x).expand_as(x).contiguous()


def random_grayscale(x: Tensor, g: torch.Generator, p: float = 0.2, inplace: bool = False) -> Tensor:
    """Convert each sample to grayscale (keeping C channels) with probability p (SimCLR: 0.2). No-op on 1 channel.

    inplace: overwrite x (the recipes do, on their own intermediate batches).
    """
    x = _check(x)
    apply = _coins(g, x.shape[0], p, x.device)
    if x.shape[1] == 1:
        return x
    fused = kernels.usable(x)
    if fused is not None:  # in C++ (views/kernels.py), only on the samples it applies to
        out = x if inplace else x.clone()
        fused.gray_(out, apply)
        return out
    # luma broadcasts over the channels, not repeated; lerp is exact at weights 0 and 1 (see _where).
    weight = apply.to(x.dtype).view(-1, 1, 1, 1)
    return x.lerp_(luma(x), weight) if inplace else torch.lerp(x, luma(x), weight)


def _blend(x: Tensor, ref: Tensor, factor: Tensor) -> Tensor:
    # factor * x + (1 - factor) * ref, clamped as torchvision clamps; factor 1 returns x bit-exactly.
    return torch.addcmul(ref * (1 - factor), x, factor).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: float | Tensor) -> Tensor:
    """Multiply by a per-sample factor ((B,) or scalar) and clamp to [0, 1]. Any channel count."""
    x = _check(x)
    return (x * _per_sample(factor, x.shape[0], x.device)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each sample with the mean of its luma by a per-sample factor, clamped. Any channel count."""
    x = _check(x)
    mean = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, _per_sample(factor, x.shape[0], x.device))


def adjust_saturation(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each sample with its luma by a per-sample factor, clamped. No-op on 1 channel."""
    x = _check(x)
    if x.shape[1] == 1:
        return x
    return _blend(x, luma(x), _per_sample(factor, x.shape[0], x.device))


def adjust_hue(x: Tensor, factor: float | Tensor) -> Tensor:
    """Rotate the hue in HSV space by a per-sample factor in [-0.5, 0.5] of a full turn. No-op on 1 channel.

    Same result as torchvision's `adjust_hue` (RGB -> HSV, shift, HSV -> RGB) up to float rounding, computed
    directly on RGB: see `_hue_into`.
    """
    x = _check(x)
    if x.shape[1] == 1:
        return x
    return _hue_into(x, _per_sample(factor, x.shape[0], x.device), torch.empty_like(x))


def _hue_into(x: Tensor, factor: Tensor, out: Tensor) -> Tensor:
    """adjust_hue of the 3-channel batch x by (B, 1, 1, 1) factors, written into `out` (which may be x itself).

    A hue rotation keeps each pixel's max and min, so the output needs only the new hue h' (in turns):
    channel = min + (max - min) * clamp(6 |frac(h' + n) - 1/3| - 1, 0, 1) with n = 5/6, 3/6, 1/6 for R, G, B,
    torchvision's piecewise-linear HSV -> RGB map written without a sector table. About 40 elementwise passes over
    a plane, none of them torch.where, a comparison or a remainder, each of which costs several adds on a CPU;
    the old RGB -> hue -> RGB version with those ran 3-4x slower.
    """
    B, C, H, W = x.shape
    # Channel planes as (B, H*W) rows: elementwise ops on the (B, H, W) channel views run row by row, far slower.
    r, g, b = x.reshape(B, C, H * W).unbind(1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    minc = torch.minimum(r, g)
    torch.minimum(minc, b, out=minc)
    delta = maxc - minc
    # Hue times delta, in sixths of a turn, from the max channel: 4 delta + r - g (blue), 2 delta + b - r (green),
    # g - b (red). torchvision breaks ties red first, then green; at a tie both formulas give the same hue.
    # sign(max - channel) is 0 where the channel is the max and 1 elsewhere, and lerp is exact at weights 0 and 1.
    num = torch.sub(r, g).add_(delta, alpha=4)
    other = torch.sub(b, r).add_(delta, alpha=2)
    below = torch.sub(maxc, g).sign_()
    torch.lerp(other, num, below, out=num)
    torch.sub(g, b, out=other)
    torch.sub(maxc, r, out=below).sign_()
    torch.lerp(other, num, below, out=num)
    low = torch.sub(minc, delta, out=below)
    delta6 = delta.mul_(6)
    # Grey pixels (delta 0) have num 0 and any hue works; the floor only avoids 0/0. Where delta is below it the
    # hue is off but the output moves by less than delta < 1e-12.
    num.div_(torch.clamp_min(delta6, 1e-12, out=other))  # hue in turns, in [-1/6, 5/6]
    # x is read for the last time above, so `out` may alias it from here on.
    # Per channel: frac(hue + factor + n + 1), the + 1 keeping the argument positive so frac is a modulo.
    n = torch.tensor([5 / 6 + 1, 3 / 6 + 1, 1 / 6 + 1], device=x.device).view(1, 3, 1)
    u = out.view(B, C, H * W)
    torch.add(num.unsqueeze(1), factor.view(B, 1, 1) + n, out=u).frac_().sub_(1 / 3).abs_()
    # min + delta * clamp(6u - 1, 0, 1) = clamp((min - delta) + 6 delta u, min, max), which also keeps rounding
    # inside [min, max] and so inside [0, 1].
    torch.addcmul(low.unsqueeze(1), delta6.unsqueeze(1), u, out=u)
    u.clamp_(minc.unsqueeze(1), maxc.unsqueeze(1))
    return out


def jitter(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor,
           order: Tensor, inplace: bool = False) -> Tensor:
    """Apply brightness, contrast, saturation and hue with (B,) factors in a per-sample order.

    order: (B, 4) permutations of 0=brightness, 1=contrast, 2=saturation, 3=hue, as torchvision's ColorJitter's
    `fn_idx`. Vectorised in 4 rounds; in round r every sample gets the op order[:, r] names. Brightness, contrast
    and saturation are all blends f*x + (1-f)*ref (ref = 0, mean luma, luma), so one fused blend serves every
    sample whatever its op; hue runs only on the samples whose op it is. Factors of 1 (hue 0) are exact no-ops.
    Saturation and hue are skipped on one channel. inplace: overwrite x rather than a new buffer.
    """
    x = _check(x)
    B, C = x.shape[:2]
    dev = x.device
    factors = torch.stack([brightness, contrast, saturation, torch.ones_like(brightness)], 1).to(dev, torch.float32)
    hue = hue.to(dev, torch.float32)
    order = order.to(dev).long()
    fused = kernels.usable(x)
    if fused is not None:  # every round of every sample in one C++ pass per image (views/kernels.py)
        out = x if inplace else x.clone()
        fused.jitter_(out, torch.cat([factors[:, :3], hue.view(B, 1)], 1), order)
        return out
    if C == 1:
        order = torch.where(order == 2, 3, order)  # saturation is a no-op on one channel; hue is skipped below
    out = x if inplace else torch.empty_like(x)  # every round writes here: one buffer, not one per round
    x3, out3 = x.reshape(B, C, -1), out.view(B, C, -1)
    ref = torch.empty_like(out3[:, 0])
    for r in range(4):
        op = order[:, r:r + 1]  # (B, 1)
        f = factors.gather(1, op)
        keep = 1 - f
        # f*x + (1-f)*ref with ref = 0 (brightness), the mean luma (contrast) or the luma (saturation), computed
        # for every sample as f*x + [alpha*luma + beta] with per-sample alpha, beta zero for the ops that do not
        # use them: exact for f=1, and the same arithmetic as torchvision's blend for the selected op.
        if C == 3:
            # luma, its mean for contrast, then alpha * luma + beta: 6 passes over one plane.
            red, green, blue = x3.unbind(1)
            torch.mul(red, LUMA[0], out=ref).add_(green, alpha=LUMA[1]).add_(blue, alpha=LUMA[2])
            beta = keep * (op == 1) * ref.mean(1, keepdim=True)
            ref.mul_(keep * (op == 2)).add_(beta)
            torch.addcmul(ref.unsqueeze(1), x3, f.view(B, 1, 1), out=out3)
        else:
            beta = keep * (op == 1) * x3.mean(2)
            # mul then add: addcmul with a broadcast (B, 1, 1) first operand is several times slower on a CPU.
            torch.mul(x3, f.view(B, 1, 1), out=out3).add_(beta.view(B, 1, 1))
        out.clamp_(0, 1)
        x3 = out3  # later rounds work in place on the output buffer
        if C == 3:
            idx = ((op.view(B) == 3) & (hue != 0)).nonzero().squeeze(1)
            if idx.numel():
                part = out.index_select(0, idx)
                out.index_copy_(0, idx, _hue_into(part, hue[idx].view(-1, 1, 1, 1), part))
    return out


def color_jitter(x: Tensor, g: torch.Generator, brightness: Range = 0.4, contrast: Range = 0.4,
                 saturation: Range = 0.4, hue: Range = 0.1, p: float = 0.8, inplace: bool = False) -> Tensor:
    """With probability p per sample, jitter brightness, contrast, saturation and hue in a random order.

    torchvision ColorJitter semantics: factors ~ U(max(0, 1-s), 1+s) for brightness/contrast/saturation (or a
    given (low, high)), hue ~ U(-h, h) with h <= 0.5, a fresh permutation of the four per sample. Paper default
    (SimCLR, strength s=1): 0.8, 0.8, 0.8, 0.2 with p=0.8; torchvision's own defaults are 0 (off). On one channel
    only brightness and contrast act. inplace: overwrite x (the recipes do, on their own intermediate batches).
    """
    x = _check(x)
    B, dev = x.shape[0], x.device
    lo_b, hi_b = _factor_range(brightness, "brightness")
    lo_c, hi_c = _factor_range(contrast, "contrast")
    lo_s, hi_s = _factor_range(saturation, "saturation")
    lo_h, hi_h = (-float(hue), float(hue)) if not isinstance(hue, (tuple, list)) else map(float, hue)
    if not -0.5 <= lo_h <= hi_h <= 0.5:
        raise SelfSupError(f"hue range must lie in [-0.5, 0.5], got ({lo_h}, {hi_h})")
    apply = _coins(g, B, p, dev)
    fb = _uniform(g, B, lo_b, hi_b, dev)
    fc = _uniform(g, B, lo_c, hi_c, dev)
    fs = _uniform(g, B, lo_s, hi_s, dev)
    fh = _uniform(g, B, lo_h, hi_h, dev)
    order = torch.rand((B, 4), generator=g, device=dev).argsort(1)
    # Samples that skip the jitter get identity factors, which jitter() applies as exact no-ops.
    fb, fc, fs = (torch.where(apply, f, torch.ones_like(f)) for f in (fb, fc, fs))
    fh = torch.where(apply, fh, torch.zeros_like(fh))
    return jitter(x, fb, fc, fs, fh, order, inplace)


def solarize_at(x: Tensor, threshold: float | Tensor) -> Tensor:
    """Invert pixels at or above a (per-sample) threshold: x >= t -> 1 - x, as torchvision's `solarize`."""
    x = _check(x)
    return torch.where(x >= _per_sample(threshold, x.shape[0], x.device), 1 - x, x)


def solarize(x: Tensor, g: torch.Generator, threshold: float = 0.5, p: float = 0.2) -> Tensor:
    """Solarize each sample with probability p (BYOL: threshold 0.5; p 0 on view 1, 0.2 on view 2). Any channels."""
    x = _check(x)
    return _where(_coins(g, x.shape[0], p, x.device), solarize_at(x, threshold), x)


# ------------------------------------------------------------------------------------ filters and noise

def blur_kernel_size(side: int) -> int:
    """SimCLR's blur kernel: 10% of the image side, made odd, at least 3, and small enough to reflect-pad."""
    k = max(3, int(0.1 * side))
    k += 1 - k % 2
    return min(k, 2 * side - 1)


def blur(x: Tensor, sigma: float | Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with a per-sample sigma ((B,) or scalar) and an odd kernel size, reflect-padded.

    Same kernel and padding as torchvision's `gaussian_blur`; done as two 1-D passes (separable), each one grouped
    convolution with B*C groups so every sample gets its own kernel in a single call.
    """
    x = _check(x)
    B, C, H, W = x.shape
    k = int(kernel_size)
    if k % 2 == 0 or k < 1:
        raise SelfSupError(f"blur kernel size must be odd and positive, got {k}")
    if k // 2 >= min(H, W):
        raise SelfSupError(f"blur kernel {k} is too large for {H}x{W} images (reflect padding needs k // 2 < side)")
    fused = kernels.usable(x)
    if fused is not None:  # the same kernel and padding in C++ (views/kernels.py)
        y = x.clone()
        fused.blur_(y, _per_sample(sigma, B, x.device).view(B), torch.ones(B, dtype=torch.uint8), k)
        return y
    s = _per_sample(sigma, B, x.device).view(B, 1)
    t = torch.arange(k, device=x.device, dtype=torch.float32) - (k - 1) / 2
    w = torch.softmax(-0.5 * (t / s) ** 2, dim=1)  # normalized exp(-t^2 / 2 sigma^2), overflow-safe
    w = w.repeat_interleave(C, 0)  # (B*C, k): one kernel per (sample, channel) group
    pad = k // 2
    # Views are data preparation: computed in the batch's precision even inside the training step's autocast.
    with torch.autocast(x.device.type, enabled=False):
        y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, B * C, H + 2 * pad, W + 2 * pad)
        y = F.conv2d(y, w.to(x.dtype).view(B * C, 1, 1, k), groups=B * C)
        y = F.conv2d(y, w.to(x.dtype).view(B * C, 1, k, 1), groups=B * C)
    return y.view(B, C, H, W)


def gaussian_blur(x: Tensor, g: torch.Generator, sigma: tuple[float, float] = (0.1, 2.0),
                  kernel_size: int | None = None, p: float = 0.5, inplace: bool = False) -> Tensor:
    """Blur each sample with probability p, sigma ~ U(sigma) per sample (SimCLR: sigma 0.1-2, p=0.5 on ImageNet).

    kernel_size None: about 10% of the shorter side, odd (SimCLR's choice). Any channel count. inplace: write the
    blurred samples into x (the recipes do, on their own intermediate batches).
    """
    x = _check(x)
    B, _, H, W = x.shape
    k = blur_kernel_size(min(H, W)) if kernel_size is None else int(kernel_size)
    s = _uniform(g, B, float(sigma[0]), float(sigma[1]), x.device)
    apply = _coins(g, B, p, x.device)
    fused = kernels.usable(x)
    if fused is not None and k % 2 == 1 and k // 2 < min(H, W):  # else blur() names the problem
        out = x if inplace else x.clone()
        fused.blur_(out, s, apply, k)
        return out
    return _on_subset(x, apply, lambda xs, idx: blur(xs, s[idx], k), inplace)


def gaussian_noise(x: Tensor, g: torch.Generator, sigma: Range = (0.0, 0.1), p: float = 1.0) -> Tensor:
    """Add N(0, sigma^2) pixel noise with probability p, clamped to [0, 1]; sigma fixed or ~ U(pair) per sample.

    Default: sigma up to 0.1 (torchvision's GaussianNoise default 0.1); SimCLR's study used Gaussian noise as one
    of its augmentations. Noise is independent per channel. Any channel count.
    """
    x = _check(x)
    B = x.shape[0]
    lo, hi = (float(sigma), float(sigma)) if not isinstance(sigma, (tuple, list)) else map(float, sigma)
    s = _uniform(g, B, lo, hi, x.device) * _coins(g, B, p, x.device)
    noise = torch.randn(x.shape, generator=g, device=x.device)
    return (x + s.view(B, 1, 1, 1) * noise).clamp_(0, 1)


def erase(x: Tensor, boxes: Tensor, value: float = 0.0) -> Tensor:
    """Set the box (top, left, height, width) of each sample to `value`; a box of height 0 leaves it unchanged."""
    x = _check(x)
    B, _, H, W = x.shape
    top, left, h, w = boxes.to(x.device).reshape(B, 4).unbind(1)
    rows = torch.arange(H, device=x.device).view(1, H)
    cols = torch.arange(W, device=x.device).view(1, W)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (B, W)
    inside = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
    return x.masked_fill(inside, value)


def cutout(x: Tensor, g: torch.Generator, scale: tuple[float, float] = (0.02, 0.33),
           ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0, p: float = 0.5) -> Tensor:
    """Random erasing (Zhong et al. 2017, torchvision RandomErasing defaults): with probability p, a box of area
    fraction in `scale` and aspect ratio in `ratio` is set to `value`. Any channel count.

    As in torchvision, 10 attempts per sample; if none fits the image the sample is left unchanged.
    """
    x = _check(x)
    B, _, H, W = x.shape
    dev = x.device
    attempts = 10
    area = _uniform(g, (B, attempts), scale[0], scale[1], dev) * (H * W)
    aspect = _uniform(g, (B, attempts), math.log(ratio[0]), math.log(ratio[1]), dev).exp_()
    h = (area * aspect).sqrt_().round_()
    w = (area / aspect).sqrt_().round_()
    fits = (h < H) & (w < W)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)
    ok = fits.any(1) & _coins(g, B, p, dev)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    u = torch.rand((B, 2), generator=g, device=dev)
    top = torch.minimum((u[:, 0] * (H - h + 1)).floor_(), H - h)
    left = torch.minimum((u[:, 1] * (W - w + 1)).floor_(), W - w)
    h = torch.where(ok, h, torch.zeros_like(h))
    return erase(x, torch.stack([top, left, h, w], 1).long(), value)


def sobel(x: Tensor, output: str = "magnitude") -> Tensor:
    """Sobel edges of the luma, replicate-padded; deterministic (SimCLR's study lists Sobel filtering).

    output="magnitude": sqrt(gx^2 + gy^2) / (4 sqrt 2), in [0, 1], repeated over the C input channels so the
    result can replace the image. output="xy": 2 channels (gx, gy) mapped from [-4, 4] to [0, 1] by g/8 + 0.5,
    the 2-channel input DeepCluster feeds its network (there unscaled).
    """
    x = _check(x)
    if output not in ("magnitude", "xy"):
        raise SelfSupError(f"sobel output must be 'magnitude' or 'xy', got {output!r}")
    y = F.pad(luma(x), (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    with torch.autocast(x.device.type, enabled=False):  # data preparation: the batch's precision, as blur
        grads = F.conv2d(y, torch.stack([kx, kx.t()]).unsqueeze(1).to(y.dtype))  # (B, 2, H, W), each in [-4, 4]
    if output == "xy":
        return (grads / 8 + 0.5).clamp_(0, 1)
    mag = grads.pow(2).sum(1, keepdim=True).sqrt_() / (4 * math.sqrt(2))
    return mag.clamp_(0, 1).expand_as(x).contiguous()
