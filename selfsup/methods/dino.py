"""DINO: Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. Emerging Properties in Self-Supervised Vision
Transformers. ICCV 2021. https://arxiv.org/abs/2104.14294

Self-distillation with no labels. A student (backbone + DINO head) and a teacher of the same architecture, the
teacher an EMA of the student. Both output K scores turned into a distribution by a softmax with a temperature.
The teacher sees the 2 global crops, the student every crop (2 global + N local, multi-crop); the student's
distribution for each crop must match the teacher's for each *other* global crop: cross-entropy
H(P_t, P_s) = -sum_k P_t[k] log P_s[k], summed over the pairs and averaged.

What keeps the outputs from collapsing, with no negatives: the teacher's scores are **centred** (a running mean
of the teacher's outputs over batches, momentum 0.9, is subtracted: no dimension can dominate) and **sharpened**
(a low teacher temperature, warmed up from 0.04 to 0.07: no output can be uniform). Centring alone pushes towards
uniform outputs, sharpening alone towards one-hot: together they balance (paper Sec. 5.3; the logged
`teacher_entropy` shows which way a run drifts: near 1 is uniform, near 0 is one-hot).

Schedules are pure functions of the step (`teacher_temperature` here, `cosine_momentum` for the EMA), the current
step is a buffer set in on_step_end, so a resumed run continues them exactly. Features for evaluation are the
student's backbone (the paper evaluates the teacher's, which tracks it closely; the student is what the training
loop exports for every method).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.distributed import all_reduce_mean
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.momentum import EMA, cosine_momentum
from selfsup.views.recipes import Recipe


def teacher_temperature(step: int, total: int, start: float = 0.04, end: float = 0.07,
                        warmup_fraction: float = 0.3) -> float:
    """Linear warm-up from `start` to `end` over the first warmup_fraction of the run, then `end` (paper: 0.04 ->
    0.07 over the first 30 epochs). step: optimizer steps done so far (0 at the first step)."""
    warmup = warmup_fraction * total
    if step >= warmup or warmup <= 0:
        return end
    return start + (end - start) * step / warmup


class DINOHead(nn.Module):
    """MLP (Linear-GELU, Linear-GELU, Linear to the bottleneck), L2 normalization, then a linear layer to K outputs
    whose weight rows are normalized (the paper's weight-normalized last layer with its scale fixed at 1)."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, bn: bool = False):
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(hidden)) if bn else nn.Identity  # the authors' code: use_bn_in_head
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), norm(), nn.GELU(), nn.Linear(hidden, hidden), norm(),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.Parameter(torch.empty(out_dim, bottleneck))  # (K, bottleneck), used with unit-norm rows
        nn.init.trunc_normal_(self.last, std=0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, in_dim) -> scores (B, K)."""
        z = F.normalize(self.mlp(h), dim=-1)  # (B, bottleneck), unit length
        return F.linear(z, F.normalize(self.last, dim=-1))  # (B, K), cosine similarities to K directions


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-entropy between the teacher's centred, sharpened distribution of each global crop and the student's
    distribution of every other crop, averaged over the (teacher crop, student crop) pairs with different crops.

    student: V tensors (B, K), the first len(teacher) of them the global crops in the teacher's order; teacher:
    2 tensors (B, K) (no gradient); center: (K,).
    """
    if len(student) < len(teacher):
        raise ValueError(f"dino_loss needs the student's outputs of at least the {len(teacher)} global crops")
    with torch.autocast(center.device.type, enabled=False):
        targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher]  # (B, K) each
        log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
        terms = [-(t * log_probs[j]).sum(dim=-1).mean()
                 for i, t in enumerate(targets) for j in range(len(student)) if j != i]
        return torch.stack(terms).mean()


@dataclass
class DINOConfig(MethodConfig):
    name: str = "dino"
    out_dim: int = opt(4096, "K, the head's output dimension (paper: 65,536 on ImageNet; 4096 is solo-learn's CIFAR "
                       "setting, for 60k images).", min=2)
    head_hidden: int = opt(512, "Hidden width of the head's MLP (paper: 2048; 4x small-cnn's 128-d features).", min=1)
    bottleneck: int = opt(128, "Bottleneck before the normalized last layer (paper: 256).", min=1)
    head_bn: bool = opt(True, "BatchNorm in the head's hidden layers (the authors' code has it as use_bn_in_head, off "
                        "for ViTs). On here: it takes out what every image's features share, which a freshly "
                        "initialized CNN's are mostly made of; without it the teacher's centred outputs started "
                        "near uniform and the run collapsed (docs/clustering-distillation.md).")
    student_temp: float = opt(0.1, "Student temperature (paper: 0.1).", min=1e-4)
    teacher_temp: float = opt(0.07, "Teacher temperature after the warm-up (paper: 0.04 -> 0.07).", min=1e-4)
    teacher_temp_start: float = opt(0.04, "Teacher temperature at the first step (paper: 0.04).", min=1e-4)
    teacher_temp_warmup: float = opt(0.3, "Fraction of the run over which the teacher temperature warms up (paper: "
                                     "30 epochs of 100 for ViT-S).", min=0, max=1)
    center_momentum: float = opt(0.9, "Centre update c <- m c + (1 - m) mean(teacher outputs) (paper: 0.9).",
                                 min=0, max=1)
    momentum_base: float = opt(0.99, "Teacher EMA momentum at the first step, cosine to momentum_final (paper: 0.996; "
                               "0.99 averages over about 100 steps, for runs of hundreds of steps, as BYOL here).",
                               min=0, max=1)
    momentum_final: float = opt(1.0, "Teacher EMA momentum at the last step (paper: 1).", min=0, max=1)


class DINO(Method):
    name = "dino"
    family = "clustering"
    paper = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers"
    year = 2021
    Config = DINOConfig
    views_recipe = "multicrop"  # 2 global + views.multicrop.n_local local crops
    n_views = 0  # as many as the recipe makes (at least 2: the first two are the teacher's global crops)

    progress: torch.Tensor
    center: torch.Tensor

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: DINOConfig):
        super().__init__()
        if views.n_views < 2:
            raise SelfSupError(f"dino needs 2 global crops per image; views.recipe={views.name} makes "
                               f"{views.n_views}; use views.recipe=auto (multicrop) or another two-view recipe")
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.head = DINOHead(backbone.dim, cfg.head_hidden, cfg.bottleneck, cfg.out_dim, cfg.head_bn)
        self.teacher_backbone = EMA(self.backbone)
        self.teacher_head = EMA(self.head)
        self.register_buffer("center", torch.zeros(cfg.out_dim))  # (K,) running mean of the teacher's outputs
        self.register_buffer("progress", torch.zeros(2, dtype=torch.long))  # (steps done, planned total steps)
        self._batch_center: torch.Tensor | None = None
        self.collapse = CollapseMonitor(hint="dino: check the teacher temperature and centre momentum")
        self.notes = []

    def current_teacher_temp(self) -> float:
        step, total = (int(v) for v in self.progress)
        total = max(total, 1)  # before the first step the length of the run is not known yet: start the warm-up
        cfg = self.cfg
        return teacher_temperature(step, total, cfg.teacher_temp_start, cfg.teacher_temp, cfg.teacher_temp_warmup)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        views = self.views(images, self.generator)  # 2 global (B, C, H, W), then the local crops (smaller)
        glob, local = views[:2], views[2:]
        b = len(images)
        # The student runs once per crop size (the global crops together, the local ones together).
        student = list(self.head(self.backbone(torch.cat(glob))).split(b))  # 2 x (B, K)
        if local:
            student += list(self.head(self.backbone(torch.cat(local))).split(b))  # + N x (B, K)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(glob)))  # (2B, K)
        t_temp = self.current_teacher_temp()
        loss = dino_loss(student, list(teacher.split(b)), self.center, self.cfg.student_temp, t_temp)
        # The centre moves after the step (on_step_end), by the global batch's mean under torchrun.
        self._batch_center = all_reduce_mean(teacher.detach().float().mean(dim=0))
        with torch.no_grad():
            p = F.softmax((teacher.float() - self.center) / t_temp, dim=-1)
            entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean() / torch.log(torch.tensor(float(p.shape[1])))
        return loss, {"teacher_temp": t_temp, "teacher_entropy": float(entropy), **self.collapse.stats(student[0])}

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After optimizer step `step` (1-based): move the centre, then the teacher (EMA), record the progress."""
        if self._batch_center is not None:
            m = self.cfg.center_momentum
            self.center.mul_(m).add_(self._batch_center.to(self.center.dtype), alpha=1 - m)
            self._batch_center = None
        tau = cosine_momentum(step - 1, total_steps, self.cfg.momentum_base, self.cfg.momentum_final)
        self.teacher_backbone.update(self.backbone, tau)
        self.teacher_head.update(self.head, tau)
        self.progress.copy_(torch.tensor([step, total_steps]))
