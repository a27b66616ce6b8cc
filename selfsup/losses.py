"""Losses as pure functions of tensors. Each is tested against a slow reference written from its paper's formula."""

from __future__ import annotations

import math

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


def info_nce_logits(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's logits (He et al. 2020, Algorithm 1): (B, 1 + K), the positive in column 0, all divided by tau.

    q: (B, D) queries; k: (B, D) their positive keys; negatives: (K, D) keys of other images (MoCo: the queue).
    All three are L2-normalized here; k and negatives are constants (detached), as MoCo's keys are.
    """
    if q.shape != k.shape or q.dim() != 2 or negatives.dim() != 2 or negatives.shape[1] != q.shape[1]:
        raise ValueError(f"info_nce needs q, k (B, D) and negatives (K, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(negatives.shape)}")
    with torch.autocast(q.device.type, enabled=False):  # similarities / tau in fp32 even under bf16 autocast
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.detach().float(), dim=1)
        negatives = F.normalize(negatives.detach().float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)  # (B, 1): q . k+
        negative = q @ negatives.t()  # (B, K): q . k_i
        return torch.cat([positive, negative], dim=1) / temperature  # logits: B x (1 + K)


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE as MoCo uses it (He et al. 2020, eq. 1), averaged over the batch:

    L_q = -log exp(q . k+ / tau) / (exp(q . k+ / tau) + sum_i exp(q . k_i / tau)),

    a (1 + K)-way softmax classifier that must pick the positive k+ among the K negatives k_i. Shapes as in
    `info_nce_logits`. MoCo v1: tau = 0.07; MoCo v2 (Chen et al. 2020): tau = 0.2.
    """
    logits = info_nce_logits(q, k, negatives, temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # the positive is column 0
    return F.cross_entropy(logits, labels)


def npid_nce(positive: torch.Tensor, negatives: torch.Tensor, temperature: float, n_data: int,
             log_z: torch.Tensor | float) -> torch.Tensor:
    """NPID's noise-contrastive estimation loss (Wu et al. 2018, eqs. 3-6), averaged over the batch.

    positive: (B,) cosine similarity v_i . f_i of each embedding f_i to its own memory entry v_i; negatives: (B, m)
    similarities to m entries drawn from the noise distribution P_n = 1/n (n = n_data). With the non-parametric
    softmax estimated as P(i | f) = exp(v_i . f / tau) / Z (Z a constant, estimated once by Monte Carlo: log_z),
    the probability that a sample came from the data rather than from the m noise draws is
    h(i, f) = P(i | f) / (P(i | f) + m P_n(i)), and

        J_NCE = -log h(i, f_i) - sum_j log(1 - h(j, f_i)).

    Computed in log space: -log h = softplus(log(m / n) - log P), -log(1 - h) = softplus(log P - log(m / n)).
    """
    if positive.dim() != 1 or negatives.dim() != 2 or negatives.shape[0] != positive.shape[0]:
        raise ValueError(f"npid_nce needs positive (B,) and negatives (B, m), got {tuple(positive.shape)} and "
                         f"{tuple(negatives.shape)}")
    with torch.autocast(positive.device.type, enabled=False):
        m = negatives.shape[1]
        log_noise = math.log(m / n_data)  # log(m P_n(i))
        log_p_pos = positive.float() / temperature - log_z  # (B,)
        log_p_neg = negatives.float() / temperature - log_z  # (B, m)
        per_image = F.softplus(log_noise - log_p_pos) + F.softplus(log_p_neg - log_noise).sum(dim=1)  # (B,)
        return per_image.mean()


def _cosine_to_target(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample cos(p, stopgrad(z)) in fp32: p, z (B, D) -> (B,)."""
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(f"needs predictions and targets of the same shape (B, D), got {tuple(p.shape)} and "
                         f"{tuple(z.shape)}")
    with torch.autocast(p.device.type, enabled=False):
        return (F.normalize(p.float(), dim=1) * F.normalize(z.detach().float(), dim=1)).sum(dim=1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """BYOL's symmetric regression loss (Grill et al. 2020, eq. 2 and L_total = L + L~), each term a batch mean:

    ||p1/||p1|| - sg(z2)/||z2||||^2 + ||p2/||p2|| - sg(z1)/||z1||||^2, each term = 2 - 2 cos; in [0, 8].

    p1, p2: (B, D) online predictions of views 1 and 2; z1, z2: (B, D) target projections of views 1 and 2.
    The targets are constants (stop-gradient): no gradient reaches z1 or z2.
    """
    return (2 - 2 * _cosine_to_target(p1, z2)).mean() + (2 - 2 * _cosine_to_target(p2, z1)).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetric loss (Chen & He 2021, eq. 1-4): D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2; in [-1, 1].

    D(p, z) = -p/||p|| . z/||z||, the negative cosine similarity averaged over the batch. p1, p2: (B, D)
    predictor outputs of views 1 and 2; z1, z2: (B, D) projector outputs of the same network. The stop-gradient
    on z is what keeps SimSiam from collapsing (Sec. 4.1 of the paper): no gradient reaches z1 or z2 here.
    """
    return -_cosine_to_target(p1, z2).mean() / 2 - _cosine_to_target(p2, z1).mean() / 2


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


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each dimension of z (B, D) centred and scaled along the batch: (z - mean) / sqrt(var + eps), var biased.

    What Barlow Twins' BatchNorm without affine parameters does in training mode (eps = 1e-5 as in BatchNorm1d).
    """
    return (z - z.mean(dim=0)) / (z.var(dim=0, unbiased=False) + eps).sqrt()


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float,
                 eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, eqs. 1-2) and the cross-correlation matrix.

    z1, z2: (B, D) embeddings of two views; row b of each comes from the same image. Each dimension is standardized
    along the batch (`standardize`), so C = z1^T z2 / B (D x D) is the cross-correlation of eq. 2 (in [-1, 1]
    when eps = 0), and

        loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

    The first term makes each dimension invariant to the views, the second decorrelates the dimensions. Paper:
    lambd = 5e-3 with D = 8192. Even for independent dimensions the off-diagonal entries scatter with an RMS of
    about 1/sqrt(B) (sampling noise), a floor the second term cannot go below. Computed in fp32 at least.
    Returns (scalar loss, C); C carries the graph, detach it to keep it.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"barlow_twins needs two (B, D) tensors of equal shape with B >= 2, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    b, acc = z1.shape[0], torch.promote_types(z1.dtype, torch.float32)  # fp32 at least, even under bf16 autocast
    with torch.autocast(z1.device.type, enabled=False):
        c = standardize(z1.to(acc), eps).t() @ standardize(z2.to(acc), eps) / b  # c: D x D
    on_diag = (1 - c.diagonal()).pow(2).sum()
    off_diag = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on_diag + lambd * off_diag, c


def vicreg(z1: torch.Tensor, z2: torch.Tensor, inv_weight: float = 25.0, var_weight: float = 25.0,
           cov_weight: float = 1.0, gamma: float = 1.0,
           eps: float = 1e-4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg's variance-invariance-covariance loss (Bardes, Ponce, LeCun 2022, eqs. 1-6).

    z1, z2: (B, D) embeddings of two views; row b of each comes from the same image. With Var and Cov the unbiased
    estimates along the batch (1 / (B - 1)):

        invariance  s = mean_{b,j} (z1_bj - z2_bj)^2                          mean squared error
        variance    v(Z) = mean_j relu(gamma - sqrt(Var(Z_:j) + eps))         a hinge on each dimension's std
        covariance  c(Z) = sum_{i != j} Cov(Z)_ij^2 / D                       decorrelates the dimensions
        loss = inv_weight * s + var_weight * (v(Z1) + v(Z2)) / 2 + cov_weight * (c(Z1) + c(Z2))

    Paper defaults: weights 25 / 25 / 1, gamma = 1, eps = 1e-4. Eq. 6 of the paper writes mu [v(Z) + v(Z')] and
    eq. 5 sums the squared error over dimensions; the authors' code (with which 25 / 25 / 1 were tuned) averages the
    two variance terms and the squared error over dimensions, as here. Computed in fp32 at least.
    Returns (scalar loss, {"invariance": s, "variance": (v(Z1) + v(Z2)) / 2, "covariance": c(Z1) + c(Z2)}), so
    loss = inv_weight * invariance + var_weight * variance + cov_weight * covariance.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"vicreg needs two (B, D) tensors of equal shape with B >= 2, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    (b, d), acc = z1.shape, torch.promote_types(z1.dtype, torch.float32)  # fp32 at least, even under bf16 autocast
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.to(acc), z2.to(acc)
        invariance = F.mse_loss(z1, z2)
        variance, covariance = z1.new_zeros(()), z1.new_zeros(())
        for z in (z1, z2):
            z = z - z.mean(dim=0)  # z: B x D, centred
            variance = variance + F.relu(gamma - (z.var(dim=0) + eps).sqrt()).mean() / 2
            cov = z.t() @ z / (b - 1)  # cov: D x D
            covariance = covariance + (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d
    loss = inv_weight * invariance + var_weight * variance + cov_weight * covariance
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}
