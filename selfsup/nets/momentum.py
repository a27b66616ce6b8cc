"""Momentum (EMA) networks and momentum schedules, shared by MoCo, BYOL and, later, DINO.

`EMA(online)` keeps a frozen copy of a module (MoCo's key encoder, BYOL's target network, DINO's teacher) that
follows the online module by an exponential moving average of its weights. Schedules are pure functions of the
step, so a resumed run continues them exactly without any state of their own.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of `online`, moved towards it by `update(online, m)`: theta_t <- m theta_t + (1 - m) theta_o.

    The copy starts equal to `online` (MoCo: the key encoder is initialized as the query encoder; BYOL: the target
    as the online network). Its parameters have requires_grad=False, so no loss can train it, the optimizer never
    sees it (selfsup.optim builds groups from trainable parameters only), and its state lives in the method's
    state_dict, so checkpoints carry it. Calling it runs the copy: `ema(x)` is `ema.module(x)`; callers run it
    under torch.no_grad() since nothing flows back through it anyway.

    Buffers (BatchNorm running statistics and batch counter, the backbone's input normalization) are COPIED from
    the online module at each update, neither averaged nor left to the copy's own forward passes (which is what
    the MoCo, BYOL and DINO reference codes do, updating only parameters). Training is the same either way: in
    train mode BatchNorm normalizes with the current batch's statistics, so running statistics never reach a loss.
    Copying makes the copy's buffers independent of how the method runs it (MoCo's key encoder runs once per BN
    group, which would fold 8 noisy 32-image statistics per step into its running averages), keeps constants such
    as the input normalization equal to the online module's, and an average of running averages would only lag
    twice. Evaluating the copy itself in eval mode therefore uses the online module's statistics.
    """

    def __init__(self, online: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(online).requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """In place: every parameter theta_t <- momentum * theta_t + (1 - momentum) * theta_o; buffers copied.

        momentum 1 leaves the copy as it is (exactly); 0 makes it a copy of `online`. `online` must be the module
        the copy was made from (same parameters and buffers in the same order).
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        for target, source in zip(self.module.parameters(), online.parameters(), strict=True):
            target.lerp_(source.detach(), 1.0 - momentum)  # target + (1 - m)(source - target)
        for target, source in zip(self.module.buffers(), online.buffers(), strict=True):
            target.copy_(source)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def cosine_momentum(step: int, total: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, Sec. 3): tau = final - (final - base) (cos(pi step / total) + 1) / 2.

    step: 0-based index of the optimizer step the update follows; tau = base at step 0 and rises to `final` at
    step = total (clamped beyond). With final = 1 the averaging window 1 / (1 - tau) grows without bound, so the
    target settles as training ends. Paper: base 0.996, final 1. DINO uses the same schedule (0.996 -> 1).
    """
    if total <= 0:
        return final
    progress = min(1.0, max(0.0, step / total))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
