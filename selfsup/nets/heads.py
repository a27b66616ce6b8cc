"""Heads: small modules put on top of a backbone during pretraining and thrown away afterwards."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Projector/predictor MLP: (Linear-BN-ReLU) x (layers-1), then Linear (+ BN without affine if last_bn).

    SimCLR uses 2 layers with a 128-d output; BYOL/SimSiam add BN in every hidden layer; Barlow Twins uses 3.
    """
    if layers < 1:
        raise ValueError("an MLP needs at least one layer")
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        blocks.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*blocks)
