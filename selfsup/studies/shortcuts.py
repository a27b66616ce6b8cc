"""The shortcut study: does relative patch location learn features, or does it cheat?

A pretext task can be solved by low-level shortcuts instead of by understanding images (Doersch et al. 2015, Sec.
3). This study trains relative patch location (methods/relpatch.py) once per cell, each cell turning defences on or
off, and reports, side by side:
  pretext accuracy  on held-out images (and the last training value): how well the 8-way task is solved;
  linear probe      top-1 of a linear classifier on frozen whole-image features (all labels, and a few labels);
  position          Doersch's check for chromatic aberration: a linear classifier on frozen features of single
                    patches predicts which of the 9 grid cells the patch came from (chance 1/9), once on clean
                    images and once with synthetic aberration added. Content alone gives some position (sky on
                    top); what aberration adds over that is what the network has learned to read from fringes.
A high pretext accuracy beside a probe no better than random features is the cheat the lecture warns about.

Cells (defences named by what is on): none, gap, gap+jitter, all (gap, jitter and colour dropping), and, on colour
data trained with synthetic aberration added: aberration (no chroma defence), aberration+drop, aberration+project,
aberration+replace. A random-init backbone is measured too, as the floor.

Every cell is saved when done, so a stopped study resumes where it was; study.csv, shortcuts.png and a one-line
conclusion are rewritten at the end.
"""

from __future__ import annotations

import copy
import csv
import json
import textwrap
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from selfsup.checkpoint import atomic_write, load_checkpoint
from selfsup.config import Config, to_dict
from selfsup.data.splits import few_label_split, seeded_subset
from selfsup.errors import SelfSupError
from selfsup.studies.cells import pretrain_cell
from selfsup.methods.relpatch import GRID, NEIGHBOURS, RelPatch, RelPatchConfig

ABERRATION = 0.05  # red and blue magnified 5% about the centre: ~2 px at the corners of a 64 px image
GAP, JITTER = 0.5, 0.075
POSITION_WEIGHT_DECAY = 1e-3
PRETEXT_IMAGES = 2000  # held-out images for the pretext accuracy  # Doersch et al.'s gap (half a patch) and jitter (7 of 96 px)

# name -> the relpatch settings of the cell
CELLS: dict[str, dict] = {
    "none": {"gap": 0.0, "jitter": 0.0, "chroma": "none", "aberration": 0.0},
    "gap": {"gap": GAP, "jitter": 0.0, "chroma": "none", "aberration": 0.0},
    "gap+jitter": {"gap": GAP, "jitter": JITTER, "chroma": "none", "aberration": 0.0},
    "all": {"gap": GAP, "jitter": JITTER, "chroma": "drop", "aberration": 0.0},
    "aberration": {"gap": GAP, "jitter": JITTER, "chroma": "none", "aberration": ABERRATION},
    "aberration+drop": {"gap": GAP, "jitter": JITTER, "chroma": "drop", "aberration": ABERRATION},
    "aberration+project": {"gap": GAP, "jitter": JITTER, "chroma": "project", "aberration": ABERRATION},
    "aberration+replace": {"gap": GAP, "jitter": JITTER, "chroma": "replace", "aberration": ABERRATION},
}
COLOUR_CELLS = ("all", "aberration", "aberration+drop", "aberration+project", "aberration+replace")
RANDOM = "random init"
COLOUR_FIX = ("--data /usr/share/backgrounds/mate/nature --set data.crops_per_image=100 --set data.image_size=64 "
              "(Debian's mate-backgrounds photos)")
FIELDS = ["cell", "gap", "jitter", "chroma", "aberration", "steps", "pretext_train", "pretext_heldout",
          "linear_top1", "few_label_top1", "position_clean", "position_aberrated"]


def cell_config(cfg: Config, cell: str) -> Config:
    """The study's config with the method set to relpatch under the cell's defences (other method keys kept)."""
    out = copy.deepcopy(cfg)
    base = vars(cfg.method) if isinstance(cfg.method, RelPatchConfig) else {}
    out.method = RelPatchConfig(**{**base, **CELLS[cell], "name": "relpatch"})
    return out


@torch.no_grad()
def _features(backbone: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Float images (N, C, H, W) in [0, 1] -> (N, dim) frozen features (backbone in eval mode)."""
    backbone.eval()
    return torch.cat([backbone(x[i:i + batch]).float() for i in range(0, len(x), batch)]) if len(x) else \
        torch.zeros(0, backbone.dim)


@torch.no_grad()
def pretext_accuracy(method: RelPatch, images: torch.Tensor, seed: int, batch: int = 256) -> float:
    """Share of held-out pairs whose neighbour's place the trained method names (its own defences on); eval mode."""
    method.eval()
    method.set_generator(torch.Generator().manual_seed(seed))
    hits = 0
    for i in range(0, len(images), batch):
        centre, neighbour, labels, _ = method.pairs(images[i:i + batch])
        n = len(labels)
        defended = method.defend(torch.cat([centre, neighbour]))
        hits += int((method.logits(defended[:n], defended[n:]).argmax(1) == labels).sum())
    return hits / max(1, len(images))


@torch.no_grad()
def position_tiles(method: RelPatch, images: torch.Tensor, aberration: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 9 tiles of every image, unjittered and undefended -> (tiles (9N, C, t, t), grid cell 0..8 of each)."""
    method.set_generator(torch.Generator().manual_seed(seed))
    x = method.working_images(images, aberration=aberration)
    tiles, _ = method.cut(x, jitter=0)
    cells = torch.arange(GRID * GRID).repeat(len(images))
    return tiles.flatten(0, 1), cells


def position_accuracy(method: RelPatch, train_images: torch.Tensor, test_images: torch.Tensor, aberration: float,
                      seed: int) -> float:
    """Doersch's aberration check: test top-1 of a linear classifier naming a patch's grid cell from frozen features.

    One fit with a fixed weight decay (the same for every cell), not the probe's cross-validated choice: the study
    fits it twice per cell and the comparison between cells is what counts.
    """
    from selfsup.evaluate.linear import fit_logistic

    fit_tiles, fit_cells = position_tiles(method, train_images, aberration, seed)
    test_tiles, test_cells = position_tiles(method, test_images, aberration, seed + 1)
    model = fit_logistic(_features(method.backbone, fit_tiles), fit_cells, GRID * GRID, POSITION_WEIGHT_DECAY)
    return model.accuracy(_features(method.backbone, test_tiles), test_cells)


def measure(method: RelPatch, train, test, seed: int, n_labels: int, position_images: int, colour: bool,
            aberration: float) -> dict:
    """Every number of one cell for a trained (or random-init) method: pretext, probes, position."""
    from selfsup.evaluate.linear import linear_probe

    was = method.training
    method.eval()
    try:
        row = {"pretext_heldout": pretext_accuracy(method, test.images[:PRETEXT_IMAGES], seed)}
        f_train = _features(method.backbone, train.images.float() / 255)
        f_test = _features(method.backbone, test.images.float() / 255)
        classes = max(len(train.classes), int(train.labels.max()) + 1, int(test.labels.max()) + 1)
        row["linear_top1"] = linear_probe(f_train, train.labels, f_test, test.labels, classes, seed=seed)["top1"]
        known = int(torch.unique(train.labels).numel())
        n = max(known, min(n_labels, len(train)))
        try:
            pick = few_label_split(train.labels, n, seed)
            row["few_label_top1"] = linear_probe(f_train[pick], train.labels[pick], f_test, test.labels, classes,
                                                 seed=seed)["top1"]
        except SelfSupError:  # too few images of some class for n balanced labels: leave the column empty
            row["few_label_top1"] = None
        # Seeded picks, not the first images: folder crops come in photo order.
        fit = seeded_subset(train, position_images, seed).images
        held = seeded_subset(test, max(1, position_images // 2), seed).images
        row["position_clean"] = position_accuracy(method, fit, held, 0.0, seed)
        row["position_aberrated"] = position_accuracy(method, fit, held, aberration, seed) if colour else None
    finally:
        method.train(was)
    return row


def _last_logged(run_dir: Path, key: str) -> float | None:
    value = None
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            value = json.loads(line).get(key, value)
    return value


def run_study(cfg: Config, minutes_per_cell: float | None, out: Path, cells: list[str] | None = None,
              steps_per_cell: int | None = None, eval_limit: int = 5000, position_images: int = 300,
              log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the cells; writes cells/, study.csv, shortcuts.png and study.json into `out`.

    Each cell's budget is minutes_per_cell or steps_per_cell (exactly one). cells=None runs every cell (the
    grayscale ones on one-channel data); asking for a colour cell on one-channel data is an error naming the fix.
    Probes use at most eval_limit labelled training and test images; the position test fits on the patches of
    position_images training images. Returns {cell: row of numbers}, the random-init row included.
    """
    from selfsup.run import build_method, load_data

    chosen = cells
    cells = list(CELLS) if cells is None else cells
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise SelfSupError(f"unknown shortcut-study cell '{unknown[0]}'; choose from {', '.join(CELLS)}")
    if not cells:
        raise SelfSupError(f"give at least one cell with --cells, e.g. --cells none,gap+jitter ({', '.join(CELLS)})")
    if (minutes_per_cell is None) == (steps_per_cell is None):
        raise SelfSupError("give the budget of each cell as --minutes-per-cell or --steps-per-cell (one of them)")
    if (minutes_per_cell is not None and minutes_per_cell <= 0) or (steps_per_cell is not None and steps_per_cell < 1):
        raise SelfSupError("a cell's budget must be positive, e.g. --minutes-per-cell 1 or --steps-per-cell 100")
    cfg = copy.deepcopy(cfg)
    cfg.train.minutes, cfg.train.steps, cfg.train.epochs = minutes_per_cell, steps_per_cell, None
    budget = f"{minutes_per_cell:g} min" if minutes_per_cell is not None else f"{steps_per_cell} steps"

    pretrain_set, _ = load_data(cfg, for_pretraining=True)
    colour = pretrain_set.channels == 3
    if not colour and chosen is None:
        cells = [c for c in cells if c not in COLOUR_CELLS]
        log(f"note: {cfg.data.name} has one channel, so the colour cells ({', '.join(COLOUR_CELLS)}) are left out; "
            f"for them use colour photos: {COLOUR_FIX}")
    if not colour and any(c in COLOUR_CELLS for c in cells):
        grey = [c for c in cells if c in COLOUR_CELLS]
        raise SelfSupError(f"the shortcut study's colour cells ({', '.join(grey)}) need RGB images but "
                           f"{cfg.data.name} has {pretrain_set.channels} channel; use colour photos: {COLOUR_FIX}, "
                           f"or leave them out: --cells {','.join(c for c in cells if c not in COLOUR_CELLS) or 'none,gap,gap+jitter'}")
    train, test = load_data(cfg)
    train = train.subset((train.labels >= 0).nonzero().flatten())
    test = test.subset((test.labels >= 0).nonzero().flatten())
    if len(train) == 0 or len(test) == 0:
        hint = (" (a flat folder: add --set data.crops_per_image=100 to label each crop with its photo)"
                if not train.classes else "")
        raise SelfSupError(f"the shortcut study's probes need labelled images; {cfg.data.name} has none{hint}")
    train = seeded_subset(train, eval_limit, cfg.train.seed)
    test = seeded_subset(test, eval_limit, cfg.train.seed)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Every setting the cells share (the whole config but the defences each cell sets) must match to resume.
    shared = json.loads(json.dumps(to_dict(cell_config(cfg, "none"))))
    for key in CELLS["none"]:
        shared["method"].pop(key, None)
    study = {"study": "shortcuts", "minutes_per_cell": minutes_per_cell, "steps_per_cell": steps_per_cell,
             "data": cfg.data.name, "seed": cfg.train.seed, "eval_limit": eval_limit,
             "position_images": position_images, "aberration": ABERRATION, "settings": shared}
    previous = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else None
    same = ("minutes_per_cell", "steps_per_cell", "data", "seed", "eval_limit", "position_images", "aberration",
            "settings")
    if previous and any(previous.get(k) != study[k] for k in same):
        raise SelfSupError(f"{out} holds a shortcut study with other settings ({previous.get('data')}, "
                           f"{previous.get('minutes_per_cell') or previous.get('steps_per_cell')} per cell); "
                           "choose another --out to start a new one")
    atomic_write(out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps({**(previous or {}), **study},
                                                                                 indent=2)))
    results: dict[str, dict] = {}
    bar = tqdm([RANDOM] + cells, desc="shortcut study", unit="cell")
    for cell in bar:
        cell_dir = out / "cells" / ("random-init" if cell == RANDOM else cell)
        done = cell_dir / "cell.json"
        if done.exists():
            results[cell] = json.loads(done.read_text())
            continue
        bar.set_postfix_str(cell)
        cell_cfg = cell_config(cfg, "gap+jitter" if cell == RANDOM else cell)
        aberration = ABERRATION
        if cell == RANDOM:  # the floor: the same network untrained
            method, _ = build_method(cell_cfg, pretrain_set)
            row = {"cell": RANDOM, **{k: None for k in ("gap", "jitter", "chroma", "aberration")}, "steps": 0,
                   "pretext_train": None}
        else:
            run_dir, result = pretrain_cell(cell_cfg, cell_dir)
            if result.interrupted:
                log(f"stopped in cell {cell}; run the same command again to resume")
                break
            method, _ = build_method(cell_cfg, pretrain_set)
            method.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["method"])
            row = {"cell": cell, **CELLS[cell], "steps": result.steps,
                   "pretext_train": _last_logged(run_dir, "pretext_acc")}
        row.update(measure(method, train, test, cfg.train.seed, cfg.eval.labels, position_images, colour, aberration))
        atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(row, indent=2)))
        results[cell] = row
    bar.close()
    conclusion = conclude(results)
    write_outputs(out, results, cfg.data.name, budget, conclusion)
    atomic_write(out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {**study, "cells": cells, "conclusion": conclusion}, indent=2)))
    log(conclusion)
    return results


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def conclude(results: dict[str, dict]) -> str:
    """One line saying what the cells show, built from their numbers (differences under 2 points count as none)."""
    parts = []
    undefended = results.get("none")
    name = next((k for k in ("gap+jitter", "all", "gap") if k in results), None)
    floor = results.get(RANDOM)
    rows = [r for r in results.values()]
    probe = "few_label_top1" if rows and all(r.get("few_label_top1") is not None for r in rows) else "linear_top1"
    probe_name = "few-label probe" if probe == "few_label_top1" else "linear probe"
    if undefended and name:
        defended = results[name]
        pretext_gap = undefended["pretext_heldout"] - defended["pretext_heldout"]
        probe_gap = undefended[probe] - defended[probe]
        if floor and max(undefended[probe], defended[probe]) <= floor[probe] + 0.02:
            verdict = "neither beats random init by 2 points: train the cells longer"
        elif pretext_gap > 0.05 and probe_gap <= 0.02:
            verdict = "the easier task did not give better features"
        elif abs(probe_gap) <= 0.02:
            verdict = "the probes differ by under 2 points"
        elif probe_gap < 0:
            verdict = "the defences gave better features"
        else:
            verdict = "here the undefended features probe better"
        parts.append(f"pretext accuracy {_pct(undefended['pretext_heldout'])} without defences vs "
                     f"{_pct(defended['pretext_heldout'])} with {name}, {probe_name} {_pct(undefended[probe])} "
                     f"vs {_pct(defended[probe])}" + (f" (random init {_pct(floor[probe])})" if floor else "")
                     + f": {verdict}")
    open_cell = results.get("aberration")
    guarded = {k: v for k, v in results.items() if k.startswith("aberration+")}
    if open_cell and open_cell.get("position_aberrated") is not None:
        text = (f"with synthetic aberration, a patch's grid cell is read from its features at "
                f"{_pct(open_cell['position_aberrated'])} (clean images {_pct(open_cell['position_clean'])}, "
                f"chance 11%) without a chroma defence")
        if guarded:
            best = min(guarded, key=lambda k: guarded[k]["position_aberrated"])
            text += f", {_pct(guarded[best]['position_aberrated'])} with {best.split('+')[1]}"
        parts.append(text)
    elif floor and not parts:
        parts.append(f"random init: {probe_name} {_pct(floor[probe])}")
    return "; ".join(parts) if parts else "no cell finished"


def write_outputs(out: Path, results: dict[str, dict], data: str, budget: str, conclusion: str) -> None:
    """study.csv (one row per cell) and shortcuts.png (accuracies per cell; position with and without aberration)."""
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(FIELDS)
            for row in results.values():
                writer.writerow(["" if row.get(k) is None else (f"{row[k]:.4f}" if isinstance(row[k], float)
                                                                 and k not in ("gap", "jitter", "aberration")
                                                                 else row[k]) for k in FIELDS])

    atomic_write(out / "study.csv", write_csv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    value = lambda k: np.array([np.nan if results[c].get(k) is None else 100 * results[c][k] for c in names])  # noqa: E731
    x = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9, 1.4 * len(names) + 4), 4.4))
    for i, (key, label) in enumerate([("pretext_heldout", "pretext (held-out)"), ("linear_top1", "linear probe"),
                                      ("few_label_top1", "few-label probe")]):
        left.bar(x + (i - 1) * 0.27, value(key), 0.27, label=label)
    left.axhline(100 / len(NEIGHBOURS), color="gray", lw=0.8, ls=":")
    left.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    left.set_ylabel("top-1 (%)")
    left.set_ylim(0, 100)
    left.set_title("pretext accuracy vs what the features are worth", fontsize=9)
    left.legend(fontsize=7)
    for i, (key, label) in enumerate([("position_clean", "clean patches"),
                                      ("position_aberrated", "with synthetic aberration")]):
        right.bar(x + (i - 0.5) * 0.4, value(key), 0.4, label=label)
    right.axhline(100 / (GRID * GRID), color="gray", lw=0.8, ls=":", label="chance (1/9)")
    right.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    top = np.nanmax(np.concatenate([value("position_clean"), value("position_aberrated"), [0.0]]))
    right.set_ylim(0, max(30.0, 1.2 * top))  # position accuracies sit near chance: zoom in
    right.set_title("absolute position (grid cell) from one patch's features", fontsize=9)
    right.legend(fontsize=7)
    fig.suptitle(f"Shortcut study: relative patch location on {data}, {budget} per cell", fontsize=10)
    fig.text(0.5, 0.005, "\n".join(textwrap.wrap(conclusion, 160)), ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(out / "shortcuts.png", dpi=120)
    plt.close(fig)
