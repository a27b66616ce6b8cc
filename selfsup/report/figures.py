"""Image grids for a method's own pictures: inputs, what the method does to them, what it predicts back."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from selfsup.checkpoint import atomic_write


def as_image(x: torch.Tensor):
    """(C, H, W) float in [0, 1] -> what imshow takes: (H, W) for one channel, (H, W, 3) for three."""
    x = x.detach().float().clamp(0, 1).cpu()
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def image_grid_png(rows: list[tuple[str, torch.Tensor]], path: str | Path, title: str = "",
                   label_width: float = 1.3) -> Path:
    """Save a PNG with one labelled row per (label, images (B, C, H, W) float in [0, 1]); values are clamped.

    Rows may hold different numbers of images (the widest sets the width); label_width is the inches left of them
    for the row labels. The row labels are also stored in the PNG's Description text chunk ("rows: a; b; c") so a
    program can tell what the picture shows. Written atomically.
    """
    if not rows:
        raise ValueError("image_grid_png needs at least one row")
    import matplotlib  # here, not at import time: importing selfsup must not switch a user's plotting backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_rows, n_cols = len(rows), max(images.shape[0] for _, images in rows)
    cell, label_w, head = 1.1, label_width, (0.45 if title else 0.1)  # inches
    width, height = label_w + cell * n_cols, cell * n_rows + head
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
    for r, (label, images) in enumerate(rows):
        gray = images.shape[1] == 1
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= images.shape[0]:
                ax.set_axis_off()
                continue
            ax.imshow(as_image(images[c]), cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9, labelpad=6)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    fig.subplots_adjust(left=label_w / width, right=1 - 0.05 / width, bottom=0.05 / height,
                        top=1 - head / height, wspace=0.05, hspace=0.08)
    path = Path(path)
    metadata = {"Title": title, "Description": "rows: " + "; ".join(label for label, _ in rows)}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata=metadata))
    plt.close(fig)
    return path


def matrix_png(matrix: torch.Tensor, path: str | Path, title: str = "", vmin: float = -1.0, vmax: float = 1.0,
               cmap: str = "RdBu_r", description: str = "") -> Path:
    """Save a PNG of a matrix (R, C) with a colour bar; colours are fixed to [vmin, vmax] (diverging by default, so
    0 is white, positive red and negative blue). `description` goes into the PNG's Description text chunk.
    Written atomically."""
    if matrix.dim() != 2:
        raise ValueError(f"matrix_png needs a 2-d matrix, got shape {tuple(matrix.shape)}")
    import matplotlib  # here, not at import time: importing selfsup must not switch a user's plotting backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.6, 5))
    image = ax.imshow(matrix.detach().float().cpu().numpy(), cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="antialiased")  # a smoothed, not a sampled, picture of a large matrix
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    metadata = {"Title": title, "Description": description}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata=metadata))
    plt.close(fig)
    return path


def optional_figure(name: str, draw: Callable[[], object], log: Callable[[str], None] | None = None) -> str | None:
    """Draw a picture that accompanies numbers: `name` when draw() succeeded, else None and a one-line note (to
    `log`, or a warning without one), so that a failed picture (a full disk, a matplotlib error) never costs the
    numbers it illustrates."""
    try:
        draw()
    except (RuntimeError, ValueError, OSError) as e:
        note = f"note: {name} skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if log is not None:
            log(note)
        else:
            warnings.warn(note, stacklevel=3)
        return None
    return name
