"""Relative patch location: Doersch, Gupta, Efros. Unsupervised Visual Representation Learning by Context
Prediction. ICCV 2015. https://arxiv.org/abs/1505.05192

Cut a 3x3 grid of patches out of each image, take the centre patch and one of its 8 neighbours, and ask which of
the 8 places the neighbour came from. Both patches go through the same backbone; their features are concatenated
and a small MLP (the paper's fc7-fc8 after the pair) classifies the pair 8 ways. Only the backbone is kept.

The network cheats when it can, so each shortcut the paper found has its own switch:
  gap     empty space between patches, so edges and textures do not simply continue across the border
          (paper: half a patch, 48 px between 96 px patches);
  jitter  each patch moves by a random few pixels, so the exact spacing of lines gives nothing away
          (paper: up to 7 px for 96 px patches);
  chroma  chromatic aberration tells a patch's place in the photo, hence the answer: colour dropping, projection
          onto the plane without green-magenta, or copying one channel into all three (selfsup/views/chroma.py).

Small images. The grid fills the whole (working) image, so a patch spans about a quarter of the image's side
whatever the resolution: 1 / (3 + 2 gap + 2 jitter) of it. At 28-32 px that leaves 6-7 px patches, too small for
a three-stage CNN (two poolings leave 1-2 px), so images under `upsample` px (default 64) are first enlarged
bilinearly: 28 px becomes 64 px and the patches 15 px (pooled to 7 and 3 px). Upsampling adds no information; it
gives the convolutions room. 96 px images (STL-10, photo crops) are used as they are: 22 px patches. Evaluation
later runs the backbone on whole images at their own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets.heads import mlp
from selfsup.views.chroma import DEFENCES, chroma_defence, chromatic_aberration
from selfsup.views.patches import fit_grid, grid_tiles
from selfsup.views.recipes import Recipe

GRID = 3
CENTRE = 4  # row-major index of the centre tile
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # label k means the neighbour is tile NEIGHBOURS[k]
# (row, column) step from the centre to the neighbour of each label, for figures and tests.
OFFSETS = tuple((t // GRID - 1, t % GRID - 1) for t in NEIGHBOURS)
PLACES = ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")


@dataclass
class RelPatchConfig(MethodConfig):
    name: str = "relpatch"
    gap: float = opt(0.5, "Space between neighbouring patches as a fraction of the patch side (Doersch et al.: 0.5, 48 px between 96 px patches). 0 turns this defence off.", min=0, max=2)
    jitter: float = opt(0.075, "Each patch moves by up to this fraction of its side in x and in y (Doersch et al.: up to 7 px of 96, 0.075). 0 turns this defence off.", min=0, max=0.5)
    tile: int = opt(0, "Patch side in pixels of the working image; 0 picks the largest patch for which the 3x3 grid with its gap and jitter fits.", min=0)
    upsample: int = opt(64, "Images smaller than this side are enlarged (bilinear) to it before the grid is cut, so 28-32 px images give 15 px patches instead of 6-7 px. 0 never enlarges.", min=0)
    chroma: str = opt("drop", "Defence against chromatic aberration, per patch: drop (Doersch et al.: keep one random channel, the others become faint noise), project (remove the green-magenta component of every pixel), replace (copy one random channel into all three), none. A no-op on one-channel data.", choices=list(DEFENCES))
    drop_noise: float = opt(0.01, "chroma=drop: std of the noise that replaces the dropped channels, as a fraction of the kept channel's std (Doersch et al.: about 1/100).", min=0)
    aberration: float = opt(0.0, "Add synthetic chromatic aberration before cutting patches: red and blue magnified by 1 + this about the image centre, green kept (0.03 shifts the corners' red and blue by ~2 px at 96 px). A demonstration of the shortcut for `selfsup study shortcuts`; 0 is off. Colour data only.", min=0, max=0.5)
    hidden: int = opt(512, "Hidden width of the MLP on the concatenated pair of features (Doersch et al.: fc7 with 4096 units).", min=1)
    head_layers: int = opt(2, "Layers of that MLP, output layer included (Doersch et al.: 2, fc7 and fc8).", min=1)


def patch_geometry(size: int, cfg: RelPatchConfig) -> tuple[int, int, int, int]:
    """(working image side, tile, gap, jitter) in pixels for images of side `size` under cfg."""
    return fit_grid(size, GRID, cfg.gap, cfg.jitter, cfg.tile, cfg.upsample)


class RelPatch(Method):
    name = "relpatch"
    family = "pretext"
    paper = "Doersch et al., Unsupervised Visual Representation Learning by Context Prediction"
    year = 2015
    Config = RelPatchConfig
    views_recipe = "none"
    n_views = 1

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: RelPatchConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.channels = views.channels
        self.working, self.tile, self.gap, self.jitter = patch_geometry(views.size, cfg)
        # Doersch et al.: each patch to fc6, the two fc6 concatenated, then fc7 and the 8-way fc8.
        self.classifier = mlp(2 * backbone.dim, cfg.hidden, len(NEIGHBOURS), layers=cfg.head_layers)
        if cfg.aberration and self.channels != 3:
            raise SelfSupError(f"method.aberration adds colour fringes and needs RGB images, but the data has "
                               f"{self.channels} channel; set method.aberration=0 or use colour data")
        size = (f"{views.size} px images enlarged to {self.working} px (bilinear)" if self.working != views.size
                else f"{views.size} px images")
        self.notes = [f"patches: {size}; a 3x3 grid of {self.tile} px patches, gap {self.gap} px, "
                      f"jitter up to {self.jitter} px; 8-way label from the centre and one neighbour"]
        if self.gap == 0:
            self.notes.append("gap defence off (method.gap=0): edges and textures continuing between patches can "
                              "give the answer away")
        if self.jitter == 0:
            self.notes.append("jitter defence off (method.jitter=0): the exact spacing of lines can give the "
                              "answer away")
        if self.channels == 1 and cfg.chroma != "none":
            self.notes.append(f"chromatic aberration defence '{cfg.chroma}' skipped: 1 channel")
        elif self.channels == 3 and cfg.chroma == "none":
            self.notes.append("chromatic aberration defence off (method.chroma=none): colour fringes can tell a "
                              "patch's place in the photo")
        if cfg.aberration:
            self.notes.append(f"synthetic chromatic aberration added (method.aberration={cfg.aberration:g}): red "
                              "and blue magnified about the image centre")

    def working_images(self, images: torch.Tensor, aberration: float | None = None) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float (B, C, S, S) in [0, 1]: the recipe's view, enlarged if small, aberration added.

        aberration: None uses the configured strength; a number overrides it (the shortcut study's position test).
        """
        x = self.views(images, self.generator)[0]
        if x.shape[-1] != self.working:
            x = F.interpolate(x, size=(self.working, self.working), mode="bilinear", align_corners=False)
        strength = self.cfg.aberration if aberration is None else aberration
        if strength:
            x = chromatic_aberration(x, strength)
        return x

    def cut(self, x: torch.Tensor, jitter: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Working images (B, C, S, S) -> tiles (B, 9, C, t, t) in row-major order and their corners (B, 9, 2)."""
        return grid_tiles(x, GRID, self.tile, self.gap, self.jitter if jitter is None else jitter, self.generator)

    def defend(self, patches: torch.Tensor) -> torch.Tensor:
        """The configured chroma defence on a batch of patches (N, C, t, t); a no-op on one channel."""
        return chroma_defence(patches, self.cfg.chroma, self.generator, self.cfg.drop_noise)

    def pairs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images (B, ...) -> (centre patches, neighbours (each (B, C, t, t)), labels (B,), corners (B, 9, 2))."""
        x = self.working_images(images)
        tiles, corners = self.cut(x)
        B = x.shape[0]
        labels = torch.randint(0, len(NEIGHBOURS), (B,), generator=self.generator, device=x.device)
        which = torch.tensor(NEIGHBOURS, device=x.device)[labels]
        rows = torch.arange(B, device=x.device)
        return tiles[:, CENTRE], tiles[rows, which], labels, corners

    def logits(self, centre: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
        """Defended patch pairs -> (B, 8) logits; one backbone pass over both patches (BN sees 2B patches)."""
        features = self.backbone(torch.cat([centre, neighbour]))  # (2B, dim)
        f_centre, f_neighbour = features.chunk(2)
        return self.classifier(torch.cat([f_centre, f_neighbour], dim=1))  # (B, 8)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        centre, neighbour, labels, _ = self.pairs(images)
        B = centre.shape[0]
        defended = self.defend(torch.cat([centre, neighbour]))  # each patch draws its own defence
        logits = self.logits(defended[:B], defended[B:])
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(1) == labels).float().mean().item()
        return loss, {"pretext_acc": accuracy}

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """relpatch-pairs.png: the grid on a few images, the centre (blue) and the neighbour (red), the answer."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        n = min(4, images.shape[0])
        x = self.working_images(images[:n])
        tiles, corners = self.cut(x)
        labels = torch.randint(0, len(NEIGHBOURS), (n,), generator=self.generator, device=x.device)
        which = torch.tensor(NEIGHBOURS, device=x.device)[labels]
        rows = torch.arange(n, device=x.device)
        centre, neighbour = tiles[:, CENTRE], tiles[rows, which]
        defended = self.defend(torch.cat([centre, neighbour]))
        predicted = self.logits(defended[:n], defended[n:]).argmax(1)

        def show(ax, img: torch.Tensor) -> None:
            img = img.float().cpu().clamp(0, 1)
            gray = img.shape[0] == 1
            ax.imshow((img[0] if gray else img.permute(1, 2, 0)).numpy(), cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])

        fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.3 * n), squeeze=False,
                                 gridspec_kw={"width_ratios": [2, 1, 1]})
        for i in range(n):
            show(axes[i, 0], x[i])
            for k in range(GRID * GRID):
                r, c = corners[i, k].tolist()
                colour = "tab:blue" if k == CENTRE else "tab:red" if k == int(which[i]) else "white"
                axes[i, 0].add_patch(Rectangle((c - 0.5, r - 0.5), self.tile, self.tile, fill=False, lw=1.2,
                                               edgecolor=colour))
            truth, guess = PLACES[int(labels[i])], PLACES[int(predicted[i])]
            axes[i, 0].set_title(f"answer: {truth}; predicted: {guess}", fontsize=8)
            show(axes[i, 1], defended[i])
            show(axes[i, 2], defended[n + i])
            axes[i, 1].set_title("centre (as the net sees it)", fontsize=7)
            axes[i, 2].set_title("neighbour", fontsize=7)
        fig.suptitle(f"relative patch location: {self.tile} px patches, gap {self.gap}, jitter {self.jitter}, "
                     f"chroma {self.cfg.chroma if self.channels == 3 else 'n/a (gray)'}", fontsize=9)
        fig.tight_layout()
        path = Path(out_dir) / "relpatch-pairs.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]
