"""Quality at a CPU budget: SimCLR on Fashion-MNIST for --minutes, seeds 0-2, the few-label rows with both baselines.

    python bench/quality_at_budget.py --minutes 15 --seeds 0 1 2
Writes its table into docs/benchmarks.md (section quality-at-budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from selfsup.config import load_config  # noqa: E402
from selfsup.run import evaluate_run, pretrain  # noqa: E402


def mean_std(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "—"
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f}"
    return f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--method", default="simclr")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default="bench/out/quality")
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        cfg = load_config({"data": {"name": args.data}, "method": {"name": args.method},
                           "train": {"minutes": args.minutes, "seed": seed}}, args.set)
        out = Path(args.out) / f"{args.method}-{args.data}-{args.minutes:g}min-seed{seed}"
        if (out / "eval.json").exists():
            print(f"seed {seed}: reusing {out}")
        else:
            if out.exists():
                import shutil
                shutil.rmtree(out)
            run_dir, _ = pretrain(cfg, out=out, progress=False, evaluate_after=True)
            evaluate_run(run_dir)
        result = json.loads((out / "eval.json").read_text())
        train = json.loads((out / "train.json").read_text())
        rows.append({"seed": seed, "eval": result, "train": train})
        f = result["few_label"]
        print(f"seed {seed}: kNN {result['knn']['top1']:.4f}  linear {result['linear']['top1']:.4f}  "
              f"few-label ssl {f['ssl']:.4f}  random-init {f['random_init']:.4f}  scratch {f['supervised_scratch']:.4f}  "
              f"({train['steps']} steps, {train['images_per_s']} images/s, eval {result['seconds']['total']} s)")

    def col(get):
        return mean_std([get(r) for r in rows])

    n = rows[0]["eval"]["few_label"]["labels"]
    body = "\n".join([
        f"{args.method} on {args.data}, {args.minutes:g} minutes of pretraining, seeds {', '.join(map(str, args.seeds))} "
        f"(mean ± std, %, test split). Extra settings: {' '.join(args.set) or 'none'}.",
        "",
        f"| features | kNN top-1 | linear, all labels | few-label, {n} labels |",
        "|---|---|---|---|",
        f"| SSL ({args.method}), frozen | {col(lambda r: r['eval']['knn']['top1'])} | "
        f"{col(lambda r: r['eval']['linear']['top1'])} | {col(lambda r: r['eval']['few_label']['ssl'])} |",
        f"| random init, frozen | {col(lambda r: r['eval']['knn'].get('random_init_top1'))} | "
        f"{col(lambda r: r['eval']['linear'].get('random_init_top1'))} | {col(lambda r: r['eval']['few_label']['random_init'])} |",
        f"| supervised from scratch on {n} labels | — | — | {col(lambda r: r['eval']['few_label']['supervised_scratch'])} |",
        "",
        f"Pretraining steps per seed: {', '.join(str(r['train']['steps']) for r in rows)}; images/s: "
        f"{', '.join(str(r['train']['images_per_s']) for r in rows)}; evaluation seconds: "
        f"{', '.join(str(r['eval']['seconds']['total']) for r in rows)}.",
    ])
    print(body)
    write_section(f"quality-{args.method}-{args.data}-{args.minutes:g}min", f"Quality at a {args.minutes:g}-minute budget: {args.method} on {args.data}", body)


if __name__ == "__main__":
    main()
