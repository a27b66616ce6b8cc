"""Colorization: Lab against scikit-image, the ab bins and their rebalancing weights, the annealed mean, the method
(loss falls, figure), the lightness encoder, and transfer: pretrain on colour, evaluate on grey (`eval.data`)."""

import json

import numpy as np
import pytest
import torch

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.nets.backbones import build_backbone
from selfsup.nets.encoders import ChannelAdapter, LightnessEncoder, adapt_channels
from selfsup.run import build_method, evaluate_run, load_encoder_backbone, method_figures, pretrain
from selfsup.views.lab import ab_quantizer, lab_scaled, lab_to_rgb, lightness, rgb_to_lab
from test_run import colour_folder



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread


def hard_colours() -> torch.Tensor:
    """(1, 3, 4, 8): black, white, greys, the primaries and secondaries, and random colours."""
    fixed = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [0.01, 0.01, 0.01], [1, 0, 0], [0, 1, 0], [0, 0, 1],
             [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.04, 0.5, 0.9], [0.9, 0.3, 0.04]]
    g = torch.Generator().manual_seed(0)
    rest = torch.rand(32 - len(fixed), 3, generator=g).tolist()
    return torch.tensor(fixed + rest).T.reshape(1, 3, 4, 8)


def test_rgb_to_lab_matches_scikit_image():
    skimage_color = pytest.importorskip("skimage.color")  # a test dependency: `pip install -e .[test]`
    x = hard_colours()
    ours = rgb_to_lab(x)
    ref = torch.from_numpy(skimage_color.rgb2lab(x[0].permute(1, 2, 0).double().numpy())).permute(2, 0, 1)
    assert (ours[0] - ref.float()).abs().max() < 2e-3  # Lab units (L in 0..100)
    assert abs(float(ours[0, 0, 0, 1]) - 100) < 1e-3 and float(ours[0, 0, 0, 0]) == 0  # white and black L


def test_lab_round_trip_and_lab_to_rgb_matches_scikit_image():
    skimage_color = pytest.importorskip("skimage.color")
    x = hard_colours()
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-4
    lab = rgb_to_lab(x)[0].permute(1, 2, 0).double().numpy()
    ref = torch.from_numpy(skimage_color.lab2rgb(lab)).permute(2, 0, 1).float()
    assert (lab_to_rgb(rgb_to_lab(x))[0] - ref).abs().max() < 1e-3
    # Out of the gamut too (predicted colours often are): dark L with strong b, bright L with strong a, ...
    odd = torch.tensor([[5.0, 0, 100], [95, 80, -60], [50, -110, 110], [20, 60, -100], [70, 0, 0], [0, 40, 40]])
    ours = lab_to_rgb(odd.T.reshape(1, 3, 2, 3))[0]
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")  # scikit-image warns about the negative Z values it clips
        ref = torch.from_numpy(skimage_color.lab2rgb(odd.reshape(2, 3, 3).double().numpy())).permute(2, 0, 1)
    assert (ours - ref.float()).abs().max() < 1e-3


def test_grey_images_have_no_colour_and_the_same_lightness_as_their_rgb_copy():
    g = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    lab = rgb_to_lab(g)
    assert lab[:, 1:].abs().max() < 0.01  # a and b of R = G = B
    assert torch.allclose(lightness(g), lightness(g.expand(-1, 3, -1, -1)))
    assert torch.allclose(lightness(g), lab[:, :1] / 100, atol=1e-5)
    scaled = lab_scaled(hard_colours())
    assert scaled[:, 0].min() >= 0 and scaled[:, 0].max() <= 1 + 1e-6 and scaled[:, 1:].abs().max() <= 1.01


def test_every_srgb_colour_has_an_in_gamut_bin_within_half_a_cell_diagonal():
    q = ab_quantizer()
    assert 250 <= q.q <= 320  # the paper keeps 313 with its convention; our count is printed in the docs
    assert torch.equal(q.centers % 10, torch.zeros_like(q.centers))
    ab = rgb_to_lab(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2)))[1:].reshape(2, -1).T
    nearest = q.centers[q.nearest(ab)]
    assert (nearest - ab).norm(dim=1).max() <= 5 * 2 ** 0.5 + 1e-4


def test_soft_encoding_is_the_five_nearest_bins_with_gaussian_weights():
    q = ab_quantizer()
    ab = torch.tensor([[3.0, -2.0], [-41.0, 57.0], [0.0, 0.0]])
    idx, w = q.soft_encode(ab, k=5, sigma=5.0)
    assert idx.shape == (3, 5) and torch.allclose(w.sum(1), torch.ones(3))
    for row in range(3):
        d = (q.centers - ab[row]).norm(dim=1)
        expected = d.argsort()[:5]  # brute force over all Q bins
        assert set(idx[row].tolist()) == set(expected.tolist())
        ref = torch.exp(-d[idx[row]] ** 2 / 50)
        assert torch.allclose(w[row], ref / ref.sum(), atol=1e-6)
    assert torch.equal(idx[:, 0], q.nearest(ab))  # the heaviest is the nearest bin


def test_rebalancing_weights_sum_as_the_paper_says_and_favour_rare_colours():
    q = ab_quantizer()
    g = torch.Generator().manual_seed(3)
    ab = torch.cat([torch.randn(5000, 2, generator=g) * 4, torch.randn(200, 2, generator=g) * 30 + 40])
    prior = q.prior(ab, sigma=5.0)
    assert abs(float(prior.sum()) - 1) < 1e-5 and (prior >= 0).all()
    w = q.rebalancing_weights(prior, lam=0.5)
    assert abs(float((prior * w).sum()) - 1) < 1e-5  # E_p~[w] = 1
    order = prior.argsort()
    assert (w[order].diff() <= 1e-6).all()  # the rarer the bin, the larger its weight
    grey, vivid = q.nearest(torch.tensor([[0.0, 0.0]])), q.nearest(torch.tensor([[40.0, 40.0]]))
    assert w[vivid] > 2 * w[grey]
    assert torch.allclose(q.rebalancing_weights(prior, lam=1.0), torch.ones(q.q))  # lambda 1: no rebalancing


def test_annealed_mean_goes_from_the_mean_at_t1_to_the_mode_at_small_t():
    q = ab_quantizer()
    logits = torch.randn(2, q.q, 3, 3, generator=torch.Generator().manual_seed(4))
    mean = torch.einsum("bqhw,qc->bchw", logits.softmax(1), q.centers)
    assert torch.allclose(q.annealed_mean(logits, 1.0), mean, atol=1e-4)
    peaked = logits.clone()
    peak = torch.randint(0, q.q, (2, 1, 3, 3), generator=torch.Generator().manual_seed(5))
    peaked.scatter_add_(1, peak, torch.full((2, 1, 3, 3), 12.0))  # one bin far above the rest
    mode = q.centers[peak[:, 0]].permute(0, 3, 1, 2)
    assert torch.allclose(q.annealed_mean(peaked, 0.38), mode, atol=1e-2)
    assert not torch.allclose(q.annealed_mean(peaked, 1.0), mode, atol=1e-2)  # the plain mean is pulled away
    # Lower temperature: more saturated (further from grey) on average.
    assert q.annealed_mean(logits, 0.38).norm(dim=1).mean() > q.annealed_mean(logits, 1.0).norm(dim=1).mean()


def test_lightness_encoder_gives_grey_and_rgb_copies_the_same_features():
    torch.manual_seed(0)
    enc = LightnessEncoder(build_backbone("small-cnn", 1, width=4)).eval()
    g = torch.rand(3, 1, 16, 16)
    assert torch.allclose(enc(g), enc(g.expand(-1, 3, -1, -1)), atol=1e-6)
    assert adapt_channels(enc, 3, 1) is enc  # takes both as they are


def test_channel_adapter_repeats_grey_and_turns_colour_to_luma():
    net = build_backbone("small-cnn", 3, width=4).eval()
    adapted = adapt_channels(net, 3, 1)
    assert isinstance(adapted, ChannelAdapter)
    g = torch.rand(2, 1, 12, 12)
    assert torch.allclose(adapted(g), net(g.expand(-1, 3, -1, -1)))
    to_grey = adapt_channels(build_backbone("small-cnn", 1, width=4), 1, 3)
    rgb = torch.rand(2, 3, 12, 12)
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(to_grey.adapt(rgb), luma)


@pytest.mark.parametrize("loss", ["classification", "regression"])
def test_colorization_learns_on_colour_images(loss):
    cfg = load_config({"method": {"name": "colorization", "loss": loss}, "model": {"width": 8},
                       "views": {"recipe": "none"}})
    data = sources.load("synthetic", "train", n=64, channels=3, seed=0)
    method, _ = build_method(cfg, data)
    method.set_generator(torch.Generator().manual_seed(0))
    assert float((method.prior * method.weights).sum()) == pytest.approx(1, abs=1e-4)
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        value, logs = method.loss(data.images[:32])
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    assert all(isinstance(v, float) for v in logs.values())


def test_prepare_is_deterministic_and_the_prior_travels_in_the_state_dict():
    cfg = load_config({"method": {"name": "colorization"}, "model": {"width": 4}})
    data = sources.load("synthetic", "train", n=40, channels=3, seed=0)
    a, _ = build_method(cfg, data)
    b, _ = build_method(cfg, data)
    assert torch.equal(a.prior, b.prior) and torch.equal(a.weights, b.weights)
    assert "prior" in a.state_dict() and "weights" in a.state_dict()
    assert not torch.allclose(a.prior, torch.full_like(a.prior, 1 / a.prior.numel()))  # filled from the images


def test_impossible_colorization_settings_are_clear_errors():
    from selfsup.errors import SelfSupError

    with pytest.raises(SelfSupError, match="rebalance_lambda"):
        load_config({"method": {"name": "colorization", "rebalance_lambda": 0}})
    cfg = load_config({"method": {"name": "colorization", "upsample": 3}, "model": {"width": 4}})
    with pytest.raises(SelfSupError, match="method.upsample=2 or less"):
        build_method(cfg, sources.load("synthetic", "train", n=16, channels=3, seed=0))


def test_rebalancing_weights_stay_finite_when_bins_are_never_seen():
    q = ab_quantizer()
    prior = q.prior(torch.randn(4000, 2, generator=torch.Generator().manual_seed(6)) * 8)
    assert (prior == 0).any()  # the smoothed prior underflows far from every seen colour
    w = q.rebalancing_weights(prior, lam=0.001)
    assert torch.isfinite(w).all() and abs(float((prior * w).sum()) - 1) < 1e-4


def test_colorization_figure_shows_lightness_prediction_mean_and_truth(tmp_path):
    from PIL import Image

    cfg = load_config({"method": {"name": "colorization"}, "model": {"width": 4}})
    data = sources.load("synthetic", "train", n=16, channels=3, seed=0)
    method, _ = build_method(cfg, data)
    (path,) = method_figures(method, data.images, 0, tmp_path, n=4)
    assert path.name == "colorization.png"
    text = Image.open(path).text["Description"]
    assert text == "rows: input L; predicted (T=0.38); mean (T=1); truth"


def test_colour_pretraining_evaluates_on_grey_data(tmp_path, monkeypatch):
    """The issue's transfer: a colorization encoder pretrained on colour photos, evaluated on grey images."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    folder = colour_folder(tmp_path / "photos")
    cfg = load_config({"data": {"name": str(folder), "image_size": 16, "synthetic_size": 60},
                       "method": {"name": "colorization"}, "model": {"width": 4},
                       "train": {"steps": 2, "batch_size": 8},
                       "eval": {"data": "synthetic", "labels": 20, "scratch_epochs": 1, "protocols": ["knn", "few-label"]}})
    run_dir, _ = pretrain(cfg, out=tmp_path / "run", progress=False, log=lambda s: None, evaluate_after=True)
    result = evaluate_run(run_dir, log=lambda s: None)
    assert result["data"]["name"] == "synthetic" and result["data"]["train"] == 60
    assert 0 <= result["few_label"]["ssl"] <= 1 and 0 <= result["few_label"]["random_init"] <= 1
    assert "pretrained on" in (run_dir / "results.md").read_text()
    meta = json.loads((run_dir / "eval.json").read_text())
    assert meta["data"]["name"] == "synthetic"
    encoder, fresh = load_encoder_backbone(run_dir, 1, with_fresh=True)
    assert isinstance(encoder, LightnessEncoder)
    assert encoder(torch.rand(2, 1, 16, 16)).shape == (2, encoder.dim)
    assert_fair_baseline(encoder, fresh())


def assert_fair_baseline(encoder, random_net):
    """The random-init baseline: the same wrapper, the same input normalization, other weights."""
    assert type(random_net) is type(encoder)
    trained, fresh = encoder.state_dict(), random_net.state_dict()
    assert trained.keys() == fresh.keys()
    norm = [k for k in trained if ".normalize." in f".{k}"]
    assert norm and all(torch.equal(trained[k], fresh[k]) for k in norm)
    assert any(not torch.equal(trained[k], fresh[k]) for k in trained if k not in norm)


def test_a_colour_simclr_encoder_evaluates_on_grey_data_through_the_channel_adapter(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    folder = colour_folder(tmp_path / "photos")
    cfg = load_config({"data": {"name": str(folder), "image_size": 16, "synthetic_size": 60},
                       "model": {"width": 4}, "train": {"steps": 1, "batch_size": 8},
                       "eval": {"labels": 20, "scratch_epochs": 1, "protocols": ["few-label"]}})
    run_dir, _ = pretrain(cfg, out=tmp_path / "run", progress=False, log=lambda s: None)
    result = evaluate_run(run_dir, log=lambda s: None, eval_data="synthetic")
    assert result["data"]["name"] == "synthetic" and 0 <= result["few_label"]["ssl"] <= 1
    encoder, fresh = load_encoder_backbone(run_dir, 1, with_fresh=True)
    assert isinstance(encoder, ChannelAdapter)
    assert_fair_baseline(encoder, fresh())


def test_evaluation_data_smaller_than_the_pretraining_batch_is_fine(tmp_path, monkeypatch):
    """Evaluation never uses train.batch_size: 24 labelled images evaluate a run pretrained with batch 256."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    cfg = load_config({"data": {"name": "synthetic", "synthetic_size": 300}, "model": {"width": 4},
                       "train": {"steps": 1, "batch_size": 256},
                       "eval": {"labels": 10, "scratch_epochs": 1, "protocols": ["few-label"]}})
    run_dir, _ = pretrain(cfg, out=tmp_path / "run", progress=False, log=lambda s: None)
    small = colour_folder(tmp_path / "small", per_class=15)  # 30 images, 24 after the held-out fifth
    result = evaluate_run(run_dir, log=lambda s: None, eval_data=str(small))
    assert result["data"]["train"] == 24


def test_eval_labels_are_checked_against_the_evaluation_data_before_training(tmp_path, monkeypatch):
    from selfsup.errors import SelfSupError

    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    folder = colour_folder(tmp_path / "photos")
    cfg = load_config({"data": {"name": str(folder), "image_size": 16, "synthetic_size": 30},
                       "method": {"name": "colorization"}, "model": {"width": 4}, "train": {"steps": 1, "batch_size": 8},
                       "eval": {"data": "synthetic", "labels": 500}})
    with pytest.raises(SelfSupError, match="eval.labels=500"):
        pretrain(cfg, out=tmp_path / "run", progress=False, log=lambda s: None, evaluate_after=True)
    assert not (tmp_path / "run").exists()
