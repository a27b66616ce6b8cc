"""Compute efficiency of a pretraining step: the FLOP/s a method's training step achieves against the matmul FLOP/s
of the same machine in the same precision, both measured in this one process.

    python bench/efficiency.py --method simclr --backbones small-cnn:32 small-cnn:48 small-cnn:64 resnet18 --batch 256
    python bench/efficiency.py --method vicreg --backbones small-cnn:32 --precision fp32 bf16

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
from selfsup.hardware import cpu_key, cpu_label  # noqa: E402
from selfsup.precision import cpu_bf16_native  # noqa: E402


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of the fastest of `repeats` (n x n) @ (n x n) products in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_cost(method_name: str, backbone: str, width: int | None, images: torch.Tensor, batch: int,
              steps: int, precision: str = "fp32") -> dict:
    """FLOPs of one training step and its measured seconds (mean of `steps` after 3 warm-up steps)."""
    step, method = training_step(images, batch, backbone, method_name, width, precision)
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
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                   help="step precision(s): fp32, or bf16 autocast against a bf16 matmul peak")
    args = p.parse_args()
    if "bf16" in args.precision and not cpu_bf16_native():
        print("note: this CPU emulates bf16 (no AVX512-BF16 or AMX): the bf16 rows measure the emulation", flush=True)
    images = sources.load(args.data, "train").images[:20000]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {prec: matmul_peak(args.matmul, dtype=dtypes[prec]) for prec in args.precision}
    for prec, peak in peaks.items():
        print(f"{prec} matmul peak ({args.matmul}^2, {torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s",
              flush=True)
    rows = []
    for prec in args.precision:
        for spec in args.backbones:
            name, _, width = spec.partition(":")
            steps = args.steps if name != "resnet18" else max(2, args.steps // 5)
            cost = step_cost(args.method, name, int(width) if width else None, images, args.batch, steps, prec)
            achieved = cost["flops"] / cost["seconds"]
            rows.append(f"| {spec} | {prec} | {cost['params'] / 1e6:.2f} M | {cost['flops'] / 1e9:.1f} | "
                        f"{1000 * cost['seconds']:.0f} | {args.batch / cost['seconds']:.0f} | "
                        f"{achieved / 1e9:.1f} | {100 * achieved / peaks[prec]:.0f}% |")
            print(rows[-1], flush=True)
    # The peaks again after the runs: a machine that got busier meanwhile shows here.
    after = {prec: matmul_peak(args.matmul, dtype=dtypes[prec]) for prec in args.precision}
    peak_text = "; ".join(f"{prec} {peaks[prec] / 1e9:.1f} GFLOP/s before the steps and {after[prec] / 1e9:.1f} after"
                          for prec in args.precision)
    body = "\n".join([
        f"{args.method} training steps on {args.data} ({tuple(images.shape[1:])}), batch {args.batch}, SGD, "
        "channels_last weights; bf16 rows run views, forward and loss under bf16 autocast (fp32 weights). GFLOP "
        "counts forward and backward of matmuls and convolutions (torch.utils.flop_counter), not views, elementwise "
        f"ops or the optimizer. Peak: {args.matmul}x{args.matmul} matmul in the row's precision on the same "
        f"threads: {peak_text}.",
        "",
        "| backbone | precision | backbone params | GFLOP per step | ms per step | images/s | achieved GFLOP/s | "
        "of matmul peak |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    # One section per kind of CPU. Older sections (no CPU in the key) name only "AMD EPYC"; the vicreg one had
    # native bf16, so a Zen 4 or later.
    write_section(f"efficiency-{args.method}-{cpu_key()}", f"Compute efficiency of a {args.method} step, {cpu_label()}",
                  body)


if __name__ == "__main__":
    main()
