"""Transformer parts shared by the vit-tiny backbone and MAE's decoder: pre-norm blocks and 2D sine-cosine positions.

Written with torch.nn primitives and F.scaled_dot_product_attention, after ViT (Dosovitskiy et al., An Image is Worth
16x16 Words, ICLR 2021) and its pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x)).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def attention_heads(dim: int, head_dim: int = 64) -> int:
    """Heads for a `dim`-wide transformer: about dim / 64 (DeiT-Ti: 192 -> 3), at least 1, and a divisor of dim.

    Widths under 128 get one head (a width of 4 for tests: one head of 4); a width that dim // 64 does not divide
    gets the largest head count below it that does (200 -> 2 heads of 100), so every head has the same size.
    """
    heads = max(1, dim // head_dim)
    while dim % heads:
        heads -= 1
    return heads


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Within it, attention runs on PyTorch's plain math kernel, whose backward pass can itself be differentiated.

    For double backpropagation through a transformer (the contractive autoencoder's Jacobian penalty): the fused
    CPU attention kernel used otherwise is faster but has no derivative of its backward pass. A no-op for CNNs.
    """
    with sdpa_kernel([SDPBackend.MATH]):
        yield


class Attention(nn.Module):
    """Multi-head self-attention: (B, N, D) -> (B, N, D), one qkv projection, softmax(q k^T / sqrt(d)) v per head."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # each (B, h, N, d/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP of mlp_ratio * dim hidden units."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = max(1, int(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialization: xavier-uniform linear weights, zero biases, LayerNorm at (1, 0). Use with .apply()."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions (N,) -> (N, dim): [sin(pos * w_i), cos(pos * w_i)] with w_i = 10000^(-i / (dim/2)), as in the
    Transformer (Vaswani et al. 2017); an odd dim gets a last column of zeros."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32, device=positions.device) / max(half, 1))
    angles = positions.float()[:, None] * omega[None]  # (N, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (N, 2 * half)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(len(positions), 1)], dim=1)
    return emb


def sincos_2d(rows: int, cols: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 2D sine-cosine positional embeddings of a rows x cols grid in row-major order: (rows * cols, dim).

    The first half of the channels encodes the row, the second half the column (MAE's `get_2d_sincos_pos_embed`,
    He et al. 2022). Nothing is learned, so any grid size works with the same weights.
    """
    row_dim = dim // 2
    r = sincos_1d(torch.arange(rows, device=device), row_dim)  # (rows, dim/2)
    c = sincos_1d(torch.arange(cols, device=device), dim - row_dim)  # (cols, dim - dim/2)
    grid = torch.cat([r[:, None, :].expand(rows, cols, -1), c[None, :, :].expand(rows, cols, -1)], dim=-1)
    return grid.reshape(rows * cols, dim)
