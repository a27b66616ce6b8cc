"""A run is a folder: config.yaml, env.json, metrics.jsonl, checkpoints/, encoder.safetensors, eval.json, results.md.

This module turns a Config into such a folder (pretrain, then evaluate) and reads one back (eval, resume).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import nn

import selfsup
from selfsup import distributed
from selfsup.checkpoint import atomic_write, export_encoder, load_encoder
from selfsup.config import Config, EvalConfig, ModelConfig, load_config, to_dict
from selfsup.data import sources
from selfsup.data.sources import ImageSet
from selfsup.data.splits import few_label_split, held_out_rows, holdout, seeded_subset
from selfsup.errors import SelfSupError
from selfsup.evaluate.protocol import PROTOCOLS, evaluate
from selfsup.hardware import cpu_label
from selfsup.methods import METHODS, Method
from selfsup.nets.backbones import build_backbone, default_width, resolved_options
from selfsup.nets.encoders import adapt_channels
from selfsup.precision import cpu_bf16_native, describe_precision
from selfsup.report.html import split_name
from selfsup.train import TrainResult, check_batch, resolve_device, train
from selfsup.views import kernels as view_kernels
from selfsup.views.recipes import Recipe, build as build_views


# Sources whose unlabeled images are a split of their own: pretraining uses them too (STL-10's 100k).
PRETRAIN_SPLIT = {"stl10": "train+unlabeled"}


# The seed of the validation hold-out: fixed, so runs with different train.seed are scored on the same images.
VALIDATION_SEED = 0


def load_data(cfg: Config, for_pretraining: bool = False) -> tuple[ImageSet, ImageSet | None]:
    """(train, test) for the run; with for_pretraining, (images to pretrain on, None).

    train is limited to data.limit images (a seeded choice); a folder has no test split, so a stratified fifth of
    it is held out (and left out of pretraining too); crops of one photo stay on one side unless the label is the
    photo itself (see splits.holdout). With data.validation, that fraction of the training images is held out
    (the same images for every seed) and returned as the test split, and the real test split is not read.
    """
    d = cfg.data
    options = {"n": d.synthetic_size} if d.name == "synthetic" else {}
    is_folder = sources.is_folder(d.name)
    if d.crop_scale is not None and d.crops_per_image is None:
        raise SelfSupError("data.crop_scale sets the size photos are resized to before cropping and needs "
                           "data.crops_per_image; set both, or neither")
    if d.crops_per_image is not None:
        if not is_folder:
            raise SelfSupError(f"data.crops_per_image cuts crops from the photos of an image folder, but {d.name} is "
                               "not a folder; remove it or give --data a folder of photos")
        options = {"crops_per_image": d.crops_per_image, "crop_scale": d.crop_scale}
    split = PRETRAIN_SPLIT.get(d.name, "train") if for_pretraining else "train"
    train = sources.load(d.name, split, image_size=d.image_size, seed=cfg.train.seed, **options)
    test = None
    if is_folder:
        train, test = holdout(train, 0.2, cfg.train.seed)
    if d.validation is not None:
        # The validation images stand in for the test split: left out of pretraining like test images are.
        if split == "train":
            train, test = holdout(train, d.validation, VALIDATION_SEED)
        else:  # e.g. stl10's train+unlabeled: the labelled training images come first, then the unlabeled (-1) ones
            n = int((train.labels >= 0).sum())
            if n == 0 or not bool((train.labels[:n] >= 0).all()):
                raise SelfSupError(f"data.validation: {d.name}'s {split} split does not start with its training "
                                   "images, so the validation images cannot be left out of pretraining")
            groups = train.groups[:n] if train.groups is not None else None
            held = held_out_rows(train.labels[:n], groups, d.validation, VALIDATION_SEED)
            keep = torch.cat([~held, torch.ones(len(train) - n, dtype=torch.bool)])
            train = train.subset(keep.nonzero().flatten())
    elif not is_folder and not for_pretraining:
        test = sources.load(d.name, "test", image_size=d.image_size, seed=cfg.train.seed,
                            **({"n": max(10, d.synthetic_size // 6)} if options else {}))
    if d.limit is not None:
        train = seeded_subset(train, d.limit, cfg.train.seed)
    return train, None if for_pretraining else test


def load_eval_data(cfg: Config) -> tuple[ImageSet, ImageSet]:
    """(train, test) of the evaluation: eval.data when it is set, else the pretraining data (see load_data)."""
    if cfg.eval.data is None or cfg.eval.data == cfg.data.name:
        return load_data(cfg)
    data = dataclasses.replace(cfg.data, name=cfg.eval.data, crops_per_image=None, crop_scale=None)
    return load_data(dataclasses.replace(cfg, data=data))


def stats_sample(images: torch.Tensor, max_values: int = 20_000_000) -> torch.Tensor:
    """A seeded sample of uint8 images (N, C, H, W) as float in [0, 1]: at most 10000 images and about 80 MB
    (the sample sets the input normalization; folders come sorted by class, so not the first images)."""
    per_image = max(1, images[0].numel())
    n = max(1, min(10000, max_values // per_image, images.shape[0]))
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:n].sort().values
    return images[pick].float().div_(255)


BACKBONE_OPTIONS = ("depth", "patch_size")  # ModelConfig fields that only some backbones have


def backbone_settings(model: ModelConfig) -> tuple[int, dict]:
    """(width, backbone-only options) of the configured backbone, defaults filled in (model.width None: the
    backbone's own default; vit-tiny's depth and patch_size). A CNN given a vit-tiny option is a SelfSupError."""
    options = {k: getattr(model, k) for k in BACKBONE_OPTIONS if getattr(model, k) is not None}
    return model.width or default_width(model.backbone), resolved_options(model.backbone, **options)


def encoder_factory(cfg: Config, channels: int, sample: torch.Tensor | None = None) -> Callable[[], nn.Module]:
    """A function that builds the run's encoder (the method's backbone or backbones) with fresh weights, for
    `channels`-channel images, normalized by the statistics of `sample` (see Method.make_encoder)."""
    cls = METHODS[cfg.method.name]
    base_width, options = backbone_settings(cfg.model)

    def build(in_channels: int, mean: list[float], std: list[float], width: int | None = None,
              width_scale: float = 1.0) -> nn.Module:
        """width: the backbone's width (None: the configured model.width, times width_scale, at least 1)."""
        return build_backbone(cfg.model.backbone, in_channels, width or max(1, int(base_width * width_scale)),
                              mean, std, **options)

    return lambda: cls.make_encoder(build, channels, sample)


def build_method(cfg: Config, train: ImageSet, views: Recipe | None = None) -> tuple[Method, Callable[[], nn.Module]]:
    """The configured method on a fresh backbone normalized with the training images' statistics.

    `views` replaces the configured recipe (the augmentation study builds its own per cell).
    """
    cls = METHODS[cfg.method.name]
    if train.channels < cls.min_channels:
        raise SelfSupError(f"{cls.name} needs colour images ({cls.min_channels} channels) but {train.name} has "
                           f"{train.channels}; pretrain on colour data, e.g. --data cifar10 or a folder of photos")
    if cls.requires_backbone is not None and cfg.model.backbone != cls.requires_backbone:
        raise SelfSupError(f"{cls.name} needs the {cls.requires_backbone} backbone, not {cfg.model.backbone}; "
                           f"add --set model.backbone={cls.requires_backbone}")
    make_backbone = encoder_factory(cfg, train.channels, stats_sample(train.images))
    torch.manual_seed(cfg.train.seed)
    if views is None:
        views_cfg = cfg.views
        if views_cfg.recipe == "auto":
            views_cfg = dataclasses.replace(views_cfg, recipe=cls.views_recipe)
        views = build_views(views_cfg, train.channels, train.size, n_views=cls.n_views or 2)
        if cls.n_views and views.n_views != cls.n_views:
            raise SelfSupError(f"{cls.name} takes {cls.n_views} view(s) of each image but views.recipe="
                               f"{views_cfg.recipe} makes {views.n_views}; use views.recipe=auto ({cls.views_recipe}) "
                               "or another recipe with that many views")
    method = cls(make_backbone(), views, cfg.method)
    method.prepare(train.images)
    return method, make_backbone


def backbone_notes(model: ModelConfig, size: int) -> list[str]:
    """Lines for the run log about the backbone on `size` px images: vit-tiny's grid of tokens, with a hint when
    the grid is large. No lines for the CNNs."""
    if model.backbone != "vit-tiny":
        return []
    width, options = backbone_settings(model)
    patch = options["patch_size"]
    grid = size // patch
    note = (f"vit-tiny: width {width}, depth {options['depth']}, {patch} px patches: {grid}x{grid} = {grid * grid} "
            f"tokens on {size} px images")
    if grid > 12:
        better = max(1, size // 8)
        note += (f"; attention costs grow with the square of the number of tokens: --set model.patch_size={better} "
                 f"gives {size // better}x{size // better}")
    return [note]


def check_config(cfg: Config, train: ImageSet, evaluation: bool = True, pretraining: bool = True) -> None:
    """Impossible values that need the data to be known, reported as one line with the fix.

    evaluation=False skips the evaluation settings (pretraining alone does not use them); pretraining=False says
    `train` is evaluation data only, so the pretraining batch size need not fit it.
    """
    if pretraining:
        check_batch(cfg.train.batch_size, len(train))
        if cfg.train.tensorboard:
            from selfsup.report.tensorboard import check_available

            check_available()
    labelled = int((train.labels >= 0).sum())
    if evaluation:
        check_eval_settings(cfg.eval)
    if evaluation and "few-label" in cfg.eval.protocols and labelled:
        if cfg.eval.labels > labelled:
            raise SelfSupError(f"eval.labels={cfg.eval.labels} but only {labelled} training images have labels; "
                               f"use --labels {labelled} or fewer")
        few_label_split(train.labels, cfg.eval.labels, cfg.train.seed)  # per-class limits, before hours of training


def check_eval_settings(e: EvalConfig) -> None:
    """The list-valued evaluation settings, which the config's type check cannot look inside."""
    def numbers(key: str, values: list, kind: type, low: float, high: float | None = None) -> None:
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)) \
                    or v < low or v == 0 or (high is not None and v > high):
                bound = f"in (0, {high}]" if high is not None else f"{kind.__name__}s >= {max(low, 1)}"
                raise SelfSupError(f"eval.{key} takes a list of {bound}, got {values!r}; e.g. --set eval.{key}="
                                   + {"lowshot_shots": "[1,2,4,8,16]", "retrieval_ks": "[1,5,10]",
                                      "finetune_fractions": "[0.01,0.1,1.0]"}[key])
        if not values and key in ("lowshot_shots", "retrieval_ks", "finetune_fractions"):
            raise SelfSupError(f"eval.{key} is empty; give at least one value or leave its protocol out of "
                               "eval.protocols")

    if "low-shot" in e.protocols:
        numbers("lowshot_shots", e.lowshot_shots, int, 1)
    if "retrieval" in e.protocols:
        numbers("retrieval_ks", e.retrieval_ks, int, 1)
    if "finetune" in e.protocols:
        numbers("finetune_fractions", e.finetune_fractions, float, 0, 1.0)


def new_run_dir(cfg: Config, out: str | Path | None) -> Path:
    """runs/<date-time>-<method>-<data>/ (or `out` as given); never reuses a folder that holds a run."""
    if out is not None:
        path = Path(out)
        if (path / "config.yaml").exists():
            raise SelfSupError(f"{path} already holds a run; resume it with `selfsup run --resume {path}` "
                               "or choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        return path
    data = Path(cfg.data.name).name if sources.is_folder(cfg.data.name) else cfg.data.name
    base = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.method.name}-{data}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    path.mkdir(parents=True)
    return path


def environment(device: torch.device) -> dict:
    """Versions, machine and code revision, saved with every run so its numbers can be traced."""
    src = Path(selfsup.__file__).resolve().parent.parent
    revision, dirty = None, None
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                  timeout=5).stdout.strip() or None
        if revision:
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                                        capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "selfsup": selfsup.__version__, "git_revision": revision, "git_dirty": dirty,
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__, "numpy": __import__("numpy").__version__,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu": cpu_label(),
        "cpu_count": os.cpu_count(), "cpu_bf16": cpu_bf16_native(), "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "view_kernels": view_kernels.describe() if device.type == "cpu" else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def pretrain(cfg: Config, out: str | Path | None = None, resume_dir: str | Path | None = None,
             progress: bool = True, log: Callable[[str], None] = print,
             views: Recipe | None = None, evaluate_after: bool = False) -> tuple[Path, TrainResult]:
    """Pretrain into a new run folder (or continue the one in resume_dir); exports encoder.safetensors.

    evaluate_after: the caller evaluates next, so evaluation settings are checked now, before hours of training.
    Under torchrun every process calls this: each trains on its share, rank 0 alone logs and writes the run.
    """
    setup = distributed.setup(cfg.train.device)
    if setup.device is not None:  # torchrun on GPUs: this process's own device
        cfg.train.device = str(setup.device)
    main = distributed.is_main()
    if not main:
        log, progress = (lambda *_: None), False
    train_set, _ = load_data(cfg, for_pretraining=True)
    check_config(cfg, train_set, evaluation=evaluate_after and cfg.eval.data is None)
    if evaluate_after and cfg.eval.data is not None:
        check_config(cfg, load_eval_data(cfg)[0], pretraining=False)  # the labels must exist in the evaluation data
    device = resolve_device(cfg.train.device)
    # Everything that can reject the config runs before the run folder exists, so bad input leaves nothing behind.
    method, _ = build_method(cfg, train_set, views)
    if resume_dir is None:
        made: tuple[str, str | None] = ("", None)  # (run folder, error): rank 0 makes it, the others learn of it
        if main:
            try:
                path = new_run_dir(cfg, out)
                atomic_write(path / "config.yaml",
                             lambda tmp: Path(tmp).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
                write_json(path / "env.json", {**environment(device), "processes": distributed.world_size()})
                made = (str(path), None)
            except SelfSupError as e:
                made = ("", str(e))
        made = distributed.broadcast_object(made)
        if made[1] is not None:
            raise SelfSupError(made[1])
        run_dir = Path(made[0])
    else:
        run_dir = Path(resume_dir)
    log(f"run folder: {run_dir}")
    log(f"data: {train_set.name} {len(train_set)} images {tuple(train_set.images.shape[1:])} from {train_set.origin}")
    log(f"method: {cfg.method.name}, backbone {cfg.model.backbone} ({method.backbone.dim}-d features), "
        f"views: {', '.join(getattr(method, 'views').names) if hasattr(method, 'views') else '-'}")
    if resume_dir is None:  # a resumed run continues in the precision it started in (train.py)
        log(describe_precision(cfg.train.precision, device))
    for note in train_set.notes + backbone_notes(cfg.model, train_set.size) + list(getattr(method, "notes", [])):
        log(f"note: {note}")
    if (world := distributed.world_size()) > 1:
        log(f"processes: {world} ({setup.backend}), {cfg.train.batch_size // world} images each of the global batch "
            f"of {cfg.train.batch_size}")
    result = train(method, train_set.images, cfg.train, run_dir, resume=resume_dir is not None, progress=progress)
    if not main:
        return run_dir, result
    width, options = backbone_settings(cfg.model)
    export_encoder(run_dir / "encoder.safetensors", method.backbone, {
        "backbone": cfg.model.backbone, "width": width, "options": options, "in_channels": train_set.channels,
        "dim": method.backbone.dim, "method": cfg.method.name, "step": result.steps,
    })
    if not result.interrupted:
        try:  # pictures are a bonus: a failure here must not cost the trained encoder or its evaluation
            for path in method_figures(method, train_set.images, cfg.train.seed, run_dir):
                log(f"figure: {path}")
        except (RuntimeError, ValueError, OSError) as e:
            log(f"note: figures skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    summary = {"steps": result.steps, "total_steps": result.total_steps, "seconds": round(result.seconds, 1),
               "images_per_s": round(result.images_per_second, 1), "final_loss": result.final_loss,
               "interrupted": result.interrupted,
               "precision": result.precision}  # as trained: fp32, bf16, or e.g. fp32+bf16 across a resume
    if not result.interrupted and hasattr(method, "bank_knn"):
        summary["bank_knn"] = bank_knn_monitor(method, cfg, train_set, log)
    write_json(run_dir / "train.json", summary)
    log(f"pretraining {'stopped' if result.interrupted else 'done'}: {result.steps}/{result.total_steps} steps in "
        f"{result.seconds / 60:.1f} min, {result.images_per_second:.0f} images/s ({result.precision})"
        + (f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""))
    return run_dir, result


def bank_knn_monitor(method: Method, cfg: Config, train_set: ImageSet, log: Callable[[str], None]) -> dict | None:
    """NPID's free kNN monitor: the memory bank stands in for the training features; only test images are embedded.

    Runs when the pretraining images have labels and a test split to score against; None (and a note) otherwise.
    """
    if not bool((train_set.labels >= 0).any()):
        log("note: no bank kNN: the pretraining images have no labels")
        return None
    _, test = load_data(cfg)
    if test is None or not bool((test.labels >= 0).any()):
        log("note: no bank kNN: the pretraining data has no labelled test split")
        return None
    t0 = time.perf_counter()
    top1 = method.bank_knn(train_set.labels, test.images, test.labels, k=cfg.eval.knn_k)
    seconds = round(time.perf_counter() - t0, 1)
    log(f"memory-bank kNN (k={cfg.eval.knn_k}, embedding space, the bank as training features): "
        f"{100 * top1:.1f}% on {len(test)} test images in {seconds} s")
    return {"top1": top1, "k": cfg.eval.knn_k, "seconds": seconds, "test_images": len(test)}


def method_figures(method: Method, images: torch.Tensor, seed: int, run_dir: Path, n: int = 8) -> list[Path]:
    """The method's own pictures (reconstructions, predictions) of n seeded training images, in eval mode."""
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    device = next(method.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)  # the figure's own randomness, not the training's
    method.set_generator(generator)
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            return method.figures(images[pick].to(device), run_dir)
    finally:
        method.train(was_training)


def read_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise SelfSupError(f"{run_dir} is not a run folder (no config.yaml); give a folder made by `selfsup run`")
    return load_config(file=path)


def evaluate_run(run_dir: str | Path, labels: int | None = None, protocols: list[str] | None = None,
                 log: Callable[[str], None] = print, eval_data: str | None = None, merge: bool = False) -> dict:
    """Evaluate the encoder of a finished run folder; writes eval.json, results.md and report.html there.

    eval_data: evaluate on this source instead of the run's eval.data (or its pretraining data). merge: keep the
    results of protocols not run now from the existing eval.json (same evaluation data only).
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if eval_data is not None:
        cfg.eval.data = eval_data
    if labels is not None:
        cfg.eval.labels = labels
    if protocols is not None:
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown or not protocols:
            raise SelfSupError(f"unknown evaluation protocol '{unknown[0] if unknown else ''}'; give a comma-separated "
                               f"subset of {','.join(PROTOCOLS)}")
        cfg.eval.protocols = protocols
    encoder = run_dir / "encoder.safetensors"
    trained = json.loads((run_dir / "train.json").read_text()) if (run_dir / "train.json").is_file() else {}
    if not encoder.is_file() or trained.get("interrupted"):
        raise SelfSupError(f"pretraining in {run_dir} has not finished; finish it with "
                           f"`selfsup run --resume {run_dir}`")
    train_set, test_set = load_eval_data(cfg)
    check_config(cfg, train_set, pretraining=False)
    backbone, fresh = load_encoder_backbone(run_dir, train_set.channels, cfg, with_fresh=True)
    device = resolve_device(cfg.train.device)
    t0 = time.perf_counter()
    result = evaluate(backbone, fresh, train_set, test_set, cfg.eval, cfg.train.seed, device, run_dir, log,
                      encoder_file=encoder)
    result["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    if cfg.data.validation is not None and "data" in result:
        result["data"]["split"] = "validation"
    if merge and (run_dir / "eval.json").is_file():
        # A subset of protocols adds to what earlier evaluations measured instead of erasing it.
        previous = json.loads((run_dir / "eval.json").read_text())
        if previous.get("data") == result.get("data") and "skipped" not in previous:
            result = {**previous, **{k: v for k, v in result.items() if k != "seconds"},
                      "seconds": {**previous.get("seconds", {}), **result["seconds"]}}
    write_json(run_dir / "eval.json", result)
    table = results_table(cfg, result, run_dir)
    atomic_write(run_dir / "results.md", lambda tmp: Path(tmp).write_text(table))
    write_run_report(run_dir, log)
    return result


def write_run_report(run_dir: Path, log: Callable[[str], None] = print) -> Path | None:
    """report.html of a run folder; a failure is a note, never a lost evaluation."""
    try:
        from selfsup.report.html import write_report

        path = write_report(run_dir)
    except (ImportError, RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
        log(f"note: report.html skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None
    log(f"report: {path}")
    return path


def load_encoder_backbone(run_dir: str | Path, channels: int, cfg: Config | None = None, with_fresh: bool = False):
    """The encoder of a run folder with its exported weights (and input normalization) loaded, ready for
    `channels`-channel images (an encoder pretrained on colour evaluates grey images as R = G = B, and the other
    way round by luma; colorization and split-brain encoders take both as they are).

    with_fresh: also return a function that builds the same architecture with random weights but the trained input
    normalization, adapted the same way (the random-init and from-scratch baselines of the evaluation).
    """
    cfg = cfg or read_run_config(run_dir)
    state, meta = load_encoder(Path(run_dir) / "encoder.safetensors")
    trained_channels = int(meta.get("in_channels", channels))
    factory = encoder_factory(cfg, trained_channels)
    encoder = factory()
    encoder.load_state_dict(state)  # includes the normalization statistics saved at pretraining
    normalization = {k: v for k, v in state.items() if k.split(".")[-2:-1] == ["normalize"]}

    def fresh() -> nn.Module:
        net = factory()
        net.load_state_dict(normalization, strict=False)
        return adapt_channels(net, trained_channels, channels)

    encoder = adapt_channels(encoder, trained_channels, channels)
    return (encoder, fresh) if with_fresh else encoder


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _clusters(scores: dict) -> str:
    """accuracy / NMI / ARI of a clustering result, or a dash."""
    if "accuracy" not in scores:
        return "—"
    return f"{_pct(scores['accuracy'])} / {scores['nmi']:.3f} / {scores['ari']:.3f}"


def protocol_lines(result: dict) -> list[str]:
    """results.md lines for low-shot, retrieval, t-SNE and fine-tuning, each with its random-init row."""
    lines: list[str] = []
    low = result.get("low_shot", {})
    if "ssl" in low:
        shots = [k for k in map(str, low["shots"]) if k in low["ssl"]["results"]]
        cell = lambda r: f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}%"  # noqa: E731
        lines += [f"Low-shot linear SVM ({low['draws']} draws, mean ± std, test top-1):", "",
                  "| features | " + " | ".join(f"{k} per class" for k in shots) + " |",
                  "|---|" + "---|" * len(shots),
                  "| SSL | " + " | ".join(cell(low["ssl"]["results"][k]) for k in shots) + " |",
                  "| random init | " + " | ".join(cell(low["random_init"]["results"][k]) for k in shots) + " |", ""]
    ret = result.get("retrieval", {})
    if "ssl" in ret:
        ks = list(ret["ssl"]["precision_at"])
        lines += [f"Retrieval ({ret['database']}): precision@k "
                  + ", ".join(f"@{k} SSL {_pct(ret['ssl']['precision_at'][k])} / random init "
                              f"{_pct(ret['random_init']['precision_at'][k])}" for k in ks)
                  + (f"; {ret['figure']}" if ret.get("figure") else "") + ".", ""]
    tsne = result.get("tsne", {})
    if "ssl" in tsne:
        lines += [f"t-SNE of {tsne['points']} test images: 10-NN accuracy in the 2-d map SSL "
                  f"{_pct(tsne['ssl']['knn_2d_top1'])}, random init {_pct(tsne['random_init']['knn_2d_top1'])}"
                  + (f"; {tsne['figure']}" if tsne.get("figure") else "") + ".", ""]
    fine = result.get("finetune", {})
    if "ssl" in fine:
        lines += [f"Fine-tuning (whole network + linear head, {fine['steps']} steps of {fine['batch_size']}, "
                  f"{fine['optimizer']}, lr {fine['lr']:g}), test top-1:", "",
                  "| labels | SSL init | random init | gain |", "|---|---|---|---|"]
        for key, ssl in fine["ssl"].items():
            random = fine["random_init"][key]
            lines.append(f"| {100 * float(key):g}% ({ssl['labels']}) | {_pct(ssl['top1'])} | {_pct(random['top1'])} "
                         f"| {100 * (ssl['top1'] - random['top1']):+.1f} |")
        lines.append("")
    return lines


def results_table(cfg: Config, result: dict, run_dir: Path) -> str:
    """results.md: the three rows of the few-label experiment beside kNN, the all-label linear probe and k-means."""
    if "skipped" in result:
        return f"# {run_dir.name}\n\nEvaluation skipped: {result['skipped']}.\n"
    knn, lin, few = result.get("knn", {}), result.get("linear", {}), result.get("few_label", {})
    cluster = result.get("clustering", {})
    n = few.get("labels", cfg.eval.labels)
    train_info = {}
    train_json = run_dir / "train.json"
    if train_json.exists():
        train_info = json.loads(train_json.read_text())
    lines = [
        f"# {run_dir.name}",
        "",
        f"{cfg.method.name}"
        + (f" pretrained on {cfg.data.name}, evaluated" if cfg.eval.data not in (None, cfg.data.name) else "")
        + f" on {result['data']['name']} ({result['data']['train']} training images, "
        f"{result['data']['test']} {split_name(result)} images), backbone {cfg.model.backbone}, seed {cfg.train.seed}"
        + (f", pretrained {train_info['steps']} steps in {train_info['seconds'] / 60:.1f} min" if train_info else "")
        + (f" ({train_info['precision']})" if train_info.get("precision") else "")
        + ".",
        "",
        f"| features | kNN top-1 (k={knn.get('k', cfg.eval.knn_k)}) | linear, all labels | few-label, {n} labels | "
        "k-means accuracy / NMI / ARI |",
        "|---|---|---|---|---|",
        f"| SSL ({cfg.method.name}), frozen | {_pct(knn.get('top1'))} | {_pct(lin.get('top1'))} | {_pct(few.get('ssl'))} | "
        f"{_clusters(cluster)} |",
        f"| random init, frozen | {_pct(knn.get('random_init_top1'))} | {_pct(lin.get('random_init_top1'))} | "
        f"{_pct(few.get('random_init'))} | {_clusters(cluster.get('random_init', {}))} |",
        f"| supervised from scratch on the {n} labels | — | — | {_pct(few.get('supervised_scratch'))} | — |",
        "",
        f"Accuracies are top-1 on the {split_name(result)} split. Frozen rows use the same linear probe (L-BFGS logistic regression, "
        "weight decay chosen on the training labels only: 5-fold cross-validation under 5000 labels, a held-out "
        "tenth otherwise).",
        "",
    ]
    if "accuracy" in cluster:
        lines += [f"k-means: {cluster['k']} clusters of the test images' features, the labels used only to score "
                  "them: accuracy after matching clusters to classes one to one, NMI, ARI (each 1 when the clusters "
                  "are exactly the classes)"
                  + (f"; the largest clusters are pictured in {cluster['figure']}" if cluster.get("figure") else "")
                  + ".", ""]
    lines += protocol_lines(result)
    if knn and "random_init_top1" not in knn:
        lines += ["Random-init kNN and all-label probe not measured (about a minute more): "
                  "`--set eval.random_init_all_labels=true`.", ""]
    return "\n".join(lines)
