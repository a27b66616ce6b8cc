"""A ring buffer of embeddings: MoCo's queue of negative keys (He et al. 2020, Sec. 3.2), later NPID's neighbours."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Queue(nn.Module):
    """The last `size` embeddings enqueued, (size, dim), with the oldest overwritten first.

    Rows and the write position are registered buffers, so the method's state_dict (the checkpoint) carries them
    and a resumed run sees exactly the queue it would have seen. Until `size` real embeddings have arrived, the
    remaining rows hold random unit vectors drawn from the global RNG at construction (as in MoCo's code): nearly
    orthogonal to everything in 128 dimensions, they add an almost constant term to a softmax denominator.
    """

    keys: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a queue needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        self.size = size
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))  # (size, dim)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # the row the next embedding goes to

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (B, dim) at the write position, wrapping around the end; B need not divide the size.

        When B > size only the last `size` keys are kept, exactly as if the B keys had been written one by one.
        Works on the device without reading the position back to the host.
        """
        if keys.dim() != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"enqueue takes (B, {self.keys.shape[1]}) keys, got {tuple(keys.shape)}")
        b = keys.shape[0]
        n = min(b, self.size)  # keys that survive this call: the last n
        rows = (self.ptr + torch.arange(b - n, b, device=self.keys.device)) % self.size  # (n,), all distinct
        self.keys.index_copy_(0, rows, keys[b - n:].detach().to(self.keys.dtype))
        self.ptr.copy_((self.ptr + b) % self.size)

    @property
    def negatives(self) -> torch.Tensor:
        """All rows, (size, dim), in storage order (InfoNCE does not depend on the order of its negatives).

        This is the buffer itself, not a copy: a loss computed from it must be backpropagated before the next
        enqueue, which is why MoCo enqueues in on_step_end, after the optimizer step.
        """
        return self.keys
