"""Losses against slow references written from the papers' formulas."""

import math

import pytest
import torch

from selfsup.losses import nt_xent


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR eq. 1 written as loops: l(i, j) = -log exp(s_ij/tau) / sum_{k != i} exp(s_ik/tau), averaged over 2B."""
    z = torch.cat([z1, z2]).double()
    n = z.shape[0]
    b = n // 2

    def sim(u, v):
        return float(u @ v / (u.norm() * v.norm()))

    total = 0.0
    for i in range(n):
        j = (i + b) % n
        denom = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(n) if k != i)
        total += -math.log(math.exp(sim(z[i], z[j]) / tau) / denom)
    return total / n


@pytest.mark.parametrize("batch", [2, 3, 8, 17])
@pytest.mark.parametrize("tau", [0.07, 0.2, 0.5, 1.0])
def test_nt_xent_matches_reference(batch, tau):
    g = torch.Generator().manual_seed(batch * 100 + int(tau * 100))
    z1, z2 = torch.randn(batch, 16, generator=g), torch.randn(batch, 16, generator=g)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(nt_xent_reference(z1, z2, tau), rel=1e-5, abs=1e-6)


def test_nt_xent_is_low_for_aligned_views_and_symmetric():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 64, generator=g)
    aligned = nt_xent(z, z + 0.01 * torch.randn(32, 64, generator=g), 0.1)
    shuffled = nt_xent(z, z[torch.randperm(32, generator=g)], 0.1)
    assert aligned < shuffled
    z2 = torch.randn(32, 64, generator=g)
    assert nt_xent(z, z2, 0.5).item() == pytest.approx(nt_xent(z2, z, 0.5).item(), rel=1e-6)


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        nt_xent(torch.zeros(4, 8), torch.zeros(5, 8))
