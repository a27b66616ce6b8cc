"""lightly's SimCLR recipe, run on our data and backbone, for benchmarks that put it beside selfsup.

lightly 1.6.0 as its documentation and its own CIFAR-10 benchmark set it up: SimCLRTransform (torchvision/PIL, per
sample) in a DataLoader with 2 workers, SimCLRProjectionHead, NTXentLoss, SGD with momentum. Only the backbone is
ours, so both sides train the same network; its built-in input normalization is the identity while lightly's
transform normalizes, and is set to the same statistics afterwards so the trained network takes [0, 1] images
like every selfsup encoder does (the evaluation feeds those).
"""

from __future__ import annotations

import math
import time

import torch

from selfsup.nets.backbones import build_backbone, channel_stats


class PILImages(torch.utils.data.Dataset):
    """uint8 tensors served as PIL images through a transform, as a torchvision-style dataset does."""

    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        x = self.images[i]
        img = Image.fromarray(x[0].numpy(), "L") if x.shape[0] == 1 else Image.fromarray(x.permute(1, 2, 0).numpy())
        return self.transform(img)


def lightly_transform(images: torch.Tensor, **changes):
    """lightly's SimCLRTransform at the images' size, normalized by their own channel statistics (its default is
    ImageNet's three channels, which a grey data set does not have); `changes` override its other defaults."""
    from lightly.transforms import SimCLRTransform

    mean, std = channel_stats(images)
    return SimCLRTransform(input_size=images.shape[-1], normalize={"mean": mean, "std": std}, **changes)


def lightly_backbone(name: str, images: torch.Tensor, width: int | None = None, **options) -> torch.nn.Module:
    """Our backbone with identity input normalization, for inputs lightly's transform has normalized already."""
    c = images.shape[1]
    return build_backbone(name, c, width, mean=[0.0] * c, std=[1.0] * c, **options)


def accept_unit_range(net: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """Give a network trained on lightly-normalized inputs the normalization itself, so it takes [0, 1] images."""
    mean, std = channel_stats(images)
    norm = {"mean": torch.tensor(mean).view(1, -1, 1, 1), "std": torch.tensor(std).view(1, -1, 1, 1)}
    found = 0
    for name, buf in net.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in norm and buf.numel() == len(mean):
            buf.copy_(norm[leaf].view_as(buf))
            found += 1
    if found != 2:
        raise RuntimeError(f"expected the backbone's mean and std buffers, found {found} of them")
    return net


def train_lightly_simclr(images: torch.Tensor, backbone: str, batch: int, minutes: float, seed: int,
                         width: int | None = None, workers: int = 2, log=print,
                         **options) -> tuple[torch.nn.Module, dict]:
    """Pretrain `backbone` with lightly's SimCLR recipe for `minutes` of wall clock (loader start-up included).

    Optimizer as lightly's CIFAR-10 benchmark: SGD, lr 0.06 x batch / 256, momentum 0.9, weight decay 5e-4, a
    cosine schedule, here over the time budget (the fraction of it spent) since the step count is not known ahead.
    options: the backbone's own settings (vit-tiny: depth, patch_size).
    Returns the backbone (taking [0, 1] images) and {"steps", "seconds", "images_per_s", "settings"}.
    """
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    torch.manual_seed(seed)
    transform = lightly_transform(images)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(PILImages(images, transform), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                                         generator=generator)
    net = lightly_backbone(backbone, images, width, **options)
    head = SimCLRProjectionHead(net.dim, 512, 128)
    criterion = NTXentLoss()
    base_lr = 0.06 * batch / 256
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=5e-4)
    budget = 60.0 * minutes
    steps, start = 0, time.perf_counter()
    net.train()
    head.train()

    def batches():
        while True:
            yield from loader

    for x1, x2 in batches():
        spent = time.perf_counter() - start
        if spent >= budget:
            break
        for group in opt.param_groups:
            group["lr"] = base_lr * 0.5 * (1 + math.cos(math.pi * spent / budget))
        z = head(net(torch.cat([x1, x2])))
        loss = criterion(*z.chunk(2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if steps % 100 == 0:
            log(f"lightly simclr: step {steps}, loss {loss.item():.3f}, {spent / 60:.1f} of {minutes:g} min")
    seconds = time.perf_counter() - start
    if steps == 0:
        raise RuntimeError(f"no training step fitted in {minutes:g} min (the loader's first batch came too late); "
                           "give a longer budget")
    net.eval()
    settings = (f"SimCLRTransform(input_size={images.shape[-1]}) defaults, normalized by the data's channel "
                f"statistics; SimCLRProjectionHead({net.dim}, 512, 128); NTXentLoss() (temperature 0.5); SGD lr "
                f"{base_lr:g} momentum 0.9 weight decay 5e-4, cosine over the budget; {workers} loader workers")
    return accept_unit_range(net, images), {"steps": steps, "seconds": round(seconds, 1),
                                            "images_per_s": round(steps * batch / seconds, 1), "settings": settings}

