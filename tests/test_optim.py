"""Optimizers and the learning-rate schedule."""

import math

import pytest
import torch
from torch import nn

from selfsup.optim import LARS, build_optimizer, lr_at


def test_schedule_warmup_then_cosine():
    peak, total, warm = 1.0, 100, 10
    assert lr_at(0, total, peak, warm) == pytest.approx(0.1)
    assert lr_at(9, total, peak, warm) == pytest.approx(1.0)
    assert lr_at(10, total, peak, warm) == pytest.approx(1.0)
    assert lr_at(55, total, peak, warm) == pytest.approx(0.5)
    assert lr_at(100, total, peak, warm, min_fraction=0.1) == pytest.approx(0.1)
    assert lr_at(5, 100, 2.0, 0) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.05)))


@pytest.mark.parametrize("trust", [1e-3, 0.02])
def test_lars_step_matches_formula(trust):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    opt = build_optimizer(lin, "lars", lr=0.5, weight_decay=0.1, momentum=0.9, lars_trust=trust)
    assert isinstance(opt, LARS)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    lin(torch.randn(8, 4)).pow(2).sum().backward()
    gw, gb = lin.weight.grad.clone(), lin.bias.grad.clone()
    opt.step()
    u = gw + 0.1 * w0
    ratio = trust * w0.norm() / u.norm()  # the weight moves by lr * trust of its norm
    assert torch.allclose(lin.weight, w0 - 0.5 * ratio * u, atol=1e-7)
    # Biases: no weight decay and no trust ratio.
    assert torch.allclose(lin.bias, b0 - 0.5 * gb, atol=1e-7)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_biases_and_norms_get_no_weight_decay(name):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    opt = build_optimizer(model, name, lr=0.1, weight_decay=0.5, momentum=0.9)
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert sum(len(g["params"]) for g in no_decay) == 3  # linear bias, BN weight, BN bias
