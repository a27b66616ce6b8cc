"""Losses as pure functions of tensors. Each is tested against a slow reference written from its paper's formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalized-temperature cross-entropy (Chen et al. 2020, eq. 1), averaged over all 2B anchors.

    z1, z2: (B, D) embeddings of two views; row i of z1 and row i of z2 are the positive pair, and every other
    of the 2B - 2 embeddings in the batch is a negative.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two (B, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):  # similarities / tau in fp32 even under bf16 autocast
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D)
        logits = z @ z.t() / temperature  # (2B, 2B) cosine similarities / tau
    # An embedding is never its own negative: remove the diagonal from the softmax.
    logits.fill_diagonal_(float("-inf"))
    # The positive of anchor i is i + B (and of i + B is i).
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)
