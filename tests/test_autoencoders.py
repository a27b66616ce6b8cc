"""The autoencoder family (ae, dae, cae): the contractive penalty against references, the corruptions, the
decoder's shapes, the reconstruction figures, and that a few steps of training lower the reconstruction error."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.losses import jacobian_frobenius_sq
from selfsup.methods.dae import corrupt
from selfsup.nets.heads import ConvDecoder
from selfsup.report.figures import image_grid_png
from selfsup.run import build_method, method_figures


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread


def tiny_encoder(batch_norm: bool = False) -> nn.Module:
    """A small conv net (1, 5, 5) -> 6 sigmoid units, smooth so finite differences are accurate."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 3, 3, padding=1), nn.Tanh()]
    if batch_norm:
        layers.append(nn.BatchNorm2d(3))
    layers += [nn.Flatten(), nn.Linear(75, 6), nn.Sigmoid()]
    return nn.Sequential(*layers).double()


def per_sample_frobenius_sq(encoder: nn.Module, x: torch.Tensor) -> float:
    """Reference: mean over samples of sum_jk (dh_j/dx_k)^2 from autograd.functional.jacobian, one sample at a time."""
    total = 0.0
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: encoder(v.unsqueeze(0))[0], xi)  # (6, 1, 5, 5)
        total += float(jac.pow(2).sum())
    return total / x.shape[0]


def finite_difference_frobenius_sq(encoder: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> float:
    """Reference: central differences, one input value at a time (brute force, independent of autograd)."""
    total = 0.0
    for xi in x:
        flat = xi.flatten()
        for k in range(flat.numel()):
            step = torch.zeros_like(flat)
            step[k] = eps
            up = encoder((flat + step).view_as(xi).unsqueeze(0))[0]
            down = encoder((flat - step).view_as(xi).unsqueeze(0))[0]
            total += float(((up - down) / (2 * eps)).pow(2).sum())
    return total / x.shape[0]


def inputs(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)


def test_exact_jacobian_penalty_matches_autograd_and_finite_differences():
    encoder, x = tiny_encoder(), inputs()
    exact = jacobian_frobenius_sq(encoder(x), x, mode="exact").item()
    assert exact == pytest.approx(per_sample_frobenius_sq(encoder, x.detach()), rel=1e-10)
    with torch.no_grad():
        assert exact == pytest.approx(finite_difference_frobenius_sq(encoder, x.detach()), rel=1e-6)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_projection_estimate_is_unbiased(distribution):
    encoder, x = tiny_encoder(), inputs()
    code = encoder(x)
    exact = jacobian_frobenius_sq(code, x, mode="exact").item()
    g = torch.Generator().manual_seed(0)
    estimate = float(jacobian_frobenius_sq(code, x, mode="projection", projections=3000, generator=g,
                                           distribution=distribution, create_graph=False))
    assert estimate == pytest.approx(exact, rel=0.03)
    one_draw = jacobian_frobenius_sq(code, x, mode="projection", projections=1, generator=g).item()
    assert one_draw > 0 and one_draw != pytest.approx(exact, rel=1e-6)  # a single draw is noisy, not exact


def test_penalty_gradient_with_respect_to_weights_matches_finite_differences():
    encoder, x = tiny_encoder(), inputs()
    weight = encoder[3].weight
    (grad,) = torch.autograd.grad(jacobian_frobenius_sq(encoder(x), x, mode="exact"), weight)
    eps = 1e-6
    with torch.no_grad():
        weight[0, 0] += eps
    up = jacobian_frobenius_sq(encoder(x), x, mode="exact").item()
    with torch.no_grad():
        weight[0, 0] -= 2 * eps
    down = jacobian_frobenius_sq(encoder(x), x, mode="exact").item()
    assert float(grad[0, 0]) == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_batchnorm_penalty_is_that_of_the_batch_map():
    """In train mode BN couples the samples: the projection estimates the batch map's ||J||^2 / B, which is within
    about 1% of the per-sample value at this tiny batch; in eval mode exact is the per-sample value."""
    encoder, x = tiny_encoder(batch_norm=True), inputs(8)
    full = torch.autograd.functional.jacobian(encoder, x.detach())  # (B, 6, B, 1, 5, 5)
    batch_map = float(full.pow(2).sum()) / x.shape[0]
    per_sample = sum(float(full[i, :, i].pow(2).sum()) for i in range(x.shape[0])) / x.shape[0]
    estimate = float(jacobian_frobenius_sq(encoder(x), x, mode="projection", projections=3000,
                                           generator=torch.Generator().manual_seed(0), create_graph=False))
    assert estimate == pytest.approx(batch_map, rel=0.03)
    assert batch_map == pytest.approx(per_sample, rel=0.05) and batch_map > per_sample  # 0.9% apart here
    encoder.eval()
    exact = jacobian_frobenius_sq(encoder(x), x, mode="exact").item()
    assert exact == pytest.approx(per_sample_frobenius_sq(encoder, x.detach()), rel=1e-10)


def test_jacobian_penalty_rejects_bad_arguments():
    encoder, x = tiny_encoder(), inputs()
    with pytest.raises(ValueError, match="require grad"):
        jacobian_frobenius_sq(encoder(x.detach()), x.detach())
    with pytest.raises(ValueError, match="mode"):
        jacobian_frobenius_sq(encoder(x), x, mode="approximate")


def test_masking_noise_zeroes_the_configured_fraction_of_pixels():
    x = 0.1 + 0.9 * torch.rand(16, 3, 28, 28, generator=torch.Generator().manual_seed(0))  # no zero pixel
    out = corrupt(x, "masking", 0.25, torch.Generator().manual_seed(1))
    zeroed = out == 0  # (B, C, H, W)
    assert torch.equal(zeroed.all(dim=1), zeroed.any(dim=1))  # a masked pixel is zero in every channel
    per_image = zeroed[:, 0].flatten(1).sum(dim=1)
    assert (per_image == round(0.25 * 28 * 28)).all()
    assert torch.equal(out[~zeroed], x[~zeroed])  # the other pixels are untouched
    assert not torch.equal(zeroed[0], zeroed[1])  # each image draws its own mask
    again = corrupt(x, "masking", 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # all randomness comes from the generator


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_gaussian_noise_has_the_configured_sigma(sigma):
    x = torch.full((64, 1, 28, 28), 0.5)
    noise = corrupt(x, "gaussian", sigma, torch.Generator().manual_seed(0)) - x
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert abs(float(noise.mean())) < 0.1 * sigma


@pytest.mark.parametrize("size", [28, 32, 96])
@pytest.mark.parametrize("channels", [1, 3])
def test_decoder_outputs_the_exact_image_size(size, channels):
    decoder = ConvDecoder(code_dim=10, channels=channels, size=size, width=4)
    assert decoder(torch.randn(2, 10)).shape == (2, channels, size, size)


def test_decoder_decodes_each_image_on_its_own():
    decoder = ConvDecoder(code_dim=10, channels=1, size=30, width=6)  # 30 px: resized from 32; 6 does not divide 8
    code = torch.randn(4, 10)
    out = decoder(code)
    assert out.shape == (4, 1, 30, 30)
    assert torch.allclose(decoder(code[:1]), out[:1], atol=1e-6)  # no batch statistics
    assert torch.allclose(decoder.eval()(code), out, atol=1e-6)  # eval mode decodes as training does


def count_dark_rows(path) -> int:
    """Most runs of dark pixels down any one pixel column of the PNG (all-black images: one run per grid row)."""
    gray = np.asarray(Image.open(path).convert("L"))
    dark = gray < 60
    cols = dark[:, dark.shape[1] // 3:]  # right of the row labels
    starts = (cols[1:] & ~cols[:-1]).sum(axis=0) + cols[0]
    return int(starts.max())


@pytest.mark.parametrize("n_rows", [2, 3])
def test_image_grid_png_draws_one_row_per_entry(tmp_path, n_rows):
    rows = [(f"row {i}", torch.zeros(5, 1, 12, 12)) for i in range(n_rows)]
    path = image_grid_png(rows, tmp_path / "grid.png")
    assert count_dark_rows(path) == n_rows
    assert Image.open(path).text["Description"] == "rows: " + "; ".join(f"row {i}" for i in range(n_rows))


def build(name: str, channels: int = 1, n: int = 64, **method):
    cfg = load_config({"method": {"name": name, **method}, "model": {"width": 4}})
    data = sources.load("synthetic", "train", n=n, channels=channels, seed=0)
    method, _ = build_method(cfg, data)
    method.set_generator(torch.Generator().manual_seed(0))
    return method, data


@pytest.mark.parametrize("name, rows", [("ae", ["input", "reconstruction"]),
                                        ("dae", ["input", "corrupted", "reconstruction"]),
                                        ("cae", ["input", "reconstruction", "sensitivity"])])
@pytest.mark.parametrize("channels", [1, 3])
def test_figures_write_a_png_with_the_expected_rows(tmp_path, name, rows, channels):
    method, data = build(name, channels, decoder_width=4)
    paths = method_figures(method, data.images, 0, tmp_path)  # eval mode, no_grad, 8 images: as after pretraining
    assert len(paths) == 1 and paths[0].parent == tmp_path and paths[0].suffix == ".png"
    with Image.open(paths[0]) as png:
        png.load()
        assert png.size[0] > 400 and png.size[1] > 100 * len(rows)
        assert png.text["Description"] == "rows: " + "; ".join(rows)


@pytest.mark.parametrize("name, method", [("ae", {}), ("ae", {"code_dim": 1024, "code_activation": "relu", "sparsity": 1.0}),
                                          ("dae", {"noise": "masking"}), ("dae", {"noise": "gaussian", "level": 0.3}),
                                          ("cae", {"code_dim": 4, "jacobian": "exact"}), ("cae", {"projections": 2})])
def test_a_few_steps_lower_the_reconstruction_error(name, method):
    model, data = build(name, n=128, decoder_width=8, **method)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0)
    errors = []
    for step in range(25):
        batch = data.images[(step * 32) % 128:(step * 32) % 128 + 32]
        loss, logs = model.loss(batch)
        assert torch.isfinite(loss) and all(isinstance(v, float) for v in logs.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(logs["reconstruction"])
    assert sum(errors[-4:]) / 4 < 0.7 * sum(errors[:4]) / 4


def test_same_seed_same_corruption_and_loss():
    losses = []
    for _ in range(2):
        method, data = build("dae")
        losses.append(method.loss(data.images[:16])[0].item())
    assert losses[0] == losses[1]


def test_config_rejects_unknown_noise_and_jacobian_modes():
    with pytest.raises(SelfSupError, match="method.noise"):
        load_config({"method": {"name": "dae", "noise": "salt"}})
    with pytest.raises(SelfSupError, match="method.jacobian"):
        load_config({"method": {"name": "cae", "jacobian": "hutchinson"}})
