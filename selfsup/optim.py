"""Optimizers and schedules: SGD, AdamW and LARS, linear warm-up then cosine, as pure functions of the step."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from selfsup.errors import SelfSupError


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), SGD with momentum as SimCLR/BYOL use it.

    Each parameter tensor's update is scaled by the trust ratio eta * ||w|| / ||grad + wd * w||. Parameter groups
    with `lars=False` (biases and normalization weights, following SimCLR) get neither weight decay nor the ratio.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["lars"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    # Where either norm is zero (fresh zero-init weights) fall back to the plain step.
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, torch.ones_like(w_norm))
                    update = update.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights that get weight decay, biases and normalization parameters that do not)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    lars_trust: float = 1e-3) -> torch.optim.Optimizer:
    """An optimizer over `model`'s trainable parameters; biases and norms are excluded from weight decay.

    lars_trust is LARS's trust coefficient eta (ignored by sgd and adamw)."""
    decay, no_decay = param_groups(model)
    if name == "lars":
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars": False}]
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_trust)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise SelfSupError(f"unknown optimizer '{name}'; choose lars, sgd or adamw")


def lr_at(step: int, total_steps: int, peak: float, warmup_steps: int, min_fraction: float = 0.0) -> float:
    """Learning rate at `step` (0-based): linear warm-up to `peak`, then cosine down to `min_fraction * peak`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    low = peak * min_fraction
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))
