"""Training curves and result plots as PNG bytes, for the HTML report and the comparison of runs.

The plots are made in memory (no files in the run folder) so the report can embed them and a second report does not
find them among the run's own pictures. Reads metrics.jsonl rows as train.py writes them: one row every
train.log_every steps, each value averaged over its window; some keys appear only in some rows.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

from selfsup.methods.collapse import MIN_RANK, STD_FRACTION

# Keys of a metrics row that are bookkeeping, not something a method measured.
BOOKKEEPING = ("step", "epoch", "lr", "images_per_s", "elapsed_s", "total_steps")
COLLAPSE_KEYS = ("z_std", "z_rank")
SSL_COLOR, RANDOM_COLOR = "#1f6fb4", "#d9730d"


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file; a missing file gives none, a line cut off by a hard kill is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and is_number(row.get("step")):
            rows.append(row)
    return rows


def is_number(value: Any) -> bool:
    """A finite int or float (bools and None are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(rows: Iterable[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that hold a number under `key`."""
    pairs = [(row["step"], row[key]) for row in rows if is_number(row.get(key))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def method_keys(rows: list[dict]) -> list[str]:
    """Numeric keys a method logged besides the loss, in first-seen order; collapse and kNN monitor keys excluded
    (they get panels of their own)."""
    keys: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if (k not in BOOKKEEPING and k != "loss" and k not in COLLAPSE_KEYS and not k.startswith("knn")
                    and is_number(v)):
                keys[k] = None
    return list(keys)


def knn_keys(rows: list[dict]) -> list[str]:
    """Keys of a kNN monitor (any key starting with "knn") that hold numbers."""
    return list(dict.fromkeys(k for row in rows for k, v in row.items() if k.startswith("knn") and is_number(v)))


def _pyplot():
    import matplotlib  # here, not at import time: importing selfsup must not switch a user's plotting backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, title: str = "", description: str = "") -> bytes:
    """The figure as PNG bytes (closed afterwards), with Title/Description text chunks."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Title": title, "Description": description})
    plt.close(fig)
    return buffer.getvalue()


def _style(ax, xlabel: str = "step", ylabel: str = "") -> None:
    ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)


def _line(ax, steps: list[float], values: list[float], **kwargs) -> None:
    """A line, with markers when there are few points (a 3-step run logs one row)."""
    ax.plot(steps, values, marker="o" if len(steps) <= 12 else None, markersize=3, linewidth=1.3, **kwargs)


def loss_png(rows: list[dict]) -> bytes | None:
    """The training loss against the step; None when no row holds a loss."""
    steps, values = series(rows, "loss")
    if not steps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    _line(ax, steps, values, color=SSL_COLOR)
    _style(ax, ylabel="loss")
    ax.set_title("training loss (each point: the mean over its logging window)", fontsize=9)
    fig.tight_layout()
    return figure_png(fig, "training loss", "loss against step")


def small_multiples_png(rows: list[dict], keys: list[str], columns: int = 3) -> bytes | None:
    """One small panel per key against the step; None without keys."""
    keys = [k for k in keys if series(rows, k)[0]]
    if not keys:
        return None
    plt = _pyplot()
    n_rows = math.ceil(len(keys) / columns)
    cols = min(columns, len(keys))
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.3 * cols, 2.3 * n_rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(keys):
            ax.set_axis_off()
            continue
        _line(ax, *series(rows, keys[i]), color=SSL_COLOR)
        _style(ax)
        ax.set_title(keys[i], fontsize=9)
    fig.tight_layout()
    return figure_png(fig, "logged values", "panels: " + "; ".join(keys))


def schedule_png(rows: list[dict]) -> bytes | None:
    """The learning rate (left axis) and the images per second (right axis) against the step."""
    lr, speed = series(rows, "lr"), series(rows, "images_per_s")
    if not lr[0] and not speed[0]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    handles = []
    if lr[0]:
        handles += ax.plot(*lr, color=SSL_COLOR, linewidth=1.3, marker="o" if len(lr[0]) <= 12 else None,
                           markersize=3, label="learning rate")
    _style(ax, ylabel="learning rate")
    if speed[0]:
        right = ax.twinx()
        handles += right.plot(*speed, color=RANDOM_COLOR, linewidth=1.0, alpha=0.8,
                              marker="o" if len(speed[0]) <= 12 else None, markersize=3, label="images/s")
        right.set_ylabel("images/s", fontsize=8)
        right.tick_params(labelsize=7)
        right.set_ylim(bottom=0)
    ax.legend(handles=handles, fontsize=7, loc="lower center")
    ax.set_title("learning-rate schedule and throughput", fontsize=9)
    fig.tight_layout()
    return figure_png(fig, "schedule", "learning rate and images per second against step")


def collapse_png(rows: list[dict], dim: int | None = None) -> bytes | None:
    """z_std and z_rank against the step with the collapse monitor's warning thresholds (methods/collapse.py):
    z_std below STD_FRACTION / sqrt(D), drawn only when the embedding width D is known, and z_rank below MIN_RANK.
    None when the run logged neither."""
    present = [k for k in COLLAPSE_KEYS if series(rows, k)[0]]
    if not present:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(3.9 * len(present), 2.7), squeeze=False)
    for ax, key in zip(axes[0], present):
        _line(ax, *series(rows, key), color=SSL_COLOR, label=key)
        if key == "z_std":
            if dim:
                ax.axhline(1 / math.sqrt(dim), color="grey", linestyle=":", linewidth=1,
                           label=f"healthy ~ 1/sqrt({dim})")
                ax.axhline(STD_FRACTION / math.sqrt(dim), color="#c0392b", linestyle="--", linewidth=1,
                           label=f"warning < {STD_FRACTION:g}/sqrt({dim})")
            ax.set_title("z_std (spread of the normalized embeddings)", fontsize=8)
        else:
            ax.axhline(MIN_RANK, color="#c0392b", linestyle="--", linewidth=1, label=f"warning < {MIN_RANK:g}")
            ax.set_title("z_rank (effective rank of a batch)", fontsize=8)
        ax.set_ylim(bottom=0)
        _style(ax)
        # A healthy curve runs along the top and the warning line along the bottom: the middle is free.
        ax.legend(fontsize=7, loc="center right", framealpha=0.7)  # "best" is slow on long runs
    fig.tight_layout()
    return figure_png(fig, "collapse monitor", "z_std and z_rank against step with warning thresholds")


def knn_png(rows: list[dict]) -> bytes | None:
    """Every kNN monitor key against the step, on one axis of accuracies."""
    keys = knn_keys(rows)
    if not keys:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 2.8))
    for key in keys:
        steps, values = series(rows, key)
        _line(ax, steps, [100 * v if v <= 1 else v for v in values], label=key)
    _style(ax, ylabel="top-1 (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("kNN monitor during pretraining", fontsize=9)
    fig.tight_layout()
    return figure_png(fig, "kNN monitor", "; ".join(keys))


def low_shot_png(low_shot: dict) -> bytes | None:
    """Accuracy against labelled images per class (log2 axis), mean and std over draws, SSL and random init."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    shots: set[float] = set()
    for encoder, label, color in (("ssl", "SSL, frozen", SSL_COLOR), ("random_init", "random init, frozen",
                                                                        RANDOM_COLOR)):
        part = low_shot.get(encoder)
        results = part.get("results") if isinstance(part, dict) else None
        results = results if isinstance(results, dict) else {}
        points = sorted((float(shot), r["mean"], r["std"] if is_number(r.get("std")) else 0.0)
                        for shot, r in results.items()
                        if is_shot(shot) and isinstance(r, dict) and is_number(r.get("mean")))
        if not points:
            continue
        shots.update(p[0] for p in points)
        ax.errorbar([p[0] for p in points], [100 * p[1] for p in points], yerr=[100 * p[2] for p in points],
                    marker="o", markersize=4, capsize=3, linewidth=1.3, color=color, label=label)
    if not shots:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(sorted(shots)))  # ticks at the measured shots: 1, 2, 4, not 2^0 ...
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    _style(ax, xlabel="labelled images per class (log2 scale)", ylabel="test top-1 (%)")
    ax.legend(fontsize=7, loc="upper left")
    draws = low_shot.get("draws")
    ax.set_title("low-shot accuracy" + (f" (mean ± std over {draws} draws)" if draws else ""), fontsize=9)
    fig.tight_layout()
    return figure_png(fig, "low-shot accuracy", "accuracy against shots, SSL and random init")


def is_shot(key: Any) -> bool:
    """Whether a key of low_shot results is a number of shots ("1", "16")."""
    try:
        return float(key) > 0
    except (TypeError, ValueError):
        return False


def compare_png(runs: list[tuple[str, list[dict]]]) -> bytes | None:
    """Overlaid curves of several runs: the loss divided by each run's first logged loss, and the kNN monitor when
    any run has one. None when no run logged a loss."""
    with_loss = [(name, series(rows, "loss")) for name, rows in runs]
    with_loss = [(name, s) for name, s in with_loss if s[0]]
    if not with_loss:
        return None
    with_knn = [(name, key, series(rows, key)) for name, rows in runs for key in knn_keys(rows)]
    plt = _pyplot()
    panels = 2 if with_knn else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    for name, (steps, values) in with_loss:
        first = values[0]
        scaled = [v / first for v in values] if first not in (0, 0.0) else values
        _line(ax, steps, scaled, label=name)
    _style(ax, ylabel="loss / first logged loss")
    ax.set_title("loss, normalized per run to its first logged value\n(different methods' losses share one axis)",
                 fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    if with_knn:
        ax = axes[0][1]
        for name, key, (steps, values) in with_knn:
            _line(ax, steps, [100 * v if v <= 1 else v for v in values], label=f"{name}: {key}")
        _style(ax, ylabel="top-1 (%)")
        ax.set_title("kNN monitor", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return figure_png(fig, "runs compared", "; ".join(name for name, _ in runs))
