"""The SimCLR augmentation study (Chen et al. 2020, Fig. 5): which views make good representations?

For every ordered pair (t1, t2) of ops, one short SimCLR pretraining, then a linear probe on frozen features.
Two ways to give the ops to the two views:
  split  (default) view 1 gets t1, view 2 gets t2; the diagonal is one op on both views;
  paper  as in the paper: one view gets t1 then t2 (t1 alone on the diagonal), the other view is the identity.
Cells are run in order and each is saved when done, so a stopped study resumes where it was.
"""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from selfsup.checkpoint import atomic_write
from selfsup.config import Config
from selfsup.data.splits import seeded_subset
from selfsup.errors import SelfSupError
from selfsup.studies.cells import pretrain_cell
from selfsup.views import ops
from selfsup.views.recipes import Named, Recipe, ViewGroup, blur_stage, color_stage, crop_stage, gray_stage

MODES = ("split", "paper")


def _rotate(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Rotate each image by 90, 180 or 270 degrees, as in the paper's study."""
    k = torch.randint(1, 4, (x.shape[0],), generator=g, device=x.device)
    return ops.rotate90(x, k)


def _color(channels: int, size: int) -> list[Named]:
    """Colour distortion of strength 1 (jitter p=0.8, then drop p=0.2); brightness/contrast only on 1 channel."""
    return [color_stage(channels, 1.0, 0.8), gray_stage(channels, 0.2)]


STUDY_OPS: dict[str, Callable[[int, int], list[Named]]] = {
    "crop": lambda c, s: [crop_stage(s, (0.08, 1.0), (3 / 4, 4 / 3))],
    "cutout": lambda c, s: [(partial(ops.cutout, p=1.0), "cutout (p=1)")],
    "color": _color,
    "sobel": lambda c, s: [(lambda x, g: ops.sobel(x), "sobel filter")],
    "noise": lambda c, s: [(partial(ops.gaussian_noise, sigma=(0.0, 0.1), p=1.0), "gaussian noise (sigma 0-0.1)")],
    "blur": lambda c, s: [blur_stage(s, 1.0, (0.1, 2.0))],
    "rotate": lambda c, s: [(_rotate, "rotate by 90, 180 or 270")],
}


def cell_recipe(t1: str, t2: str, channels: int, size: int, mode: str) -> Recipe:
    """The two views of one cell of the grid."""
    first, second = STUDY_OPS[t1](channels, size), STUDY_OPS[t2](channels, size)

    def group(stages: list[Named]) -> ViewGroup:
        return ViewGroup(1, [s for s, _ in stages if s is not None], size)

    if mode == "split":
        groups, names = [group(first), group(second)], [f"view 1: {n}" for _, n in first] + [f"view 2: {n}" for _, n in second]
    else:
        composed = first if t1 == t2 else first + second
        groups, names = [group(composed), group([])], [f"view 1: {n}" for _, n in composed] + ["view 2: identity"]
    return Recipe(f"study:{t1}+{t2}", groups, names, channels)


def run_study(cfg: Config, op_names: list[str], minutes_per_cell: float | None, out: Path, mode: str = "split",
              eval_limit: int = 10000, log: Callable[[str], None] = print, steps_per_cell: int | None = None) -> dict:
    """Run (or resume) the grid; writes cells/, study.csv and heatmap.png into `out`. Returns the results.

    Each cell's budget is minutes_per_cell or steps_per_cell (exactly one). Steps give the same cells on a busy
    machine as on an idle one; minutes give each op the same compute whatever its cost.
    """
    from selfsup.evaluate.features import extract
    from selfsup.evaluate.linear import linear_probe
    from selfsup.run import load_data, load_encoder_backbone

    unknown = [o for o in op_names if o not in STUDY_OPS]
    if unknown:
        raise SelfSupError(f"unknown study op '{unknown[0]}'; choose from {', '.join(STUDY_OPS)}")
    if mode not in MODES:
        raise SelfSupError(f"unknown study mode '{mode}'; choose split or paper")
    if len(op_names) < 1:
        raise SelfSupError("give at least one op with --ops, e.g. --ops crop,color")
    if (minutes_per_cell is None) == (steps_per_cell is None):
        raise SelfSupError("give the budget of each cell as --minutes-per-cell or --steps-per-cell (one of them)")
    if (minutes_per_cell is not None and minutes_per_cell <= 0) or (steps_per_cell is not None and steps_per_cell < 1):
        raise SelfSupError("a cell's budget must be positive, e.g. --minutes-per-cell 1 or --steps-per-cell 100")
    cfg.train.minutes, cfg.train.steps, cfg.train.epochs = minutes_per_cell, steps_per_cell, None
    budget = f"{minutes_per_cell:g} min" if minutes_per_cell is not None else f"{steps_per_cell} steps"
    out.mkdir(parents=True, exist_ok=True)
    study = {"ops": op_names, "mode": mode, "minutes_per_cell": minutes_per_cell, "steps_per_cell": steps_per_cell,
             "data": cfg.data.name, "eval_limit": eval_limit}
    previous = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else None
    if previous and any(previous.get(k) != study[k] for k in ("mode", "minutes_per_cell", "steps_per_cell", "data")):
        raise SelfSupError(f"{out} holds a study with other settings ({previous.get('mode')}, "
                           f"{previous.get('minutes_per_cell') or previous.get('steps_per_cell')} per cell, "
                           f"{previous.get('data')}); choose another --out to start a new one")
    atomic_write(out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(study, indent=2)))
    pretrain_set, _ = load_data(cfg, for_pretraining=True)
    train, test = load_data(cfg)
    train = train.subset((train.labels >= 0).nonzero().flatten())
    if len(train) == 0:
        raise SelfSupError(f"the study's linear probe needs labels; {cfg.data.name} has none")
    train = seeded_subset(train, eval_limit, cfg.train.seed)  # keeps each cell's probe short
    results: dict[tuple[str, str], float] = {}  # test top-1, what the heatmap shows
    validation: dict[tuple[str, str], float] = {}  # top-1 on held-out training labels: what picks the winner
    cells = [(a, b) for a in op_names for b in op_names]
    bar = tqdm(cells, desc="augmentation study", unit="cell")
    for t1, t2 in bar:
        cell_dir = out / "cells" / f"{t1}__{t2}"
        done = cell_dir / "cell.json"
        if done.exists():
            cell = json.loads(done.read_text())
            results[(t1, t2)], validation[(t1, t2)] = cell["linear_top1"], cell["val_top1"]
            continue
        bar.set_postfix_str(f"{t1} x {t2}")
        recipe = cell_recipe(t1, t2, pretrain_set.channels, pretrain_set.size, mode)
        run_dir, result = pretrain_cell(cfg, cell_dir, views=recipe)
        if result.interrupted:
            log(f"stopped in cell {t1} x {t2}; run the same command again to resume")
            break
        backbone = load_encoder_backbone(run_dir, train.channels)
        probe = linear_probe(extract(backbone, train.images), train.labels, extract(backbone, test.images),
                             test.labels, max(len(train.classes), int(train.labels.max()) + 1), seed=cfg.train.seed)
        results[(t1, t2)], validation[(t1, t2)] = probe["top1"], probe["val_top1"]
        cell = {"t1": t1, "t2": t2, "linear_top1": probe["top1"], "val_top1": probe["val_top1"],
                "steps": result.steps, "views": recipe.names}
        atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(cell, indent=2)))
    bar.close()
    write_outputs(out, op_names, results, validation, mode, pretrain_set.channels, cfg.data.name, budget)
    if results:
        # The winner is chosen on held-out training labels, never on the test split.
        b1, b2 = max(validation, key=validation.get)
        what = f"{b1} then {b2}" if b1 != b2 else f"{b1} alone"
        partial = f" (so far: {len(results)} of {len(cells)} cells)" if len(results) < len(cells) else ""
        log(f"best composition{partial} (chosen on validation labels): {what}: validation top-1 "
            f"{validation[(b1, b2)]:.4f}, test top-1 {results[(b1, b2)]:.4f}")
    return {f"{a}+{b}": v for (a, b), v in results.items()}


def write_outputs(out: Path, op_names: list[str], results: dict, validation: dict, mode: str, channels: int,
                  data: str, budget: str) -> None:
    """study.csv and heatmap.png (rows: first op, columns: second op, last column: the row's mean)."""
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["t1", "t2", "linear_top1", "val_top1"])
            for (a, b), v in results.items():
                writer.writerow([a, b, f"{v:.4f}", f"{validation[(a, b)]:.4f}"])

    atomic_write(out / "study.csv", write_csv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(op_names)
    grid = np.full((n, n + 1), np.nan)
    for i, a in enumerate(op_names):
        for j, b in enumerate(op_names):
            grid[i, j] = 100 * results.get((a, b), np.nan)
        row = grid[i, :n]
        grid[i, n] = np.nanmean(row) if np.isfinite(row).any() else np.nan
    fig, ax = plt.subplots(figsize=(1.0 * (n + 1) + 2, 0.8 * n + 2))
    image = ax.imshow(grid, cmap="Greens")
    middle = np.nanmean(grid) if np.isfinite(grid).any() else 0.0
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if v > middle else "black")
    ax.set_xticks(range(n + 1), op_names + ["average"], rotation=45, ha="right")
    ax.set_yticks(range(n), op_names)
    ax.set_xlabel("2nd transformation")
    ax.set_ylabel("1st transformation")
    note = " ('color' = brightness/contrast jitter: grayscale data)" if channels == 1 else ""
    how = "view 1: 1st, view 2: 2nd" if mode == "split" else "one view: 1st then 2nd, other view: identity"
    ax.set_title(f"Linear probe top-1 (%) on {data}, {budget} per cell\n{how}{note}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "heatmap.png", dpi=120)
    plt.close(fig)
