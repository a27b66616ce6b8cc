"""Compute efficiency of a pretraining step: the FLOP/s a method's training step achieves against the fp32 matmul
FLOP/s of the same machine, both measured in this one process.

    python bench/efficiency.py --method simclr --backbones small-cnn:32 small-cnn:48 small-cnn:64 resnet18 --batch 256

FLOPs of a step (forward and backward of every matmul and convolution, views and optimizer not counted) come from
torch.utils.flop_counter.FlopCounterMode on one step; the step time is the mean of --steps timed steps (views,
forward, backward, optimizer) after warm-up, with channels_last weights as the training loop uses by default. The
peak is the best of several square fp32 matmuls (torch.mm, --matmul N) on the same threads. Writes docs/benchmarks.md
(section efficiency-METHOD).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402
from throughput import time_steps, training_step  # noqa: E402

from selfsup.data import sources  # noqa: E402


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` (n x n) @ (n x n) fp32 products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_cost(method_name: str, backbone: str, width: int | None, images: torch.Tensor, batch: int,
              steps: int) -> dict:
    """FLOPs of one training step and its measured seconds (mean of `steps` after 3 warm-up steps)."""
    step, method = training_step(images, batch, backbone, method_name, width)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    seconds = time_steps(step, steps, warmup=2)
    params = sum(p.numel() for p in method.backbone.parameters())
    return {"flops": flops, "seconds": seconds, "params": params}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr")
    p.add_argument("--backbones", nargs="+", default=["small-cnn:32", "small-cnn:48", "small-cnn:64", "resnet18"],
                   help="NAME or NAME:WIDTH")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--matmul", type=int, default=2048, help="side of the matmul that measures the peak")
    args = p.parse_args()
    images = sources.load(args.data, "train").images[:20000]
    peak = matmul_peak(args.matmul)
    print(f"fp32 matmul peak ({args.matmul}^2, {torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for spec in args.backbones:
        name, _, width = spec.partition(":")
        steps = args.steps if name != "resnet18" else max(2, args.steps // 5)
        cost = step_cost(args.method, name, int(width) if width else None, images, args.batch, steps)
        achieved = cost["flops"] / cost["seconds"]
        rows.append(f"| {spec} | {cost['params'] / 1e6:.2f} M | {cost['flops'] / 1e9:.1f} | "
                    f"{1000 * cost['seconds']:.0f} | {args.batch / cost['seconds']:.0f} | {achieved / 1e9:.1f} | "
                    f"{100 * achieved / peak:.0f}% |")
        print(rows[-1], flush=True)
    # The peak again after the runs: a machine that got busier meanwhile shows here.
    peak_after = matmul_peak(args.matmul)
    body = "\n".join([
        f"{args.method} training steps on {args.data} ({tuple(images.shape[1:])}), batch {args.batch}, SGD, "
        "channels_last weights. GFLOP counts forward and backward of matmuls and convolutions "
        "(torch.utils.flop_counter), not views, elementwise ops or the optimizer. Peak: fp32 "
        f"{args.matmul}x{args.matmul} matmul on the same threads, {peak / 1e9:.1f} GFLOP/s before the steps and "
        f"{peak_after / 1e9:.1f} after.",
        "",
        "| backbone | backbone params | GFLOP per step | ms per step | images/s | achieved GFLOP/s | of matmul peak |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    write_section(f"efficiency-{args.method}", f"Compute efficiency of a {args.method} step", body)


if __name__ == "__main__":
    main()
