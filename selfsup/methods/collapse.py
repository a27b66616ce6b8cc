"""Collapse monitor for joint-embedding methods: do the embeddings still tell the images apart?

A joint-embedding method (SimCLR, MoCo, BYOL, SimSiam, Barlow Twins, VICReg) can reach a low loss by giving every
image the same embedding (complete collapse) or embeddings along a single direction (dimensional collapse); the
features are then useless while the loss looks fine. Two statistics of a batch of embeddings z (N, D) show it:

- z_std: the per-dimension standard deviation of the L2-normalized embeddings, averaged over dimensions. Healthy
  embeddings spread over the sphere give about 1/sqrt(D); identical directions give 0.
- z_rank: the effective rank exp(H(p)), p = s / sum(s), of the singular values s of the batch (Roy & Vetterli
  2007), not centred (as RankMe, Garrido et al. 2023, uses it): between 1 (every embedding a multiple of one
  vector) and min(N, D); 0 for an all-zero batch. Low values with a fine z_std mean dimensional collapse.

Use by composition. In the method:

    self.collapse = CollapseMonitor(hint="raise method.lambd")   # in __init__
    logs = self.collapse.stats(z1)                                # in loss(): {"z_std": ..., "z_rank": ...}

with z1 the embeddings of one view as the loss compares them (SimCLR, MoCo, BYOL, SimSiam: the projector output,
which the loss normalizes; Barlow Twins: the standardized projector output its cross-correlation is made of, so
for Barlow Twins z_std is about 1/sqrt(D) by construction and only the rank can show a collapse). The
training loop passes every metrics.jsonl row to `method.collapse.check(row)` and prints the one warning it returns.
Costs one (min(N, D))^2 eigendecomposition a step, under no_grad.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

# Warn below STD_FRACTION / sqrt(D). The D per-dimension variances of unit vectors sum to 1 - |mean|^2, about
# 1 - (mean cosine between two embeddings). Spread evenly over k of the D dimensions they give
# z_std * sqrt(D) = sqrt((k / D) (1 - mean cosine)), below 0.1 only when (k / D) (1 - mean cosine) < 0.01: the
# embeddings lie within about 8 degrees of each other (mean cosine > 0.99), or vary in under 1% of the dimensions.
# The projectors of SimCLR and VICReg give about 0.8 at initialization, Barlow Twins' standardized output about 1.
STD_FRACTION = 0.1
# Warn below this effective rank: below 1.5, one singular value is at least 6 times all the others together.
MIN_RANK = 1.5
MIN_RANK_ROOM = 8  # the rank test runs only when a batch could have rank 8 or more (min(N, D) >= 8)


@torch.no_grad()
def embedding_stats(z: torch.Tensor) -> dict[str, float]:
    """{"z_std", "z_rank"} of a batch of embeddings z (N, D), N >= 2 (see the module docstring); float64 inside."""
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"embedding_stats needs a batch of embeddings (N, D) with N >= 2, got {tuple(z.shape)}")
    z = z.detach().double()
    z_std = F.normalize(z, dim=1).std(dim=0, unbiased=False).mean()
    n, d = z.shape
    gram = z.t() @ z if n >= d else z @ z.t()  # gram: min(N, D) x min(N, D), eigenvalues s^2
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()  # the singular values of the batch
    if float(s.sum()) <= 0:
        return {"z_std": float(z_std), "z_rank": 0.0}
    p = s / s.sum()
    p = p[p > 0]
    return {"z_std": float(z_std), "z_rank": float(torch.exp(-(p * p.log()).sum()))}


class CollapseMonitor:
    """Embedding statistics for a method's logs, and one warning per run when they say the embeddings collapsed.

    hint: what to try first for this method (e.g. "raise method.lambd (now 0.002)"); it leads the generic advice.
    The embedding width D is read from the batches given to `stats`; `check` says nothing before the first.
    """

    def __init__(self, hint: str = ""):
        self.hint = hint
        self.dim: int | None = None
        self.warned = False

    def stats(self, z: torch.Tensor) -> dict[str, float]:
        """z: (N, D) embeddings of one view -> {"z_std", "z_rank"} to add to the method's logs."""
        self.dim = z.shape[-1]
        self.max_rank = min(z.shape[0], z.shape[-1])
        return embedding_stats(z)

    def check(self, row: Mapping[str, Any]) -> str | None:
        """A metrics row (with z_std, z_rank averaged over its window) -> the warning line, the first time only."""
        if self.warned or self.dim is None or "z_std" not in row:
            return None
        z_std, z_rank, d = float(row["z_std"]), float(row.get("z_rank", math.inf)), self.dim
        max_rank = getattr(self, "max_rank", d)
        # A batch of N embeddings has rank at most min(N, D); BatchNorm-centred batches of 2 always have rank 1,
        # so the rank test needs room to tell a line from a healthy batch.
        rank_testable = max_rank >= MIN_RANK_ROOM
        if z_std >= STD_FRACTION / math.sqrt(d) and (z_rank >= MIN_RANK or not rank_testable):
            return None
        self.warned = True
        step = f" at step {row['step']}" if "step" in row else ""
        what = ("every image gets nearly the same embedding" if z_std < STD_FRACTION / math.sqrt(d)
                else "the embeddings vary along a single direction")
        return (f"warning: the embeddings collapsed{step}: {what} (z_std {z_std:.2g}, healthy about 1/sqrt({d}) = "
                f"{1 / math.sqrt(d):.2g}; effective rank {z_rank:.3g} of at most {max_rank}), so the features will be of little use. "
                f"Usual causes: too high a learning rate, too weak augmentations, or a defence against collapse that "
                f"is off or too weak (BYOL/SimSiam: no predictor or no stop-gradient; Barlow Twins: too small "
                f"lambda; VICReg: too small a variance weight). Try: {self.hint + '; ' if self.hint else ''}"
                f"a 3x lower train.lr; views.recipe=auto.")
