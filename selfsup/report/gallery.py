"""Pictures a person looks at: what the network sees under a view recipe."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from selfsup.views.recipes import Recipe  # noqa: E402


def as_image(x: torch.Tensor):
    """(C, H, W) float in [0, 1] -> what imshow takes (H, W) or (H, W, 3)."""
    x = x.clamp(0, 1).cpu()
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def views_gallery(images: torch.Tensor, recipe: Recipe, path: str | Path, seed: int = 0, title: str = "") -> Path:
    """Save a PNG grid: one row per image (uint8 (N, C, H, W)), the original then each of its views."""
    views = recipe(images, torch.Generator(device=images.device).manual_seed(seed))
    n, cols = images.shape[0], 1 + len(views)
    caption = textwrap.wrap("; ".join(recipe.names), max(60, int(16 * cols)))
    lines = caption + ([title] if title else [])
    head = 0.16 * len(lines) + 0.3  # inches of text above the grid
    height = 1.3 * n + head
    fig, axes = plt.subplots(n, cols, figsize=(max(1.3 * cols, 4.0), height), squeeze=False)
    if len(recipe.groups) > 1 and recipe.name == "multicrop":
        headers = [f"{kind} {i + 1}" for kind, g in zip(("global", "local"), recipe.groups) for i in range(g.count)]
    else:
        headers = [f"view {j + 1}" for j in range(len(views))]
    gray = images.shape[1] == 1
    for i in range(n):
        row = [images[i].float() / 255] + [v[i] for v in views]
        for j, x in enumerate(row):
            ax = axes[i][j]
            ax.imshow(as_image(x), cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("original" if j == 0 else headers[j - 1], fontsize=8)
    fig.suptitle("\n".join(lines if not title else [title] + caption), fontsize=7, y=0.998, va="top")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - head / height, wspace=0.06, hspace=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
