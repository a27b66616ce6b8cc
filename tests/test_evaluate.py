"""Probes on data with known structure."""

import torch

from selfsup.evaluate.knn import knn_predict, knn_top1
from selfsup.evaluate.linear import WEIGHT_DECAYS, fit_logistic, linear_probe, select_weight_decay


def gaussian_classes(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 4
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return x, labels


def test_linear_probe_recovers_separable_gaussians():
    x, y = gaussian_classes(20, 10, 32, 1.0, seed=0)  # 200 labels, as in the few-label experiment
    xt, yt = gaussian_classes(100, 10, 32, 1.0, seed=0)
    # Same centres (same seed), fresh noise for the test set.
    xt = xt + 0.0
    result = linear_probe(x, y, xt, yt, 10)
    assert result["top1"] >= 0.95
    assert result["weight_decay"] > 0 and 0 <= result["val_top1"] <= 1


def test_linear_probe_is_at_chance_on_noise():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(400, 16, generator=g), torch.randint(0, 4, (400,), generator=g)
    xt, yt = torch.randn(400, 16, generator=g), torch.randint(0, 4, (400,), generator=g)
    assert linear_probe(x, y, xt, yt, 4)["top1"] < 0.4


def test_fit_logistic_reaches_the_optimum():
    x, y = gaussian_classes(30, 3, 5, 3.0, seed=2)
    model = fit_logistic(x, y, 3, weight_decay=1e-2)
    w = model.weight.clone().requires_grad_(True)
    b = model.bias.clone().requires_grad_(True)
    xs = (x - model.mean) / model.std
    loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + 0.5e-2 * (w * w).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_weight_decay_ties_go_to_the_stronger_regularization():
    x, y = gaussian_classes(8, 4, 8, 0.1, seed=3)  # separable: every weight decay validates at 100%
    wd, acc, model = select_weight_decay(x, y, 4)
    assert acc == 1.0 and wd == max(WEIGHT_DECAYS) and model is not None


def test_folds_stay_balanced_with_one_image_per_class():
    from selfsup.evaluate.linear import _folds

    labels = torch.arange(10)  # one image of each of 10 classes
    folds = _folds(labels, 5, seed=0)
    assert [len(f) for f in folds] == [2] * 5
    assert sorted(torch.cat(folds).tolist()) == list(range(10))
    x, y = gaussian_classes(1, 10, 8, 0.1, seed=1)
    wd, acc, model = select_weight_decay(x, y, 10)  # every fold's training side has 8 images, none is empty
    assert wd in WEIGHT_DECAYS and 0 <= acc <= 1 and model is not None
    wd, acc, model = select_weight_decay(x[:1], y[:1], 10)  # one image: nothing to validate on, no error
    assert wd == max(WEIGHT_DECAYS) and model is None


def test_warm_start_reaches_the_same_optimum():
    x, y = gaussian_classes(30, 3, 6, 3.0, seed=5)
    cold = fit_logistic(x, y, 3, 1e-2, max_iter=500)
    warm = fit_logistic(x, y, 3, 1e-2, max_iter=500, init=fit_logistic(x, y, 3, 1e-1))
    assert torch.allclose(cold.weight, warm.weight, atol=1e-3)


def test_knn_votes_with_temperature_weights():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[0.1, 1.0], [1.0, 0.05]])
    assert knn_predict(train, labels, test, 2, k=1).tolist() == [1, 0]
    # With k=3 and a sharp temperature the nearest neighbour still dominates two farther votes.
    assert knn_predict(train, labels, test, 2, k=3, temperature=0.01).tolist() == [1, 0]
    x, y = gaussian_classes(50, 5, 16, 0.5, seed=4)
    assert knn_top1(x, y, x, y, 5, k=20) == 1.0


def test_backbone_trains_after_feature_extraction():
    from selfsup.evaluate.features import extract
    from selfsup.nets.backbones import build_backbone

    net = build_backbone("small-cnn", 1, width=4)
    extract(net, torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8))
    net.train()
    net(torch.rand(4, 1, 28, 28)).sum().backward()  # inference tensors would raise here
    assert all(p.grad is not None for p in net.parameters())
