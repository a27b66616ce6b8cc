"""The fused C++ view kernels (selfsup/views/kernels.py): the same views as the PyTorch ops on the same
parameters, up to float rounding; the same seed gives the same views; any thread count gives the same bits; the
modes behave as documented. Skipped, with the reason, where the kernels cannot be built (no C++ compiler)."""

from __future__ import annotations

import pytest
import torch

import test_views as tv
from selfsup.errors import SelfSupError
from selfsup.views import kernels, ops
from selfsup.views.recipes import ViewsConfig, build


@pytest.fixture(scope="module")
def built():
    try:
        return kernels.build()
    except SelfSupError as e:
        pytest.skip(f"view kernels not buildable here: {e}")


@pytest.fixture
def on(built):
    kernels.set_mode("build")
    yield kernels.get()
    kernels.set_mode(None)


def both(fn):
    """fn() with the kernels, then with the PyTorch ops."""
    kernels.set_mode("build")
    try:
        fused = fn()
    finally:
        kernels.set_mode("off")
    try:
        plain = fn()
    finally:
        kernels.set_mode(None)
    return fused, plain


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_resized_crop_matches_the_pytorch_op(built):
    for c, (H, W), size in [(1, (28, 28), 28), (3, (20, 24), (16, 12)), (3, (96, 96), 96), (1, (17, 9), (40, 7))]:
        x = torch.rand((30, c, H, W), generator=gen(c))
        g = gen(1)
        boxes = ops.crop_boxes(g, 30, H, W, (0.05, 1.0))
        frac = boxes.float() + torch.rand(30, 4, generator=g) * torch.tensor([0.5, 0.5, -0.5, -0.5])  # inside
        flip = torch.rand(30, generator=g) < 0.5
        for b in (boxes, frac):
            fused, plain = both(lambda: ops.resized_crop(x, b, size, flip))
            assert fused.shape == plain.shape
            # One lerp per axis against grid_sample's four corner weights, and the coordinates rounded in another
            # order: a few float32 ulps of a coordinate apart, far under one uint8 level (3.9e-3).
            tv.close(fused, plain, 5e-5)


def test_jitter_matches_the_pytorch_op_in_every_order(built):
    for c in (1, 3):
        x = torch.rand((64, c, 12, 10), generator=gen(c))
        x[:8] = (x[:8] * 3).round() / 3  # ties between channels and grey pixels for the hue
        g = gen(2)
        fb, fc, fs = (torch.rand(64, generator=g) * 1.6 + 0.2 for _ in range(3))
        fh = torch.rand(64, generator=g) - 0.5
        fb[:4], fc[4:8], fh[8:12] = 1.0, 1.0, 0.0  # exact no-ops in the mix
        order = torch.rand((64, 4), generator=g).argsort(1)
        fused, plain = both(lambda: ops.jitter(x, fb, fc, fs, fh, order))
        tv.close(fused, plain, 1e-5)  # the contrast mean summed in double here, in float32 there
        assert fused.min() >= 0 and fused.max() <= 1


def test_blur_matches_the_pytorch_op(built):
    for c, (H, W), k in [(3, (16, 20), 3), (1, (28, 28), 3), (3, (96, 96), 9), (3, (6, 10), 11)]:
        x = torch.rand((12, c, H, W), generator=gen(k))
        sigma = torch.rand(12, generator=gen(k + 1)) * 1.9 + 0.1
        fused, plain = both(lambda: ops.blur(x, sigma, k))
        tv.close(fused, plain, 2e-6)
        fused, plain = both(lambda: ops.gaussian_blur(x, gen(5), kernel_size=k, p=0.5))
        tv.close(fused, plain, 2e-6)
        assert (fused == x).flatten(1).all(1).sum() > 0  # p=0.5: some samples untouched, bit for bit


@pytest.mark.parametrize("recipe", ["simclr", "byol", "moco-v2"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 96)])
def test_recipes_give_the_same_views_with_and_without_the_kernels(built, recipe, channels, size):
    imgs = torch.randint(0, 256, (24, channels, size, size), dtype=torch.uint8, generator=gen())
    r = build(ViewsConfig(recipe=recipe), channels, size)
    fused, plain = both(lambda: r(imgs, gen(7)))
    for a, b in zip(fused, plain):
        tv.close(a, b, 5e-5)


def test_same_seed_same_bits_on_any_thread_count(on):
    imgs = torch.randint(0, 256, (40, 3, 96, 96), dtype=torch.uint8, generator=gen())
    r = build(ViewsConfig(), 3, 96)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = r(imgs, gen(3))
        torch.set_num_threads(2)
        two = r(imgs, gen(3))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("test", [tv.test_resized_crop_matches_torchvision_bilinear_without_antialias,
                                  tv.test_fused_crop_and_flip_equal_crop_then_hflip_bit_for_bit,
                                  tv.test_jitter_in_a_per_sample_order_matches_torchvision_applied_in_that_order,
                                  tv.test_blur_matches_torchvision],
                         ids=lambda t: t.__name__.removeprefix("test_"))
@pytest.mark.parametrize("path", ["build", "off"])
def test_torchvision_agreement_holds_on_both_paths(built, test, path):
    kernels.set_mode(path)
    try:
        test()
    finally:
        kernels.set_mode(None)


@pytest.mark.parametrize("name", ["color_jitter", "random_grayscale", "gaussian_blur"])
def test_inplace_ops_on_the_kernels(on, name):
    tv.test_inplace_ops_give_the_same_result_in_the_input_buffer(name)


def test_only_plain_cpu_float_batches_take_the_kernels(on):
    assert kernels.usable(torch.rand(2, 3, 8, 8)) is on
    assert kernels.usable(torch.rand(2, 3, 8, 8, dtype=torch.float64)) is None
    assert kernels.usable(torch.rand(2, 3, 8, 8).transpose(2, 3)) is None
    assert kernels.usable(torch.rand(2, 3, 8, 8, requires_grad=True)) is None
    with torch.no_grad():
        assert kernels.usable(torch.rand(2, 3, 8, 8, requires_grad=True)) is on


def test_auto_never_compiles_and_off_never_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))  # an empty cache: nothing built for this machine
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("SELFSUP_VIEW_KERNELS", "auto")
    assert kernels.get() is None
    assert "not built" in kernels.describe() and not any(tmp_path.iterdir())
    monkeypatch.setenv("SELFSUP_VIEW_KERNELS", "off")
    assert kernels.get() is None and "off" in kernels.describe()
    monkeypatch.setenv("SELFSUP_VIEW_KERNELS", "fast")
    with pytest.raises(SelfSupError, match="SELFSUP_VIEW_KERNELS='fast'.*auto"):
        kernels.get()


def test_a_broken_build_falls_back_to_the_pytorch_ops(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_loaded", {})
    where = kernels.build_dir()
    where.mkdir(parents=True)
    (where / f"{kernels._name(where)}.so").write_bytes(b"not a shared library")  # e.g. a build cut short
    assert kernels.get() is None
    assert torch.equal(ops.adjust_brightness(torch.ones(1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 0.5))


def test_auto_uses_a_build_that_exists(built, monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("SELFSUP_VIEW_KERNELS", "auto")
    assert kernels.get() is not None and "fused C++" in kernels.describe()


def test_grayscale_matches_the_pytorch_op(built):
    x = torch.rand((40, 3, 9, 11), generator=gen())
    fused, plain = both(lambda: ops.random_grayscale(x, gen(4), p=0.5))
    tv.close(fused, plain, 1e-6)
    kept = (fused == x).flatten(1).all(1)
    assert 5 < kept.sum() < 35  # the others are grey: three equal channels
    assert torch.equal(fused[~kept][:, 0], fused[~kept][:, 2])


def test_chunks_that_span_views_give_the_same_views(built, monkeypatch):
    import selfsup.views.recipes as recipes

    imgs = torch.randint(0, 256, (7, 3, 20, 20), dtype=torch.uint8, generator=gen())
    monkeypatch.setattr(recipes, "CPU_CHUNK_BYTES", 3 * 4 * 20 * 20 * 3)  # 3 images a chunk over 3 views of 7
    r = build(ViewsConfig(blur=recipes.BlurConfig(p=0.5)), 3, 20, n_views=3)
    fused, plain = both(lambda: r(imgs, gen(9)))
    assert len(fused) == 3
    for a, b in zip(fused, plain):
        tv.close(a, b, 5e-5)
