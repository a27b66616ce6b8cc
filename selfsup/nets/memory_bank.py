"""NPID's memory bank (Wu et al. 2018, Sec. 3.2): one L2-normalized embedding per training image.

Row i holds the embedding of image i (its row in the training tensor) from the last time image i was in a batch,
mixed with its earlier ones: v_i <- normalize(m v_i + (1 - m) f_i), m = 0.5 in the paper. The rows are a registered
buffer, so the method's state_dict (the checkpoint) carries them and a resumed run sees exactly the bank it left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBank(nn.Module):
    """(size, dim) normalized embeddings indexed by image, initialized to random unit vectors (global RNG)."""

    features: torch.Tensor

    def __init__(self, size: int, dim: int, momentum: float = 0.5):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a memory bank needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        if not 0 <= momentum < 1:
            raise ValueError(f"memory bank momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))  # (size, dim)

    def __len__(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """v_i <- normalize(m v_i + (1 - m) f_i) for each row i in indices (B,), f: (B, dim); indices distinct."""
        if embeddings.dim() != 2 or embeddings.shape != (indices.numel(), self.features.shape[1]):
            raise ValueError(f"update takes ({indices.numel()}, {self.features.shape[1]}) embeddings for "
                             f"{indices.numel()} indices, got {tuple(embeddings.shape)}")
        f = F.normalize(embeddings.detach().float(), dim=1)
        mixed = self.momentum * self.features[indices] + (1 - self.momentum) * f
        self.features.index_copy_(0, indices, F.normalize(mixed, dim=1).to(self.features.dtype))

    def sample(self, rows: int, count: int, generator: torch.Generator) -> torch.Tensor:
        """(rows, count) indices drawn uniformly with replacement (NPID's noise distribution P_n = 1/n)."""
        return torch.randint(len(self), (rows, count), generator=generator, device=generator.device)
