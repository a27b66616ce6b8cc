"""Every registered method at the same CPU budget: the few-label protocol on one data set, one row per method.

    python bench/methods_table.py --minutes 10 --seeds 0
    python bench/methods_table.py --methods rotnet,jigsaw --minutes 10 --seeds 0 1 2

Each (method, seed) is a run folder under --out (default bench/out/methods, not kept in git); a finished one is
reused. Its numbers are also written to bench/results/methods/ (kept in git, a few hundred bytes each), so the table
is built over several sessions even when bench/out/ is gone. A record names the kind of CPU it ran on
(selfsup.hardware), and each kind gets its own table: a minute buys different amounts of training on different CPUs.
The table is rewritten into docs/benchmarks.md (section methods-table-DATA-MINUTESmin-CPU) after every finished run,
with every row recorded so far on this kind of CPU. A fixed wall-clock budget gives every method the same
compute, whatever its cost per step; run it on an otherwise idle machine, or the budget buys fewer steps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_records_section  # noqa: E402

from selfsup.config import load_config  # noqa: E402
from selfsup.hardware import cpu_key, cpu_label  # noqa: E402
from selfsup.methods import METHODS  # noqa: E402
from selfsup.run import evaluate_run, pretrain  # noqa: E402

# Settings a method needs beyond the shared defaults, each with the reason (also in the method's docs).
# Autoencoders: LARS at lr 0.3 (tuned for SimCLR) barely moves a reconstruction loss in minutes; AdamW does
# (docs/pretext-autoencoders.md measured both).
_ADAMW = ["train.optimizer=adamw", "train.lr=0.001", "train.weight_decay=0"]
# DeepCluster and SeLa: LARS moves a weight matrix by about lr x 0.001 of its norm a step, so DeepCluster's
# classifier, reset to N(0, 0.01) every epoch, stays at chance, and SeLa's heads learn their pseudo-labels far more
# slowly than with SGD, the papers' optimizer (docs/clustering-distillation.md measured both).
_SGD = ["train.optimizer=sgd"]
# MAE needs the ViT and is trained with AdamW as in the paper (base lr 1.5e-4 per 256 images, weight decay 0.05).
_MAE = ["model.backbone=vit-tiny", "train.optimizer=adamw", "train.lr=1.5e-4", "train.weight_decay=0.05"]
RECOMMENDED: dict[str, list[str]] = {"ae": _ADAMW, "dae": _ADAMW, "cae": _ADAMW, "deepcluster": _SGD, "sela": _SGD,
                                     "mae": _MAE}

# Colour-only methods pretrain on real colour photographs (Debian's mate-backgrounds, `make photos`) cut into
# crops, and are evaluated on the table's data set like every other row (their encoders take grey images as
# they are, see docs/pretext-prediction.md).
PHOTOS = Path("/usr/share/backgrounds/mate/nature")
RESULTS = Path(__file__).resolve().parent / "results" / "methods"
_ON_PHOTOS = [f"data.name={PHOTOS}", "data.crops_per_image=1000", "data.image_size=32"]
PRETRAIN_ELSEWHERE: dict[str, list[str]] = {"colorization": _ON_PHOTOS, "splitbrain": _ON_PHOTOS}


def pct(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def run_dir(method: str, seed: int, args: argparse.Namespace) -> Path:
    return Path(args.out) / f"{method}-{args.data}-{args.minutes:g}min-seed{seed}"


def run_one(method: str, seed: int, args: argparse.Namespace) -> None:
    overrides = RECOMMENDED.get(method, []) + args.set
    if method in PRETRAIN_ELSEWHERE or METHODS[method].min_channels > 1:
        if method not in PRETRAIN_ELSEWHERE:
            raise SystemExit(f"{method} needs colour images: add it to PRETRAIN_ELSEWHERE with colour data to pretrain on")
        if not PHOTOS.is_dir():
            raise SystemExit(f"{method} pretrains on the photos in {PHOTOS}; install them with `make photos` "
                             f"(Debian's mate-backgrounds) or leave {method} out of --methods")
        overrides = PRETRAIN_ELSEWHERE[method] + [f"eval.data={args.data}"] + overrides
    cfg = load_config({"data": {"name": args.data}, "method": {"name": method},
                       "train": {"minutes": args.minutes, "seed": seed}}, overrides)
    out = run_dir(method, seed, args)
    recorded = record_path(method, seed, args, cpu_key())
    if recorded.exists():
        print(f"{method} seed {seed}: reusing {recorded} (delete it to measure again)")
        return
    if (out / "eval.json").exists():
        print(f"{method} seed {seed}: reusing {out}")
        save_record(read_row(method, seed, args))
        return
    if out.exists():
        shutil.rmtree(out)  # a run stopped before its evaluation: start it again
    pretrain(cfg, out=out, progress=False, evaluate_after=True)
    (out / "bench-overrides.json").write_text(json.dumps(overrides))
    evaluate_run(out)
    save_record({**read_row(method, seed, args, echo=True), "note": args.note})


def record_path(method: str, seed: int, args: argparse.Namespace, machine: str | None = None) -> Path:
    """The record of a run on the CPU kind `machine` (cpu_key): a budget in minutes is another amount of training on
    another CPU, so each kind gets its own records and table. Records from before 2026-12-07 name no machine."""
    return RESULTS / (f"{run_dir(method, seed, args).name}" + (f"-{machine}" if machine else "") + ".json")


def machines(args: argparse.Namespace) -> list[str | None]:
    """The CPU kinds with records of this data and budget (None: records from before machines were recorded)."""
    found: dict[str | None, None] = {}
    for path in sorted(RESULTS.glob(f"*-{args.data}-{args.minutes:g}min-seed*.json")):
        found.setdefault(json.loads(path.read_text()).get("machine_key"))
    return sorted(found, key=lambda key: (key is not None, key or ""))  # the unrecorded one first


def save_record(row: dict) -> None:
    """The numbers the table shows for one run, kept in git (bench/out/ is not)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    e, t = row["eval"], row["train"]
    record = {
        "method": row["method"], "seed": row["seed"], "date": row.get("date") or datetime.date.today().isoformat(),
        "machine": cpu_label(), "machine_key": cpu_key(),
        "overrides": row["overrides"], "pretext": row["pretext"], "note": row.get("note"),
        "train": {"steps": t["steps"], "images_per_s": t["images_per_s"], "precision": t.get("precision", "fp32")},
        "eval": {"knn": {"top1": e["knn"]["top1"]}, "linear": {"top1": e["linear"]["top1"]},
                 "few_label": {k: e["few_label"][k] for k in ("labels", "ssl", "random_init", "supervised_scratch")}},
    }
    c = e.get("clustering") or {}
    if "nmi" in c:  # k-means on the frozen test features (evaluations from 2026-11-29 on)
        record["eval"]["clustering"] = {"nmi": c["nmi"], "random_init_nmi": c["random_init"]["nmi"]}
    name = f"{row['run']}-{cpu_key()}.json"
    tmp = RESULTS / (name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(RESULTS / name)


def finished_rows(args: argparse.Namespace, machine: str | None) -> list[dict]:
    """Every recorded run of this data and budget on one kind of CPU, in registry order: the table covers earlier
    sessions too."""
    rows = []
    for method in METHODS:
        for seed in range(100):
            path = record_path(method, seed, args, machine)
            if path.exists():
                rows.append(json.loads(path.read_text()))
    return rows


def read_row(method: str, seed: int, args: argparse.Namespace, echo: bool = False) -> dict:
    out = run_dir(method, seed, args)
    saved = out / "bench-overrides.json"  # the settings the run was made with, whatever this invocation says
    changed = json.loads(saved.read_text()) if saved.exists() else []
    result = json.loads((out / "eval.json").read_text())
    train = json.loads((out / "train.json").read_text())
    pretext = None
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    if metrics:
        last = json.loads(metrics[-1])
        pretext = last.get("pretext_acc")
    f = result["few_label"]
    if echo:
        print(f"{method} seed {seed}: kNN {result['knn']['top1']:.4f}  linear {result['linear']['top1']:.4f}  "
              f"few-label {f['ssl']:.4f}  random-init {f['random_init']:.4f}  scratch {f['supervised_scratch']:.4f}  "
              f"({train['steps']} steps, {train['images_per_s']} images/s)")
    return {"method": method, "seed": seed, "eval": result, "train": train, "pretext": pretext, "overrides": changed,
            "run": out.name}


def nmi(rows: list[dict]) -> str:
    """k-means NMI on the test features, with the random-init backbone's in brackets; — for runs without it."""
    c = [r["eval"].get("clustering") for r in rows]
    if not all(c):
        return "—"
    return f"{pct([x['nmi'] for x in c])} ({pct([x['random_init_nmi'] for x in c])})"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    n = rows[0]["eval"]["few_label"]["labels"]
    lines = [
        f"Each method pretrained for {args.minutes:g} minutes on {args.data} (small-cnn, batch 256 unless noted; the "
        f"colour-only methods on crops of colour photos, see the settings below), then frozen and evaluated on "
        f"{args.data}; top-1 % on the test split. Few-label: {n} labels, class-balanced; both baselines are "
        "measured inside each run. Mean ± std over seeds where there is more than one.",
        "",
        f"| method | family | seeds | steps | images/s | last pretext acc | kNN | linear, all labels | few-label SSL | "
        f"few-label random init | few-label scratch | SSL − random init | k-means NMI (random init) | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rs in by_method.items():
        few = [r["eval"]["few_label"] for r in rs]
        gain = [f["ssl"] - f["random_init"] for f in few]
        speeds = ", ".join(f"{r['train']['images_per_s']:.0f}"
                           + (" (bf16)" if r["train"].get("precision") == "bf16" else "") for r in rs)
        lines.append(
            f"| {method} | {METHODS[method].family} | {','.join(str(r['seed']) for r in rs)} | "
            f"{', '.join(str(r['train']['steps']) for r in rs)} | "
            f"{speeds} | "
            f"{pct([r['pretext'] for r in rs])} | "
            f"{pct([r['eval']['knn']['top1'] for r in rs])} | {pct([r['eval']['linear']['top1'] for r in rs])} | "
            f"{pct([f['ssl'] for f in few])} | {pct([f['random_init'] for f in few])} | "
            f"{pct([f['supervised_scratch'] for f in few])} | {'+' if statistics.mean(gain) >= 0 else ''}"
            f"{100 * statistics.mean(gain):.1f} | {nmi(rs)} | {', '.join(sorted({r['date'] for r in rs}))} |")
    lines += ["", "images/s counts the batch's images (RotNet sees each in 4 rotations, jigsaw as 9 tiles, relpatch as 2 "
              "patches); (bf16) marks a run trained under bf16 autocast (train.precision=auto on a CPU "
              "with native bf16, from 2026-11-30), the others trained in fp32. The last pretext accuracy is the "
              "training batches' mean over the last logging window. "
              "k-means NMI: k-means with one cluster per class on the frozen features of the test images, NMI with "
              "the labels (×100), the random-init backbone's in brackets; — for runs evaluated before the "
              "clustering protocol existed."]
    noted: dict[tuple[str, str], list[str]] = {}  # (date, note) -> the methods it is about
    for r in rows:
        if r.get("note"):
            noted.setdefault((r["date"], r["note"]), []).append(r["method"])
    for (day, note), methods in sorted(noted.items()):
        lines += ["", f"{', '.join(dict.fromkeys(methods))} ({day}): {note}"]
    notes = sorted({f"{r['method']}: `{' '.join(r['overrides'])}`" for r in rows if r["overrides"]})
    if notes:
        lines += ["", "Settings beyond the defaults: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: every registered method)")
    p.add_argument("--set", action="append", default=[], help="a config override for every method")
    p.add_argument("--out", default="bench/out/methods")
    p.add_argument("--note", help="a sentence kept with the runs this invocation measures and printed under the table "
                                  "(e.g. how busy the machine was)")
    p.add_argument("--table-only", action="store_true", help="rewrite the table from the finished runs; train nothing")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method {unknown[0]}; registered: {', '.join(METHODS)}")
    for method in [] if args.table_only else methods:
        for seed in args.seeds:
            run_one(method, seed, args)
            publish(args, cpu_key())
    if not machines(args):
        p.error(f"no recorded runs in {RESULTS} for {args.data} at {args.minutes:g} minutes")
    for machine in machines(args):
        print(publish(args, machine))


def publish(args: argparse.Namespace, machine: str | None) -> str:
    """Rewrite the table of one kind of CPU in docs/benchmarks.md; returns it."""
    rows = finished_rows(args, machine)
    if not rows:  # records of methods no longer registered
        return ""
    title = f"Every method at {args.minutes:g} minutes on {args.data}" + (f", {rows[0]['machine']}" if machine else "")
    write_records_section(f"methods-table-{args.data}-{args.minutes:g}min" + (f"-{machine}" if machine else ""),
                          title, table(rows, args), rows)
    return table(rows, args)


if __name__ == "__main__":
    main()
