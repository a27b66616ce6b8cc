"""Fine-tuning with a fraction of the labels: the semi-supervised table of SimCLR (Chen et al. 2020, Table 7) and
BYOL (Grill et al. 2020, Table 2) on our data.

For each label fraction (default 1%, 10%, 100%, class-balanced and seeded) the whole pretrained network plus a
new linear head is trained end to end, and beside it the same architecture from random weights, trained the same
way: same labelled images, same augmentation as the from-scratch baseline (crop 0.6-1 + flip), same optimizer,
schedule, seed and number of optimizer steps. The two rows then differ only in the weights they start from, so
the gap is what pretraining buys at that many labels. The budget is in steps rather than epochs so that the cost
is the same whatever the fraction (1% of the labels for as many epochs as 100% would be a hundred times cheaper
and a hundred times less trained).
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import torch
from torch import nn

from selfsup.data.splits import few_label_split
from selfsup.errors import SelfSupError
from selfsup.evaluate.supervised import classifier_accuracy, train_classifier

OPTIMIZER = "AdamW, warmup + cosine"


def fraction_split(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of round(fraction * labelled) labelled images (at least one per class), class-balanced.

    Balanced as the few-label split is: equal counts per class, the remainder to seeded random classes, and
    exactly `few_label_split(labels, n, seed)` whenever every class has enough images. A class too small for its
    share gives all its images and the others share the rest equally, so fraction 1.0 is every labelled image
    even when the classes differ in size. Unknown labels (-1) are never chosen.
    """
    if not 0 < fraction <= 1:
        raise SelfSupError(f"a label fraction must be in (0, 1], got {fraction}: use e.g. 0.01 for 1% of the labels")
    labels = torch.as_tensor(labels).long().flatten()
    known = labels[labels >= 0]
    if known.numel() == 0:
        raise SelfSupError("fine-tuning needs labelled images but every label is -1 (unknown): evaluate on a "
                           "labelled source, or use an image folder with one sub-folder per class")
    open_classes, open_counts = torch.unique(known, return_counts=True)
    n = max(len(open_classes), int(fraction * known.numel() + 0.5))
    # Water-filling: classes smaller than an equal share give every image; repeat until the rest can share equally.
    whole = torch.zeros(len(labels), dtype=torch.bool)
    while True:
        share = -(-n // len(open_classes))  # the largest per-class count an equal split of n can ask for
        short = open_counts < share
        if not bool(short.any()):
            break
        whole |= torch.isin(labels, open_classes[short])
        n -= int(open_counts[short].sum())
        open_classes, open_counts = open_classes[~short], open_counts[~short]
    rest = torch.where(torch.isin(labels, open_classes), labels, -1)
    return torch.cat([few_label_split(rest, n, seed), whole.nonzero().flatten()]).sort().values


def finetune(pretrained: nn.Module, fresh_backbone: Callable[[], nn.Module], train_images: torch.Tensor,
             train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
             fractions: Sequence[float] = (0.01, 0.1, 1.0), steps: int = 1000, batch_size: int = 128,
             lr: float = 1e-3, weight_decay: float = 5e-4, seed: int = 0, device: torch.device | str = "cpu",
             log: Callable[[str], None] = print) -> dict:
    """Fine-tune a copy of `pretrained` and a `fresh_backbone()`, each with a new linear head, on each label fraction.

    train_images / test_images: (N, C, H, W) uint8; labels (N,) class indices (-1 = unknown, skipped). The
    caller's `pretrained` is never modified. Returns a JSON-ready dict: the settings, and under "ssl" and
    "random_init" one entry per fraction (key str(fraction), e.g. "0.01") with the test top-1, the number of
    labels, the epochs the steps amount to (steps * batch / labels) and the seconds it took.
    """
    device = torch.device(device)
    fractions = [float(f) for f in fractions]
    _check_inputs(pretrained, train_images, train_labels, test_images, test_labels, num_classes, fractions, steps,
                  batch_size)
    known = test_labels >= 0
    test_images, test_labels = test_images[known], test_labels[known]
    result: dict = {"fractions": fractions, "steps": steps, "batch_size": batch_size, "lr": lr,
                    "weight_decay": weight_decay, "optimizer": OPTIMIZER, "seed": seed, "ssl": {}, "random_init": {}}

    def run(backbone: nn.Module, split: torch.Tensor) -> dict:
        t0 = time.perf_counter()
        backbone.requires_grad_(True)  # a frozen encoder (e.g. after a linear probe) is fine-tuned all the same
        torch.manual_seed(seed)  # both rows start from the same head
        model = nn.Sequential(backbone, nn.Linear(backbone.dim, num_classes))
        model = train_classifier(model, train_images[split], train_labels[split], steps, seed, device, batch_size,
                                 lr, weight_decay)
        top1 = classifier_accuracy(model, test_images, test_labels, device)
        n = len(split)
        return {"top1": top1, "labels": n, "epochs": round(steps * min(batch_size, n) / n, 2),
                "seconds": round(time.perf_counter() - t0, 2)}

    for fraction in fractions:
        split = fraction_split(train_labels, fraction, seed)
        key = str(fraction)
        result["ssl"][key] = ssl = run(copy.deepcopy(pretrained), split)
        torch.manual_seed(seed)
        result["random_init"][key] = random = run(fresh_backbone(), split)
        log(f"fine-tune {fraction * 100:g}% ({len(split)} labels, {steps} steps = {ssl['epochs']:.1f} epochs): "
            f"SSL {ssl['top1']:.4f}, random init {random['top1']:.4f} "
            f"({ssl['seconds']:.0f} s + {random['seconds']:.0f} s)")
    return result


def _check_inputs(pretrained: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
                  test_images: torch.Tensor, test_labels: torch.Tensor, num_classes: int, fractions: list[float],
                  steps: int, batch_size: int) -> None:
    """A SelfSupError naming the first bad argument of finetune, before any training starts."""
    if not hasattr(pretrained, "dim"):
        raise SelfSupError(f"fine-tuning needs a backbone that exposes .dim (its feature size); "
                           f"{type(pretrained).__name__} has none: pass the encoder, not the whole method")
    for name, images, labels in (("training", train_images, train_labels), ("test", test_images, test_labels)):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise SelfSupError(f"fine-tuning takes uint8 {name} images (N, C, H, W), got {images.dtype} of shape "
                               f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise SelfSupError(f"{images.shape[0]} {name} images need {images.shape[0]} labels, got shape "
                               f"{tuple(labels.shape)}")
        if labels.numel() and int(labels.max()) >= num_classes:
            raise SelfSupError(f"a {name} label is {int(labels.max())} but num_classes is {num_classes}: "
                               "pass the number of classes of the data")
    if not bool((test_labels >= 0).any()):
        raise SelfSupError("fine-tuning needs labelled test images, but every test label is -1 (unknown)")
    if not fractions or len(set(fractions)) != len(fractions):
        raise SelfSupError(f"fine-tuning needs distinct label fractions, got {fractions}: use e.g. 0.01 0.1 1.0")
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise SelfSupError(f"a label fraction must be in (0, 1], got {fraction}: use e.g. 0.01 for 1% of the "
                               "labels")
    if steps < 1 or batch_size < 1:
        raise SelfSupError(f"fine-tuning needs at least one step of at least one image, got steps={steps}, "
                           f"batch_size={batch_size}")
