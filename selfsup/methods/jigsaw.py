"""Jigsaw puzzles: Noroozi & Favaro. Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles.
ECCV 2016. https://arxiv.org/abs/1603.09246

Each image is cut into a 3x3 grid of tiles; the tiles are shuffled by one permutation from a fixed set of P, and
the network says which one. Every tile goes through the same backbone on its own (the paper's "context-free
network": no layer sees two tiles until the features are concatenated); the nine features, concatenated in
shuffled order, feed an MLP over the P permutations. To answer, the network has to know what each tile shows and
where such a part sits in an object.

Tiles are cut by `views.patches.grid_tiles`: a gap between tiles and a random jitter of each tile stop the
network from solving the puzzle by continuing edges and textures across tile borders (the paper crops a 64 px
tile at random inside each 75 px cell, an average gap of 11 px). Against other shortcuts, as in the paper:
  - each tile is normalized to zero mean and unit standard deviation per channel on its own, so tiles cannot be
    matched by brightness or contrast (e.g. a vignetting gradient); here the tile is mapped to the training
    data's mean and std, which the backbone's input normalization then turns into zero mean, unit std;
  - colour images: 30% of the images are turned grayscale, and every colour channel of every tile is shifted by
    its own random offset of up to `channel_shift` px, which hides chromatic aberration (the lens shifts colour
    channels differently towards the image border, which would tell a tile's position). One-channel images skip
    both (there is no colour to hide) and the run log says so.
A colour jitter is not needed on top: per-channel tile normalization already removes any brightness or contrast
change of a channel.

Small images are upsampled before cutting (`upsample`, default 64 px): 28 px Fashion-MNIST split three ways
with a gap leaves tiles of 7 px, which two max-pools of the small CNN shrink to 1 px; at 64 px the tiles are
18 px (4x4 after the pools) with a 3 px gap and up to 2 px of jitter, the paper's proportions. Upsampling adds
no detail, so a tile still covers about a third of the object. 96 px STL-10 images are tiled as they are
(27 px tiles).

The permutation set is built greedily for a large Hamming distance (`methods.permutations`); its size and
criterion are the ablation of the paper's Table 4, reproduced by `selfsup study jigsaw-permutations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import opt
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.permutations import MODES, hamming_permutations, set_distances
from selfsup.nets.heads import mlp
from selfsup.views import ops
from selfsup.views.patches import fit_grid, grid_tiles
from selfsup.views.recipes import Recipe


@dataclass
class JigsawConfig(MethodConfig):
    name: str = "jigsaw"
    permutations: int = opt(100, "Size P of the permutation set, the number of classes (paper: 1000; its Table 4 "
                                 "finds 100 within 0.6 points of 1000 on detection, and a 100-way task learns "
                                 "faster in short CPU runs; at 10 or fewer the task is too easy: 49 against 53 "
                                 "mAP).", min=2)
    permutation_set: str = opt("max", "How the set is chosen greedily: max (the paper's Algorithm 1, largest "
                                      "average Hamming distance), maximin (largest minimum distance), min (crowded, "
                                      "similar puzzles: the paper's bad set), random.", choices=list(MODES))
    permutation_seed: int = opt(0, "Seed of the permutation set (its first member and tie-breaks); fixed apart "
                                   "from the training seed so runs with different seeds solve the same puzzles.")
    grid: int = opt(3, "Tiles per side (paper: 3, so 9 tiles and 9! orders; 2 gives 4 tiles and 24 orders).",
                    choices=[2, 3])
    upsample: int = opt(64, "Images smaller than this side are enlarged (bilinear) to it before the grid is cut, "
                            "so 28-32 px images give 18 px tiles instead of 7-8 px; 0 never enlarges. Paper: 225 px "
                            "crops of ImageNet, 64 px tiles.", min=0)
    tile: int = opt(0, "Tile side in pixels of the working image; 0 picks the largest tile for which the grid with "
                       "its gap and jitter fits (18 px at 64 px, 27 px at 96 px).", min=0)
    gap: float = opt(0.17, "Space between neighbouring tiles as a fraction of the tile side, against edges and "
                           "textures continuing across borders (paper: 64 px tiles in 75 px cells, 11 px or 0.17 "
                           "on average). 0 turns this defence off.", min=0, max=2)
    jitter: float = opt(0.085, "Each tile moves by up to this fraction of its side in x and in y (paper: a 64 px "
                               "tile anywhere in its 75 px cell, +-5.5 px or 0.085). 0 turns this defence off.",
                        min=0, max=0.5)
    tile_norm: bool = opt(True, "Normalize each tile's mean and std per channel on its own (paper: yes), so tiles "
                                "cannot be matched by low-level statistics.")
    gray_p: float = opt(0.3, "Colour images only: probability of turning an image grayscale (paper: 30%).",
                        min=0, max=1)
    channel_shift: int = opt(1, "Colour images only: shift each colour channel of each tile by up to +-N px, "
                                "against chromatic aberration (paper: +-2 px on 64 px tiles).", min=0)
    hidden: int = opt(1024, "Hidden width of the classifier over the concatenated tile features (paper: 4096).",
                      min=1)
    head_layers: int = opt(2, "Layers of that classifier (paper: fc7 and fc8, i.e. 2).", min=1)


def tile_geometry(size: int, cfg: JigsawConfig) -> tuple[int, int, int, int]:
    """(working image side, tile, gap, jitter) in pixels for images of side `size` under cfg."""
    return fit_grid(size, cfg.grid, cfg.gap, cfg.jitter, cfg.tile, cfg.upsample)


class Jigsaw(Method):
    name = "jigsaw"
    family = "pretext"
    paper = "Noroozi & Favaro, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles"
    year = 2016
    Config = JigsawConfig
    views_recipe = "none"  # the tiles, their jitter and the shuffle are the augmentation
    n_views = 1

    def __init__(self, backbone: nn.Module, views: Recipe, cfg: JigsawConfig):
        super().__init__()
        self.backbone = backbone
        self.views = views
        self.cfg = cfg
        self.channels = views.channels
        self.side, self.tile, self.gap, self.jitter = tile_geometry(views.size, cfg)
        n = cfg.grid * cfg.grid
        perms, self.min_distance = hamming_permutations(cfg.permutations, n, cfg.permutation_seed,
                                                        cfg.permutation_set)
        self.mean_distance = set_distances(perms)[1]
        # A buffer: the set is saved with every checkpoint, so a run always resumes on the puzzles it began with.
        self.register_buffer("permutations", perms)  # (P, n): puzzle position i shows tile permutations[p, i]
        self.classifier = mlp(n * backbone.dim, cfg.hidden, cfg.permutations, layers=cfg.head_layers)
        how = f"upsampled {views.size} -> {self.side} px, " if self.side != views.size else ""
        self.notes = [
            f"jigsaw: {how}{cfg.grid}x{cfg.grid} tiles of {self.tile} px, gap {self.gap}, jitter {self.jitter}; "
            f"{cfg.permutations} permutations ({cfg.permutation_set}), min Hamming distance {self.min_distance}, "
            f"mean {self.mean_distance:.2f}",
        ]
        if not cfg.tile_norm:
            self.notes.append("jigsaw: per-tile normalization is off (method.tile_norm=false)")
        if self.channels == 1:
            self.notes.append("jigsaw: one-channel images: random grayscale and per-channel tile shifts (the "
                              "colour shortcut defences) are skipped; gap, jitter and tile normalization remain")

    def _normalize_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, K, C, t, t) -> each tile and channel with the training data's mean and std (see module docstring)."""
        mean = tiles.mean(dim=(-2, -1), keepdim=True)
        std = tiles.std(dim=(-2, -1), keepdim=True).clamp_min(0.02)  # a blank tile stays blank, not noise blown up
        norm = getattr(self.backbone, "normalize", None)
        data_mean = norm.mean.view(1, 1, -1, 1, 1) if norm is not None else 0.5
        data_std = norm.std.view(1, 1, -1, 1, 1) if norm is not None else 0.25
        return (tiles - mean) / std * data_std + data_mean

    def _shift_channels(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, K, C, t, t) -> every channel of every tile moved by its own offset in [-s, s]^2, edges replicated."""
        s = self.cfg.channel_shift
        B, K, C, t, _ = tiles.shape
        flat = F.pad(tiles.reshape(B * K, C, t, t), (s, s, s, s), mode="replicate")
        shift = torch.randint(0, 2 * s + 1, (B * K, C, 2), generator=self.generator, device=tiles.device)
        idx = torch.arange(t, device=tiles.device)
        rows = (shift[..., 0, None] + idx)[..., :, None]  # (BK, C, t, 1)
        cols = (shift[..., 1, None] + idx)[..., None, :]  # (BK, C, 1, t)
        bk = torch.arange(B * K, device=tiles.device)[:, None, None, None]
        ch = torch.arange(C, device=tiles.device)[None, :, None, None]
        return flat[bk, ch, rows, cols].reshape(B, K, C, t, t)

    def puzzles(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: (B, C, H, W) uint8 -> (shuffled tiles (B, K, C, t, t) as the network sees them, labels (B,),
        tiles in grid order before shuffling and normalization (B, K, C, t, t) in [0, 1]).

        shuffled[b, i] is tiles[b, permutations[labels[b], i]] (after the defences).
        """
        (x,) = self.views(images, self.generator)  # (B, C, H, W) float in [0, 1]
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        if self.channels == 3 and self.cfg.gray_p > 0:
            x = ops.random_grayscale(x, self.generator, self.cfg.gray_p)
        tiles, _ = grid_tiles(x, self.cfg.grid, self.tile, self.gap, self.jitter, self.generator)
        seen = tiles
        if self.channels == 3 and self.cfg.channel_shift > 0:
            seen = self._shift_channels(seen)
        if self.cfg.tile_norm:
            seen = self._normalize_tiles(seen)
        B, K = tiles.shape[:2]
        labels = torch.randint(0, self.cfg.permutations, (B,), generator=self.generator, device=x.device)
        order = self.permutations[labels]  # (B, K)
        shuffled = seen.gather(1, order.view(B, K, 1, 1, 1).expand_as(seen))
        return shuffled, labels, tiles

    def logits(self, shuffled: torch.Tensor) -> torch.Tensor:
        """(B, K, C, t, t) shuffled tiles -> (B, P): one shared backbone on every tile, features concatenated."""
        B, K = shuffled.shape[:2]
        features = self.backbone(shuffled.flatten(0, 1))  # (B*K, D)
        return self.classifier(features.view(B, K * features.shape[1]))

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        shuffled, labels, _ = self.puzzles(images)
        logits = self.logits(shuffled)  # (B, P)
        loss = F.cross_entropy(logits, labels)
        return loss, {"pretext_acc": (logits.argmax(1) == labels).float().mean().item()}

    def figures(self, images: torch.Tensor, out_dir: Path) -> list[Path]:
        """jigsaw-puzzles.png: for 4 images, the tiles in order, shuffled, and put back by the predicted permutation."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shuffled, labels, tiles = self.puzzles(images[:4])
        guess = self.logits(shuffled).argmax(1)
        g = self.cfg.grid
        B, K = tiles.shape[:2]

        def board(t: torch.Tensor) -> torch.Tensor:
            # (K, C, t, t) -> one (t*g + gaps, ...) image with a 1 px white line between tiles
            padded = F.pad(t, (0, 1, 0, 1), value=1.0)
            side = padded.shape[-1]
            return padded.view(g, g, -1, side, side).permute(2, 0, 3, 1, 4).reshape(-1, g * side, g * side)

        fig, axes = plt.subplots(B, 3, figsize=(5.4, 1.9 * B), squeeze=False)
        for b in range(B):
            shown = tiles[b].gather(0, self.permutations[labels[b]].view(K, 1, 1, 1).expand_as(tiles[b]))
            # Position i shows tile perm[i]; putting tile perm[i] back at its place i -> perm[i] undoes the shuffle.
            undone = torch.empty_like(shown)
            undone[self.permutations[guess[b]]] = shown
            for col, (img, title) in enumerate([(board(tiles[b]), "tiles"),
                                                (board(shown), f"shuffled (#{int(labels[b])})"),
                                                (board(undone), f"predicted #{int(guess[b])}")]):
                ax = axes[b, col]
                arr = img.clamp(0, 1).cpu().permute(1, 2, 0).numpy()
                ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
                solved = "green" if guess[b] == labels[b] else "red"
                ax.set_title(title, fontsize=7, color=solved if col == 2 else "black")
                ax.axis("off")
        fig.suptitle(f"Jigsaw, {self.cfg.permutations} permutations: green = puzzle solved", fontsize=9)
        fig.tight_layout()
        path = Path(out_dir) / "jigsaw-puzzles.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]
