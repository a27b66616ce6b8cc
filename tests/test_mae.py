"""MAE: patches and masks (views/patchify.py), a loss on the hidden patches only with per-patch normalized targets,
an encoder that sees the visible patches only, learning on tiny data, the refusal of CNN backbones, the figure."""

import pytest
import torch
from PIL import Image

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.methods.mae import MAE, masked_patch_mse, normalize_patches
from selfsup.nets.backbones import build_backbone
from selfsup.run import build_method, method_figures
from selfsup.views.patchify import patchify, random_masking, unpatchify, visible_count
from selfsup.views.recipes import ViewsConfig, build as build_views

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread


def build(channels: int = 1, n: int = 32, size: int = 28, **method) -> tuple[MAE, sources.ImageSet]:
    cfg = load_config({"method": {"name": "mae", "decoder_dim": 16, "decoder_depth": 1, **method},
                       "model": {"backbone": "vit-tiny", "width": 16, "depth": 1}})
    data = sources.load("synthetic", "train", n=n, channels=channels, image_size=size, seed=0)
    model, _ = build_method(cfg, data)
    model.set_generator(torch.Generator().manual_seed(0))
    return model, data


# ------------------------------------------------------------------------------------------- patches and masks

@pytest.mark.parametrize("channels, side, patch", [(1, 28, 4), (3, 32, 4), (3, 28, 7), (1, 32, 16)])
def test_patchify_round_trip_and_layout(channels, side, patch):
    x = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    patches = patchify(x, patch)
    grid = side // patch
    assert patches.shape == (2, grid * grid, patch * patch * channels)
    assert torch.equal(unpatchify(patches, patch, grid, grid), x)
    r, c = grid - 1, 1  # patch n = r * grid + c is that square of the image, flattened (row, column, channel)
    square = x[:, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
    assert torch.equal(patches[:, r * grid + c], square.permute(0, 2, 3, 1).reshape(2, -1))


def test_patchify_refuses_sides_that_are_not_whole_patches():
    with pytest.raises(ValueError, match="multiples of the 4 px patch"):
        patchify(torch.rand(1, 1, 30, 28), 4)


@pytest.mark.parametrize("n, ratio, visible", [(49, 0.75, 12), (64, 0.75, 16), (49, 0.5, 24), (16, 0.6, 6),
                                               (4, 0.75, 1)])
def test_masking_keeps_exactly_the_rounded_share_of_patches(n, ratio, visible):
    assert visible_count(n, ratio) == visible == round((1 - ratio) * n)
    m = random_masking(64, n, ratio, torch.Generator().manual_seed(0))
    assert m.keep.shape == (64, visible) and m.masked.shape == (64, n - visible)
    assert bool((m.mask.sum(dim=1) == n - visible).all())
    everything = torch.cat([m.keep, m.masked], dim=1).sort(dim=1).values
    assert torch.equal(everything, torch.arange(n).expand(64, n))  # visible and hidden split the patches
    assert bool((m.mask.gather(1, m.keep) == 0).all()) and bool((m.mask.gather(1, m.masked) == 1).all())
    assert bool((m.keep.diff(dim=1) > 0).all())  # ascending
    assert len({tuple(k.tolist()) for k in m.keep}) > 1  # different per image


def test_masks_repeat_with_the_seed_and_hide_every_place_equally_often():
    a = random_masking(8, 49, 0.75, torch.Generator().manual_seed(3))
    b = random_masking(8, 49, 0.75, torch.Generator().manual_seed(3))
    c = random_masking(8, 49, 0.75, torch.Generator().manual_seed(4))
    assert torch.equal(a.keep, b.keep) and not torch.equal(a.keep, c.keep)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    many = random_masking(4000, 49, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)  # only the given generator is used
    rate = many.mask.mean(dim=0)  # (49,) how often each place is hidden: 37/49 = 0.755 in expectation
    assert float((rate - 37 / 49).abs().max()) < 0.03


@pytest.mark.parametrize("ratio", [0.99, 0.01])
def test_a_ratio_leaving_no_visible_or_no_hidden_patch_is_one_clear_error(ratio):
    with pytest.raises(SelfSupError, match="at least one visible and one hidden patch.*method.mask_ratio"):
        visible_count(49, ratio)


# ------------------------------------------------------------------------------------------------------- loss

def test_masked_patch_mse_against_a_loop_and_only_on_hidden_patches():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    hidden = [(b, n) for b in range(3) for n in range(5) if mask[b, n] == 1]
    reference = sum(float(((pred[b, n] - target[b, n]) ** 2).mean()) for b, n in hidden) / len(hidden)
    assert float(masked_patch_mse(pred, target, mask)) == pytest.approx(reference, rel=1e-6)
    visible_changed = pred + 100 * (1 - mask)[..., None]
    assert float(masked_patch_mse(visible_changed, target, mask)) == pytest.approx(reference, rel=1e-6)
    hidden_changed = pred + 0.5 * mask[..., None]
    assert float(masked_patch_mse(hidden_changed, target, mask)) != pytest.approx(reference, rel=1e-3)


def test_the_method_loss_ignores_the_decoder_at_visible_patches():
    """The decoder's outputs at visible places are shifted through a hook: the loss stays; at hidden ones it moves."""
    model, data = build()
    masks = []
    original_mask = model.mask
    model.mask = lambda x: masks.append(original_mask(x)) or masks[-1]

    def loss_with_shift(where: str) -> float:
        model.set_generator(torch.Generator().manual_seed(7))
        masks.clear()

        def shift(module, inputs, output):
            if where == "none":
                return output
            hidden = masks[-1].mask[..., None]  # (B, N, 1), the mask of this very step
            return output + 50.0 * ((1 - hidden) if where == "visible" else hidden)

        handle = model.decoder.head.register_forward_hook(shift)
        try:
            with torch.no_grad():
                return model.loss(data.images[:16])[0].item()
        finally:
            handle.remove()

    plain = loss_with_shift("none")
    assert loss_with_shift("visible") == pytest.approx(plain, rel=1e-6)
    assert loss_with_shift("hidden") > plain + 100


def test_norm_pix_targets_are_standardized_per_patch():
    model, data = build(3)
    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    x[0, :, :4, :4] = 0.3  # one flat patch
    targets = model.targets(x)  # (4, 49, 48)
    assert targets.shape == (4, 49, 48)
    non_flat = targets[:, 1:]
    assert torch.allclose(non_flat.mean(dim=-1), torch.zeros(4, 48), atol=1e-5)
    assert torch.allclose(non_flat.std(dim=-1), torch.ones(4, 48), atol=1e-4)  # unbiased, as MAE's var
    assert torch.equal(targets[0, 0], torch.zeros(48))  # a flat patch has nothing to predict but its mean
    assert torch.allclose(targets, normalize_patches(patchify(x, 4)))
    plain, _ = build(3, norm_pix_loss=False)
    assert torch.equal(plain.targets(x), patchify(x, 4))


# ---------------------------------------------------------------------------------- encoder, decoder, learning

def test_the_encoder_runs_on_the_visible_tokens_only():
    model, data = build()
    seen = []
    model.backbone.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model.loss(data.images[:8])
    assert seen == [(8, 12, 16)]  # 12 of 49 tokens reach the transformer
    (x,) = model.views(data.images[:4], model.generator)
    mask = model.mask(x)
    hidden_pixels = unpatchify(mask.mask[..., None].expand(-1, -1, 16), 4, 7, 7)  # (4, 1, 28, 28), 1 = hidden
    noisy = x + hidden_pixels * torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the hidden pixels cannot reach the prediction, anywhere
        assert torch.allclose(model.predict(noisy, mask), model.predict(x, mask), atol=1e-6)


def test_a_few_steps_lower_the_masked_error_below_predicting_the_mean_pixel():
    cfg = load_config({"method": {"name": "mae", "norm_pix_loss": False, "decoder_dim": 32, "decoder_depth": 1},
                       "model": {"backbone": "vit-tiny", "width": 32, "depth": 2}})
    data = sources.load("synthetic", "train", n=160, seed=0)
    model, _ = build_method(cfg, data)
    fixed = data.images[:32]

    def held_error() -> tuple[float, float]:
        """(masked error of the prediction, of the mean pixel of the batch) on fixed crops and masks."""
        model.set_generator(torch.Generator().manual_seed(99))
        with torch.no_grad():
            (x,) = model.views(fixed, model.generator)
            mask, targets = model.mask(x), model.targets(x)
            mean_pixel = targets.mean().expand_as(targets)
            return (float(masked_patch_mse(model.predict(x, mask), targets, mask.mask)),
                    float(masked_patch_mse(mean_pixel, targets, mask.mask)))

    before, mean_pixel = held_error()
    model.set_generator(torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0)
    for step in range(100):
        start = 32 + (step * 32) % 128
        loss, logs = model.loss(data.images[start:start + 32])
        assert logs["masked_mse"] == pytest.approx(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, _ = held_error()
    assert before > mean_pixel and after < 0.9 * mean_pixel  # about 0.8 of it here


# --------------------------------------------------------------------------------------- errors and figures

def test_a_cnn_backbone_is_one_clear_error_naming_the_fix():
    cfg = load_config({"method": {"name": "mae"}, "model": {"width": 4}})
    data = sources.load("synthetic", "train", n=16, seed=0)
    with pytest.raises(SelfSupError, match="mae needs the vit-tiny backbone, not small-cnn; add --set "
                                           "model.backbone=vit-tiny"):
        build_method(cfg, data)
    views = build_views(ViewsConfig(recipe="supervised"), 1, 28, n_views=1)
    with pytest.raises(SelfSupError, match="needs a ViT backbone, got SmallCNN; add --set model.backbone=vit-tiny"):
        MAE(build_backbone("small-cnn", 1, 4), views, cfg.method)  # built directly, not through build_method


def test_config_bounds_and_the_views():
    with pytest.raises(SelfSupError, match="method.mask_ratio' must be <= 0.95"):
        load_config({"method": {"name": "mae", "mask_ratio": 0.99}})
    model, _ = build()
    assert model.views.name == "supervised" and model.views.n_views == 1  # crop and flip, no colour ops
    assert model.notes[0] == "mae: 7x7 patches of 4 px, 37 hidden and 12 visible per image; targets: per-patch " \
                             "normalized pixels"


@pytest.mark.parametrize("channels, norm_pix", [(1, True), (3, False)])
def test_figure_rows_original_masked_input_reconstruction(tmp_path, channels, norm_pix):
    model, data = build(channels, size=32, norm_pix_loss=norm_pix)
    (path,) = method_figures(model, data.images, 0, tmp_path, n=4)
    assert path == tmp_path / "mae-reconstructions.png"
    with Image.open(path) as png:
        assert png.size[0] > 300 and png.size[1] > 250
        assert png.text["Description"] == "rows: original; masked input; reconstruction"
        assert "48 of 64 patches (4 px) hidden" in png.text["Title"]
