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


def jacobian_frobenius_sq(code: torch.Tensor, inputs: torch.Tensor, mode: str = "projection", projections: int = 1,
                          generator: torch.Generator | None = None, distribution: str = "rademacher",
                          create_graph: bool = True) -> torch.Tensor:
    """The contractive penalty ||J_h(x)||_F^2 = sum_jk (dh_j / dx_k)^2 (Rifai et al. 2011, eq. 2), averaged over the batch.

    code: (B, K) computed from inputs (B, ...), which must require grad. mode "exact" takes one backward pass per
    code unit (K passes; for small codes); "projection" uses E_v ||v^T J||^2 = ||J||_F^2 for any v with
    E[v v^T] = I (Rademacher or Gaussian, drawn from `generator` on code's device), one backward pass per draw,
    averaged over `projections` draws: unbiased, and cheap whatever K is. create_graph keeps the graph so the
    penalty itself can be differentiated with respect to the weights (double backpropagation).

    Both modes read the Jacobian off the batch map (all B codes of all B inputs). When samples do not interact
    (eval mode, no BatchNorm) that is exactly the mean per-sample value; with BatchNorm in train mode each code
    also depends on the other inputs through the batch statistics, which adds cross-sample terms of relative
    size about 1/B (projection: their squares; exact: their products with the per-sample terms).
    """
    if code.dim() != 2 or code.shape[0] != inputs.shape[0]:
        raise ValueError(f"jacobian_frobenius_sq needs code (B, K) and inputs (B, ...), got {tuple(code.shape)} "
                         f"and {tuple(inputs.shape)}")
    if not inputs.requires_grad:
        raise ValueError("jacobian_frobenius_sq needs inputs that require grad and the code computed from them")
    b, k = code.shape
    acc = torch.promote_types(inputs.dtype, torch.float32)  # sum squares in fp32 at least, even under bf16 autocast
    total = code.new_zeros((), dtype=acc)
    if mode == "exact":
        for j in range(k):
            (grad,) = torch.autograd.grad(code[:, j].sum(), inputs, retain_graph=True, create_graph=create_graph)
            total = total + grad.to(acc).pow(2).sum()
        return total / b
    if mode != "projection":
        raise ValueError(f"mode must be 'exact' or 'projection', got {mode!r}")
    if projections < 1:
        raise ValueError(f"projections must be >= 1, got {projections}")
    for _ in range(projections):
        if distribution == "rademacher":
            v = torch.randint(0, 2, (b, k), generator=generator, device=code.device).to(code.dtype) * 2 - 1
        elif distribution == "gaussian":
            v = torch.randn((b, k), generator=generator, device=code.device, dtype=code.dtype)
        else:
            raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
        (grad,) = torch.autograd.grad(code, inputs, grad_outputs=v, retain_graph=True, create_graph=create_graph)
        total = total + grad.to(acc).pow(2).sum()  # ||v^T J||^2 summed over the batch
    return total / (b * projections)
