"""The `selfsup` command line: run, pretrain, eval, report, compare, methods, data, views, study, config."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from selfsup.errors import SelfSupError

RUN_EXAMPLES = """\
examples:
  selfsup run                                          # SimCLR on Fashion-MNIST, 5 minutes, then evaluate
  selfsup run --data synthetic --steps 3 --limit 512   # a smoke test in seconds
  selfsup run --minutes 15 --seed 1 --labels 100
  selfsup run --backbone resnet18 --set train.lr=0.5 --set method.temperature=0.5
  selfsup run --data ~/Pictures/cats-and-dogs          # an image folder (one sub-folder per class)
  selfsup run --config configs/simclr-fashion-mnist.yaml
  selfsup run --preset fast-cpu --minutes 15           # the recipe tuned for quality per CPU-minute
  selfsup run --resume runs/20261123-140000-simclr-fashion-mnist   # continue after Ctrl-C or a crash
"""


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="source name (fashion-mnist, cifar10, cifar100, stl10, synthetic) or an image folder path")
    p.add_argument("--method", help="method name (see `selfsup methods`); default simclr")
    p.add_argument("--backbone", choices=["small-cnn", "resnet18", "vit-tiny"],
                   help="backbone network; default small-cnn (mae needs vit-tiny)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="pretraining budget in minutes (default 5)")
    budget.add_argument("--epochs", type=float, help="pretraining budget in epochs")
    budget.add_argument("--steps", type=int, help="pretraining budget in optimizer steps")
    p.add_argument("--labels", type=int, help="labels in the few-label experiment (default 200, class-balanced)")
    p.add_argument("--eval-data", help="evaluate on this source or folder instead of the pretraining data "
                                       "(e.g. pretrain colorization on photos, evaluate on fashion-mnist)")
    p.add_argument("--seed", type=int, help="seed for weights, data order, views and the label split (default 0)")
    p.add_argument("--limit", type=int, help="use only N training images (quick tries)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--out", help="run folder to create (default runs/<date-time>-<method>-<data>)")
    p.add_argument("--preset", help="a named recipe shipped with selfsup, e.g. fast-cpu (`selfsup config` lists them); "
                                    "--config, flags and --set override it")
    p.add_argument("--config", help="YAML config file (see configs/); flags and --set override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=0.3 (repeatable; `selfsup config` lists keys)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="also log training curves to RUN_DIR/tensorboard/ (needs: pip install -e '.[tensorboard]')")


def config_tree(args: argparse.Namespace) -> dict:
    """The config keys given as flags, as a nested dict (None flags are left out)."""
    flags = {
        ("data", "name"): args.data, ("method", "name"): args.method, ("model", "backbone"): args.backbone,
        ("train", "minutes"): args.minutes, ("train", "epochs"): args.epochs, ("train", "steps"): args.steps,
        ("eval", "labels"): args.labels, ("train", "seed"): args.seed, ("data", "limit"): args.limit,
        ("train", "device"): args.device, ("eval", "data"): args.eval_data, ("train", "tensorboard"): args.tensorboard,
    }
    tree: dict = {}
    for (section, key), value in flags.items():
        if value is not None:
            tree.setdefault(section, {})[key] = value
    return tree


def cmd_run(args: argparse.Namespace, evaluate_after: bool) -> int:
    """Pretrain (on every process under torchrun), then evaluate on rank 0 alone."""
    from selfsup import distributed

    try:
        run_dir, result = _pretrain_from_args(args, evaluate_after)
        main = distributed.is_main()
    except BaseException:
        distributed.teardown(wait=False)  # the others may be inside a step: no barrier to hang on
        raise
    distributed.teardown()  # every process leaves together, after rank 0 has written the run
    if not main:
        return 130 if result.interrupted else 0
    if result.interrupted:
        print(f"interrupted at step {result.steps}; the checkpoint is saved. Continue with:\n"
              f"  selfsup {args.command} --resume {run_dir}")
        return 130
    if evaluate_after:
        from selfsup.run import evaluate_run

        print("evaluating (frozen features; baselines measured in the same run) ...")
        evaluate_run(run_dir)
        print()
        print((run_dir / "results.md").read_text())
    print(f"run folder: {run_dir}")
    return 0


def _pretrain_from_args(args: argparse.Namespace, evaluate_after: bool):
    from selfsup.config import load_config
    from selfsup.run import pretrain, read_run_config

    if args.resume:
        given = [k for k, v in config_tree(args).items()] + (["set"] if args.set else []) + \
                (["config"] if args.config else []) + (["preset"] if args.preset else []) + \
                (["out"] if args.out else [])
        if given:
            raise SelfSupError(f"--resume continues the run as saved in {args.resume}/config.yaml; "
                               f"drop the other options ({', '.join(given)})")
        cfg = read_run_config(args.resume)
        run_dir, result = pretrain(cfg, resume_dir=args.resume, progress=not args.no_progress,
                                   evaluate_after=evaluate_after)
    else:
        cfg = load_config(config_tree(args), args.set, args.config, preset=args.preset)
        run_dir, result = pretrain(cfg, out=args.out, progress=not args.no_progress, evaluate_after=evaluate_after)
    return run_dir, result


def cmd_eval(args: argparse.Namespace) -> int:
    from selfsup.run import evaluate_run

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()] if args.protocols is not None else None
    evaluate_run(args.run_dir, labels=args.labels, protocols=protocols, eval_data=args.eval_data,
                 merge=protocols is not None and args.eval_data is None)
    print()
    print((Path(args.run_dir) / "results.md").read_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from selfsup.report.html import write_report
    from selfsup.run import read_run_config

    read_run_config(args.run_dir)  # a clear error for a folder that is not a run
    print(f"wrote {write_report(Path(args.run_dir))}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from selfsup.report.compare import compare_runs

    markdown, html = compare_runs([Path(d) for d in args.run_dirs], Path(args.out))
    print(markdown.read_text())
    print(f"wrote {markdown} and {html}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from selfsup.methods import METHODS

    head = ("name", "family", "views (auto)", "paper", "year")
    rows = [(m.name, m.family, m.views_recipe + (" colour" if m.min_channels == 3 else ""), m.paper, str(m.year))
            for m in METHODS.values()]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for row in [head] + rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from selfsup.data import sources

    if args.action == "list":
        for name, text in sources.SOURCES.items():
            print(f"{name:15s} {text}")
        print(f"{'FOLDER':15s} a path: one sub-folder per class (labelled), or a flat folder of images (unlabeled)")
        return 0
    if not args.name:
        raise SelfSupError(f"`selfsup data {args.action}` needs a source name, e.g. `selfsup data {args.action} fashion-mnist`")
    if args.action == "info":
        print(json.dumps(sources.info(args.name), indent=2))
    else:
        print(sources.fetch(args.name))
    return 0


def cmd_views(args: argparse.Namespace) -> int:
    import torch

    from selfsup.config import load_config
    from selfsup.data import sources
    from selfsup.report.gallery import views_gallery
    from selfsup.views.recipes import build

    cfg = load_config({"data": {"name": args.data}, "views": {"recipe": args.recipe}}, args.set)
    data = sources.load(cfg.data.name, "train", image_size=cfg.data.image_size)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    recipe = build(cfg.views, data.channels, data.size)
    out = args.out or f"views-{args.recipe}-{Path(args.data).name}.png"
    path = views_gallery(data.images[pick], recipe, out, seed=args.seed, title=f"{args.recipe} views of {data.name}")
    print(f"wrote {path}")
    for name in recipe.names:
        print(f"  {name}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.studies.augmentations import run_study

    if args.study == "shortcuts":
        return cmd_study_shortcuts(args)
    if args.study == "jigsaw-permutations":
        return cmd_study_jigsaw(args)

    if args.steps_per_cell is not None and args.minutes_per_cell is not None:
        raise SelfSupError("give either --minutes-per-cell or --steps-per-cell, not both")
    minutes = args.minutes_per_cell if args.steps_per_cell is None else None
    if minutes is None and args.steps_per_cell is None:
        minutes = 2.0
    tree = {"data": {"name": args.data}, "train": {"seed": args.seed}}
    if args.limit:
        tree["data"]["limit"] = args.limit
    cfg = load_config(tree, args.set)
    out = Path(args.out or f"runs/study-augmentations-{Path(args.data).name}")
    run_study(cfg, [o for o in args.ops.split(",") if o], minutes, out, args.mode, args.eval_limit,
              steps_per_cell=args.steps_per_cell)
    print(f"heatmap: {out / 'heatmap.png'}\ntable: {out / 'study.csv'}")
    return 0


def cmd_study_shortcuts(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.studies.shortcuts import run_study

    if args.steps_per_cell is not None and args.minutes_per_cell is not None:
        raise SelfSupError("give either --minutes-per-cell or --steps-per-cell, not both")
    minutes = args.minutes_per_cell if args.minutes_per_cell is not None or args.steps_per_cell is not None else 2.0
    tree = {"data": {"name": args.data}, "train": {"seed": args.seed}, "method": {"name": "relpatch"}}
    if args.limit:
        tree["data"]["limit"] = args.limit
    cfg = load_config(tree, args.set)
    out = Path(args.out or f"runs/study-shortcuts-{Path(args.data).name}")
    cells = [c for c in args.cells.split(",") if c] if args.cells else None
    run_study(cfg, minutes, out, cells, steps_per_cell=args.steps_per_cell, eval_limit=args.eval_limit)
    print(f"figure: {out / 'shortcuts.png'}\ntable: {out / 'study.csv'}")
    return 0


def cmd_study_jigsaw(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.studies.jigsaw_permutations import run_study

    if args.steps_per_cell is not None and args.minutes_per_cell is not None:
        raise SelfSupError("give either --minutes-per-cell or --steps-per-cell, not both")
    minutes = args.minutes_per_cell if args.minutes_per_cell is not None or args.steps_per_cell is not None else 2.0
    try:
        sizes = [int(p) for p in args.permutations.split(",") if p]
    except ValueError:
        raise SelfSupError(f"--permutations takes comma-separated numbers, e.g. 10,64,100,1000; "
                           f"got {args.permutations!r}") from None
    tree = {"data": {"name": args.data}, "train": {"seed": args.seed}, "method": {"name": "jigsaw"}}
    if args.limit:
        tree["data"]["limit"] = args.limit
    cfg = load_config(tree, args.set)
    out = Path(args.out or f"runs/study-jigsaw-permutations-{Path(args.data).name}")
    run_study(cfg, sizes, [m for m in args.modes.split(",") if m], out,
              minutes_per_cell=minutes if args.steps_per_cell is None else None,
              steps_per_cell=args.steps_per_cell, eval_limit=args.eval_limit)
    print(f"figure: {out / 'study.png'}\ntable: {out / 'study.csv'}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from selfsup.config import DataConfig, EvalConfig, ModelConfig, TrainConfig, describe, presets
    from selfsup.methods import METHODS
    from selfsup.views.recipes import ViewsConfig

    if args.method not in METHODS:
        raise SelfSupError(f"unknown method '{args.method}'; known methods: {', '.join(sorted(METHODS))}")
    sections = [("data", DataConfig), ("views", ViewsConfig), ("model", ModelConfig),
                ("method", METHODS[args.method].Config), ("train", TrainConfig), ("eval", EvalConfig)]
    for name, cls in sections:
        print(f"{name}:")
        print("\n".join(describe(cls, name)))
    print("presets (--preset NAME; a later --config, flag or --set overrides them):")
    for name, path in presets().items():
        about = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        print(f"  {name:<22} {about}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Learn image representations without labels, then measure them with a few labels.",
        epilog=textwrap.dedent("""\
            commands:
              run       pretrain, then evaluate (kNN, linear probe, few-label with both baselines)
              pretrain  pretrain only
              eval      evaluate the encoder of a run folder (any subset of the protocols)
              report    write report.html of a run folder (self-contained, works offline)
              compare   one table and overlaid curves for several run folders
              methods   list the methods with their papers
              data      list sources, show what is where, fetch a data set
              views     save a picture of images and their views under a recipe
              study     studies of many short runs: augmentations (a heatmap), shortcuts (relative patch defences),
                        jigsaw-permutations (the permutation-set ablation)
              config    list every config key with its default and advice

            `selfsup COMMAND --help` shows the options and examples of each command."""))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("run", help="pretrain then evaluate", epilog=RUN_EXAMPLES, formatter_class=raw,
                       description="Pretrain a method on unlabeled images, then evaluate its frozen backbone.")
    add_run_options(p)
    p = sub.add_parser("pretrain", help="pretrain only", formatter_class=raw,
                       epilog=RUN_EXAMPLES.replace("selfsup run", "selfsup pretrain"),
                       description="Pretrain and export encoder.safetensors, without evaluation.")
    add_run_options(p)
    p = sub.add_parser("eval", help="evaluate a run folder", formatter_class=raw,
                       description="Evaluate the frozen encoder of a run folder; writes eval.json and results.md.",
                       epilog="examples:\n  selfsup eval runs/20261123-140000-simclr-fashion-mnist\n"
                              "  selfsup eval RUN_DIR --labels 100 --protocols few-label\n"
                              "  selfsup eval RUN_DIR --protocols finetune    # fine-tuning on 1%, 10%, 100% labels\n")
    p.add_argument("run_dir", help="a folder made by `selfsup run` or `selfsup pretrain`")
    p.add_argument("--labels", type=int, help="labels in the few-label experiment (default: the run's, 200)")
    p.add_argument("--protocols", help="comma-separated subset of knn,linear,few-label,clustering,low-shot,"
                                       "retrieval,tsne,finetune (default: the run's eval.protocols); the results of "
                                       "the others stay in eval.json")
    p.add_argument("--eval-data", help="evaluate on this source or folder (default: the run's eval.data, else "
                                       "its pretraining data)")
    p = sub.add_parser("report", help="write report.html of a run folder", formatter_class=raw,
                       description="Write RUN_DIR/report.html: one self-contained page (config, results with both "
                                   "baselines, training curves, pictures, environment) that works offline. "
                                   "`selfsup run` and `selfsup eval` write it too.",
                       epilog="example:\n  selfsup report runs/20261123-140000-simclr-fashion-mnist\n")
    p.add_argument("run_dir", help="a folder made by `selfsup run` or `selfsup pretrain`")
    p = sub.add_parser("compare", help="one table and overlaid curves for several runs", formatter_class=raw,
                       description="Compare run folders: a table of their results and their training curves "
                                   "overlaid, as compare.md (+ compare-curves.png) and a self-contained compare.html.",
                       epilog="examples:\n  selfsup compare runs/*simclr* runs/*byol* --out runs/compare\n"
                              "  selfsup compare bench/out/methods/* --out /tmp/methods\n")
    p.add_argument("run_dirs", nargs="+", help="run folders")
    p.add_argument("--out", default="compare", help="folder for compare.md and compare.html (default ./compare)")
    sub.add_parser("methods", help="list methods", description="List the registered methods with family, paper and year.",
                   epilog="example:\n  selfsup methods\n", formatter_class=raw)
    p = sub.add_parser("data", help="data sources", formatter_class=raw,
                       description="List data sources, show where a source's files are, or fetch (download) one.",
                       epilog="examples:\n  selfsup data list\n  selfsup data info fashion-mnist\n"
                              "  selfsup data fetch fashion-mnist\n")
    p.add_argument("action", choices=["list", "info", "fetch"])
    p.add_argument("name", nargs="?", help="source name or folder path")
    p = sub.add_parser("views", help="picture what the network sees", formatter_class=raw,
                       description="Save a PNG of a few images and their views under a recipe.",
                       epilog="examples:\n  selfsup views --data fashion-mnist --recipe simclr\n"
                              "  selfsup views --data synthetic --recipe multicrop --out multicrop.png\n"
                              "  selfsup views --recipe simclr --set views.color.strength=1.0\n")
    p.add_argument("--data", default="fashion-mnist", help="source name or image folder")
    p.add_argument("--recipe", default="simclr", help="simclr, moco-v2, byol, multicrop, supervised, none")
    p.add_argument("--n", type=int, default=8, help="number of images (rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="PNG path (default views-RECIPE-DATA.png)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a views key")
    p = sub.add_parser("study", help="experiments made of many short runs", formatter_class=raw,
                       description="The SimCLR augmentation study (Fig. 5 of the paper): one short pretraining per "
                                   "ordered pair of ops, then a linear probe; a heatmap PNG, a CSV and the winner. "
                                   "A stopped study resumes: finished cells are not recomputed. "
                                   "shortcuts: relative patch location with its defences off and on (gap, jitter, "
                                   "chroma; synthetic chromatic aberration on colour data): pretext accuracy beside "
                                   "probe accuracy, and Doersch's absolute-position test; a PNG, a CSV, a conclusion. "
                                   "jigsaw-permutations: jigsaw pretraining with permutation sets of several sizes "
                                   "(and ways of choosing them), then linear and few-label probes; accuracy against "
                                   "the set size and its minimum Hamming distance in a PNG, a CSV, a conclusion.",
                       epilog="examples:\n  selfsup study augmentations --minutes-per-cell 2\n"
                              "  selfsup study augmentations --ops crop,color,blur --minutes-per-cell 1 --mode paper\n"
                              "  selfsup study augmentations --data synthetic --ops crop,noise --minutes-per-cell 0.1\n"
                              "  selfsup study augmentations --steps-per-cell 40 --out runs/study-40-steps\n"
                              "  selfsup study shortcuts --data /usr/share/backgrounds/mate/nature "
                              "--set data.crops_per_image=100 --set data.image_size=64 --minutes-per-cell 1\n"
                              "  selfsup study shortcuts --data fashion-mnist --cells none,gap,gap+jitter "
                              "--steps-per-cell 100\n"
                              "  selfsup study jigsaw-permutations --steps-per-cell 300\n"
                              "  selfsup study jigsaw-permutations --permutations 10,100,1000 --modes max,min "
                              "--minutes-per-cell 1\n"
                              "  selfsup study jigsaw-permutations --data synthetic --permutations 10,24 "
                              "--steps-per-cell 5 --limit 512\n")
    p.add_argument("study", choices=["augmentations", "shortcuts", "jigsaw-permutations"])
    p.add_argument("--cells", help="shortcuts: comma-separated cells (none, gap, gap+jitter, all, aberration, "
                                   "aberration+drop, aberration+project, aberration+replace); default all of them "
                                   "(the first three on grayscale data)")
    p.add_argument("--permutations", default="10,64,100,1000",
                   help="jigsaw-permutations: comma-separated permutation-set sizes P")
    p.add_argument("--modes", default="max",
                   help="jigsaw-permutations: comma-separated ways of choosing each set: max (the paper's), "
                        "maximin, min, random")
    p.add_argument("--data", default="fashion-mnist", help="source name or image folder")
    p.add_argument("--minutes-per-cell", type=float, help="pretraining budget of each cell in minutes (default 2)")
    p.add_argument("--steps-per-cell", type=int,
                   help="pretraining budget of each cell in steps: the same cells on a busy machine as on an idle one")
    p.add_argument("--ops", default="crop,cutout,color,sobel,noise,blur,rotate",
                   help="comma-separated ops (crop, cutout, color, sobel, noise, blur, rotate)")
    p.add_argument("--mode", default="split", choices=["split", "paper"],
                   help="split: view 1 gets t1, view 2 gets t2; paper: one view gets t1 then t2, the other none")
    p.add_argument("--eval-limit", type=int, default=10000, help="labelled training images for each cell's probe")
    p.add_argument("--limit", type=int, help="pretrain on only N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="study folder (default runs/study-STUDY-DATA)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p = sub.add_parser("config", help="list config keys", formatter_class=raw,
                       description="List every config key with its default and advice (for --set and YAML files).",
                       epilog="examples:\n  selfsup config\n  selfsup config --method simclr\n")
    p.add_argument("--method", default="simclr", help="show the keys of this method's section")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"run": lambda a: cmd_run(a, True), "pretrain": lambda a: cmd_run(a, False), "eval": cmd_eval,
                "report": cmd_report, "compare": cmd_compare, "methods": cmd_methods, "data": cmd_data,
                "views": cmd_views, "study": cmd_study,
                "config": cmd_config}
    try:
        return handlers[args.command](args)
    except SelfSupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nselfsup: aborted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
