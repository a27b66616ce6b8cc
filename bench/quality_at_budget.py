"""Quality at a CPU budget: few-label and linear accuracy after 2, 5, 15 and 30 minutes of pretraining, for a
selfsup recipe and for lightly's SimCLR recipe, run by this one script on the same data, backbone and batch size.

    python bench/quality_at_budget.py --budgets 2 5 15 30 --seeds 0 1 2
    python bench/quality_at_budget.py --preset fast-cpu --name fast-cpu --budgets 5 --seeds 0
    python bench/quality_at_budget.py --validation 0.1667 --set method.temperature=0.1 --name t0.1 --peers none

Each (recipe, budget, seed) pretrains for the budget (wall clock, on an otherwise idle machine), then the frozen
backbone is evaluated with selfsup's protocol (kNN, linear probe on all labels, few-label with its random-init and
from-scratch baselines); evaluation time is reported, not counted in the budget. Results are kept in
bench/results/quality/ (in git, a few hundred bytes each), so the table and the curve grow over sessions. A
record names the kind of CPU it was measured on (selfsup.hardware: a minute of a Zen 1 trains 2.7x less than a
minute of a Zen 4); a recorded (recipe, budget, seed, CPU kind) is not run again, and each kind of CPU gets its own
table and curve. --validation scores on held-out training images instead of the test split (data.validation): for
choosing settings; those rows go to their own sections and curves. Writes docs/benchmarks.md (sections
quality-at-budget-DATA[-validation]-CPU) and docs/images/quality-at-budget-DATA[-validation]-CPU.png.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_records_section  # noqa: E402

from selfsup.config import load_config  # noqa: E402
from selfsup.hardware import cpu_key, cpu_label  # noqa: E402
from selfsup.evaluate.protocol import evaluate  # noqa: E402
from selfsup.nets.backbones import build_backbone, channel_stats  # noqa: E402
from selfsup.run import backbone_settings, evaluate_run, load_data, pretrain  # noqa: E402
from selfsup.train import resolve_device  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "quality"
PROTOCOLS = ["knn", "linear", "few-label"]
# Issue 11's target on the test split after 15 minutes (few-label with 200 labels, linear with all labels), drawn on
# the test-split curve so the distance left is visible.
GOALS = {("fashion-mnist", 200): {"few_label": 85.0, "linear": 91.0}}


def record_path(results: Path, name: str, data: str, budget: float, seed: int, validation: float | None,
                machine: str | None = None) -> Path:
    """Where a record is kept; `machine` (cpu_key) is part of the name, since a budget in minutes means another
    amount of training on another CPU. Records made before machines were recorded (2026-12-07) have none."""
    split = f"-val{validation:g}" if validation else ""
    on = f"-{machine}" if machine else ""
    return Path(results) / f"{name}-{data}-{budget:g}min-seed{seed}{split}{on}.json"


def summary(result: dict) -> dict:
    few = result["few_label"]
    return {"knn": result["knn"]["top1"], "linear": result["linear"]["top1"], "few_label": few["ssl"],
            "random_init": few["random_init"], "scratch": few["supervised_scratch"], "labels": few["labels"],
            "eval_seconds": result["seconds"].get("total")}


def recipe_settings(args) -> str:
    """How our recipe differs from selfsup's defaults, as recorded: a preset is spelled out key by key, since the
    file may change after the record is made."""
    parts = []
    if args.preset:
        from selfsup.config import flatten, read_preset

        flat = " ".join(f"{key}={value}" for key, value in flatten(read_preset(args.preset)).items())
        parts.append(f"--preset {args.preset} ({flat})")
    if args.config:
        parts.append(f"--config {args.config}")
    return " ".join(parts + list(args.set)) or "defaults"


def run_selfsup(args, budget: float, seed: int, log=print) -> dict:
    """Our recipe: `selfsup pretrain` then `selfsup eval` of the run folder, as a user would."""
    overrides = [f"train.minutes={budget:g}", f"train.seed={seed}", f"eval.protocols=[{','.join(PROTOCOLS)}]",
                 *args.set]
    if args.validation:
        overrides.append(f"data.validation={args.validation:g}")
    cfg = load_config({"data": {"name": args.data}}, overrides, file=args.config, preset=args.preset)
    out = Path(args.out) / record_path(args.results, args.name, args.data, budget, seed, args.validation).stem
    if out.exists():
        import shutil
        shutil.rmtree(out)
    run_dir, _ = pretrain(cfg, out=out, progress=False, log=log, evaluate_after=True)
    t0 = time.perf_counter()
    result = evaluate_run(run_dir, log=log)
    result["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    train = json.loads((run_dir / "train.json").read_text())
    width, _ = backbone_settings(cfg.model)
    return {"steps": train["steps"], "images_per_s": train["images_per_s"], "seconds": train["seconds"],
            "backbone": f"{cfg.model.backbone} width {width}", "batch": cfg.train.batch_size,
            "precision": train["precision"],  # as trained (train.json)
            "settings": recipe_settings(args),
            **summary(result)}


def run_lightly(args, budget: float, seed: int, log=print) -> dict:
    """lightly's SimCLR recipe on our backbone (the one --config/--set choose), evaluated by our protocol."""
    from peers import train_lightly_simclr

    overrides = [f"train.seed={seed}", f"eval.protocols=[{','.join(PROTOCOLS)}]", *args.set]
    if args.validation:
        overrides.append(f"data.validation={args.validation:g}")
    cfg = load_config({"data": {"name": args.data}}, overrides, file=args.config, preset=args.preset)
    pretrain_set, _ = load_data(cfg, for_pretraining=True)
    train, test = load_data(cfg)
    width, options = backbone_settings(cfg.model)
    net, trained = train_lightly_simclr(pretrain_set.images, cfg.model.backbone, cfg.train.batch_size, budget, seed,
                                       width=width, log=log, **options)
    mean, std = channel_stats(pretrain_set.images)

    def fresh():
        return build_backbone(cfg.model.backbone, pretrain_set.channels, width, mean=mean, std=std, **options)

    t0 = time.perf_counter()
    result = evaluate(net, fresh, train, test, cfg.eval, seed, resolve_device(cfg.train.device), log=log)
    result["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    return {**trained, "backbone": f"{cfg.model.backbone} width {width}", "batch": cfg.train.batch_size,
            "precision": "fp32",  # lightly's recipe as its examples run it
            **summary(result)}


def records(results: Path, data: str, validation: float | None) -> list[dict]:
    found = []
    for path in sorted(Path(results).glob(f"*-{data}-*min-seed*.json")):
        rec = json.loads(path.read_text())
        if rec["data"] == data and rec.get("validation") == validation:
            found.append(rec)
    return found


def mean_std(values: list[float], scale: float = 100) -> str:
    pct = [scale * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f}"
    return f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f}"


def groups(recs: list[dict]) -> dict[tuple[str, float], list[dict]]:
    out: dict[tuple[str, float], list[dict]] = {}
    for rec in recs:
        out.setdefault((rec["name"], rec["budget"]), []).append(rec)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1])))


def table(recs: list[dict], data: str, validation: float | None) -> str:
    split = "validation images (held-out training images)" if validation else "test split"
    machine = recs[0].get("machine") or "one machine, not recorded"
    lines = [f"Pretraining for each budget on {data} (wall clock on {machine}), then the frozen backbone "
             f"evaluated by selfsup's protocol on the {split}; mean ± std over seeds, top-1 %. Both baselines are "
             "measured inside each run; evaluation time is not part of the budget.", "",
             "| recipe | minutes | seeds | steps | images/s | kNN | linear, all labels | few-label SSL | few-label "
             "random init | few-label scratch | SSL − random init | SSL − scratch | eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, budget), rs in groups(recs).items():
        over_random = [r["few_label"] - r["random_init"] for r in rs]
        over_scratch = [r["few_label"] - r["scratch"] for r in rs]
        mixed = len({r.get("precision", "fp32") for r in rs}) > 1  # seeds in fp32 and in bf16: say so in the row
        lines.append(
            f"| {name}{' (seeds mix fp32 and bf16)' if mixed else ''} | {budget:g} | "
            f"{','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} | "
            f"{round(statistics.mean(r['steps'] for r in rs))} | {statistics.mean(r['images_per_s'] for r in rs):.0f} | "
            f"{mean_std([r['knn'] for r in rs])} | {mean_std([r['linear'] for r in rs])} | "
            f"{mean_std([r['few_label'] for r in rs])} | {mean_std([r['random_init'] for r in rs])} | "
            f"{mean_std([r['scratch'] for r in rs])} | {100 * statistics.mean(over_random):+.1f} | "
            f"{100 * statistics.mean(over_scratch):+.1f} | "
            f"{statistics.mean(r['eval_seconds'] or 0 for r in rs):.0f} |")
    seen: dict[str, dict] = {}
    for rec in recs:
        seen.setdefault(rec["name"], rec)
    # Records made before precision was recorded all trained in fp32.
    lines += ["", "Recipes: " + "; ".join(f"**{n}**: {r['backbone']}, batch {r['batch']}, "
                                          f"{'bf16 autocast' if r.get('precision') == 'bf16' else 'fp32'}, "
                                          f"{r['settings']}" for n, r in seen.items()) + "."]
    noted = [r for r in recs if r.get("note")]
    if noted:
        # The usual note once, the exceptions by recipe and seed.
        common = collections.Counter(r["note"] for r in noted).most_common(1)[0][0]
        others = [f"{r['name']} {r['budget']:g} min seed {r['seed']}: {r['note']}" for r in noted
                  if r["note"] != common]
        lines += ["", f"Notes: {common}" + (f" (except as noted); {'; '.join(others)}" if others else "") + "."]
    return "\n".join(lines)


def curve_png(recs: list[dict], data: str, validation: float | None, path: Path) -> None:
    """Few-label and all-label linear accuracy against CPU-minutes, one line per recipe, with each recipe's
    random-init and from-scratch few-label baselines as flat dashed lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    by_name: dict[str, dict[float, list[dict]]] = {}
    for (name, budget), rs in groups(recs).items():
        by_name.setdefault(name, {})[budget] = rs
    for i, (name, points) in enumerate(by_name.items()):
        colour = f"C{i}"
        budgets = sorted(points)
        for ax, key in zip(axes, ("few_label", "linear")):
            means = [100 * statistics.mean(r[key] for r in points[b]) for b in budgets]
            stds = [100 * statistics.stdev(r[key] for r in points[b]) if len(points[b]) > 1 else 0 for b in budgets]
            ax.errorbar(budgets, means, yerr=stds, marker="o", capsize=3, color=colour, label=name)
        everything = [r for rs in points.values() for r in rs]
        for key, style, what in (("random_init", ":", "random init"), ("scratch", "--", "scratch on the labels")):
            axes[0].axhline(100 * statistics.mean(r[key] for r in everything), color=colour, linestyle=style,
                            linewidth=1, label=f"{name}: {what}")
    labels = recs[0]["labels"]
    goal = None if validation else GOALS.get((data, labels))
    for ax, key in zip(axes, ("few_label", "linear")):
        if goal:
            ax.axhline(goal[key], color="black", linewidth=1.5, alpha=0.6, label=f"goal at 15 min: {goal[key]:g}%")
            ax.axvline(15, color="black", linewidth=0.5, alpha=0.3)
    for ax, title in zip(axes, (f"few-label ({labels} labels)", "linear probe, all labels")):
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["budget"] for r in recs}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())  # the budgets are the only labels
        ax.set_xlabel("pretraining budget (CPU minutes, 2 cores)")
        ax.set_ylabel(f"top-1 % ({'validation' if validation else 'test'})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if goal:
        axes[1].legend(fontsize=7)
    on = recs[0].get("machine") or "machine not recorded"
    fig.suptitle(f"Quality per CPU-minute on {data} ({on}); mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 15, 30], help="minutes of pretraining")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--preset", help="a selfsup preset as our recipe (e.g. fast-cpu; --config and --set override it)")
    p.add_argument("--config", help="YAML config of our recipe (default: selfsup's defaults)")
    p.add_argument("--set", action="append", default=[], help="a config override (our recipe; the backbone and "
                                                               "batch size apply to the peer too)")
    p.add_argument("--name", default="selfsup", help="the recipe's name in the table and its records")
    p.add_argument("--peers", default="lightly", choices=["lightly", "none", "lightly-only"],
                   help="also run lightly's SimCLR recipe on the same backbone and batch size (lightly-only: "
                        "run only it, e.g. to fill in its curve while ours is recorded)")
    p.add_argument("--validation", type=float, help="score on this fraction of the training images "
                                                     "(data.validation) instead of the test split")
    p.add_argument("--note", help="a sentence kept with the records this invocation makes (e.g. how busy the "
                                  "machine was)")
    p.add_argument("--out", default="bench/out/quality", help="run folders (not kept in git)")
    p.add_argument("--results", default=str(RESULTS), help="where the records are kept (default: in git)")
    p.add_argument("--images", default=str(ROOT / "docs" / "images"), help="where the curve PNG goes")
    p.add_argument("--table-only", action="store_true", help="rewrite the table and curve from the records")
    args = p.parse_args()
    recipes = ([] if args.peers == "lightly-only" else [(args.name, run_selfsup)]) + \
        ([("lightly-simclr", run_lightly)] if args.peers.startswith("lightly") else [])
    here = cpu_key()
    for budget in [] if args.table_only else args.budgets:
        for seed in args.seeds:
            for name, runner in recipes:
                path = record_path(args.results, name, args.data, budget, seed, args.validation, here)
                if path.exists():
                    print(f"{path.name}: recorded, not run again")
                    continue
                print(f"== {name}, {budget:g} min, seed {seed}", flush=True)
                rec = runner(args, budget, seed)
                rec.update({"name": name, "data": args.data, "budget": budget, "seed": seed,
                            "validation": args.validation, "date": date.today().isoformat(), "note": args.note,
                            "machine": cpu_label(), "machine_key": here})
                Path(args.results).mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rec, indent=1) + "\n")
                print(f"{name} {budget:g} min seed {seed}: few-label {rec['few_label']:.4f} (random init "
                      f"{rec['random_init']:.4f}, scratch {rec['scratch']:.4f}), linear {rec['linear']:.4f}, "
                      f"{rec['steps']} steps", flush=True)
                publish(args)
    publish(args)


def by_machine(recs: list[dict]) -> dict[str | None, list[dict]]:
    """Records grouped by the CPU they ran on (None: made before machines were recorded)."""
    out: dict[str | None, list[dict]] = {}
    for rec in recs:
        out.setdefault(rec.get("machine_key"), []).append(rec)
    return out


def publish(args) -> None:
    """One section and one curve per machine: minutes on different CPUs are different amounts of training."""
    for machine, recs in by_machine(records(args.results, args.data, args.validation)).items():
        key = f"quality-at-budget-{args.data}" + ("-validation" if args.validation else "") + \
            (f"-{machine}" if machine else "")
        png = Path(args.images) / f"{key}.png"
        curve_png(recs, args.data, args.validation, png)
        body = table(recs, args.data, args.validation) + f"\n\n![accuracy against CPU-minutes](images/{png.name})"
        print(body)
        title = (f"Quality per CPU-minute on {args.data}" + (" (validation split)" if args.validation else "") +
                 (f", {recs[0]['machine']}" if machine else ", machine not recorded (before 2026-12-07)"))
        write_records_section(key, title, body, recs)


if __name__ == "__main__":
    main()
