"""Seconds per training step on one thread: small-cnn SimCLR, vit-tiny SimCLR, vit-tiny MAE (and MAE with the
paper's 512-d, 8-block decoder with --paper-decoder). The numbers in docs/masked-image-modelling.md.

    python bench/vit_step_times.py [--steps 4] [--batch 256] [--paper-decoder]

Synthetic 28 px one-channel images (Fashion-MNIST's size); each step is the method's views, forward, backward and
an AdamW update, the method in channels-last memory format as the training loop keeps it. Prints the time of
every step and the median of all but the first.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.optim import build_optimizer
from selfsup.run import build_method

RUNS = [("small-cnn", "simclr", {}, {}), ("vit-tiny", "simclr", {"backbone": "vit-tiny"}, {}),
        ("vit-tiny", "mae", {"backbone": "vit-tiny"}, {})]
PAPER_DECODER = ("vit-tiny", "mae", {"backbone": "vit-tiny"}, {"decoder_dim": 512, "decoder_depth": 8})


def step_times(method: str, model: dict, extra: dict, data: sources.ImageSet, batch: int, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps of `method` on `model` (extra: method settings)."""
    cfg = load_config({"method": {"name": method, **extra}, "model": model, "train": {"steps": steps}})
    images = data.images
    m, _ = build_method(cfg, data)
    m.to(memory_format=torch.channels_last)
    m.set_generator(torch.Generator().manual_seed(0))
    optimizer = build_optimizer(m, "adamw", 1e-4, 0.05, 0.9)
    times = []
    for step in range(steps):
        start = (step * batch) % (len(images) - batch + 1)
        t0 = time.perf_counter()
        loss, _ = m.step_loss(images[start:start + batch], torch.arange(start, start + batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        m.on_step_end(step, steps)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--paper-decoder", action="store_true", help="time only MAE with the paper's decoder")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = sources.load("synthetic", "train", n=2 * args.batch, image_size=28, seed=0)
    for backbone, method, model, extra in [PAPER_DECODER] if args.paper_decoder else RUNS:
        times = step_times(method, model, extra, data, args.batch, args.steps)
        label = f"{backbone} {method}" + (" (decoder 512 x 8)" if extra else "")
        print(f"{label}: {', '.join(f'{t:.2f}' for t in times)} s per step; median after the first "
              f"{statistics.median(times[1:]):.2f} s", flush=True)


if __name__ == "__main__":
    main()
