"""Inpainting (context encoder): the three mask kinds cover what they claim, the loss looks only at the hole, the
backbone sees nothing of the hole, the adversarial path, a few steps of training, and the figure."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.methods.inpainting import masked_mse
from selfsup.nets.heads import Discriminator, adversarial_losses
from selfsup.run import build_method, method_figures
from selfsup.views.masks import block_side_range, central_block, make_mask, random_blocks, random_shapes


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread


def batch(b: int = 16, c: int = 3, h: int = 28, w: int = 28) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(123))


def is_binary_mask(mask: torch.Tensor, x: torch.Tensor) -> bool:
    return (mask.shape == (x.shape[0], 1, *x.shape[-2:]) and mask.dtype == torch.float32
            and bool(((mask == 0) | (mask == 1)).all()))


# ------------------------------------------------------------------------------------------------------- masks

@pytest.mark.parametrize("h, w, fraction, rows, cols", [(28, 28, 0.25, (7, 21), (7, 21)),  # half the side
                                                         (32, 32, 0.25, (8, 24), (8, 24)),
                                                         (28, 32, 0.25, (7, 21), (8, 24)),
                                                         (28, 28, 0.5, (4, 24), (4, 24))])  # sqrt(.5)*28 = 19.8
def test_central_block_is_exactly_the_central_rectangle(h, w, fraction, rows, cols):
    x = batch(4, 1, h, w)
    mask = central_block(x, fraction, torch.Generator().manual_seed(0))
    assert is_binary_mask(mask, x)
    expected = torch.zeros(h, w)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = 1
    assert all(torch.equal(m[0], expected) for m in mask)  # that square, nothing else, in every image
    side = rows[1] - rows[0]
    assert abs(side * (cols[1] - cols[0]) / (h * w) - fraction) < 2 * max(h, w) / (h * w)  # area up to rounding


@pytest.mark.parametrize("size, fraction", [(28, 0.25), (32, 0.25), (28, 0.1), (64, 0.5)])
def test_random_blocks_coverage_is_within_the_stated_bounds(size, fraction):
    x = batch(64, 1, size, size)
    mask = random_blocks(x, fraction, torch.Generator().manual_seed(0))
    assert is_binary_mask(mask, x)
    coverage = mask.mean(dim=(1, 2, 3))
    lo, hi = block_side_range(size)
    assert (lo, hi) == (max(1, round(size / 8)), round(size / 4))
    assert bool((coverage >= fraction).all())
    assert bool((coverage < fraction + hi * hi / size ** 2).all())  # at most one block beyond the target
    assert hi * hi / size ** 2 <= 1 / 16 + 1e-9
    assert float(coverage.std()) > 0  # not a fixed pattern


def opening(mask: torch.Tensor, side: int) -> torch.Tensor:
    """Morphological opening of (B, 1, H, W) masks by a side x side square, the outside counting as masked."""
    padded = F.pad(mask, (side - 1,) * 4, value=1.0)
    eroded = -F.max_pool2d(-padded, side, stride=1)  # 1 where a whole square is masked
    opened = F.max_pool2d(F.pad(eroded, (side - 1,) * 4), side, stride=1)
    return opened[..., side - 1:side - 1 + mask.shape[-2], side - 1:side - 1 + mask.shape[-1]]


def test_random_blocks_are_unions_of_rectangles_of_at_least_the_smallest_side():
    """A union of rectangles at least lo x lo (cut off at the border) is unchanged by an opening with that square."""
    x = batch(16, 1, 28, 28)
    mask = random_blocks(x, 0.25, torch.Generator().manual_seed(1))
    lo, _ = block_side_range(28)
    assert lo > 1
    assert torch.equal(opening(mask, lo), mask)
    lone = torch.zeros_like(mask)
    lone[:, :, 5, 5] = 1
    assert not torch.equal(opening(lone, lo), lone)  # the check can fail


@pytest.mark.parametrize("kind", ["blocks", "shapes"])
def test_random_holes_have_no_favourite_place(kind):
    """Over many images every pixel is in the hole about `fraction` of the time: the corners too."""
    x = torch.zeros(1024, 1, 28, 28)
    rate = make_mask(kind, x, 0.25, torch.Generator().manual_seed(0)).mean(dim=(0, 1))  # (H, W)
    assert float(rate.min()) > 0.2 and float(rate.max()) < 0.32
    corners = rate[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert float(corners.min()) > 0.2 and abs(float(corners.mean()) - float(rate[10:18, 10:18].mean())) < 0.04


@pytest.mark.parametrize("size, fraction, cells", [(28, 0.25, 4), (32, 0.25, 4), (28, 0.4, 2), (28, 0.1, 7)])
def test_random_shapes_mask_the_exact_fraction_as_smooth_blobs(size, fraction, cells):
    x = batch(64, 3, size, size)
    mask = random_shapes(x, fraction, torch.Generator().manual_seed(0), cells=cells)
    assert is_binary_mask(mask, x)
    assert bool((mask.sum(dim=(1, 2, 3)) == round(fraction * size * size)).all())  # exact, every image
    # Blobs, not salt and pepper: neighbouring pixels disagree far less often than for independent pixels
    # (2 f (1 - f) of the pairs).
    m = mask[:, 0]
    disagree = torch.cat([(m[:, 1:] != m[:, :-1]).flatten(), (m[:, :, 1:] != m[:, :, :-1]).flatten()]).float()
    assert float(disagree.mean()) < 0.5 * 2 * fraction * (1 - fraction)


@pytest.mark.parametrize("kind", ["blocks", "shapes"])
def test_random_masks_differ_between_images_and_repeat_with_the_seed(kind):
    x = batch(8, 3, 28, 28)
    first = make_mask(kind, x, 0.25, torch.Generator().manual_seed(5))
    again = make_mask(kind, x, 0.25, torch.Generator().manual_seed(5))
    other = make_mask(kind, x, 0.25, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len({tuple(m.flatten().tolist()) for m in first}) == len(first)  # each image draws its own mask
    assert torch.equal(make_mask(kind, x[:, :1], 0.25, torch.Generator().manual_seed(5)), first)  # channels: no


def test_masks_do_not_use_the_global_rng_and_reject_bad_arguments():
    x = batch(4, 1, 28, 28)
    torch.manual_seed(0)
    a = make_mask("shapes", x, 0.25, torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    b = make_mask("shapes", x, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="mask must be one of"):
        make_mask("circle", x, 0.25, torch.Generator())
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        make_mask("blocks", x, 1.0, torch.Generator())


# -------------------------------------------------------------------------------------------------------- loss

def test_masked_mse_scores_only_the_hole():
    x = batch(4, 3)
    mask = make_mask("blocks", x, 0.25, torch.Generator().manual_seed(0))
    prediction = batch(4, 3).flip(0)
    loss = masked_mse(prediction, x, mask)
    expected = ((prediction - x) ** 2 * mask).sum() / (3 * mask.sum())
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    outside = prediction + (1 - mask) * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert float(masked_mse(outside, x, mask)) == pytest.approx(float(loss), rel=1e-6)
    inside = prediction + mask * 0.1
    assert float(masked_mse(inside, x, mask)) != pytest.approx(float(loss), rel=1e-3)
    perfect_in_hole = x * mask + prediction * (1 - mask)
    assert float(masked_mse(perfect_in_hole, x, mask)) == 0
    assert float(masked_mse(prediction, x, torch.zeros_like(mask))) == 0  # no hole, nothing to score


def build(channels: int = 1, n: int = 64, backbone: str = "small-cnn", **method):
    cfg = load_config({"method": {"name": "inpainting", **method}, "model": {"width": 4, "backbone": backbone}})
    data = sources.load("synthetic", "train", n=n, channels=channels, seed=0)
    model, _ = build_method(cfg, data)
    model.set_generator(torch.Generator().manual_seed(0))
    return model, data


@pytest.mark.parametrize("channels", [1, 3])
def test_the_backbone_sees_nothing_of_the_hole(channels):
    model, data = build(channels, decoder_width=4)
    model.eval()
    x = data.images[:8].float() / 255
    mask = model.mask(x)
    hole = model.with_hole(x, mask)
    assert torch.allclose(model.backbone.normalize(hole) * mask, torch.zeros_like(x), atol=1e-6)  # 0 once normalized
    assert torch.equal(hole * (1 - mask), x * (1 - mask))  # the context is untouched
    scribbled = x * (1 - mask) + torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) * mask
    with torch.no_grad():
        assert torch.equal(model.predict(model.with_hole(scribbled, mask)), model.predict(hole))
        assert model.predict(hole).shape == x.shape


@pytest.mark.parametrize("backbone", ["small-cnn", "resnet18"])
def test_the_decoder_paints_the_whole_image_from_the_feature_map(backbone):
    model, data = build(3, n=8, backbone=backbone, decoder_width=4)
    stride = model.backbone.stride
    assert sum(isinstance(m, torch.nn.Upsample) for m in model.decoder.modules()) == round(math.log2(stride))
    with torch.no_grad():
        out = model.predict(data.images[:2].float() / 255)
    assert out.shape == (2, 3, 28, 28) and bool(((out >= 0) & (out <= 1)).all())


# ------------------------------------------------------------------------------------------------- adversarial

def test_adversarial_losses_keep_the_players_apart():
    torch.manual_seed(0)
    disc = Discriminator(3, width=8)
    real = batch(4, 3, 16, 16)
    source = torch.rand(4, 3, 16, 16, requires_grad=True)  # stands for the generator's output
    fake = torch.sigmoid(source)
    d_loss, g_loss = adversarial_losses(disc, real, fake)
    params = list(disc.parameters())
    g_on_disc = torch.autograd.grad(g_loss, params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in g_on_disc)  # the generator's term does not move the discriminator
    (g_on_fake,) = torch.autograd.grad(g_loss, source, retain_graph=True)
    assert float(g_on_fake.abs().sum()) > 0
    d_on_disc = torch.autograd.grad(d_loss, params, retain_graph=True)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in d_on_disc)
    (d_on_fake,) = torch.autograd.grad(d_loss, source, allow_unused=True)
    assert d_on_fake is None  # the discriminator's term does not move the generator


@pytest.mark.parametrize("channels", [1, 3])
def test_adversarial_path_trains_one_step_without_nan(channels):
    model, data = build(channels, decoder_width=4, adversarial=True)
    assert model.discriminator is not None
    disc_before = [p.detach().clone() for p in model.discriminator.parameters()]
    loss, logs = model.loss(data.images[:16])
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"masked_mse", "d_loss", "g_loss", "d_real_acc", "d_fake_acc"} <= set(logs)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert 0 <= logs["d_real_acc"] <= 1 and 0 <= logs["d_fake_acc"] <= 1
    expected = 0.999 * logs["masked_mse"] + 0.001 * logs["g_loss"] + logs["d_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    for part in (model.backbone, model.decoder, model.discriminator):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(p.grad.abs().sum()) > 0 for p in model.discriminator.parameters())
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.discriminator.parameters(), disc_before))
    loss2, _ = model.loss(data.images[16:32])
    assert torch.isfinite(loss2)


def test_without_the_adversarial_term_there_is_no_discriminator():
    model, data = build(1, decoder_width=4)
    assert model.discriminator is None
    loss, logs = model.loss(data.images[:8])
    assert set(logs) == {"masked_mse", "hole_fraction"} and loss.item() == pytest.approx(logs["masked_mse"])


# ----------------------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("mask", ["central", "shapes"])
def test_a_few_steps_lower_the_masked_error_below_filling_with_the_mean(mask):
    model, data = build(1, n=128, decoder_width=8, mask=mask)
    fixed = data.images[:32]

    def held_error() -> tuple[float, float]:
        """(masked error of the prediction, of the hole filled with the mean pixel) on fixed crops and holes."""
        model.set_generator(torch.Generator().manual_seed(99))
        with torch.no_grad():
            (x,) = model.views(fixed, model.generator)
            hole = model.mask(x)
            mean_fill = float(masked_mse(model.with_hole(x, hole), x, hole))
            return float(masked_mse(model.predict(model.with_hole(x, hole)), x, hole)), mean_fill

    before, mean_fill = held_error()
    model.set_generator(torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0)
    for step in range(20):
        start = 32 + (step * 32) % 96
        loss, logs = model.loss(data.images[start:start + 32])
        assert logs["masked_mse"] == pytest.approx(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, _ = held_error()
    assert after < 0.7 * before and after < mean_fill  # learnt more than the mean pixel (about 0.8 of it here)


def test_same_seed_same_masks_and_loss():
    losses = []
    for _ in range(2):
        model, data = build(3, decoder_width=4, mask="blocks")
        losses.append(model.loss(data.images[:8])[0].item())
    assert losses[0] == losses[1]


@pytest.mark.parametrize("channels, mask", [(1, "central"), (3, "shapes")])
def test_figures_write_a_png_with_hole_prediction_and_truth(tmp_path, channels, mask):
    model, data = build(channels, decoder_width=4, mask=mask)
    paths = method_figures(model, data.images, 0, tmp_path)
    assert [p.name for p in paths] == ["inpainting.png"] and paths[0].parent == tmp_path
    with Image.open(paths[0]) as png:
        png.load()
        assert png.size[0] > 400 and png.size[1] > 300
        assert png.text["Description"] == "rows: input (hole); prediction; truth"


def test_config_checks_the_mask_settings():
    with pytest.raises(SelfSupError, match="method.mask"):
        load_config({"method": {"name": "inpainting", "mask": "circle"}})
    with pytest.raises(SelfSupError, match="method.mask_fraction"):
        load_config({"method": {"name": "inpainting", "mask_fraction": 0.9}})
    cfg = load_config({"method": {"name": "inpainting"}})
    assert (cfg.method.mask, cfg.method.mask_fraction, cfg.method.adversarial) == ("shapes", 0.25, False)
    assert (cfg.method.lambda_rec, cfg.method.lambda_adv) == (0.999, 0.001)
