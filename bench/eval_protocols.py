"""Fine-tuning and low-shot tables for finished runs: the semi-supervised table of SimCLR/BYOL and Goyal et al.'s
low-shot SVMs, each beside the same network at random init, measured here in one process.

    python bench/eval_protocols.py bench/out/methods/vicreg-fashion-mnist-10min-seed0 runs/RUN_DIR

Each run folder gets `selfsup eval RUN --protocols low-shot,finetune` (its other results are kept; features come
from its features.safetensors when valid), and the tables of every run given are written to docs/benchmarks.md
(section eval-protocols) with the run's method, pretraining budget and the seconds each protocol took. Fine-tuning
trains six networks (three label fractions, two inits), so give it an otherwise idle machine for the seconds to
mean something; the accuracies do not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

from selfsup.run import evaluate_run, read_run_config  # noqa: E402


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(run: Path) -> str:
    cfg = read_run_config(run)
    result = json.loads((run / "eval.json").read_text())
    trained = json.loads((run / "train.json").read_text())
    low, fine, few = result["low_shot"], result["finetune"], result.get("few_label", {})
    head = (f"### {cfg.method.name} ({run.name})\n\n{cfg.method.name}, {cfg.model.backbone}, pretrained "
            f"{trained['steps']} steps in {trained['seconds'] / 60:.1f} min on {cfg.data.name}, seed {cfg.train.seed}"
            + (f"; few-label (200 labels) {pct(few['ssl'])} vs random init {pct(few['random_init'])}" if few else "")
            + ".\n")
    shots = [k for k in map(str, low["shots"]) if k in low["ssl"]["results"]]
    rows = ["| labels per class | " + " | ".join(shots) + " |", "|---|" + "---|" * len(shots)]
    for name, key in (("SSL, frozen", "ssl"), ("random init, frozen", "random_init")):
        cells = [f"{pct(low[key]['results'][k]['mean'])} ± {pct(low[key]['results'][k]['std'])}" for k in shots]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    lowshot = (f"Low-shot linear SVM, test top-1 (%), mean ± std over {low['draws']} draws "
               f"({result['seconds'].get('low_shot', float('nan')):.0f} s for both encoders):\n\n" + "\n".join(rows))
    rows = ["| labels | SSL init | random init | gain (points) | epochs | seconds (SSL + random) |",
            "|---|---|---|---|---|---|"]
    for key, ssl in fine["ssl"].items():
        rnd = fine["random_init"][key]
        rows.append(f"| {100 * float(key):g}% ({ssl['labels']}) | {pct(ssl['top1'])} | {pct(rnd['top1'])} | "
                    f"{100 * (ssl['top1'] - rnd['top1']):+.1f} | {ssl['epochs']:g} | "
                    f"{ssl['seconds']:.0f} + {rnd['seconds']:.0f} |")
    finetune = (f"Fine-tuning the whole network + a linear head, {fine['steps']} steps of {fine['batch_size']} "
                f"({fine['optimizer']}, lr {fine['lr']:g}, weight decay {fine['weight_decay']:g}), test top-1 (%):"
                "\n\n" + "\n".join(rows))
    return f"{head}\n{lowshot}\n\n{finetune}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run folders")
    parser.add_argument("--table-only", action="store_true", help="rewrite the tables from eval.json; run nothing")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not args.table_only:
            print(f"== {run}")
            evaluate_run(run, protocols=["low-shot", "finetune"], merge=True)
        print(tables(run))
    write_section("eval-protocols", "Fine-tuning and low-shot SVMs (Fashion-MNIST)",
                  "Each run's encoder evaluated by `selfsup eval RUN --protocols low-shot,finetune`: "
                  "docs/evaluation.md says exactly what each number is. Both inits get the same labelled images, "
                  "augmentation, optimizer, seed and number of steps.\n\n"
                  + "\n".join(tables(run) for run in runs))


if __name__ == "__main__":
    main()
