"""Sinkhorn-Knopp: soft assignments of N samples to K clusters that respect given cluster sizes.

Entropic optimal transport (Cuturi 2013, "Sinkhorn distances"): among plans Q (N, K) with row sums r and column
sums c, find the one maximizing <Q, S> + epsilon * H(Q) for scores S. The answer is Q = diag(a) exp(S / epsilon)
diag(b); Sinkhorn's iterations find a and b by rescaling columns and rows in turn.

Self-labelling (Asano et al. 2020, SeLa) uses it to turn a network's predictions into pseudo-labels that put
N / K samples in every cluster (r = 1/N, c = 1/K), so no cluster can swallow the data; SeLa writes the entropy
weight as lambda applied to log-probabilities: pass scores = log_softmax(logits) and epsilon = 1 / lambda
(SeLa: lambda = 25). SwAV (Caron et al. 2020) computes a batch's codes the same way from prototype scores with
epsilon = 0.05 and only 3 iterations; its codes are the plan times N (each row a distribution over prototypes).
"""

from __future__ import annotations

import math

import torch

from selfsup.errors import SelfSupError


def _log_marginal(sums: torch.Tensor | None, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    if sums is None:
        return torch.full((n,), -math.log(n), dtype=like.dtype, device=like.device)  # uniform, total mass 1
    if tuple(sums.shape) != (n,) or bool((sums < 0).any()):
        raise SelfSupError(f"sinkhorn {name} must be {n} non-negative numbers, got shape {tuple(sums.shape)}"
                           + (" with negative entries" if tuple(sums.shape) == (n,) else ""))
    return sums.to(like).log()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, row_sums: torch.Tensor | None = None,
             col_sums: torch.Tensor | None = None) -> torch.Tensor:
    """Transport plan (N, K) for scores (N, K): rows sum to row_sums (N,), columns to col_sums (K,).

    Defaults are SwAV's: epsilon 0.05, 3 iterations, uniform marginals 1/N and 1/K (equipartition, total mass 1).
    Each iteration rescales the columns, then the rows (SwAV's order), so the rows always match exactly and the
    columns to within the convergence of the iterations; a small epsilon (sharp plans) needs more of them.
    Computed in log space (a softmax-like logsumexp, stable for any epsilon), in float64 when the scores are,
    else float32, also under autocast. The plan is a target, so no gradient flows through it.
    """
    if scores.dim() != 2:
        raise SelfSupError(f"sinkhorn takes scores (N, K), got shape {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise SelfSupError(f"sinkhorn needs epsilon > 0 and iterations >= 1, got {epsilon} and {iterations}")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    with torch.autocast(scores.device.type, enabled=False):
        logits = scores.to(dtype) / epsilon  # (N, K) log of the unscaled plan exp(S / epsilon)
        n, k = logits.shape
        log_r = _log_marginal(row_sums, n, "row_sums", logits)  # (N,)
        log_c = _log_marginal(col_sums, k, "col_sums", logits)  # (K,)
        total_r, total_c = float(log_r.exp().sum()), float(log_c.exp().sum())
        if not math.isclose(total_r, total_c, rel_tol=1e-4):
            raise SelfSupError(f"sinkhorn row_sums total {total_r:.6g} but col_sums total {total_c:.6g}: a plan "
                               "moves the same mass out of its rows as into its columns; rescale one of them")
        log_a = torch.zeros_like(log_r)  # (N,) row scaling, in log space
        for _ in range(iterations):
            log_b = log_c - torch.logsumexp(logits + log_a[:, None], dim=0)  # (K,) columns to col_sums
            log_a = log_r - torch.logsumexp(logits + log_b[None, :], dim=1)  # (N,) rows to row_sums
        return (logits + log_a[:, None] + log_b[None, :]).exp()


def hard_labels(plan: torch.Tensor) -> torch.Tensor:
    """SeLa's pseudo-labels: each sample's cluster of largest mass in the plan (N, K) -> (N,) int64.

    Asano et al. 2020 round the soft plan this way before training on it with cross-entropy. The rounding does not
    enforce the column sums, so the labels are close to equipartitioned only as far as the plan is close to hard
    (a small epsilon, i.e. a large lambda, makes it so).
    """
    if plan.dim() != 2:
        raise SelfSupError(f"hard_labels takes a transport plan (N, K), got shape {tuple(plan.shape)}")
    return plan.argmax(dim=1)
