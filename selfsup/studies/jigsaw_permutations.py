"""The jigsaw permutation-set study (Noroozi & Favaro 2016, Table 4; the lecture's ablation): how does the set of
permutations the network must tell apart change what it learns?

One short jigsaw pretraining per cell, a cell being a set size P and a way of choosing the set (see
methods/permutations.py: max is the paper's, maximin keeps the minimum Hamming distance high, min crowds the set).
Each cell records the set's minimum and mean Hamming distance, the pretext accuracy at the end of training, and
two downstream numbers on frozen features: the linear probe on `eval_limit` labelled training images and the
few-label probe on `eval.labels` class-balanced labels. The paper's finding: small sets are easy puzzles (high
pretext accuracy) that teach less; among sets of equal size, larger distances between permutations teach more.

Every cell gets the same budget. A budget in steps makes cells comparable on a busy machine; a budget in minutes
gives a set with more classes no extra time. Cells are saved when done, so a stopped study resumes where it was.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from selfsup.checkpoint import atomic_write
from selfsup.config import Config, flatten, to_dict
from selfsup.data.splits import few_label_split, seeded_subset
from selfsup.errors import SelfSupError
from selfsup.studies.cells import pretrain_cell
from selfsup.methods.jigsaw import JigsawConfig
from selfsup.methods.permutations import MODES, hamming_permutations, set_distances

COLUMNS = ["mode", "P", "min_hamming", "mean_hamming", "steps", "pretext_acc", "linear_top1", "val_top1",
           "few_label_top1"]


def _last_pretext_accuracy(run_dir: Path) -> float | None:
    """pretext_acc of the last metrics.jsonl row (the mean over its logging window), if logged."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    values = [r["pretext_acc"] for r in rows if "pretext_acc" in r]
    return values[-1] if values else None


def run_study(cfg: Config, permutations: list[int], modes: list[str], out: Path, minutes_per_cell: float | None = None,
              steps_per_cell: int | None = None, eval_limit: int = 10000,
              log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) the cells (mode x P); writes cells/, study.csv and study.png into `out`. Returns the rows."""
    from selfsup.evaluate.features import extract
    from selfsup.evaluate.linear import linear_probe
    from selfsup.run import load_data, load_encoder_backbone

    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SelfSupError(f"unknown permutation-set mode '{unknown[0]}'; choose from {', '.join(MODES)}")
    if not modes or not permutations:
        raise SelfSupError("give at least one set size and one mode, e.g. --permutations 10,100 --modes max")
    if (minutes_per_cell is None) == (steps_per_cell is None):
        raise SelfSupError("give exactly one budget per cell: --minutes-per-cell or --steps-per-cell")
    if (steps_per_cell is not None and steps_per_cell < 1) or (minutes_per_cell is not None and minutes_per_cell <= 0):
        raise SelfSupError("a cell's budget must be positive, e.g. --minutes-per-cell 1 or --steps-per-cell 100")
    cfg = copy.deepcopy(cfg)
    if not isinstance(cfg.method, JigsawConfig):
        cfg.method = JigsawConfig()
    n = cfg.method.grid ** 2
    bad = [p for p in permutations if not 2 <= p <= math.factorial(n)]
    if bad:
        raise SelfSupError(f"permutation-set sizes must be 2 to {math.factorial(n)} for a {cfg.method.grid}x"
                           f"{cfg.method.grid} grid, got {bad[0]}")
    cfg.train.minutes, cfg.train.steps, cfg.train.epochs = minutes_per_cell, steps_per_cell, None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # What every cell shares: a folder made under other settings cannot be resumed into a fair comparison.
    settings = to_dict(cfg)
    settings["method"].pop("permutations")
    settings["method"].pop("permutation_set")
    settings["eval_limit"] = eval_limit
    study_file = out / "study.json"
    if study_file.exists():
        before = flatten(json.loads(study_file.read_text()).get("settings", {}))
        now = flatten(json.loads(json.dumps(settings)))
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if differ:
            k = differ[0]
            raise SelfSupError(f"{out} holds a jigsaw-permutations study with different settings ({k}: "
                               f"{before.get(k)!r} there, {now.get(k)!r} now); use another --out or the same settings")
    study = {"permutations": permutations, "modes": modes, "settings": settings}
    atomic_write(study_file, lambda tmp: Path(tmp).write_text(json.dumps(study, indent=2)))

    train, test = load_data(cfg)
    train = train.subset((train.labels >= 0).nonzero().flatten())
    if len(train) == 0:
        raise SelfSupError(f"the study's probes need labels; {cfg.data.name} has none")
    train = seeded_subset(train, eval_limit, cfg.train.seed)  # keeps each cell's probe short
    test = test.subset((test.labels >= 0).nonzero().flatten())
    num_classes = max(len(train.classes), int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    few = few_label_split(train.labels, cfg.eval.labels, cfg.train.seed)  # the same labelled images in every cell

    rows: list[dict] = []
    cells = [(mode, P) for mode in modes for P in permutations]
    bar = tqdm(cells, desc="jigsaw-permutations study", unit="cell")
    for mode, P in bar:
        cell_dir = out / "cells" / f"{mode}-P{P}"
        done = cell_dir / "cell.json"
        if done.exists():
            rows.append(json.loads(done.read_text()))
            continue
        bar.set_postfix_str(f"{mode} P={P}")
        cell_cfg = copy.deepcopy(cfg)
        cell_cfg.method = dataclasses.replace(cfg.method, permutations=P, permutation_set=mode)
        run_dir, result = pretrain_cell(cell_cfg, cell_dir)
        if result.interrupted:
            log(f"stopped in cell {mode} P={P}; run the same command again to resume")
            break
        perms, min_distance = hamming_permutations(P, n, cfg.method.permutation_seed, mode)
        mean_distance = set_distances(perms)[1]
        backbone = load_encoder_backbone(run_dir, train.channels)
        train_f, test_f = extract(backbone, train.images), extract(backbone, test.images)
        probe = linear_probe(train_f, train.labels, test_f, test.labels, num_classes, seed=cfg.train.seed)
        few_probe = linear_probe(train_f[few], train.labels[few], test_f, test.labels, num_classes, seed=cfg.train.seed)
        row = {"mode": mode, "P": P, "min_hamming": min_distance, "mean_hamming": round(mean_distance, 3),
               "steps": result.steps, "pretext_acc": _last_pretext_accuracy(run_dir),
               "linear_top1": probe["top1"], "val_top1": probe["val_top1"], "few_label_top1": few_probe["top1"]}
        atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(row, indent=2)))
        rows.append(row)
    bar.close()
    budget = f"{steps_per_cell} steps" if steps_per_cell is not None else f"{minutes_per_cell:g} min"
    write_outputs(out, rows, cfg.data.name, budget, cfg.eval.labels)
    if rows:
        log(f"conclusion: {conclusion(rows)}")
    return rows


def conclusion(rows: list[dict]) -> str:
    """One line: the best cell (chosen on validation labels, never the test split) and the trend over P."""
    best = max(rows, key=lambda r: r["val_top1"])
    line = (f"best set (chosen on validation labels): {best['mode']} P={best['P']} "
            f"(min Hamming {best['min_hamming']}), linear top-1 {best['linear_top1']:.3f}, few-label {best['few_label_top1']:.3f}")
    series = sorted((r for r in rows if r["mode"] == best["mode"]), key=lambda r: r["P"])
    if len(series) > 1:
        lo, hi = series[0], series[-1]
        acc = lambda r: "n/a" if r["pretext_acc"] is None else f"{r['pretext_acc']:.2f}"  # noqa: E731
        line += (f"; {best['mode']} sets from P={lo['P']} to P={hi['P']}: pretext accuracy {acc(lo)} -> {acc(hi)}, "
                 f"linear top-1 {lo['linear_top1']:.3f} -> {hi['linear_top1']:.3f}")
    return line


def write_outputs(out: Path, rows: list[dict], data: str, budget: str, labels: int) -> None:
    """study.csv and study.png: pretext accuracy and downstream accuracy against P, and against min distance."""
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for r in rows:
                writer.writerow([f"{r[c]:.4f}" if isinstance(r[c], float) and c != "mean_hamming" else r[c]
                                 for c in COLUMNS])

    atomic_write(out / "study.csv", write_csv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colours = dict(zip(MODES, ["tab:blue", "tab:green", "tab:red", "tab:grey"]))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        series = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["P"])
        P = [r["P"] for r in series]
        c = colours.get(mode)
        pretext = [(p, r["pretext_acc"]) for p, r in zip(P, series) if r["pretext_acc"] is not None]
        if pretext:
            axes[0].plot(*zip(*[(p, 100 * a) for p, a in pretext]), "o-", color=c, label=mode)
        axes[1].plot(P, [100 * r["linear_top1"] for r in series], "o-", color=c, label=f"{mode}: linear probe")
        axes[1].plot(P, [100 * r["few_label_top1"] for r in series], "s--", color=c, alpha=0.7,
                     label=f"{mode}: {labels} labels")
        axes[2].scatter([r["min_hamming"] for r in series], [100 * r["linear_top1"] for r in series], color=c,
                        label=mode)
        for r in series:
            axes[2].annotate(f"P={r['P']}", (r["min_hamming"], 100 * r["linear_top1"]), fontsize=7,
                             textcoords="offset points", xytext=(4, 3))
    sizes = sorted({r["P"] for r in rows})
    if sizes:
        axes[0].plot(sizes, [100 / p for p in sizes], ":", color="black", alpha=0.6, label="chance (1/P)")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(p) for p in sizes])
        ax.minorticks_off()
        ax.set_xlabel("permutations in the set (P)")
    axes[2].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel("pretext accuracy at the end (%)")
    axes[0].set_title("pretext accuracy against P", fontsize=9)
    axes[1].set_ylabel("test top-1 (%)")
    axes[1].set_title("downstream accuracy against P", fontsize=9)
    axes[2].set_xlabel("minimum Hamming distance of the set")
    axes[2].set_ylabel("linear probe test top-1 (%)")
    axes[2].set_title("downstream accuracy against the set's distance", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"Jigsaw permutation sets on {data}, {budget} of pretraining per cell", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=120)
    plt.close(fig)
