"""Supervised training of a whole classifier (backbone + linear head) on labelled images, and its test top-1.

Two experiments share the loop: the from-scratch baseline of the few-label protocol (fresh weights, a number of
epochs over the few labels) and fine-tuning (evaluate/finetune.py: pretrained or fresh weights, a budget of
optimizer steps). One loop means the two differ only in the weights they start from and the budget they get.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.evaluate.features import extract
from selfsup.optim import lr_at
from selfsup.views.recipes import ViewsConfig, build as build_views


def train_from_scratch(backbone: nn.Module, num_classes: int, images: torch.Tensor, labels: torch.Tensor,
                       epochs: int, seed: int, device: torch.device, batch_size: int = 64,
                       lr: float = 2e-3, weight_decay: float = 5e-4) -> nn.Module:
    """Train backbone + linear head with cross-entropy on (images uint8, labels); returns the trained classifier.

    Light augmentation (crop 0.6-1 and flip) and AdamW with a cosine schedule: what a practitioner would do with
    200 labels and no pretraining. Hyperparameters are fixed, not tuned on the test split.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(backbone, nn.Linear(backbone.dim, num_classes))
    n = images.shape[0]
    steps = epochs * max(1, n // min(batch_size, n))
    return train_classifier(model, images, labels, steps, seed, device, batch_size, lr, weight_decay)


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int,
                     device: torch.device, batch_size: int = 64, lr: float = 2e-3,
                     weight_decay: float = 5e-4) -> nn.Module:
    """Train every parameter of `model` (images -> logits) for `steps` AdamW steps; returns it in eval mode.

    images: (N, C, H, W) uint8, labels: (N,) class indices. Each batch of min(batch_size, N) images is a fresh
    crop 0.6-1 + flip of each image; batches walk through a new seeded permutation every N // batch images (the
    last partial batch of an epoch is dropped). The learning rate warms up over the first 5% of the steps, then
    follows a cosine to zero. Batch-norm layers train in train mode (batch statistics), as in fine-tuning papers.
    """
    model = model.to(device, memory_format=torch.channels_last)
    views = build_views(ViewsConfig(recipe="supervised"), images.shape[1], images.shape[-1], n_views=1)
    g = torch.Generator(device=device).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = images.shape[0]
    batch_size = min(batch_size, n)
    steps_per_epoch = max(1, n // batch_size)
    images, labels = images.to(device), labels.to(device)
    model.train()
    for step in range(steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(n, generator=order_gen).to(device)
        i = step % steps_per_epoch
        idx = order[i * batch_size:(i + 1) * batch_size]
        (x,) = views(images[idx], g)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_steps=steps // 20)
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                        batch_size: int = 512) -> float:
    """Top-1 of a full classifier (backbone + head) on uint8 images, in eval mode."""
    logits = extract(model, images, batch_size, device)
    return float((logits.argmax(1) == labels).float().mean())
