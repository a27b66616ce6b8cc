"""Is a gap in few-label accuracy the representation's or the classifier's? For finished run folders, the few-label
linear probe under three feature preprocessings, over several class-balanced draws of the labels, beside the
geometry of the frozen features.

    python bench/probe_sensitivity.py bench/out/methods/byol-fashion-mnist-15min-seed0 \\
        bench/out/methods/moco-fashion-mnist-15min-seed0 --draws 5

The few-label experiment of `selfsup eval` fits one logistic regression on features standardized with the mean and
std of its 200 labelled images, on one draw of them. Two ways that could favour one method over another without
the representation being better: a few high-variance or near-constant dimensions that standardization from 200
images distorts, and the luck of one draw. This script refits the same probe (selfsup.evaluate.linear) on
  - standardized features (what `selfsup eval` does),
  - L2-normalized features (no statistic estimated from the labelled images),
  - features centred on the mean of all unlabelled training images, then L2-normalized,
each on `--draws` further class-balanced draws of the same size, and reports for each run the effective rank of
its features (exp of the entropy of the normalized singular values), the number of dimensions whose std is below
1e-3 of the largest, the ratio of the largest std to the median one, and the norm of the mean against the norm of
the stds. Features come from the run's features.safetensors when its evaluation cached them (else they are
extracted, which takes a minute on the CPU). Writes docs/benchmarks.md, section probe-sensitivity.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from selfsup.data.splits import few_label_split  # noqa: E402
from selfsup.evaluate.cache import FeatureStore  # noqa: E402
from selfsup.evaluate.linear import linear_probe  # noqa: E402
from selfsup.methods.collapse import embedding_stats  # noqa: E402
from selfsup.run import load_encoder_backbone, load_eval_data, read_run_config  # noqa: E402
from selfsup.train import resolve_device  # noqa: E402

PREPROCESSINGS = ("standardized", "L2", "centred + L2")


def geometry(train: torch.Tensor, rows: int = 10_000) -> dict:
    x = train[:rows].double()
    std = x.std(0)
    # The collapse monitor's effective rank, of the centred features: their spread, not their offset.
    return {"effective_rank": embedding_stats(x - x.mean(0))["z_rank"], "dims": x.shape[1],
            "flat_dims": int((std < 1e-3 * std.max()).sum()),
            "std_max_over_median": float(std.max() / std.median()),
            "mean_over_std": float(x.mean(0).norm() / std.norm())}


def probes(train_f: torch.Tensor, test_f: torch.Tensor, train_labels: torch.Tensor, test_labels: torch.Tensor,
           num_classes: int, draws: list[torch.Tensor]) -> dict[str, list[float]]:
    """Test top-1 of the few-label probe per preprocessing, one value per draw."""
    mu = train_f.mean(0)  # the unlabelled training images' mean: free in self-supervised learning
    out: dict[str, list[float]] = {p: [] for p in PREPROCESSINGS}
    for idx in draws:
        x, y = train_f[idx], train_labels[idx]
        out["standardized"].append(linear_probe(x, y, test_f, test_labels, num_classes)["top1"])
        out["L2"].append(linear_probe(F.normalize(x, dim=1), y, F.normalize(test_f, dim=1), test_labels,
                                      num_classes)["top1"])
        out["centred + L2"].append(linear_probe(F.normalize(x - mu, dim=1), y, F.normalize(test_f - mu, dim=1),
                                                test_labels, num_classes)["top1"])
    return out


def run_features(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, object, object, int, int]:
    cfg = read_run_config(run_dir)
    train, test = load_eval_data(cfg)
    backbone, fresh = load_encoder_backbone(run_dir, train.channels, cfg, with_fresh=True)
    store = FeatureStore(backbone, fresh, train.images, train.labels, test.images, test.labels, cfg.train.seed,
                         cfg.eval.batch_size, resolve_device("cpu"), run_dir, run_dir / "encoder.safetensors")
    return store.ssl("train"), store.ssl("test"), train, test, cfg.eval.labels, cfg.train.seed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders (made by selfsup run or a benchmark)")
    p.add_argument("--draws", type=int, default=5, help="class-balanced draws of the labels besides the run's own")
    p.add_argument("--draw-seed", type=int, default=100, help="seed of the first extra draw (then +1, +2, ...)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    lines = ["| run | effective rank | flat dims | std max/median | ‖mean‖/‖std‖ | run's own draw, standardized | "
             + " | ".join(f"{args.draws} draws, {name}" for name in PREPROCESSINGS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(PREPROCESSINGS)]
    for run_dir in args.runs:
        train_f, test_f, train, test, labels, seed = run_features(run_dir)
        classes = int(train.labels.max()) + 1
        own = few_label_split(train.labels, labels, seed)  # the draw `selfsup eval` used
        extra = [few_label_split(train.labels, labels, args.draw_seed + d) for d in range(args.draws)]
        g = geometry(train_f)
        acc = probes(train_f, test_f, train.labels, test.labels, classes, [own, *extra])
        cells = [f"{100 * statistics.mean(v[1:]):.1f} ± {100 * statistics.stdev(v[1:]):.1f}"
                 if len(v) > 2 else f"{100 * v[-1]:.1f}" for v in acc.values()]
        lines.append(f"| {run_dir.name} | {g['effective_rank']:.1f} of {g['dims']} | {g['flat_dims']} | "
                     f"{g['std_max_over_median']:.1f} | {g['mean_over_std']:.2f} | {100 * acc['standardized'][0]:.1f} | "
                     + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    body = "\n".join(lines) + (
        f"\n\nFew-label linear probe ({labels} labels, class-balanced) on frozen features, test top-1 %, mean ± std "
        "over the extra draws. Standardized: each dimension scaled by the mean and std of the labelled images (the "
        "probe of `selfsup eval`); L2: each feature vector scaled to unit length; centred + L2: minus the mean of all "
        "unlabelled training images, then unit length. Geometry over 10,000 training images: effective rank (exp of "
        "the entropy of the normalized singular values), dimensions with std under 1e-3 of the largest, and the "
        "offset of the mean against the spread.\n")
    if not args.no_write:
        write_section("probe-sensitivity", "Few-label gaps: representation or classifier?", body)


if __name__ == "__main__":
    main()
