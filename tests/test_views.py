"""View ops and recipes: shapes and ranges, determinism, per-sample randomness, probabilities, and agreement with
torchvision.transforms.v2.functional on single images given the same parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from selfsup.config import load_config
from selfsup.errors import SelfSupError
from selfsup.views import ops
from selfsup.views.recipes import (BlurConfig, ColorConfig, CropConfig, FlipConfig, GrayConfig, MulticropConfig,
                                   ViewsConfig, build)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Every random op with small, fast settings; p=1 where there is a probability so the op really runs.
RANDOM_OPS = {
    "random_resized_crop": lambda x, g: ops.random_resized_crop(x, g, 12, scale=(0.2, 1.0)),
    "hflip": lambda x, g: ops.hflip(x, g, p=1.0),
    "color_jitter": lambda x, g: ops.color_jitter(x, g, 0.8, 0.8, 0.8, 0.2, p=1.0),
    "random_grayscale": lambda x, g: ops.random_grayscale(x, g, p=1.0),
    "gaussian_blur": lambda x, g: ops.gaussian_blur(x, g, kernel_size=5, p=1.0),
    "rotate": lambda x, g: ops.rotate(x, g, 45.0),
    "cutout": lambda x, g: ops.cutout(x, g, p=1.0),
    "gaussian_noise": lambda x, g: ops.gaussian_noise(x, g, (0.05, 0.2)),
    "solarize": lambda x, g: ops.solarize(x, g, p=1.0),
}
# Ops that have nothing to change on one channel.
ONE_CHANNEL_NOOPS = {"random_grayscale"}
# Ops whose only random draw is the coin, so at p=1 every seed gives the same output.
COIN_ONLY = {"hflip", "random_grayscale", "solarize"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These batches are tiny: OpenMP's fork/join costs more than it saves, and a lot more when another process
    # holds the second core.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def images(b: int = 6, c: int = 3, h: int = 16, w: int = 20, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    return torch.rand((b, c, h, w), generator=gen(seed)).to(device)


def close(a: torch.Tensor, b: torch.Tensor, atol: float) -> float:
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs difference {err} > {atol}"
    return err


# --------------------------------------------------------------------------------- contract of every op

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_random_ops_keep_shape_dtype_device_and_range(name, channels, device):
    x = images(c=channels, device=device)
    y = RANDOM_OPS[name](x, gen(1, device))
    expected = (6, channels, 12, 12) if name == "random_resized_crop" else x.shape
    assert y.shape == expected and y.dtype == torch.float32 and y.device == x.device
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    if name in ONE_CHANNEL_NOOPS and channels == 1:
        assert torch.equal(y, x)
    elif y.shape == x.shape:
        assert not torch.equal(y, x)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_random_ops_are_deterministic_under_a_seed(name, channels):
    x = images(c=channels)
    a, b = RANDOM_OPS[name](x, gen(5)), RANDOM_OPS[name](x, gen(5))
    assert torch.equal(a, b)
    if name not in COIN_ONLY:
        assert not torch.equal(a, RANDOM_OPS[name](x, gen(6)))


@pytest.mark.parametrize("name", ["random_resized_crop", "color_jitter", "gaussian_blur", "rotate", "cutout"])
def test_each_sample_gets_its_own_parameters(name):
    one = images(b=1, h=20, w=20)
    x = one.expand(8, -1, -1, -1).contiguous()
    y = RANDOM_OPS[name](x, gen(0))
    distinct = {tuple(v.flatten().tolist()) for v in y}
    assert len(distinct) >= 7  # 8 identical inputs, (almost) all different outputs


def test_ops_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    x = images()
    for op in RANDOM_OPS.values():
        op(x, gen(0))
    assert torch.equal(torch.rand(3), before)


def test_deterministic_ops_keep_contract_on_one_and_three_channels():
    for c in (1, 3):
        x = images(c=c)
        for y in (ops.sobel(x), ops.grayscale(x), ops.rotate90(x, 1), ops.adjust_hue(x, 0.2),
                  ops.adjust_saturation(x, 0.3), ops.blur(x, 1.0, 3), ops.solarize_at(x, 0.5)):
            assert y.dtype == torch.float32 and y.min() >= 0 and y.max() <= 1
        assert ops.sobel(x).shape == x.shape
        assert ops.sobel(x, output="xy").shape == (6, 2, 16, 20)
    one = images(c=1)
    assert torch.equal(ops.adjust_hue(one, 0.3), one) and torch.equal(ops.adjust_saturation(one, 0.2), one)


def test_bad_inputs_raise_selfsup_error():
    with pytest.raises(SelfSupError):
        ops.hflip(torch.rand(3, 8, 8), gen())
    with pytest.raises(SelfSupError):
        ops.hflip(torch.rand(2, 4, 8, 8), gen())
    with pytest.raises(SelfSupError):
        ops.random_resized_crop(images(), gen(), 8, scale=(0.5, 0.2))
    with pytest.raises(SelfSupError):
        ops.color_jitter(images(), gen(), hue=0.7)
    with pytest.raises(SelfSupError):
        ops.blur(images(), 1.0, 4)


# ------------------------------------------------------------------------------ agreement with torchvision

def test_resized_crop_matches_torchvision_bilinear_without_antialias():
    x = images(b=5, h=20, w=24)
    boxes = torch.tensor([[2, 3, 10, 12], [0, 0, 20, 24], [5, 1, 7, 19], [3, 4, 16, 8], [19, 23, 1, 1]])
    for size in [(28, 28), (12, 9)]:
        y = ops.resized_crop(x, boxes, size)
        for i, (t, l, h, w) in enumerate(boxes.tolist()):
            ref = TF.resized_crop(x[i], t, l, h, w, list(size), interpolation=InterpolationMode.BILINEAR,
                                  antialias=False)
            close(y[i], ref, 1e-5)


def test_hflip_matches_torchvision_exactly():
    x = images()
    y = ops.hflip(x, gen(), p=1.0)
    for i in range(len(x)):
        assert torch.equal(y[i], TF.horizontal_flip(x[i]))


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_adjustments_match_torchvision(channels):
    x = images(b=5, c=channels)
    factors = torch.tensor([0.0, 0.3, 1.0, 1.4, 1.8])
    hues = torch.tensor([-0.5, -0.2, 0.0, 0.1, 0.5])
    # torchvision's luma weighs red 0.2989, ours 0.299: 1e-4 apart on [0, 1] images.
    for ours, theirs, f, atol in [(ops.adjust_brightness, TF.adjust_brightness, factors, 1e-6),
                                  (ops.adjust_contrast, TF.adjust_contrast, factors, 2e-4),
                                  (ops.adjust_saturation, TF.adjust_saturation, factors, 2e-4),
                                  (ops.adjust_hue, TF.adjust_hue, hues, 1e-5)]:
        y = ours(x, f)
        for i in range(len(x)):
            close(y[i], theirs(x[i], f[i].item()), atol)


def test_hue_matches_torchvision_on_hard_pixels():
    """adjust_hue computes the rotation directly in RGB; check it against torchvision's HSV round trip on grey
    pixels, ties between channels (red/green first on ties), saturated colours, uint8 levels and any factor."""
    g = gen(7)
    x = torch.rand((48, 3, 6, 8), generator=g)
    x[:16] = (x[:16] * 3).round() / 3  # few levels: many ties and greys
    x[16:24] = (x[16:24] * 255).round() / 255
    x[24:28, :, :, :2] = x[24:28, :1, :, :2]  # grey columns
    x[28:32] = (x[28:32] > 0.5).float()  # primaries, secondaries, black and white
    hues = torch.rand(48, generator=g) - 0.5
    hues[:6] = torch.tensor([-0.5, 0.5, 0.0, 1 / 6, -1 / 3, 1e-7])
    y = ops.adjust_hue(x, hues)
    for i in range(len(x)):
        close(y[i], TF.adjust_hue(x[i], hues[i].item()), 1e-5)
    assert y.min() >= 0 and y.max() <= 1
    greys = x[24:28, :, :, :2]
    assert torch.equal(y[24:28, :, :, :2], greys)  # a grey pixel has no hue to rotate


def test_fused_crop_and_flip_equal_crop_then_hflip_bit_for_bit():
    for c in (1, 3):
        x = images(b=40, c=c, h=20, w=24)
        g = gen(3)
        separate = ops.hflip(ops.random_resized_crop(x, g, (16, 12), scale=(0.2, 1.0)), g, p=0.5)
        fused = ops.random_resized_crop(x, gen(3), (16, 12), scale=(0.2, 1.0), flip_p=0.5)
        assert torch.equal(fused, separate)
    # The recipes fold the flip into the crop's grid; the views are those of the ops applied one after another.
    imgs = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8, generator=gen())
    r = build(ViewsConfig(recipe="supervised"), 3, 20, n_views=1)
    g = gen(5)
    by_hand = ops.hflip(ops.random_resized_crop(imgs.float() / 255, g, 20, scale=(0.6, 1.0)), g, p=0.5)
    assert torch.equal(r(imgs, gen(5))[0], by_hand)


@pytest.mark.parametrize("name", ["color_jitter", "random_grayscale", "gaussian_blur"])
def test_inplace_ops_give_the_same_result_in_the_input_buffer(name):
    op = {"color_jitter": lambda x, g, **kw: ops.color_jitter(x, g, 0.8, 0.8, 0.8, 0.2, **kw),
          "random_grayscale": lambda x, g, **kw: ops.random_grayscale(x, g, p=0.5, **kw),
          "gaussian_blur": lambda x, g, **kw: ops.gaussian_blur(x, g, kernel_size=5, **kw)}[name]
    for c in (1, 3):
        x = images(b=10, c=c)
        expected = op(x, gen(4))
        buffer = x.clone()
        assert torch.equal(op(buffer, gen(4), inplace=True), expected)
        if not (name == "random_grayscale" and c == 1):
            assert torch.equal(buffer, expected)


def test_random_grayscale_keeps_or_replaces_each_sample_exactly():
    x = images(b=200, h=4, w=4)
    y = ops.random_grayscale(x, gen(1), p=0.5)
    gray = ops.grayscale(x)
    kept = (y == x).flatten(1).all(1)
    replaced = (y == gray).flatten(1).all(1)
    assert (kept | replaced).all() and 60 < replaced.sum() < 140


def test_grayscale_matches_torchvision():
    x = images()
    y = ops.grayscale(x)
    assert y.shape == x.shape
    close(y, TF.rgb_to_grayscale(x, num_output_channels=3), 2e-4)
    assert torch.equal(ops.random_grayscale(images(c=1), gen(), p=1.0), images(c=1))


def test_jitter_in_a_per_sample_order_matches_torchvision_applied_in_that_order():
    x = images(b=12)
    g = gen(3)
    fb, fc, fs = (torch.rand(12, generator=g) * 1.6 + 0.2 for _ in range(3))
    fh = torch.rand(12, generator=g) - 0.5
    order = torch.rand((12, 4), generator=g).argsort(1)
    y = ops.jitter(x, fb, fc, fs, fh, order)
    steps = [lambda im, i: TF.adjust_brightness(im, fb[i].item()), lambda im, i: TF.adjust_contrast(im, fc[i].item()),
             lambda im, i: TF.adjust_saturation(im, fs[i].item()), lambda im, i: TF.adjust_hue(im, fh[i].item())]
    for i in range(12):
        ref = x[i]
        for k in order[i].tolist():
            ref = steps[k](ref, i)
        close(y[i], ref, 5e-4)
    # The order matters, so a vectorised version that ignored it would fail above: check that it does matter.
    flipped = ops.jitter(x, fb, fc, fs, fh, order.flip(1))
    assert (flipped - y).abs().max() > 1e-2


def test_blur_matches_torchvision():
    x = images(b=4)
    sigmas = torch.tensor([0.1, 0.5, 1.3, 2.0])
    for k in (3, 5, 7):
        y = ops.blur(x, sigmas, k)
        for i in range(len(x)):
            close(y[i], TF.gaussian_blur(x[i], [k, k], [sigmas[i].item()] * 2), 1e-5)
    # Not square, and a kernel whose reflect padding reaches the far side of the shorter edge.
    x = images(b=4, h=6, w=10)
    y = ops.blur(x, sigmas, 11)
    for i in range(len(x)):
        close(y[i], TF.gaussian_blur(x[i], [11, 11], [sigmas[i].item()] * 2), 1e-5)


def test_rotation_solarize_and_erase_match_torchvision():
    x = images(b=4, h=16, w=20)
    angles = torch.tensor([30.0, -75.0, 90.0, 200.0])
    y = ops.rotate_by(x, angles)
    for i, a in enumerate(angles.tolist()):
        close(y[i], TF.rotate(x[i], a, interpolation=InterpolationMode.BILINEAR), 1e-5)
    sq = images(b=4, h=12, w=12)
    k = torch.tensor([0, 1, 2, 3])
    for i, y in enumerate(ops.rotate90(sq, k)):
        assert torch.equal(y, torch.rot90(sq[i], i, dims=(-2, -1)))
        close(y, TF.rotate(sq[i], 90.0 * i), 0)
    close(ops.solarize_at(x, 0.5), TF.solarize(x, 0.5), 0)
    boxes = torch.tensor([[1, 2, 5, 6], [0, 0, 0, 0], [10, 15, 6, 5], [0, 0, 16, 20]])
    e = ops.erase(x, boxes, 0.25)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        close(e[i], TF.erase(x[i], t, l, h, w, torch.tensor(0.25)), 0)


def test_crop_box_distribution_matches_torchvision_random_resized_crop():
    n, H, W = 3000, 20, 30
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    ours = ops.crop_boxes(gen(0), n, H, W, scale, ratio).float()
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop(10, scale=scale, ratio=ratio)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]]
                           for p in (rrc.make_params([torch.zeros(1, H, W)]) for _ in range(n))]).float()
    area = lambda b: b[:, 2] * b[:, 3] / (H * W)  # noqa: E731
    assert abs(area(ours).mean() - area(theirs).mean()) < 0.03
    assert abs(ours[:, 2].mean() - theirs[:, 2].mean()) < 0.6 and abs(ours[:, 3].mean() - theirs[:, 3].mean()) < 0.8


# --------------------------------------------------------------------------------------- crops: statistics

@pytest.mark.parametrize("scale,H,W", [((0.08, 1.0), 28, 28), ((0.2, 1.0), 32, 32), ((0.5, 0.6), 96, 64),
                                       ((0.3, 0.9), 20, 40)])
def test_crop_boxes_lie_inside_the_image_with_area_in_scale(scale, H, W):
    ratio = (3 / 4, 4 / 3)
    b = ops.crop_boxes(gen(1), 4000, H, W, scale, ratio)
    top, left, h, w = b.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    frac = (h * w).float() / (H * W)
    aspect = w.float() / h.float()
    # Sides are rounded to whole pixels, which moves the area by up to about one row and one column.
    slack = (H + W) / (H * W)
    found = (frac >= scale[0] - slack) & (frac <= scale[1] + slack)
    fallback = (h == H) | (w == W)  # torchvision's centred fallback when no attempt fits
    assert (found | fallback).all()
    assert found.float().mean() > 0.8
    slack_ratio = 1 / h.float() + 1 / w.float()
    assert ((aspect >= ratio[0] * (1 - slack_ratio) - 1e-6) & (aspect <= ratio[1] * (1 + slack_ratio) + 1e-6)).all()
    assert frac.std() > 0.02  # spread over the range, not stuck at one size


def test_crop_boxes_fall_back_to_the_centred_crop_like_torchvision():
    # No box of 90-100% of a 20x40 image has an aspect ratio in 3/4-4/3: torchvision then takes the widest
    # centred box with ratio 4/3, i.e. 20 x round(20 * 4/3) = 20 x 27 at left (40 - 27) // 2 = 6.
    b = ops.crop_boxes(gen(), 50, 20, 40, (0.9, 1.0), (3 / 4, 4 / 3))
    assert (b == torch.tensor([0, 6, 20, 27])).all()
    tall = ops.crop_boxes(gen(), 50, 40, 20, (0.9, 1.0), (3 / 4, 4 / 3))
    assert (tall == torch.tensor([6, 0, 27, 20])).all()


def test_same_seed_gives_the_same_crops_on_one_and_three_channels():
    gray = images(c=1)
    a = ops.random_resized_crop(gray, gen(4), 10)
    b = ops.random_resized_crop(gray.expand(-1, 3, -1, -1), gen(4), 10)
    assert torch.equal(b, a.expand(-1, 3, -1, -1))


def test_multicrop_sizes_and_counts():
    x = images(h=32, w=32)
    glob, loc = ops.multicrop(x, gen(), *ops.multicrop_sizes(32), n_global=2, n_local=4)
    assert len(glob) == 2 and len(loc) == 4
    assert glob[0].shape == (6, 3, 32, 32) and loc[0].shape == (6, 3, 14, 14)
    assert not torch.equal(glob[0], glob[1])


# ---------------------------------------------------------------------------------------- probabilities

def _applied(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "random_grayscale":
        return (y[:, 0] == y[:, 1]).flatten(1).all(1)
    return (y != x).flatten(1).any(1)


PROB_OPS = {
    "hflip": lambda x, g, p: ops.hflip(x, g, p=p),
    "color_jitter": lambda x, g, p: ops.color_jitter(x, g, p=p),
    "random_grayscale": lambda x, g, p: ops.random_grayscale(x, g, p=p),
    "gaussian_blur": lambda x, g, p: ops.gaussian_blur(x, g, sigma=(1.0, 2.0), kernel_size=3, p=p),
    "solarize": lambda x, g, p: ops.solarize(x, g, p=p),
    "cutout": lambda x, g, p: ops.cutout(x, g, scale=(0.2, 0.3), ratio=(0.5, 2.0), p=p),
    "rotate": lambda x, g, p: ops.rotate(x, g, (10.0, 20.0), p=p),
    "gaussian_noise": lambda x, g, p: ops.gaussian_noise(x, g, 0.1, p=p),
}


@pytest.mark.parametrize("name", sorted(PROB_OPS))
def test_probability_zero_is_identity_one_always_applies_and_rate_is_near_p(name):
    x = images(b=2000, h=6, w=6)
    op = PROB_OPS[name]
    assert torch.equal(op(x, gen(), 0.0), x)
    assert _applied(name, x, op(x, gen(), 1.0)).all()
    rate = _applied(name, x, op(x, gen(2), 0.3)).float().mean().item()
    assert abs(rate - 0.3) < 0.04, rate  # binomial sd is 0.01


# -------------------------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("recipe", ["simclr", "supervised", "none"])
def test_recipes_return_n_views_of_float_images_in_range(recipe, channels, device):
    imgs = torch.randint(0, 256, (5, channels, 28, 28), dtype=torch.uint8, generator=gen()).to(device)
    for n_views in (1, 2, 3):
        views = build(ViewsConfig(recipe=recipe), channels, 28, n_views=n_views)(imgs, gen(0, device))
        assert len(views) == n_views
        for v in views:
            assert v.shape == (5, channels, 28, 28) and v.dtype == torch.float32 and v.device == imgs.device
            assert v.min() >= 0 and v.max() <= 1
    a, b = build(ViewsConfig(recipe=recipe), channels, 28)(imgs, gen(0, device))
    if recipe == "none":
        assert torch.equal(a, imgs.float() / 255) and torch.equal(b, a)
    else:
        assert not torch.equal(a, b)


def test_recipe_is_deterministic_and_can_resize():
    imgs = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=gen())
    r = build(ViewsConfig(), 3, 24)
    a, b = r(imgs, gen(9)), r(imgs, gen(9))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert a[0].shape == (4, 3, 24, 24)
    assert build(ViewsConfig(recipe="none"), 3, 24)(imgs, gen())[0].shape == (4, 3, 24, 24)


def test_recipe_in_cpu_chunks_keeps_order_shapes_and_determinism(monkeypatch):
    import selfsup.views.recipes as recipes

    monkeypatch.setattr(recipes, "CPU_CHUNK_BYTES", 3 * 4 * 20 * 20 * 3)  # 3 images a chunk: 4 chunks of 2 x 5
    imgs = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8, generator=gen())
    r = build(ViewsConfig(recipe="supervised", flip=FlipConfig(p=0.0)), 3, 20)
    a, b = r(imgs, gen(2))
    assert a.shape == b.shape == (5, 3, 20, 20)
    assert all(torch.equal(u, v) for u, v in zip((a, b), r(imgs, gen(2))))
    # View i of each list comes from image i: with constant images every crop of image i is exactly its value.
    flat = (torch.arange(5, dtype=torch.uint8) * 50).view(5, 1, 1, 1).expand(5, 3, 20, 20).contiguous()
    for v in r(flat, gen(3)):
        close(v, flat.float() / 255, 1e-6)  # bilinear weights sum to 1 up to rounding
    # Chunks of 12 over 4 views of 5: a chunk spans three views, the next two; with the simclr stages.
    monkeypatch.setattr(recipes, "CPU_CHUNK_BYTES", 12 * 4 * 20 * 20 * 3)
    views = build(ViewsConfig(color=ColorConfig(p=0.0), gray=GrayConfig(p=0.0)), 3, 20, n_views=4)(flat, gen(3))
    assert len(views) == 4
    for v in views:
        close(v, flat.float() / 255, 1e-6)


def test_recipe_names_mark_one_channel_noops_and_blur_by_size():
    gray = build(ViewsConfig(), 1, 28).names
    assert len(gray) == 5 and gray[0].startswith("random resized crop to 28 px (scale 0.2-1")
    assert "saturation and hue skipped: 1 channel" in gray[2] and "brightness 0.4" in gray[2]
    assert gray[3] == "grayscale (skipped: 1 channel)"
    assert gray[4].startswith("gaussian blur (off")
    rgb = build(ViewsConfig(color=ColorConfig(strength=1.0)), 3, 96).names
    assert "saturation 0.8" in rgb[2] and "hue 0.2" in rgb[2] and "skipped" not in rgb[2]
    assert rgb[3] == "grayscale (p=0.2)" and rgb[4].startswith("gaussian blur (p=0.5")
    assert build(ViewsConfig(blur=BlurConfig(p=0.3)), 3, 28).names[4].startswith("gaussian blur (p=0.3")
    # Only the crop runs: the flip is folded into it (its name stays listed).
    bare = build(ViewsConfig(blur=BlurConfig(p=0.0), gray=GrayConfig(p=0.0), color=ColorConfig(strength=0.0)), 3, 28)
    assert len(bare.stages) == 1 and bare.names[1] == "horizontal flip (p=0.5)"


def test_recipe_errors_name_the_problem():
    with pytest.raises(SelfSupError, match="known recipes: byol, moco-v2, multicrop, none, simclr, supervised"):
        build(ViewsConfig(recipe="nope"), 3, 32)
    with pytest.raises(SelfSupError, match="crop.scale"):
        build(ViewsConfig(crop=CropConfig(scale=(0.9, 0.1))), 3, 32)
    r = build(ViewsConfig(), 3, 32)
    with pytest.raises(SelfSupError, match="uint8"):
        r(torch.rand(2, 3, 32, 32), gen())
    with pytest.raises(SelfSupError, match="3-channel"):
        r(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), gen())


def test_supervised_recipe_is_selectable_from_config():
    cfg = load_config({"train": {"steps": 1}}, ["views.recipe=supervised"])
    assert build(cfg.views, 1, 28, n_views=1).names[0].startswith("random resized crop to 28 px (scale 0.6-1")


def test_nested_overrides_reach_the_ops():
    cfg = load_config({"train": {"steps": 1}}, ["views.color.strength=0.25", "views.crop.scale=[0.5, 1]",
                                                 "views.blur.p=1.0"])
    names = build(cfg.views, 3, 32).names
    assert names[0].startswith("random resized crop to 32 px (scale 0.5-1")
    assert "brightness 0.2, contrast 0.2, saturation 0.2, hue 0.05" in names[2]
    assert names[4].startswith("gaussian blur (p=1")


def test_byol_views_are_asymmetric():
    """View 1 is always blurred and never solarized; view 2 is blurred with p=0.1 and solarized with p=0.2."""
    r = build(ViewsConfig(recipe="byol", color=ColorConfig(p=0.0), gray=GrayConfig(p=0.0), flip=FlipConfig(p=0.0),
                          crop=CropConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0))), 1, 32)
    ops_of = [{stage.func.__name__: stage.keywords.get("p") for stage in group.stages} for group in r.groups]
    assert ops_of[0]["gaussian_blur"] == 1.0 and "solarize" not in ops_of[0]
    assert ops_of[1]["gaussian_blur"] == 0.1 and ops_of[1]["solarize"] == 0.2
    # Bright flat images: blur leaves them alone, solarization turns them dark.
    level = torch.randint(160, 256, (2000, 1, 1, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    v1, v2 = r(level.expand(-1, 1, 32, 32).contiguous(), gen())
    assert torch.allclose(v1, level.float().div(255).expand_as(v1), atol=1e-5)
    assert abs((v2.flatten(1).mean(1) < 0.5).float().mean().item() - 0.2) < 0.04
    with pytest.raises(SelfSupError, match="n_views must be 2"):
        build(ViewsConfig(recipe="byol"), 1, 32, n_views=3)


def test_multicrop_gives_global_then_local_views():
    r = build(ViewsConfig(recipe="multicrop", multicrop=MulticropConfig(n_local=3, local_size=12)), 3, 32)
    views = r(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8), gen())
    assert [tuple(v.shape) for v in views] == [(5, 3, 32, 32)] * 2 + [(5, 3, 12, 12)] * 3
    assert r.n_views == 5 and all(0 <= float(v.min()) and float(v.max()) <= 1 for v in views)


def test_moco_v2_blurs_at_every_size():
    assert "gaussian blur (p=0.5" in build(ViewsConfig(recipe="moco-v2"), 1, 28).names[4]
    assert "off" in build(ViewsConfig(recipe="simclr"), 1, 28).names[4]


def test_colour_conversions_and_sobel_stay_fp32_under_bf16_autocast():
    """They prepare data (colorization's targets, split-brain's inputs, Sobel views) inside the training step,
    which runs under bf16 autocast on CPUs with native bf16: their matmuls and convolutions must not round."""
    from selfsup.views.lab import lab_to_rgb, lightness, rgb_to_lab

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def outputs():
        return [rgb_to_lab(x), lightness(x), lab_to_rgb(rgb_to_lab(x)), ops.sobel(x), ops.sobel(x, output="xy")]

    plain = outputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = outputs()
    for a, b in zip(plain, under):
        assert b.dtype == torch.float32 and torch.equal(a, b)
