"""NPID: Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric Instance Discrimination. CVPR 2018.
https://arxiv.org/abs/1805.01978

Every training image is its own class. Instead of a weight vector per class (a 60,000-way classifier), the class
of image i is represented by v_i, the image's own embedding from earlier steps, kept in a memory bank (one row per
training image, nets/memory_bank.py). The backbone and a linear head map one augmented view of image i to
f_i = normalize(W h(x_i)), 128-d, and the non-parametric softmax

    P(i | f) = exp(v_i . f / tau) / sum_j exp(v_j . f / tau),   tau = 0.07,

should pick i. After the step, v_i <- normalize(0.5 v_i + 0.5 f_i). Two ways to train it (method.loss):

- nce (the paper's choice, eqs. 3-6): noise-contrastive estimation against m = 4096 entries drawn uniformly from
  the bank, with the normalizer Z estimated once by Monte Carlo on the first batch and then held fixed (as the
  paper's code does); see losses.npid_nce.
- softmax: cross-entropy over the positive entry and m sampled entries, or over the whole bank with
  method.negatives=0 (exact; 60,000 dot products per image on Fashion-MNIST, cheap next to the backbone).

The m negatives of a step are one draw shared by the whole batch (a (B, m) product instead of gathering B x m rows,
which at B = 256, m = 4096 would be 512 MB): each image still sees m uniform draws, as NCE asks, only the draws
are the same for the images of one batch. A draw may hit the image's own row; NCE's noise distribution includes
it, and at m / n = 7% of the bank a sampled softmax loses little by it (MoCo's queue has the same property).

The loss needs each image's row in the training set: NPID sets `uses_indices`, and the training loop calls
loss(images, indices). The bank also gives a free kNN monitor (the paper's evaluation during training): after
pretraining, the test images' embeddings vote among the bank's rows with the training labels, without a pass
over the training images (`bank_knn`, run by `selfsup run`, logged and kept in train.json).

Features for evaluation are the backbone's output, before the head, as for every method here (the paper
evaluates its 128-d embedding with kNN; the bank kNN above is that number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.distributed import gather
from selfsup.errors import SelfSupError
from selfsup.evaluate.knn import knn_top1
from selfsup.losses import npid_nce
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.memory_bank import MemoryBank
from selfsup.views.recipes import Recipe


@dataclass
class NPIDConfig(MethodConfig):
    name: str = "npid"
    loss: str = opt("nce", "nce: noise-contrastive estimation with sampled noise (the paper); softmax: cross-entropy "
                    "over the positive and the sampled entries, or over the whole bank with negatives=0.",
                    choices=["nce", "softmax"])
    temperature: float = opt(0.07, "Softmax temperature tau (paper: 0.07).", min=1e-4)
    negatives: int = opt(4096, "Bank entries drawn as negatives (noise samples) each step, one draw for the batch "
                         "(paper: m = 4096). 0 with loss=softmax: the whole bank.", min=0)
    bank_momentum: float = opt(0.5, "Memory bank update v_i <- normalize(m v_i + (1 - m) f_i) (paper: m = 0.5).",
                               min=0, max=0.999)
    proj_dim: int = opt(128, "Embedding dimension (paper: 128, a linear layer on the backbone).", min=1)
    bank_init: str = opt("embed", "Starting bank. embed: each image's embedding by the network at initialization "
                         "(one pass over the training images, unaugmented, before the first step); random: random "
                         "unit vectors, as the paper. From random vectors the first epoch trains each image towards "
                         "a random target and, at the few epochs a CPU budget buys, the features never recover from "
                         "it (docs/joint-embedding.md measures both).", choices=["embed", "random"])
    proximal: float = opt(0.0, "Weight lambda of the paper's proximal term lambda ||f_i - v_i||^2 (Sec. 3.4), which "
                          "keeps an image's embedding close to its bank entry and steadies training; 0: off.", min=0)


class NPID(Method):
    name = "npid"
    family = "contrastive"
    paper = "Wu et al., Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
    year = 2018
    Config = NPIDConfig
    views_recipe = "simclr"  # NPID's crop (scale 0.2-1), colour jitter 0.4, grayscale 0.2, flip: SimCLR's family
    n_views = 1
    uses_indices = True

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: NPIDConfig):
        super().__init__()
        if cfg.loss == "nce" and cfg.negatives < 1:
            raise SelfSupError("npid: loss=nce needs sampled noise; set method.negatives (paper: 4096), or use "
                               "method.loss=softmax with method.negatives=0 for the full softmax over the bank")
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.head = nn.Linear(backbone.dim, cfg.proj_dim)  # the paper's fc layer, 2048 -> 128
        self.bank: MemoryBank | None = None  # made in prepare(), one row per training image
        # log Z of the NCE estimate: NaN until the first batch estimates it, then fixed (a buffer: resumes carry it)
        self.register_buffer("log_z", torch.tensor(float("nan")))
        # bank_init=embed: False until the first step has filled the bank (a buffer: a resumed run does not refill)
        self.register_buffer("bank_filled", torch.tensor(cfg.bank_init == "random"))
        self._images: torch.Tensor | None = None  # the training images, kept by prepare() for the bank's first fill
        self._update: tuple[torch.Tensor, torch.Tensor] | None = None  # (indices, embeddings) for on_step_end
        self.collapse = CollapseMonitor()
        self.notes = []

    def prepare(self, images: torch.Tensor) -> None:
        n = len(images)
        self.bank = MemoryBank(n, self.cfg.proj_dim, self.cfg.bank_momentum)
        self._images = images  # a reference, not a copy
        if self.cfg.negatives >= n:
            self.notes.append(f"npid: method.negatives={self.cfg.negatives} draws from a bank of only {n} images "
                              "(with replacement)")

    @torch.no_grad()
    def fill_bank(self, batch_size: int = 512) -> None:
        """bank_init=embed: every row becomes its image's embedding by the current network, unaugmented.

        Runs on the bank's device in training mode (BN with batch statistics, as in the steps that follow), and
        puts BN's running statistics back afterwards, so the fill changes nothing but the bank.
        """
        if self._images is None or self.bank is None:
            raise SelfSupError("npid: the bank is filled from the images given to prepare(); call prepare first")
        saved = {k: v.clone() for k, v in self.state_dict().items() if "running_" in k or "num_batches" in k}
        device = self.bank.features.device
        for start in range(0, len(self._images), batch_size):
            x = self._images[start:start + batch_size].to(device).float() / 255
            self.bank.features[start:start + len(x)] = self.embed(x).to(self.bank.features.dtype)
        self.load_state_dict(saved, strict=False)
        self.bank_filled.fill_(True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) float in [0, 1] -> f: (B, proj_dim), L2-normalized."""
        return F.normalize(self.head(self.backbone(x)).float(), dim=1)

    def loss(self, images: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        indices = self.check_indices(images, indices, "find its own bank entry")
        if self.bank is None:
            raise SelfSupError("npid: no memory bank yet; prepare(images) makes it (the training loop calls it)")
        if not bool(self.bank_filled):
            self.fill_bank()
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1], one view
        f = self.embed(x)  # (B, D)
        bank = self.bank.features  # (N, D), constants
        v = bank[indices]  # (B, D): each image's own entry, from earlier steps
        cfg = self.cfg
        with torch.autocast(f.device.type, enabled=False):
            if cfg.loss == "softmax" and cfg.negatives == 0:
                logits = f @ bank.t() / cfg.temperature  # logits: B x N, the whole bank
                loss = F.cross_entropy(logits, indices)
                acc = (logits.detach().argmax(dim=1) == indices).float().mean().item()
            else:
                noise = self.bank.sample(1, cfg.negatives, self.generator)[0]  # (m,), shared by the batch
                positive = (f * v).sum(dim=1)  # (B,): v_i . f_i
                negative = f @ bank[noise].t()  # (B, m): v_j . f_i for the m noise draws
                if cfg.loss == "nce":
                    if torch.isnan(self.log_z):  # Monte Carlo estimate of Z = n E_j[exp(v_j . f / tau)], once
                        sims = gather(torch.cat([positive[:, None], negative], dim=1).detach()) / cfg.temperature
                        self.log_z.fill_(float(torch.logsumexp(sims.flatten(), 0) - math.log(sims.numel())
                                               + math.log(len(bank))))
                    loss = npid_nce(positive, negative, cfg.temperature, len(bank), self.log_z)
                else:
                    logits = torch.cat([positive[:, None], negative], dim=1) / cfg.temperature  # B x (1 + m)
                    loss = F.cross_entropy(logits, torch.zeros(len(f), dtype=torch.long, device=f.device))
                own = noise[None, :] == indices[:, None]  # (B, m): a draw of the image's own row is no rival
                acc = ((positive[:, None] > negative) | own).all(dim=1).float().mean().item()  # own entry first
            if cfg.proximal > 0:
                loss = loss + cfg.proximal * (f - v).pow(2).sum(dim=1).mean()
        self._update = (gather(indices), gather(f.detach()))  # the global batch's rows: one bank on every process
        return loss, {"pretext_acc": acc, **self.collapse.stats(f)}

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After the optimizer step (the loss read the bank): write this batch's embeddings into it."""
        if self._update is not None and self.bank is not None:
            self.bank.update(*self._update)
            self._update = None

    @torch.no_grad()
    def bank_knn(self, train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                 k: int = 200, temperature: float = 0.07, batch_size: int = 512) -> float:
        """Top-1 of the paper's weighted kNN in the embedding space, the bank standing in for the training set.

        train_labels: (N,) labels of the training images in bank order (-1: unlabelled, left out); test_images:
        (M, C, H, W) uint8. Only the M test images go through the network.
        """
        if self.bank is None or len(train_labels) != len(self.bank):
            raise ValueError("bank_knn needs one label per bank row")
        was_training = self.training
        self.eval()
        try:
            device = self.bank.features.device
            test = torch.cat([self.embed(test_images[i:i + batch_size].to(device).float() / 255)
                              for i in range(0, len(test_images), batch_size)])
        finally:
            self.train(was_training)
        keep = train_labels >= 0
        classes = int(max(train_labels.max(), test_labels.max())) + 1
        return knn_top1(self.bank.features[keep.to(device)], train_labels[keep], test, test_labels, classes, k,
                        temperature)
