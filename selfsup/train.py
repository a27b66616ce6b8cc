"""The one training loop every method runs through.

Data stays on the device as uint8; each step takes a batch in a seeded order, asks the method for its loss,
and steps the optimizer with the learning rate of the schedule. Each epoch starts with the method's
on_epoch_start hook (re-clustering), except an epoch a resumed run starts in the middle of. Budgets are epochs,
steps or minutes (for minutes the step time is measured and the cosine is planned to end at the budget).
Checkpoints are atomic and hold every random state, so a resumed run ends with the same weights as one that
never stopped.

Under torchrun each process takes its share of every global batch, DDP all-reduces the gradients, and rank 0
alone logs and writes; the processes agree each step on the loss, the budget and whether to checkpoint or stop
(distributed.py says what makes N processes train as one).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from selfsup import distributed
from selfsup.checkpoint import atomic_write, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from selfsup.config import TrainConfig
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method
from selfsup.optim import build_optimizer, lr_at
from selfsup.precision import autocast_dtype, legacy_precision
from selfsup.report.tensorboard import TensorBoardLog

CHECKPOINT = "checkpoints/last.pt"


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable CUDA device is an error with the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SelfSupError(f"train.device={name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise SelfSupError(f"train.device={name}: selfsup runs on cpu and cuda devices; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SelfSupError(f"train.device={name} but no CUDA device is available; use --set train.device=cpu (or auto)")
    return device


def check_batch(batch_size: int, n: int, world: int = 1) -> None:
    """A step needs a full batch, split evenly over the processes: anything else is an error with the fix."""
    if batch_size > n:
        raise SelfSupError(f"train.batch_size={batch_size} is larger than the data ({n} images); "
                           f"use --set train.batch_size={max(2, n // 4)} or more data")
    if batch_size % world or batch_size // world < 2:
        fix = max(2 * world, batch_size // world * world)
        raise SelfSupError(f"train.batch_size={batch_size} is the global batch and must split evenly into at least "
                           f"2 images for each of the {world} processes; use --set train.batch_size={fix}")


def fits_on_device(nbytes: int, free_bytes: int, share: float = 0.25) -> bool:
    """Whether a data set of nbytes goes to the GPU whole: when it takes at most `share` of the free memory
    (the rest is for the network, its activations and the views)."""
    return nbytes <= share * free_bytes


class Batches:
    """Gathers a step's images by row: from the data on the training device, or, for a data set the GPU cannot
    hold, from pinned host memory into one of two pinned buffers, copied to the device without blocking."""

    def __init__(self, images: torch.Tensor, device: torch.device):
        self.device = device
        on_device = device.type != "cuda" or fits_on_device(
            images.numel() * images.element_size(), torch.cuda.mem_get_info(device)[0])
        self.images = images.to(device) if on_device else images.pin_memory()
        self.staging: list[torch.Tensor] = []
        self.turn = 0

    @property
    def on_device(self) -> bool:
        return self.images.device.type == self.device.type

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B,) rows -> (B, C, H, W) uint8 on the training device."""
        if self.on_device:
            return self.images[indices.to(self.images.device)]
        shape = (len(indices),) + tuple(self.images.shape[1:])
        if not self.staging or self.staging[0].shape != shape:
            self.staging = [torch.empty(shape, dtype=self.images.dtype).pin_memory() for _ in range(2)]
        # Two buffers: the copy from one may still run while the next batch is gathered into the other (the
        # loop reads the loss every step, so a copy two steps old has finished).
        buffer = self.staging[self.turn]
        self.turn ^= 1
        torch.index_select(self.images, 0, indices.cpu(), out=buffer)
        return buffer.to(self.device, non_blocking=True)


class _StepModule(torch.nn.Module):
    """The method's step as a forward pass, so DDP (which hooks forward) can all-reduce its gradients."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor, indices: torch.Tensor):
        return self.method.step_loss(images, indices)


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The permutation of the data for one epoch: a pure function of (seed, epoch), so resume needs no state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass
class Budget:
    """How many steps to run: fixed for epochs/steps, re-planned from measured step time for minutes."""

    total_steps: int
    seconds: float | None  # wall-clock budget, minutes budgets only
    warmup: int | None = None  # fixed once the length of the run is known, so warm-up never jumps

    def warmup_steps(self, fraction: float) -> int:
        """Warm-up length: a fraction of the planned steps, frozen at the first plan from measured time."""
        if self.warmup is not None:
            return self.warmup
        steps = int(fraction * self.total_steps)
        if self.seconds is None:
            self.warmup = steps
        return steps

    @staticmethod
    def plan(cfg: TrainConfig, steps_per_epoch: int) -> "Budget":
        if cfg.steps is not None:
            return Budget(cfg.steps, None)
        if cfg.epochs is not None:
            return Budget(max(1, math.ceil(cfg.epochs * steps_per_epoch)), None)
        # A first guess (0.5 s a step) until the first steps are timed.
        return Budget(max(10, int(cfg.minutes * 60 / 0.5)), cfg.minutes * 60)

    def replan(self, step: int, elapsed: float, seconds_per_step: float, warmup_fraction: float = 0.0) -> None:
        if self.seconds is None or seconds_per_step <= 0:
            return
        remaining = max(0.0, self.seconds - elapsed)
        self.total_steps = max(step + 1, step + int(remaining / seconds_per_step))
        if self.warmup is None:  # the first measured plan fixes the warm-up (not shorter than what has run)
            self.warmup = max(step, int(warmup_fraction * self.total_steps))


class StopRequest:
    """First Ctrl-C (or SIGTERM) asks the loop to save and stop at the next step boundary; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("\nstopping: saving a checkpoint at the end of this step (press Ctrl-C again to abort)")

    def __enter__(self):
        with contextlib.suppress(ValueError):  # signals can only be set in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    seconds: float
    images_per_second: float
    interrupted: bool
    final_loss: float | None
    precision: str = "fp32"  # what the steps ran in: fp32, bf16, or e.g. "fp32+bf16" for a run resumed in another


def train(method: Method, images: torch.Tensor, cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train `method` on uint8 `images` (N, C, H, W) under `cfg`; writes metrics.jsonl and checkpoints/ in run_dir."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    n = images.shape[0]
    world, rank = distributed.world_size(), distributed.rank()
    main = rank == 0
    check_batch(cfg.batch_size, n, world)
    local_batch = cfg.batch_size // world
    steps_per_epoch = n // cfg.batch_size
    batches = Batches(images, device)
    images = batches.images  # on the device, or pinned on the host (Batches); on_epoch_start hooks take either
    method.to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # the views (and, alone, everything random)
    local_generator = None  # several processes: each one's own draws besides the views (pretext labels, masks)
    sharded = None
    if world > 1:
        if cfg.sync_batchnorm and method.global_batchnorm:
            distributed.sync_batchnorm(method)
        local_generator = torch.Generator(device=device).manual_seed(distributed.local_generator_seed(cfg.seed, rank))
        method.set_generator(local_generator)
        if hasattr(method, "views"):
            sharded = method.views = distributed.ShardedViews(method.views, generator)
    else:
        method.set_generator(generator)
    peak_lr = cfg.lr * cfg.batch_size / 256
    optimizer = build_optimizer(method, cfg.optimizer, peak_lr, cfg.weight_decay, cfg.momentum, cfg.lars_trust)
    budget = Budget.plan(cfg, steps_per_epoch)
    step, elapsed_before = 0, 0.0
    metrics_path = run_dir / "metrics.jsonl"
    dtype = autocast_dtype(cfg.precision, device)
    if world > 1:  # one precision for every process: under auto, rank 0's hardware decides
        dtype = distributed.broadcast_object(dtype)
    used: list[str] = []  # the precisions this run's steps ran in, in order (a resumed run may add one)
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT)
        used = state.get("precision") or [legacy_precision(cfg.precision, device)]
        if cfg.precision == "auto":  # continue as it started, whatever this machine would pick for a new run
            dtype = torch.bfloat16 if used[-1] == "bf16" else None
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], {"views": generator})
        step, elapsed_before, budget.total_steps = state["step"], state["elapsed"], state["total_steps"]
        budget.warmup = state.get("warmup_steps")
        if local_generator is not None:
            saved = state.get("local_generators") or []
            if len(saved) == world:  # same number of processes: each continues its own draws exactly
                local_generator.set_state(saved[rank])
            else:  # another number: the views continue exactly (shared generator), the rest from a fresh seed
                local_generator.manual_seed(distributed.local_generator_seed(cfg.seed, rank) + step)
        if main:
            _truncate_metrics(metrics_path, step)
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    precision = "bf16" if dtype is not None else "fp32"
    if not used or used[-1] != precision:
        used.append(precision)
    step_fn = method.step_loss
    if world > 1:
        # forward_sync_buffers=False: buffers (BN statistics, queues, memory banks) start as rank 0's and are then
        # kept equal by the methods' own collectives instead of a copy from rank 0 every step.
        # find_unused_parameters: some steps leave parameters out (SwAV's frozen prototypes, a reset classifier).
        from torch.nn.parallel import DistributedDataParallel

        step_fn = DistributedDataParallel(_StepModule(method), device_ids=[device.index] if device.type == "cuda"
                                          else None, forward_sync_buffers=False, find_unused_parameters=True)
    loss_fn = torch.compile(step_fn) if cfg.compile else step_fn
    collapse = getattr(method, "collapse", None)  # joint-embedding methods: a CollapseMonitor (methods/collapse.py)
    # A resumed run drops the events of the steps after its checkpoint (logged, then lost in a crash).
    board = (TensorBoardLog(run_dir / "tensorboard", purge_step=step + 1 if resume else None)
             if cfg.tensorboard and main else None)
    reclusters = type(method).on_epoch_start is not Method.on_epoch_start

    def checkpoint(elapsed: float) -> None:
        local_states = distributed.all_objects(local_generator.get_state()) if local_generator is not None else None
        if not main:
            return
        save_checkpoint(run_dir / CHECKPOINT, {
            "method": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "total_steps": budget.total_steps, "warmup_steps": budget.warmup, "elapsed": elapsed,
            "rng": rng_state({"views": generator}),
            "world_size": world, "local_generators": local_states, "precision": used,
            "format": 1,
        })

    method.train()
    bar = tqdm(total=budget.total_steps, initial=step, disable=not (progress and main), unit="step",
               dynamic_ncols=True, file=sys.stderr, desc="pretrain")
    start = time.perf_counter()
    last_ckpt = start
    window: dict[str, tuple[float, int]] = {}
    window_steps, window_start = 0, start
    timed_from: tuple[int, float] | None = None
    loss_value: float | None = None  # None until a step runs (a resumed, finished run takes none)
    interrupted = False
    order, order_epoch = None, -1
    with StopRequest() as stop:
        while step < budget.total_steps:
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(n, epoch, cfg.seed).to(device), epoch
                if pos == 0:  # a run resumed inside an epoch has its start in the checkpoint (Method.on_epoch_start)
                    method.on_epoch_start(epoch, images)
                    if world > 1 and reclusters:  # rank 0's pseudo-labels and freshly reset heads everywhere
                        with torch.no_grad():
                            for tensor in method.state_dict().values():
                                distributed.broadcast_(tensor)
            indices = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]  # (B,) rows of the training tensor
            share = slice(rank * local_batch, (rank + 1) * local_batch)  # this process's share (all of it alone)
            if sharded is not None:
                sharded.global_batch = batches(indices)
                batch = sharded.global_batch[share]
            else:
                batch = batches(indices[share])
            indices = indices[share]
            lr = lr_at(step, budget.total_steps, peak_lr, budget.warmup_steps(cfg.warmup_fraction),
                       cfg.min_lr_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss, logs = loss_fn(batch, indices)
            # The mean over processes: what is logged, and a non-finite loss stops every process at once.
            global_loss = distributed.all_reduce_mean(loss.detach().float().clone())
            if not torch.isfinite(global_loss):
                # The weights that gave this loss may already be broken: keep the last checkpoint as it is.
                raise SelfSupError(f"the loss became {global_loss.item()} at step {step}; start a new run with a "
                                   f"lower learning rate (--set train.lr={cfg.lr / 3:.3g}) or a higher temperature")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            method.on_step_end(step, budget.total_steps)
            loss_value = global_loss.item()
            window_steps += 1
            # Each value averages over the steps of the window that logged it (some are logged only on some steps).
            for k, v in {"loss": loss_value, **logs}.items():
                total, count = window.get(k, (0.0, 0))
                window[k] = (total + float(v), count + 1)
            now = time.perf_counter()
            elapsed = elapsed_before + now - start
            # Time the steps after the first two (which pay for allocation and warm-up) to plan a minutes budget.
            if timed_from is None and step >= 2:
                timed_from = (step, now)
            elif (budget.seconds is not None and timed_from is not None and step > timed_from[0]
                  and (step in (5, 10, 20) or step % 50 == 0)):
                budget.replan(step, elapsed, (now - timed_from[1]) / (step - timed_from[0]), cfg.warmup_fraction)
                bar.total = budget.total_steps
            if world > 1:  # rank 0's budget and clock decide; any process's Ctrl-C stops them all
                due = cfg.checkpoint_minutes and now - last_ckpt > cfg.checkpoint_minutes * 60
                agreed = torch.tensor([float(stop.requested), float(due) if main else 0.0,
                                       float(budget.total_steps) if main else 0.0], dtype=torch.float64)
                agreed = distributed.all_reduce_sum(agreed.to(device)).cpu()  # nccl reduces on the device
                stopping = bool(agreed[0] > 0)  # not stop.requested: a signal may land after the all-reduce
                checkpoint_due = bool(agreed[1] > 0)
                budget.total_steps = int(agreed[2])
                bar.total = budget.total_steps
            else:
                stopping = stop.requested
                checkpoint_due = bool(cfg.checkpoint_minutes and now - last_ckpt > cfg.checkpoint_minutes * 60)
            if main and (step % cfg.log_every == 0 or step == budget.total_steps):
                span = now - window_start
                row = {"step": step, "epoch": round(step / steps_per_epoch, 3), "lr": lr,
                       **{k: total / count for k, (total, count) in window.items()},
                       "images_per_s": window_steps * cfg.batch_size / span if span > 0 else None,
                       "elapsed_s": round(elapsed, 2), "total_steps": budget.total_steps}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if board is not None:
                    board.write(row)
                if collapse is not None and (warning := collapse.check(row)):  # one line, once per run
                    tqdm.write(warning, file=sys.stderr)
                window, window_steps, window_start = {}, 0, now
            rate = bar.format_dict.get("rate") or 0.0
            bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{cfg.batch_size * rate:.0f}", refresh=False)
            bar.update(1)
            if stopping:
                interrupted = True
                break
            if checkpoint_due:
                checkpoint(elapsed)
                last_ckpt = time.perf_counter()
        total_seconds = elapsed_before + time.perf_counter() - start
        checkpoint(total_seconds)
    bar.close()
    if board is not None:
        board.close()
    return TrainResult(step, budget.total_steps, total_seconds,
                       (step * cfg.batch_size / total_seconds) if total_seconds > 0 else 0.0, interrupted, loss_value,
                       "+".join(used))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from, so the file reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut off by a hard kill
            continue
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in keep)))
