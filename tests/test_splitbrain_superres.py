"""Split-brain autoencoder and super-resolution: each half of split-brain sees only its channel group, the
representation is the concatenation and survives export, the L bins; super-resolution's area-averaged input,
shapes, clear errors, the adversarial term; both learn on tiny data and draw their picture."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.methods.splitbrain import LightnessBins
from selfsup.methods.superres import bicubic_up, downsample
from selfsup.nets.encoders import SplitBrainEncoder
from selfsup.run import build_method, load_encoder_backbone, method_figures, pretrain
from selfsup.views.lab import lab_scaled


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread


def colour_data(n: int = 32, size: int | None = None):
    return sources.load("synthetic", "train", n=n, channels=3, seed=0, image_size=size)


def splitbrain(loss: str = "classification", width: int = 8, **method):
    cfg = load_config({"method": {"name": "splitbrain", "loss": loss, **method}, "model": {"width": width},
                       "views": {"recipe": "none"}})
    data = colour_data()
    m, make = build_method(cfg, data)
    m.set_generator(torch.Generator().manual_seed(0))
    return m, make, data


def superres(factor: int = 2, channels: int = 1, size: int = 28, backbone: str = "small-cnn", **method):
    cfg = load_config({"method": {"name": "superres", "factor": factor, **method},
                       "model": {"width": 4, "backbone": backbone}, "views": {"recipe": "none"}})
    data = sources.load("synthetic", "train", n=32, channels=channels, seed=0, image_size=size)
    m, _ = build_method(cfg, data)
    m.set_generator(torch.Generator().manual_seed(0))
    return m, data


def train_steps(method, images, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(method.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        value, logs = method.loss(images)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
        assert all(isinstance(v, float) and np.isfinite(v) for v in logs.values())
    return losses


# --- split-brain -------------------------------------------------------------------------------------------------

def test_each_half_sees_only_its_own_channel_group():
    method, _, _ = splitbrain()
    method.eval()
    g = torch.Generator().manual_seed(1)
    L, ab = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 2, 16, 16, generator=g) * 2 - 1
    L2, ab2 = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 2, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        out_ab, out_l = method.predict_lab(L, ab)
        assert torch.equal(method.predict_lab(L, ab2)[0], out_ab)  # L -> ab ignores the input's ab
        assert torch.equal(method.predict_lab(L2, ab)[1], out_l)  # ab -> L ignores the input's L
        assert not torch.allclose(method.predict_lab(L2, ab)[0], out_ab)  # ... but each follows its own input
        assert not torch.allclose(method.predict_lab(L, ab2)[1], out_l)
    # The gradients say the same in training mode (batch statistics included).
    method.train()
    L.requires_grad_(True), ab.requires_grad_(True)
    out_ab, out_l = method.predict_lab(L, ab)
    assert torch.autograd.grad(out_ab.sum(), ab, allow_unused=True)[0] is None
    assert torch.autograd.grad(out_l.sum(), L, allow_unused=True)[0] is None
    # Each loss term trains its own half only: the ab loss reaches net_l, never net_ab.
    method.zero_grad()
    out_ab, _ = method.predict(torch.rand(2, 3, 16, 16, generator=g))
    out_ab.square().mean().backward()
    assert all(p.grad is None for p in method.backbone.net_ab.parameters())
    assert all(p.grad is not None for p in method.backbone.net_l.parameters())


def test_the_representation_is_the_concatenation_of_two_half_width_backbones():
    method, make, data = splitbrain(width=8)
    encoder = method.backbone
    assert isinstance(encoder, SplitBrainEncoder)
    assert encoder.net_l.dim == 16 and encoder.net_ab.dim == 16  # small-cnn of width 8 // 2 = 4: 4 * 4 features
    assert encoder.dim == encoder.net_l.dim + encoder.net_ab.dim == 32  # as one small-cnn of width 8
    encoder.eval()
    x = data.images[:4].float() / 255
    lab = lab_scaled(x)
    expected = torch.cat([encoder.net_l(lab[:, :1]), encoder.net_ab(lab[:, 1:])], dim=1)
    assert torch.allclose(encoder(x), expected, atol=1e-6)
    assert make().dim == 32
    # Each half is normalized by the statistics of its own channels in the training images.
    all_lab = lab_scaled(data.images.float() / 255)
    assert torch.allclose(encoder.net_l.normalize.mean.flatten(), all_lab[:, :1].mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(encoder.net_ab.normalize.mean.flatten(), all_lab[:, 1:].mean(dim=(0, 2, 3)), atol=1e-4)


def test_lightness_bins_at_their_edges():
    bins = LightnessBins(50)
    L = torch.tensor([0.0, 1.999, 2.0, 3.999, 4.0, 50.0, 97.999, 98.0, 99.999, 100.0, -0.5, 100.5])
    assert bins.encode(L).tolist() == [0, 0, 1, 1, 2, 25, 48, 49, 49, 49, 0, 49]
    centers = bins.centers()
    assert centers.shape == (50,) and centers[0] == 1 and centers[-1] == 99
    assert torch.equal(bins.encode(centers), torch.arange(50))  # each centre lies in its own bin
    assert LightnessBins(4).encode(torch.tensor([24.99, 25.0, 75.0])).tolist() == [0, 1, 3]
    one_hot = torch.full((1, 50, 1, 1), -1e4)
    one_hot[0, 7] = 0
    assert float(bins.expectation(one_hot)) == pytest.approx(15.0)  # bin 7 covers [14, 16)


def test_the_classification_targets_use_the_shared_ab_bins_and_the_l_bins(monkeypatch):
    method, _, data = splitbrain(l_bins=10)
    assert method.to_ab.blocks[-1].out_channels == method.quantizer.q
    assert method.to_l.blocks[-1].out_channels == 10
    seen = {}
    original = F.cross_entropy

    def spy(logits, target, *args, **kwargs):
        seen["l_target"] = target
        return original(logits, target, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    method.loss(data.images[:4])
    (x,) = method.views(data.images[:4], torch.Generator().manual_seed(0))
    L = F.adaptive_avg_pool2d(lab_scaled(x)[:, :1], seen["l_target"].shape[-2:])
    assert torch.equal(seen["l_target"], torch.floor(L[:, 0] * 10).long().clamp(0, 9))


@pytest.mark.parametrize("loss,extra", [("classification", {}), ("classification", {"ab_target": "soft"}),
                                        ("regression", {})])
def test_splitbrain_learns_on_tiny_colour_data(loss, extra):
    method, _, data = splitbrain(loss, **extra)
    losses = train_steps(method, data.images[:32], 15)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2])


def test_splitbrain_refuses_grey_data_with_the_fix():
    cfg = load_config({"method": {"name": "splitbrain"}, "model": {"width": 4}})
    grey = sources.load("synthetic", "train", n=8, channels=1, seed=0)
    with pytest.raises(SelfSupError, match="splitbrain needs colour images.*folder of photos"):
        build_method(cfg, grey)


def test_splitbrain_encoder_round_trips_through_export(tmp_path, monkeypatch):
    load = sources.load

    def colour_synthetic(name, split="train", **kw):
        return load(name, split, **({"channels": 3} | kw if name == "synthetic" else kw))

    monkeypatch.setattr(sources, "load", colour_synthetic)
    cfg = load_config({"data": {"name": "synthetic", "synthetic_size": 64}, "method": {"name": "splitbrain"},
                       "model": {"width": 4}, "train": {"steps": 2, "batch_size": 16}})
    run_dir, result = pretrain(cfg, out=tmp_path / "run", progress=False, log=lambda _: None)
    assert result.steps == 2 and (run_dir / "splitbrain.png").is_file()
    encoder = load_encoder_backbone(run_dir, 3).eval()
    assert isinstance(encoder, SplitBrainEncoder) and encoder.dim == encoder.net_l.dim + encoder.net_ab.dim == 16
    # The trained method, rebuilt from its last checkpoint, gives the same features as the exported encoder.
    data = colour_synthetic("synthetic", "train", n=64, seed=cfg.train.seed)
    method, _ = build_method(cfg, data)
    method.load_state_dict(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["method"])
    method.eval()
    x = data.images[:6].float() / 255
    with torch.no_grad():
        assert torch.allclose(encoder(x), method.backbone(x), atol=1e-5)
        assert not torch.allclose(encoder.net_l.normalize.std, torch.ones(1))  # trained normalization came along
        grey = load_encoder_backbone(run_dir, 1)  # takes grey images as they are (a = b = 0)
        assert grey(torch.rand(2, 1, 28, 28)).shape == (2, 16)


def test_splitbrain_figure(tmp_path):
    method, _, data = splitbrain(width=4)
    (path,) = method_figures(method, data.images, 0, tmp_path, n=4)
    assert path == tmp_path / "splitbrain.png"
    text = Image.open(path).text["Description"]
    assert text == "rows: input L; predicted ab; input ab (L=50); predicted L; truth"


# --- super-resolution --------------------------------------------------------------------------------------------

def test_the_low_resolution_input_is_the_area_average():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 15
    expected = torch.tensor([[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]) / 4 / 15
    assert torch.allclose(downsample(x, 2)[0, 0], expected)
    assert torch.allclose(downsample(x, 4), x.mean().view(1, 1, 1, 1))
    # Through the method, on colour images: each low-res pixel is the mean of its 4 x 4 block, per channel.
    method, data = superres(factor=4, channels=3, size=32)
    x = data.images[:2].float() / 255
    low, up, _ = method.predict(x)
    blocks = x.view(2, 3, 8, 4, 8, 4).mean(dim=(3, 5))
    assert low.shape == (2, 3, 8, 8) and torch.allclose(low, blocks, atol=1e-6)
    assert torch.equal(up, bicubic_up(low, 4)) and up.min() >= 0 and up.max() <= 1


@pytest.mark.parametrize("size,factor,channels,backbone", [(28, 2, 1, "small-cnn"), (28, 4, 3, "small-cnn"),
                                                           (32, 2, 3, "small-cnn"), (32, 4, 1, "small-cnn"),
                                                           (28, 4, 1, "resnet18")])
def test_the_residual_prediction_has_the_image_shape_and_starts_near_bicubic(size, factor, channels, backbone):
    method, data = superres(factor, channels, size, backbone)
    method.eval()
    x = data.images[:2].float() / 255
    with torch.no_grad():
        low, up, pred = method.predict(x)
        residual = method.decoder(method.backbone.feature_map(up))
    assert low.shape == (2, channels, size // factor, size // factor)
    assert up.shape == pred.shape == residual.shape == x.shape
    assert torch.allclose(pred, up + residual)  # VDSR-style: bicubic plus the decoded residual
    assert 0 < residual.abs().mean() < 0.01  # small at init, but not zero (gradients reach the backbone)
    assert float(F.mse_loss(pred, x)) == pytest.approx(float(F.mse_loss(up, x)), rel=0.03)  # starts at bicubic


def test_a_side_that_the_factor_does_not_divide_or_too_small_is_a_clear_error():
    with pytest.raises(SelfSupError, match=r"side 30 px is not a multiple of 4.*factor.*\(here: 2\)"):
        superres(factor=4, size=30)
    with pytest.raises(SelfSupError, match=r"to 2 px.*data.image_size >= 16"):
        superres(factor=4, size=8)
    superres(factor=2, size=8)  # 4 px is enough


def test_the_adversarial_term_trains_one_step_without_nan():
    method, data = superres(factor=2, channels=3, size=16, adversarial=True)
    disc_before = {k: v.clone() for k, v in method.discriminator.state_dict().items()}
    loss, logs = method.loss(data.images[:8])
    assert torch.isfinite(loss) and {"d_loss", "g_loss", "mse"} <= set(logs)
    assert loss.item() == pytest.approx(logs["mse"] + 1e-3 * logs["g_loss"] + logs["d_loss"], rel=1e-5)
    loss.backward()
    torch.optim.AdamW(method.parameters(), lr=1e-3).step()
    assert all(torch.isfinite(p).all() for p in method.parameters())
    assert any(not torch.equal(v, disc_before[k]) for k, v in method.discriminator.state_dict().items())
    loss, _ = method.loss(data.images[8:16])
    assert torch.isfinite(loss)
    assert superres(factor=2, size=16)[0].discriminator is None  # off by default


@pytest.mark.parametrize("channels,factor", [(1, 2), (3, 4)])
def test_superres_learns_on_tiny_data_and_beats_bicubic(channels, factor):
    method, data = superres(factor=factor, channels=channels, size=16)
    losses = train_steps(method, data.images[:32], 40, lr=5e-4)
    assert np.mean(losses[-3:]) < 0.8 * losses[0]
    _, logs = method.loss(data.images[:32])
    assert logs["psnr"] > logs["bicubic_psnr"] + 0.5  # dB: the network restores detail interpolation cannot


def test_superres_figure(tmp_path):
    method, data = superres(factor=4, channels=3, size=32)
    (path,) = method_figures(method, data.images, 0, tmp_path, n=4)
    assert path == tmp_path / "superres.png"
    assert Image.open(path).text["Description"] == "rows: low-res (1/4); bicubic; prediction; truth"
