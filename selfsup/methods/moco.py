"""MoCo v2: He, Fan, Wu, Xie, Girshick. Momentum Contrast for Unsupervised Visual Representation Learning.
CVPR 2020. https://arxiv.org/abs/1911.05722 -- and Chen, Fan, Girshick, He. Improved Baselines with Momentum
Contrastive Learning. 2020. https://arxiv.org/abs/2003.04297

The query encoder (backbone + MLP head) sees one view of each image and must pick that image's key, the other view
through the key encoder, among K negatives: the keys of earlier batches, kept in a queue (InfoNCE, a (1 + K)-way
softmax). The key encoder is a momentum (EMA) copy of the query encoder, so keys in the queue, computed over the
last K / B steps, stay consistent with each other. MoCo v2 adds to MoCo an MLP head, blur in the views and
tau = 0.2. Features for evaluation are the query encoder's backbone.

Shuffling BN (paper Sec. 3.3). With BatchNorm, a query and its positive key computed from the same batch share
batch statistics, which the negatives from the queue (other batches) do not: the network can recognise its
positive by that shared signature instead of by content, a shortcut that lowers the loss and harms the features.
MoCo trains on 8 GPUs with per-GPU BN and shuffles the keys' sample order across GPUs (unshuffled after), so the
statistics of a query and of its key come from different subsets. One process has no GPUs to spread over; the
equivalent used here computes BN statistics in `bn_groups` groups of the batch for both encoders (as the 8 GPUs
do): queries in contiguous blocks (sample i in block i // (B / G)), keys in strided groups (sample i in group
i mod G), a fixed shuffle. Every key group then takes the same number of samples, B / G^2, from every query block
(when G^2 divides B: 4 of 32 at B = 256, G = 8), so a key shares no more of its statistics with its own query than
with any other query of the batch; with B = 16 and G = 4 the only sample a query's block and its key's group share
is the image itself. The batch order is a
seeded random permutation of the data each epoch, so the groups are random subsets, as after MoCo's shuffle.
bn_groups=1 normalizes over the whole batch in both encoders and lets the leak in (for ablations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.distributed import gather, local_rows, world_size
from selfsup.errors import SelfSupError
from selfsup.losses import info_nce_logits
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.momentum import EMA
from selfsup.nets.queue import Queue
from selfsup.views.recipes import Recipe


@dataclass
class MoCoConfig(MethodConfig):
    name: str = "moco"
    temperature: float = opt(0.2, "InfoNCE temperature tau (MoCo v2: 0.2; MoCo v1: 0.07).", min=1e-4)
    queue_size: int = opt(4096, "Negative keys K in the queue. Paper: 65,536 on ImageNet, the keys of the last 256 "
                          "batches of 256, 5% of an epoch of 1.28M images. 4096 is the last 16 batches of 256: 7% of "
                          "an epoch of 60k images, so a query seldom meets an earlier key of its own image among the "
                          "negatives, and the oldest key is 16 steps old, well inside the key encoder's 100-step "
                          "averaging window at momentum 0.99, so the queue stays consistent.", min=1)
    momentum: float = opt(0.99, "Key encoder momentum m: theta_k <- m theta_k + (1 - m) theta_q after every step. "
                          "Paper: 0.999 on ImageNet, a 1/(1-m) = 1000-step averaging window in a run of 1M steps. "
                          "Runs here are far shorter (an epoch of 60k images at batch 256 is 234 steps; a 15-minute "
                          "CPU run about 700): at 0.999 half of the key encoder would still be its random init after "
                          "700 steps (0.999^700 = 0.5). 0.99 averages over 100 steps; the paper's ablation (K = 4096) "
                          "finds 0.99 to 0.9999 all work, 0.9 clearly worse and 0 failing.", min=0, max=1)
    proj_hidden: int = opt(512, "Hidden width of the MLP head, fc-ReLU-fc without BN (MoCo v2: the backbone width, "
                           "2048 for ResNet-50).", min=1)
    proj_dim: int = opt(128, "Dimension of queries and keys (MoCo: 128).", min=1)
    bn_groups: int = opt(8, "Shuffling BN in one process: BN statistics in this many groups of the batch, contiguous "
                         "for queries and strided for keys, so a key's statistics have no more in common with its own "
                         "query's than with any other query's (paper: 8 GPUs of 32 images at batch 256). 1: "
                         "whole-batch BN in both encoders, which lets the BN leak in. Needs a batch of at least 2 per "
                         "group.", min=1)


def encode_in_groups(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: int,
                     order: torch.Tensor | None = None) -> torch.Tensor:
    """net over `groups` near-equal consecutive parts of x[order], so BatchNorm uses each part's own statistics.

    x: (B, ...) -> (B, D) in x's order (the parts' outputs are put back: "unshuffled"). order: a permutation of
    range(B), None for the identity (contiguous blocks).
    """
    shuffled = x if order is None else x[order]
    y = torch.cat([net(part) for part in shuffled.tensor_split(groups)])  # (B, D) in shuffled order
    if order is None:
        return y
    out = torch.empty_like(y)
    out[order] = y  # unshuffle: row order[j] of the batch is row j of y
    return out


def strided_order(b: int, groups: int, device: torch.device | None = None) -> torch.Tensor:
    """The permutation that puts samples i = g mod groups together: [0, G, 2G, ..., 1, 1 + G, ...]; (B,)."""
    return torch.argsort(torch.arange(b, device=device) % groups, stable=True)


class MoCo(Method):
    name = "moco"
    family = "contrastive"
    paper = "He et al., Momentum Contrast for Unsupervised Visual Representation Learning (v2: Chen et al. 2020)"
    year = 2020
    Config = MoCoConfig
    views_recipe = "moco-v2"
    global_batchnorm = False  # shuffling BN sets its own statistics, per process (encode_keys)

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: MoCoConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        # MoCo v2's head replaces the fc layer by fc-ReLU-fc; no BN (mlp() would put BN in the hidden layer).
        self.projector = nn.Sequential(nn.Linear(backbone.dim, cfg.proj_hidden), nn.ReLU(inplace=True),
                                       nn.Linear(cfg.proj_hidden, cfg.proj_dim))
        # The key encoder starts as a copy of the query encoder and then follows it by EMA (paper Algorithm 1).
        self.key_backbone = EMA(self.backbone)
        self.key_projector = EMA(self.projector)
        self.queue = Queue(cfg.queue_size, cfg.proj_dim)  # (K, proj_dim) normalized keys of earlier batches
        self._new_keys: torch.Tensor | None = None  # this step's keys, enqueued after the optimizer step
        self.collapse = CollapseMonitor()  # embedding statistics of the queries for the logs, warning on collapse
        self.notes = [] if cfg.bn_groups > 1 else [
            "moco: bn_groups=1, no shuffling BN: a query and its key share batch statistics (paper Sec. 3.3)"]

    def prepare(self, images: torch.Tensor) -> None:
        if self.cfg.queue_size >= len(images):
            self.notes.append(f"moco: the queue ({self.cfg.queue_size} keys) spans an epoch or more of the "
                              f"{len(images)} images, so queries meet earlier keys of their own images as negatives")

    def local_groups(self) -> int:
        """BN groups of this process: bn_groups counts groups of the global batch, split over the processes."""
        world = world_size()
        if self.cfg.bn_groups % world:
            raise SelfSupError(f"moco: method.bn_groups={self.cfg.bn_groups} BN groups cannot be shared by {world} "
                               f"processes; use --set method.bn_groups={max(1, self.cfg.bn_groups // world) * world}")
        return self.cfg.bn_groups // world

    def encode_queries(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> queries (B, proj_dim), BN statistics per contiguous block of the batch."""
        return encode_in_groups(lambda part: self.projector(self.backbone(part)), x, self.local_groups())

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> keys (B, proj_dim) from the key encoder, BN statistics per strided group.

        Under torchrun this is MoCo's shuffling BN across processes: the global batch's key views are put in the
        strided order, each process encodes its contiguous share of it in its groups, and the keys go back.
        """
        key_net = lambda part: self.key_projector(self.key_backbone(part))  # noqa: E731
        if world_size() == 1:
            order = strided_order(len(x), self.cfg.bn_groups, x.device)
            return encode_in_groups(key_net, x, self.cfg.bn_groups, order)
        everyone = gather(x)  # (global B, C, H, W)
        order = strided_order(len(everyone), self.cfg.bn_groups, x.device)
        mine = encode_in_groups(key_net, local_rows(everyone[order]), self.local_groups())
        keys = torch.empty_like(gathered := gather(mine))
        keys[order] = gathered  # unshuffle: row order[j] of the global batch is row j of the shuffled keys
        return local_rows(keys)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if len(images) < 2 * self.local_groups():
            raise SelfSupError(f"moco computes BN statistics in method.bn_groups={self.cfg.bn_groups} groups and "
                               f"needs at least 2 images per group, but the batch has {len(images)}; use "
                               f"--set method.bn_groups={max(1, len(images) // 2)} or a larger batch")
        x_q, x_k = self.views(images, self.generator)  # each (B, C, H, W) float in [0, 1]
        q = self.encode_queries(x_q)  # (B, proj_dim)
        k = self.encode_keys(x_k)  # (B, proj_dim), no gradient
        logits = info_nce_logits(q, k, self.queue.negatives, self.cfg.temperature)  # logits: B x (1 + K)
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # the positive is column 0
        loss = F.cross_entropy(logits, labels)  # = info_nce(q, k, queue, tau); the logits also give the accuracy
        # The loss was computed from the queue as it is: it may change only after backward, in on_step_end.
        self._new_keys = F.normalize(gather(k.float()), dim=1)  # the global batch's keys: one queue everywhere
        pretext_acc = (logits.detach().argmax(dim=1) == 0).float().mean().item()  # positive ranked first
        return loss, {"pretext_acc": pretext_acc, **self.collapse.stats(q)}  # z_std, z_rank: see collapse.py

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After the optimizer step: enqueue this step's keys (dropping the oldest), then move the key encoder."""
        if self._new_keys is not None:
            self.queue.enqueue(self._new_keys)
            self._new_keys = None
        self.key_backbone.update(self.backbone, self.cfg.momentum)
        self.key_projector.update(self.projector, self.cfg.momentum)
