"""RotNet: Gidaris, Singh, Komodakis. Unsupervised Representation Learning by Predicting Image Rotations.
ICLR 2018. https://arxiv.org/abs/1803.07728

Every image of the batch is shown in all four rotations (0, 90, 180 and 270 degrees counter-clockwise), and a
classifier on the backbone's features says which rotation it sees. To know which way is up, the network has to
find the object and recognise its parts (heads are above feet, soles below shoes). The paper feeds all four
rotations of an image in the same batch (its Sec. 2.3: better than one random rotation per image) and uses
rotations by multiples of 90 degrees because they need no interpolation, so no resampling artefact reveals the
answer. The classifier is thrown away; the backbone's pooled features are what we evaluate.

A rotation is ambiguous when the image looks the same after it: an object that is symmetric under a half turn
(e.g. a plain bag) cannot tell 0 from 180 nor 90 from 270 degrees, and the loss on such images stays high
whatever the network learns. docs/pretext-rotation-jigsaw.md measures this per Fashion-MNIST class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets.heads import mlp
from selfsup.views import ops
from selfsup.views.recipes import Recipe

ROTATIONS = 4  # quarter turns: label k means the image was turned k * 90 degrees counter-clockwise


@dataclass
class RotNetConfig(MethodConfig):
    name: str = "rotnet"
    all_rotations: bool = opt(True, "Show every image in all 4 rotations in one batch of 4B (paper: yes, Sec. 2.3, "
                                    "better than one random rotation per image); false draws one rotation per image.")
    head_layers: int = opt(2, "Layers of the rotation classifier on the pooled backbone feature; 1 is a linear "
                              "classifier. The paper's last conv block specializes in rotations (on CIFAR-10 its best "
                              "features come from block 2 of 4); an MLP head keeps the backbone's output, which we "
                              "evaluate, less rotation-specific.", min=1)
    head_hidden: int = opt(512, "Hidden width of the classifier MLP (ignored when head_layers=1).", min=1)


class RotNet(Method):
    name = "rotnet"
    family = "pretext"
    paper = "Gidaris et al., Unsupervised Representation Learning by Predicting Image Rotations"
    year = 2018
    Config = RotNetConfig
    views_recipe = "supervised"  # a mild crop and a flip, so the network cannot memorise exact images
    n_views = 1

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: RotNetConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.classifier = mlp(backbone.dim, cfg.head_hidden, ROTATIONS, layers=cfg.head_layers)
        self.notes = [] if cfg.all_rotations else ["rotnet: one random rotation per image (method.all_rotations=false)"]

    def rotated(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) float -> (rotated images, labels): (4B, C, H, W) and (4B,) in 0..3 with all_rotations,
        else (B, C, H, W) and (B,) with one rotation per image drawn from the generator."""
        B = x.shape[0]
        if self.cfg.all_rotations:
            labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(B)  # (4B,): B zeros, B ones, ...
            return torch.cat([ops.rotate90(x, k) for k in range(ROTATIONS)]), labels
        labels = torch.randint(0, ROTATIONS, (B,), generator=self.generator, device=x.device)
        return ops.rotate90(x, labels), labels

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1]
        rotated, labels = self.rotated(x)
        logits = self.classifier(self.backbone(rotated))  # (4B, 4)
        loss = F.cross_entropy(logits, labels)
        return loss, {"pretext_acc": (logits.argmax(1) == labels).float().mean().item()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) float in [0, 1] -> (N, 4) probabilities of each rotation label."""
        return self.classifier(self.backbone(x)).softmax(1)

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """rotnet-predictions.png: each image in its 4 rotations, titled with the predicted rotation."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = images.float() / 255
        B = x.shape[0]
        rotated = torch.cat([ops.rotate90(x, k) for k in range(ROTATIONS)])  # (4B, ...), rotation-major
        probs = self.predict(rotated).cpu()
        fig, axes = plt.subplots(B, ROTATIONS, figsize=(1.6 * ROTATIONS, 1.7 * B), squeeze=False)
        for k in range(ROTATIONS):
            for i in range(B):
                j = k * B + i
                ax = axes[i, k]
                img = rotated[j].cpu().permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                guess = int(probs[j].argmax())
                ax.set_title(f"{90 * guess}° ({probs[j, guess]:.2f})", fontsize=7,
                             color="green" if guess == k else "red")
                ax.axis("off")
            axes[-1, k].text(0.5, -0.08, f"turned {90 * k}°", transform=axes[-1, k].transAxes, ha="center",
                             va="top", fontsize=8)
        fig.suptitle("RotNet: predicted rotation (probability); green = right", fontsize=9)
        fig.tight_layout(rect=(0, 0.02, 1, 0.97))
        path = Path(out_dir) / "rotnet-predictions.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]
