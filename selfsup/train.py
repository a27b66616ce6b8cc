"""The one training loop every method runs through.

Data stays on the device as uint8; each step takes a batch in a seeded order, asks the method for its loss,
and steps the optimizer with the learning rate of the schedule. Each epoch starts with the method's
on_epoch_start hook (re-clustering), except an epoch a resumed run starts in the middle of. Budgets are epochs,
steps or minutes (for minutes the step time is measured and the cosine is planned to end at the budget).
Checkpoints are atomic and hold every random state, so a resumed run ends with the same weights as one that
never stopped.
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

from selfsup.checkpoint import atomic_write, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from selfsup.config import TrainConfig
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method
from selfsup.optim import build_optimizer, lr_at
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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the device runs it fast (CUDA with bf16 support), else None (fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def check_batch(batch_size: int, n: int) -> None:
    """A step needs a full batch: one larger than the data is an error with the fix."""
    if batch_size > n:
        raise SelfSupError(f"train.batch_size={batch_size} is larger than the data ({n} images); "
                           f"use --set train.batch_size={max(2, n // 4)} or more data")


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


def train(method: Method, images: torch.Tensor, cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train `method` on uint8 `images` (N, C, H, W) under `cfg`; writes metrics.jsonl and checkpoints/ in run_dir."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    n = images.shape[0]
    check_batch(cfg.batch_size, n)
    steps_per_epoch = n // cfg.batch_size
    images = images.to(device)
    method.to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    method.set_generator(generator)
    peak_lr = cfg.lr * cfg.batch_size / 256
    optimizer = build_optimizer(method, cfg.optimizer, peak_lr, cfg.weight_decay, cfg.momentum)
    budget = Budget.plan(cfg, steps_per_epoch)
    step, elapsed_before = 0, 0.0
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], {"views": generator})
        step, elapsed_before, budget.total_steps = state["step"], state["elapsed"], state["total_steps"]
        budget.warmup = state.get("warmup_steps")
        _truncate_metrics(metrics_path, step)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    dtype = autocast_dtype(cfg.precision, device)
    loss_fn = torch.compile(method.step_loss) if cfg.compile else method.step_loss
    collapse = getattr(method, "collapse", None)  # joint-embedding methods: a CollapseMonitor (methods/collapse.py)
    # A resumed run drops the events of the steps after its checkpoint (logged, then lost in a crash).
    board = (TensorBoardLog(run_dir / "tensorboard", purge_step=step + 1 if resume else None)
             if cfg.tensorboard else None)

    def checkpoint(elapsed: float) -> None:
        save_checkpoint(run_dir / CHECKPOINT, {
            "method": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "total_steps": budget.total_steps, "warmup_steps": budget.warmup, "elapsed": elapsed,
            "rng": rng_state({"views": generator}),
            "format": 1,
        })

    method.train()
    bar = tqdm(total=budget.total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
               file=sys.stderr, desc="pretrain")
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
            indices = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]  # (B,) rows of the training tensor
            batch = images[indices]
            lr = lr_at(step, budget.total_steps, peak_lr, budget.warmup_steps(cfg.warmup_fraction),
                       cfg.min_lr_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss, logs = loss_fn(batch, indices)
            if not torch.isfinite(loss):
                # The weights that gave this loss may already be broken: keep the last checkpoint as it is.
                raise SelfSupError(f"the loss became {loss.item()} at step {step}; start a new run with a lower "
                                   f"learning rate (--set train.lr={cfg.lr / 3:.3g}) or a higher temperature")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            method.on_step_end(step, budget.total_steps)
            loss_value = loss.item()
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
            if step % cfg.log_every == 0 or step == budget.total_steps:
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
            if stop.requested:
                interrupted = True
                break
            if cfg.checkpoint_minutes and now - last_ckpt > cfg.checkpoint_minutes * 60:
                checkpoint(elapsed)
                last_ckpt = time.perf_counter()
        total_seconds = elapsed_before + time.perf_counter() - start
        checkpoint(total_seconds)
    bar.close()
    if board is not None:
        board.close()
    return TrainResult(step, budget.total_steps, total_seconds,
                       (step * cfg.batch_size / total_seconds) if total_seconds > 0 else 0.0, interrupted, loss_value)


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
