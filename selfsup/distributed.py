"""Many processes through PyTorch's own engine: torchrun starts them, torch.distributed connects them, DDP
all-reduces the gradients. This module holds the set-up and the few collectives the methods need.

With one process (no torchrun, or torchrun with one process) every helper is a no-op that returns its input, so
a method written with them runs unchanged on a laptop.

The rule that makes N processes compute what one process computes on the whole batch:
- `train.batch_size` is the global batch; each of the N processes takes its contiguous share of the same seeded
  order (rank r: rows r*B/N .. (r+1)*B/N - 1 of each global batch).
- DDP averages the gradients of the N per-process losses, so a method's loss on one process must be its share
  of the global loss: the mean over its own samples of a per-sample loss (BYOL, SimSiam, the pretext tasks), or,
  for a loss that couples the samples of a batch (SimCLR's negatives, Barlow Twins' cross-correlation), the
  whole-batch loss computed from embeddings gathered with `gather` (which carries the gradient back to the
  process that made each row).
- BatchNorm statistics are those of the global batch (`sync_batchnorm`), and the views of the global batch come
  from one generator shared by all processes (`ShardedViews`), so even the random views are the same as one
  process would draw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup.errors import SelfSupError


def active() -> bool:
    """True when this process is one of several connected by torch.distributed."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs, writes checkpoints and reports."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Setup:
    """What `setup` decided: world size, this process's rank and local rank, the backend and the device."""

    world_size: int
    rank: int
    local_rank: int
    backend: str | None
    device: torch.device | None  # cuda:LOCAL_RANK under torchrun on GPUs; None: the config decides


def setup(device_name: str = "auto", timeout_minutes: float = 30.0) -> Setup:
    """Join the process group torchrun described in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); nothing without torchrun. Backend nccl when this process trains on a CUDA device, else gloo.
    """
    if dist.is_available() and dist.is_initialized():  # joined already (by torchrun's first call, or the caller)
        return Setup(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")),
                     dist.get_backend(), torch.device("cuda", torch.cuda.current_device())
                     if dist.get_backend() == "nccl" else None)
    if not launched_by_torchrun():
        return Setup(1, 0, 0, None, None)
    world, rank_, local = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available() or device_name.startswith("cuda")
    device = None
    if use_cuda:
        if not torch.cuda.is_available():
            raise SelfSupError(f"train.device={device_name} but no CUDA device is available; use "
                               "--set train.device=cpu (the gloo backend)")
        if local >= torch.cuda.device_count():
            raise SelfSupError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this "
                               f"machine but it has {torch.cuda.device_count()} CUDA devices; use "
                               f"--nproc_per_node={torch.cuda.device_count()} or fewer")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes),
                            **({"device_id": device} if device is not None else {}))
    return Setup(world, rank_, local, backend, device)


def teardown(wait: bool = True) -> None:
    """Leave the process group; wait: after a barrier, so no process leaves while another still needs it."""
    if dist.is_available() and dist.is_initialized():
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj):
    """Rank 0's `obj` on every process (a run folder's path, a decision)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process (per-process random states for a checkpoint)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) of every process -> (world * n, ...) in rank order, no gradient."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


class _Gather(torch.autograd.Function):
    """all_gather whose backward hands each process the gradient of its own rows, summed over the processes.

    Every process computes a loss from the gathered tensor; the sum of those losses has, for rank r's rows, the
    gradient sum_p dL_p/dx_r: all-reduce the gradient of the gathered tensor and keep rank r's slice. DDP then
    averages over processes, which makes the total the gradient of the mean of the per-process losses.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        return _all_gather_rows(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        r = dist.get_rank()
        return grad[r * ctx.rows:(r + 1) * ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Rows of every process, in rank order: (n, ...) -> (world * n, ...), with gradient; x with one process.

    Every process must pass the same number of rows (the global batch splits evenly).
    """
    if not active():
        return x
    if not x.requires_grad or not torch.is_grad_enabled():
        return _all_gather_rows(x)
    return _Gather.apply(x)


def local_rows(x: torch.Tensor) -> torch.Tensor:
    """This process's share of a tensor whose rows are the global batch in rank order (the inverse of gather)."""
    if not active():
        return x
    n = x.shape[0] // dist.get_world_size()
    r = dist.get_rank()
    return x[r * n:(r + 1) * n]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place, no gradient (the training loop's per-step agreement)."""
    if active():
        dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over processes, in place, no gradient (the logged loss, DINO's centre)."""
    if active():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def broadcast_(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's values into x on every process, in place."""
    if active():
        dist.broadcast(x, src=0)
    return x


class _Sum(torch.autograd.Function):
    """all_reduce (sum) whose backward all-reduces the gradient: by the rule in _Gather's docstring, each process's
    input gets the gradient of the sum of all processes' losses."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all processes, on any device (torch's SyncBatchNorm runs on GPUs only).

    Same parameters and buffers as BatchNorm1d/2d, so its state_dict loads into either. With one process, or in
    eval mode, it is plain BatchNorm. Two all-reduces a layer per forward (the sum, then the squared deviations:
    the two-pass variance, as exact as one process's), each carrying the gradient back.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in float32 at least
        n = x.numel() // x.shape[1] * dist.get_world_size()  # every process holds the same number of rows
        mean = _Sum.apply(xf.sum(dims)) / n  # (C,)
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = xf - mean.view(shape)
        var = _Sum.apply(centred.pow(2).sum(dims)) / n  # (C,), biased: what normalizes the batch
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm layer of `module` normalized over the global batch: torch's SyncBatchNorm on CUDA,
    GlobalBatchNorm elsewhere. Parameters, buffers and state_dict keys stay as they were. A no-op with one process.
    """
    if not active():
        return module
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module)


def _to_global_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        like = _first_tensor(module)
        bn = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, device=like.device, dtype=like.dtype)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        if module.affine:  # the same Parameter objects: optimizers and EMA copies made earlier keep working
            bn.weight, bn.bias = module.weight, module.bias
        return bn
    for name, child in module.named_children():
        new = _to_global_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _first_tensor(module: nn.Module) -> torch.Tensor:
    """A floating-point parameter or buffer of a BatchNorm layer: the device and dtype its replacement takes."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t
    return torch.empty(0)


class ShardedViews:
    """A method's view recipe under N processes: the views of the whole global batch, drawn with a generator that
    every process holds in the same state, of which each process keeps its own rows.

    So the views are those one process would draw for the global batch, whatever the number of processes (exact
    equivalence and resume across world sizes), at the cost of making the global batch's views on every process:
    views are well under 1% of a step on the CPU (docs/benchmarks.md), so N of them are cheap for small N.
    The training loop sets `global_batch` (uint8, the global batch's images) before each step.
    """

    def __init__(self, recipe, generator: torch.Generator):
        self.recipe = recipe
        self.generator = generator
        self.global_batch: torch.Tensor | None = None

    def __getattr__(self, name: str):  # names, n_views, size, ...: the recipe's
        if name in ("recipe", "generator", "global_batch"):
            raise AttributeError(name)
        return getattr(self.recipe, name)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        if self.global_batch is None or len(self.global_batch) != len(images) * world_size():
            # Not a training step (figures, a probe): this process's images with the method's own generator.
            return self.recipe(images, generator if generator is not None else self.generator)
        views = self.recipe(self.global_batch, self.generator)
        self.global_batch = None  # one step's views once
        return [local_rows(v) for v in views]


def local_generator_seed(seed: int, rank_: int) -> int:
    """Seed of a process's own generator (pretext labels, masks) under several processes: distinct per rank."""
    return seed * 1_000_003 + 7919 * (rank_ + 1)
