"""SwAV: Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments. NeurIPS 2020. https://arxiv.org/abs/2006.09882

Swapping assignments between views: instead of comparing the embeddings of two views directly (SimCLR), compare
their *cluster assignments*. Top to bottom, for a batch of B images:

1. Views: 2 crops of each image (the `simclr` recipe, the default here), or the paper's multi-crop, 2 global crops
   and N local (smaller) ones (`views.recipe=multicrop`, V = 2 + N crops). Either way the first 2 are the crops
   that get codes ("global"); the rest only predict them.
2. Embeddings: backbone, then a projection MLP (Linear-BN-ReLU-Linear, as the paper's head), L2-normalized:
   z (V*B, d). The backbone runs once per crop size; the projector once over every crop together, so its BN
   statistics cover all crops (as the authors' code does).
3. Prototypes: K learnable unit vectors C (K, d), a linear layer without bias whose rows are kept at unit length;
   scores S = z C^T (V*B, K) are cosine similarities.
4. Codes: for each global crop i, the soft assignment q_i (B, K) of its B images to the K prototypes, found by
   Sinkhorn-Knopp on its scores (epsilon 0.05, 3 iterations, `selfsup.cluster.sinkhorn`, no gradient) under the
   constraint that the batch spreads *evenly* over the prototypes: each row sums to 1, each column to B/K (the
   3 iterations end on the rows, so the columns hold approximately). That equipartition is what stops one
   trivial solution, every image on the same prototype. The other, every embedding the same and every code
   uniform, is what a high epsilon leads to (paper Sec. 3.1), hence its low value.
   With an optional queue, the scores of the last `queue_size` embeddings of crop i (earlier batches, scored
   against today's prototypes) join the batch's rows in Sinkhorn, so the equipartition holds over more samples
   than one small batch; only the batch's own rows of the result are used.
5. Swapped prediction: the code of global crop i is predicted from every *other* crop v's softmax(S_v / 0.1),
   by cross-entropy -sum_k q_i[k] log p_v[k]; averaged over v != i, then over i (the paper's code), so the loss is
   the mean over the 2 (V - 1) (code, prediction) pairs. It starts near log K (random prototypes and embeddings
   score about 0 everywhere, so every prediction is nearly uniform): the authors' ImageNet runs start near
   8 = log 3000.
6. Prototypes are frozen for the first `freeze_prototypes_steps` steps (paper: the first epoch; the authors
   describe it as a stabilizer rather than a source of accuracy, in facebookresearch/swav issue 76). In
   those steps the loss uses the prototype weight *detached*, so it gets no gradient at all (`.grad` stays None,
   the training loop zeroes with set_to_none): SGD, AdamW and LARS all skip a parameter without a gradient,
   weight decay included (selfsup/optim.py), so the prototypes do not move. After each optimizer step that could
   have moved them, `on_step_end` re-normalizes their rows (paper: before each step; here once at construction
   and after each step, so every loss sees unit prototypes; not after frozen steps, where re-normalizing unit
   rows would only change their last bits).

The freeze and the queue's start are pure functions of the step: the step and the planned total are a buffer
(`progress`) set in on_step_end, and the queue's rows and fill count are buffers too, so a checkpoint carries
them all and a resumed run continues exactly.

Logs: `code_entropy` (the codes' mean entropy over log K: 1 is uniform codes, the collapse above), `code_max`
(the mean largest probability of a code), `prototypes_used` (how many prototypes are the nearest of at least one
of the 2B global crops, at most min(K, 2B): a handful means the embeddings crowd onto few prototypes),
`queue_rows` (with a queue), and the collapse monitor's `z_std` / `z_rank` of the first global crop's
embeddings.

Defaults that differ from the paper (ImageNet, batch 4096 on 64 GPUs), for runs of a few hundred steps on 60k
small images: K = 128 prototypes (paper 3000 for 1000 classes; it finds K matters little once there are
enough of them, and a batch must be able to spread over them: with B < K equipartition is impossible within a batch,
which is why the paper adds a queue for batches of 256. 128 is about 10x the classes of 10-class data and fits
in a batch of 256 without a queue; solo-learn's CIFAR setting, 3000 with a queue of 3840, is `--set
method.n_prototypes=3000 --set method.queue_size=3840`); projector hidden width 512 (paper 2048, as DINO here);
the prototype freeze counted in steps (default 20) rather than an epoch, since an epoch here is most of a run;
the queue off by default (queue_size 0), and when on it feeds Sinkhorn with the rows it holds so far, where the
authors' code waits until it is full; and two views by default instead of multi-crop. On 28-32 px images the
multicrop recipe's local crops (96/224 of the side, 5-14% of the area) are 12 px fragments of a few pixels'
detail, and 6 of every 7 predictions of a code come from them: measured on 4,000 Fashion-MNIST images (width 16,
batch 256, 300 steps, one thread), the codes first flattened towards uniform (code_entropy 0.87 -> 0.94) and the
backbone's kNN fell to 56.4% against 65.4% at random init, while with two views the codes sharpened steadily
(0.86 -> 0.60), 113 of 128 prototypes were in use and kNN reached 66.5% (docs/clustering-distillation.md).
Features for evaluation are the backbone's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.cluster.sinkhorn import sinkhorn
from selfsup.config import opt
from selfsup.distributed import gather, local_rows
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.collapse import CollapseMonitor
from selfsup.nets.heads import mlp
from selfsup.nets.queue import Queue
from selfsup.views.recipes import Recipe


@torch.no_grad()
def swav_codes(scores: torch.Tensor, extra: torch.Tensor | None = None, epsilon: float = 0.05,
               iterations: int = 3) -> torch.Tensor:
    """Codes (B, K) of a batch's prototype scores (B, K): Sinkhorn's equipartitioned plan over the batch and the
    `extra` rows (Q, K) (scores of queued embeddings) together, the batch's rows only, each row a distribution.

    The plan has rows summing to 1 / (B + Q) and columns to 1 / K; times B + Q its rows sum to 1 (the authors' code
    rescales them to 1 the same way). No gradient: the codes are targets.
    """
    rows = scores if extra is None or len(extra) == 0 else torch.cat([scores, extra.to(scores.dtype)])  # (B+Q, K)
    plan = sinkhorn(rows, epsilon, iterations)  # (B+Q, K), float32 (float64 for float64 scores)
    return plan[:len(scores)] * len(rows)  # (B, K)


def swav_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Swapped prediction: cross-entropy between the code of each coded crop i and the softmax(scores / T) of every
    other crop v, -sum_k q_i[k] log p_v[k], averaged over the batch, over v != i, then over i (paper Eq. 6 and the
    authors' code: the mean over all 2 (V - 1) pairs).

    scores: V tensors (B, K), the first len(codes) of them the crops the codes were computed from, in that order;
    codes: tensors (B, K), rows summing to 1 (no gradient flows into them).
    """
    if len(scores) < 2 or len(scores) < len(codes):
        raise ValueError(f"swav_loss needs at least 2 crops and the scores of the {len(codes)} coded crops")
    with torch.autocast(scores[0].device.type, enabled=False):
        dtype = torch.promote_types(scores[0].dtype, torch.float32)  # float32 at least, also from bf16 scores
        log_probs = [F.log_softmax(s.to(dtype) / temperature, dim=-1) for s in scores]  # V x (B, K)
        terms = [-(q.detach().to(dtype) * log_probs[v]).sum(dim=-1).mean()
                 for i, q in enumerate(codes) for v in range(len(scores)) if v != i]
        return torch.stack(terms).mean()


@dataclass
class SwAVConfig(MethodConfig):
    name: str = "swav"
    n_prototypes: int = opt(128, "K, the number of prototypes (paper: 3000 for ImageNet's 1000 classes, with a queue "
                            "when the batch is 256; it finds K matters little as long as there are enough). 128: "
                            "about 10x the classes of 10-class data, and no more than a batch of 256 can spread "
                            "over evenly without a queue (Sinkhorn gives each prototype B/K images of the batch). "
                            "solo-learn's CIFAR setting is 3000 with queue_size=3840.", min=2)
    proj_hidden: int = opt(512, "Hidden width of the projection MLP, Linear-BN-ReLU-Linear (paper: 2048; 4x "
                           "small-cnn's 128-d features, as DINO's head here).", min=1)
    proj_dim: int = opt(128, "d, the dimension of the L2-normalized embeddings and the prototypes (paper: 128).",
                        min=1)
    temperature: float = opt(0.1, "Temperature of the softmax over prototype scores that predicts a code (paper: 0.1).",
                             min=1e-4)
    epsilon: float = opt(0.05, "Sinkhorn's entropy weight: lower gives sharper codes (paper: 0.05; it warns that a "
                         "high epsilon leads to the trivial solution, every image assigned uniformly).", min=1e-4)
    sinkhorn_iterations: int = opt(3, "Sinkhorn-Knopp iterations (paper: 3; fewer failed to converge, more gave "
                                   "slightly worse transfer).", min=1)
    freeze_prototypes_steps: int = opt(20, "The prototypes take no gradient during the first this many optimizer "
                                       "steps (paper: the first epoch, 313 steps at batch 4096, 1% or less of its "
                                       "100-800 epoch runs; an epoch here is most of a short run). 20 spares them "
                                       "the first, fastest changes of the embeddings, about 5% of a 400-step CPU "
                                       "run. 0: never frozen.", min=0)
    queue_size: int = opt(0, "Embeddings of earlier batches, per global crop, added to the batch in Sinkhorn only, "
                          "so the codes equipartition over more samples than a small batch (paper: 3840 at batch "
                          "256, about K; solo-learn's CIFAR setting too). 0: no queue.", min=0)
    queue_start_steps: int = opt(100, "Optimizer steps before the queue starts filling; it feeds Sinkhorn as soon as "
                                 "it holds embeddings (paper: from epoch 15 of 200 at batch 256; solo-learn: epoch 50 "
                                 "of 1000), so its embeddings come from a network past its first, fastest changes.",
                                 min=0)


class SwAV(Method):
    name = "swav"
    family = "clustering"
    paper = "Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
    year = 2020
    Config = SwAVConfig
    # Two views: on 28-32 px images the multicrop recipe's 12 px local crops made the features worse than random
    # init in short runs (module docstring); views.recipe=multicrop gives the paper's multi-crop.
    views_recipe = "simclr"
    n_views = 0  # as many as the recipe makes (at least 2: the first two are the global crops that get codes)

    progress: torch.Tensor
    queue_filled: torch.Tensor

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: SwAVConfig):
        super().__init__()
        if views.n_views < 2:
            raise SelfSupError(f"swav needs 2 global crops per image; views.recipe={views.name} makes "
                               f"{views.n_views}; use views.recipe=auto (simclr), multicrop or another two-view "
                               "recipe")
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.projector = mlp(backbone.dim, cfg.proj_hidden, cfg.proj_dim)  # Linear-BN-ReLU-Linear, as the paper
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.n_prototypes, bias=False)  # weight (K, d), unit rows
        self.normalize_prototypes()
        self.register_buffer("progress", torch.zeros(2, dtype=torch.long))  # (steps done, planned total steps)
        # One queue per global crop (as the authors' code): crop i's codes equipartition over its own history.
        # Built last: the queues' random placeholder rows come from the global RNG and should not shift the other
        # layers' initialization when queue_size changes.
        self.queues = nn.ModuleList([Queue(cfg.queue_size, cfg.proj_dim) for _ in range(2)] if cfg.queue_size else [])
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # real rows in each queue
        self._to_enqueue: list[torch.Tensor] | None = None  # this step's global embeddings, queued after the step
        self.collapse = CollapseMonitor(hint=f"swav: a lower method.epsilon (now {cfg.epsilon:g}) for sharper codes; "
                                             "with views.recipe=multicrop on small images, two views "
                                             "(views.recipe=auto)")
        self.notes = []

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Rows of the prototype weight to unit length (the paper does this before every step)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def prototypes_frozen(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based: steps done before it) leaves the prototypes fixed."""
        return step < self.cfg.freeze_prototypes_steps

    def queue_active(self, step: int) -> bool:
        """Whether the global embeddings of step `step` (0-based) go into the queue after it."""
        return bool(self.queues) and step >= self.cfg.queue_start_steps

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """V crops (B, C, h, w), the sizes grouped (global first) -> unit embeddings (V*B, d) in crop order."""
        features, start = [], 0
        while start < len(views):  # the backbone runs once per run of same-size crops
            end = start
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            features.append(self.backbone(torch.cat(views[start:end])))  # (n*B, backbone.dim)
            start = end
        return F.normalize(self.projector(torch.cat(features)), dim=1)  # (V*B, d), BN over every crop together

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        views = self.views(images, self.generator)  # 2 global (B, C, H, W), then any local crops (smaller)
        b, step = len(images), int(self.progress[0])
        z = self.embed(views)  # (V*B, d)
        weight = self.prototypes.weight  # (K, d), unit rows
        if self.prototypes_frozen(step):
            weight = weight.detach()  # no gradient reaches the prototypes, so no optimizer moves them
        scores = list((z @ weight.t()).split(b))  # V x (B, K), cosine similarities
        codes = []
        with torch.no_grad():
            for i in range(2):
                extra = None
                if self.queues and int(self.queue_filled) > 0:
                    queued = self.queues[i].keys[:int(self.queue_filled)]  # (Q, d) filled rows (ring written from 0)
                    extra = queued.to(weight.dtype) @ weight.t()  # (Q, K), scored against today's prototypes
                # Under torchrun Sinkhorn equipartitions the global batch; each process keeps its rows' codes.
                codes.append(local_rows(swav_codes(gather(scores[i].detach()), extra, self.cfg.epsilon,
                                                   self.cfg.sinkhorn_iterations)))  # (B, K)
        loss = swav_loss(scores, codes, self.cfg.temperature)
        self._to_enqueue = [gather(z[i * b:(i + 1) * b].detach().float()) for i in range(2)] \
            if self.queue_active(step) else None  # the global batch's embeddings: the same queue on every process
        with torch.no_grad():
            q = torch.cat(codes)  # (2B, K)
            k = q.shape[1]
            entropy = -(q * q.clamp_min(1e-12).log()).sum(dim=1).mean() / torch.log(torch.tensor(float(k)))
            used = torch.cat(scores[:2]).argmax(dim=1).unique().numel()  # prototypes nearest some global crop
        logs = {"code_entropy": float(entropy), "code_max": float(q.max(dim=1).values.mean()),
                "prototypes_used": float(used), **self.collapse.stats(z[:b])}
        if self.queues:
            logs["queue_rows"] = float(self.queue_filled)  # rows that joined this step's Sinkhorn
        return loss, logs

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After optimizer step `step` (1-based): queue this step's global embeddings, re-normalize the prototypes
        if the step could move them, record the progress."""
        if self._to_enqueue is not None:
            for queue, z in zip(self.queues, self._to_enqueue):
                queue.enqueue(z)
            self.queue_filled.fill_(min(self.cfg.queue_size, int(self.queue_filled) + len(self._to_enqueue[0])))
            self._to_enqueue = None
        if not self.prototypes_frozen(step - 1):
            self.normalize_prototypes()
        self.progress.copy_(torch.tensor([step, total_steps]))
