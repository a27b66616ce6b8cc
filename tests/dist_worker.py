"""What each process of the multi-process tests runs (a module of its own: spawned processes import it by name).

Each process joins a gloo group through a rendezvous file, as torchrun's processes join theirs through the
environment, builds the same tiny method and trains it with the one training loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from selfsup import distributed
from selfsup.config import load_config
from selfsup.data import sources
from selfsup.run import build_method
from selfsup.train import train

N_IMAGES = 96


def tiny(method: dict, steps: int, batch_size: int = 16, seed: int = 0, extra_train: dict | None = None):
    """(config, images, method) of a tiny run on synthetic data, the same in every process."""
    from test_methods import tiny_model  # the registry test's tiny backbones (MAE: a one-block vit-tiny)

    from selfsup.methods import METHODS

    cfg = load_config({"data": {"name": "synthetic"}, "model": tiny_model(method["name"]), "method": method,
                       "train": {"steps": steps, "batch_size": batch_size, "seed": seed, "optimizer": "sgd",
                                 "lr": 0.1, "log_every": 1, "device": "cpu", "precision": "fp32",  # not auto's
                                 **(extra_train or {})}})  # machine-dependent choice
    data = sources.load("synthetic", "train", n=N_IMAGES, seed=0, channels=METHODS[method["name"]].min_channels)
    torch.manual_seed(seed)
    built, _ = build_method(cfg, data)
    return cfg, data.images, built


def stop_after(method, k: int) -> None:
    """A Ctrl-C on this process at the end of step k."""
    original = method.on_step_end

    def hook(step, total):
        original(step, total)
        if step == k:
            os.kill(os.getpid(), signal.SIGINT)

    method.on_step_end = hook


@contextlib.contextmanager
def in_float64(method):
    """The method and its views in float64 while the block runs, so that two ways of summing the same numbers
    agree to ~1e-12 and a comparison of N processes with one is not lost in float32 rounding, which BatchNorm over
    channels of tiny variance amplifies step after step (measured: nudging one weight of a one-process run by
    1e-7 changed its loss by 4e-4 within three steps). The views' class is restored afterwards."""
    from selfsup.views.recipes import Recipe

    method.double()
    call = Recipe.__call__
    Recipe.__call__ = lambda self, images, generator: [v.double() for v in call(self, images, generator)]
    try:
        yield
    finally:
        Recipe.__call__ = call


def train_once(method_cfg: dict, steps: int, out: str, resume: bool = False, stop: int | None = None,
               extra_train: dict | None = None, float64: bool = True) -> dict:
    """Train (or resume) the tiny run in `out` (in float64 unless told); returns {"steps", "interrupted",
    "weights"}."""
    torch.set_num_threads(1)
    cfg, images, method = tiny(method_cfg, steps, extra_train=extra_train)
    if stop is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        stop_after(method, stop)
    with in_float64(method) if float64 else contextlib.nullcontext():
        result = train(method, images, cfg.train, Path(out), resume=resume, progress=False)
    return {"steps": result.steps, "interrupted": result.interrupted,
            "weights": {k: v.detach().clone() for k, v in method.state_dict().items()}}


def worker(rank: int, world: int, rendezvous: str, method_cfg: dict, steps: int, out: str, resume: bool,
           stop: int | None, extra_train: dict | None, float64: bool = True) -> None:
    """One process of `world`: join the group, train, and save what it ended with for the test.

    method_cfg: one method's config, or a list of them, trained one after the other into out/NAME (one start-up
    of the processes for many methods)."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        joined = distributed.setup("cpu")  # a group the caller made is taken as it is
        assert (joined.world_size, joined.rank, joined.backend) == (world, rank, "gloo"), joined
        for one in method_cfg if isinstance(method_cfg, list) else [method_cfg]:
            where = Path(out) / one["name"] if isinstance(method_cfg, list) else Path(out)
            where.mkdir(parents=True, exist_ok=True)
            got = train_once(one, steps, str(where), resume=resume, stop=stop, extra_train=extra_train,
                             float64=float64)
            torch.save(got, where / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
