"""SimCLR training throughput: our pipeline against lightly's SimCLR recipe, same data, backbone and batch, one script.

    python bench/throughput.py [--steps 20] [--backbones small-cnn resnet18] [--batch 256]

Ours: uint8 images in memory, batched views on the training device, one process.
lightly 1.6.0: its SimCLRTransform (torchvision/PIL, per sample) in a DataLoader with 2 workers, its projection
head and NTXentLoss. Both use SGD with momentum and the same backbone; we report training pairs/s and the ratio.
Writes the table into docs/benchmarks.md (section throughput).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PILImages, lightly_backbone, lightly_transform  # noqa: E402
from report import write_section  # noqa: E402

from selfsup.config import load_config  # noqa: E402
from selfsup.data import sources  # noqa: E402
from selfsup.run import build_method  # noqa: E402


def time_steps(step, steps: int, warmup: int = 3) -> float:
    """Seconds per step, averaged over `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def training_step(images: torch.Tensor, batch: int, backbone: str, method_name: str = "simclr",
                  width: int | None = None, precision: str = "fp32"):
    """(step, method): one SGD step of `method_name` on a random batch of `images`, set up as the training loop
    sets it up by default (channels_last weights); views, forward, backward and the optimizer all run in step().
    precision bf16: the views, forward and loss run under bf16 autocast, as train.precision=bf16 (or auto on a CPU
    with native bf16) does in the training loop."""
    model = {"backbone": backbone, **({"width": width} if width else {})}
    cfg = load_config({"method": {"name": method_name}, "model": model, "train": {"steps": 1}})
    data = sources.ImageSet(images, torch.full((len(images),), -1), [], "bench", "memory")
    method, _ = build_method(cfg, data)
    if cfg.train.channels_last:  # as the training loop does by default
        method.to(memory_format=torch.channels_last)
    method.set_generator(torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, len(images), (batch,), generator=g)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = method.step_loss(images[idx], idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, method


def ours(images: torch.Tensor, backbone: str, batch: int, steps: int) -> float:
    step, _ = training_step(images, batch, backbone)
    return batch / time_steps(step, steps)


def lightly_recipe(images: torch.Tensor, backbone: str, batch: int, steps: int) -> float:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    # Our recipe's crop scale, colour strength and (at 28 px) no blur, so both sides make the same views.
    transform = lightly_transform(images, min_scale=0.2, cj_strength=0.5, gaussian_blur=0.0)
    loader = torch.utils.data.DataLoader(PILImages(images, transform), batch_size=batch, shuffle=True,
                                         num_workers=2, drop_last=True, persistent_workers=True)
    net = lightly_backbone(backbone, images)
    head = SimCLRProjectionHead(net.dim, 512, 128)
    criterion = NTXentLoss(temperature=0.2)
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    batches = iter(loader)

    def step():
        nonlocal batches
        try:
            x1, x2 = next(batches)
        except StopIteration:
            batches = iter(loader)
            x1, x2 = next(batches)
        z = head(net(torch.cat([x1, x2])))
        loss = criterion(*z.chunk(2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / time_steps(step, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--backbones", nargs="+", default=["small-cnn", "resnet18"])
    p.add_argument("--data", default="fashion-mnist")
    args = p.parse_args()
    images = sources.load(args.data, "train").images[:20000]
    rows = []
    for backbone in args.backbones:
        steps = args.steps if backbone == "small-cnn" else max(3, args.steps // 4)
        a = ours(images, backbone, args.batch, steps)
        b = lightly_recipe(images, backbone, args.batch, steps)
        rows.append(f"| {backbone} | {args.batch} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
        print(rows[-1], flush=True)
    body = "\n".join([
        f"SimCLR training pairs/s on {args.data} ({tuple(images.shape[1:])}), SGD, timed after 3 warm-up steps. "
        "selfsup runs as its training loop does by default (channels_last weights); lightly as its docs show.",
        "",
        "| backbone | batch | selfsup pairs/s | lightly 1.6.0 recipe pairs/s | ratio |",
        "|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    write_section("throughput", "SimCLR training throughput against lightly", body)


if __name__ == "__main__":
    main()
