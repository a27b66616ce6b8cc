"""Typed configuration: dataclasses with a help text per field, YAML files and dotted `--set key=value` overrides.

Every field is declared with `opt(default, "help")`; the help says what the paper used and how to tune it.
Unknown keys, wrong types and impossible values raise SelfSupError naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import SelfSupError


def opt(default: Any, help: str, **checks: Any) -> Any:
    """A config field with its help text; `choices=[...]`, `min=`, `max=` are checked on load."""
    meta = {"help": help, **checks}
    if isinstance(default, type) and dataclasses.is_dataclass(default):  # a nested section, e.g. views.color
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = opt("fashion-mnist", "Source name (fashion-mnist, cifar10, cifar100, stl10, synthetic) or an image folder path.")
    limit: int | None = opt(None, "Use only the first N training images (after a seeded shuffle); None uses all. For quick tries.", min=1)
    image_size: int = opt(32, "Side in pixels that folder images are resized to, or of each crop with crops_per_image (named sources keep their own size).", min=8)
    synthetic_size: int = opt(6000, "Number of training images the synthetic source generates (test: a sixth of it).", min=10)
    crops_per_image: int | None = opt(None, "Image folders: cut this many seeded random crops of image_size px from every photo instead of resizing the whole photo (for a personal collection of large photos). A flat folder then labels each crop with its photo. None: one resized image per file.", min=1)
    validation: float | None = opt(None, "Hold out this fraction of the training images (class-stratified, the same images whatever train.seed; for an image folder, taken from the training part its seeded test fifth leaves, so the test fifth stays unseen) and use them in place of the test split, for pretraining and evaluation alike, e.g. 0.1667 (10000 of Fashion-MNIST's 60000): settings are chosen on the validation images, never on the test split (docs/tuning.md). Results then name the validation split. None: evaluate on the test split.", min=1e-6, max=0.999)
    crop_scale: int | None = opt(None, "With crops_per_image: the short side in pixels each photo is resized to before cutting, so a crop spans image_size / crop_scale of it. None: 4 x image_size (a crop spans a quarter of the short side).", min=8)


@dataclass
class ModelConfig:
    backbone: str = opt("small-cnn", "Backbone network: small-cnn (fast on a CPU), resnet18 (small-image stem) or vit-tiny (a ViT for small images, DeiT-Ti's size; needed by MAE, works with every method; train it with AdamW, see docs/masked-image-modelling.md).", choices=["small-cnn", "resnet18", "vit-tiny"])
    width: int | None = opt(None, "Width of the backbone; None: its default. small-cnn: base channel width (doubles twice, so features have 4*width dims; default 32). vit-tiny: embedding width = feature dims (default 192, DeiT-Ti), with about width/64 attention heads (at least 1, a divisor of the width). resnet18 ignores it.", min=4)
    depth: int | None = opt(None, "vit-tiny only: transformer blocks (None: 12, DeiT-Ti). Fewer blocks train faster on a CPU.", min=1)
    patch_size: int | None = opt(None, "vit-tiny only: side of a patch token in pixels, also the feature map's stride (None: 4, a 7x7 grid on 28 px images, 8x8 on 32 px). For other sizes keep the grid near 8x8, e.g. 8 at 64 px, 12 at 96 px (STL-10): attention costs grow with the square of the number of tokens.", min=1)


@dataclass
class TrainConfig:
    batch_size: int = opt(256, "Images per step, over all processes under torchrun (each of N takes batch_size / N), so the learning rate and the run do not change with N (SimCLR: 256-4096; small batches work with a lower temperature).", min=2)
    epochs: float | None = opt(None, "Budget in passes over the data. Exactly one of epochs, steps, minutes is used.", min=0.001)
    steps: int | None = opt(None, "Budget in optimizer steps.", min=1)
    minutes: float | None = opt(5.0, "Budget in wall-clock minutes: the step time is measured and the cosine schedule ends at the budget.", min=0.001)
    optimizer: str = opt("lars", "Optimizer: LARS (SimCLR's choice for large batches), SGD with momentum, or AdamW.", choices=["lars", "sgd", "adamw"])
    lr: float = opt(0.3, "Base learning rate for batch 256, scaled linearly with batch size (SimCLR: 0.3 x batch/256 with LARS).", min=0)
    weight_decay: float = opt(1e-6, "Weight decay (SimCLR with LARS: 1e-6; SGD: 5e-4; AdamW: 0.05).", min=0)
    momentum: float = opt(0.9, "Momentum for SGD and LARS.", min=0, max=1)
    lars_trust: float = opt(1e-3, "LARS trust coefficient eta: each weight tensor moves by lr x eta of its own norm a step (before momentum). SimCLR and BYOL: 1e-3 over 100k+ steps; solo-learn's CIFAR recipes: 0.02 with lr 0.3-1.0 for short runs. Only with optimizer lars.", min=1e-9)
    warmup_fraction: float = opt(0.05, "Share of the budget spent in linear learning-rate warm-up (SimCLR: 10 of 100+ epochs).", min=0, max=0.5)
    min_lr_fraction: float = opt(0.0, "Learning rate at the end of the cosine, as a fraction of the peak.", min=0, max=1)
    seed: int = opt(0, "Seed for initialization, data order and views.")
    device: str = opt("auto", "Device: auto (cuda if present), cpu, cuda, cuda:N.")
    precision: str = opt("auto", "auto: bf16 autocast where the hardware computes bf16 natively (a CUDA device with bf16; a CPU with AVX512-BF16 or AMX, e.g. AMD Zen 4, Intel Sapphire Rapids: 1.45-1.7x the images/s of fp32 on a 2-core Zen 4, docs/tuning.md), else fp32; or fp32; or bf16 (slow on CPUs that emulate it). Weights and losses stay fp32.", choices=["auto", "fp32", "bf16"])
    threads: int | None = opt(None, "CPU threads for PyTorch; None keeps PyTorch's default (one per core).", min=1)
    checkpoint_minutes: float = opt(5.0, "Write checkpoints/last.pt this often (and always at the end or on Ctrl-C).", min=0)
    log_every: int = opt(20, "Write a line to metrics.jsonl every N steps.", min=1)
    tensorboard: bool = opt(False, "Also log the training curves to RUN_DIR/tensorboard/ for TensorBoard (needs the optional tensorboard package: pip install -e '.[tensorboard]'); metrics.jsonl is written either way.")
    compile: bool = opt(False, "torch.compile the method (helps on GPU; slow to start on CPU).")
    sync_batchnorm: bool = opt(True, "Under torchrun: BatchNorm statistics over the global batch of all processes (SimCLR's global BN), so N processes train as one does on the whole batch; false: each process's own (faster on many GPUs; MoCo shuffles its own BN either way).")
    channels_last: bool = opt(True, "Keep conv weights in channels_last memory format (13% faster training here on the CPU; faster on recent GPUs too).")


@dataclass
class EvalConfig:
    labels: int = opt(200, "Labels in the few-label experiment, class-balanced (200 on 10 classes = 20 per class).", min=1)
    knn_k: int = opt(200, "Neighbours in the kNN monitor (Wu et al. 2018: k=200).", min=1)
    knn_temperature: float = opt(0.1, "Temperature of the kNN vote weights exp(sim/T) (Wu et al. 2018: 0.1).", min=1e-6)
    scratch_epochs: int = opt(100, "Epochs over the labelled images for the from-scratch supervised baseline.", min=1)
    random_init_all_labels: bool = opt(False, "Also run kNN and the all-label linear probe on the random-init backbone (the few-label baseline always runs); costs about a minute on Fashion-MNIST.")
    batch_size: int = opt(256, "Batch size for feature extraction (256 is faster than 1024 on a CPU: the activations stay in cache).", min=1)
    data: str | None = opt(None, "Evaluate on other data than the pretraining data (source name or image folder), e.g. a colorization encoder pretrained on colour photos, evaluated on fashion-mnist. None: the pretraining data. Channel counts may differ (grey images go to a colour encoder as R = G = B, colour to a grey one by luma); data.image_size and data.limit apply to it too, data.crops_per_image does not.")
    protocols: list = opt(["knn", "linear", "few-label", "clustering", "low-shot", "retrieval", "tsne"],
                          "Evaluations to run after pretraining (docs/evaluation.md), each beside the random-init "
                          "backbone: knn, linear (all labels), few-label (with the from-scratch baseline), clustering "
                          "(k-means accuracy/NMI/ARI, clusters.png), low-shot (linear SVMs on 1-16 labels per class), "
                          "retrieval (precision@k, retrieval.png), tsne (tsne.png), finetune (whole network on 1%/10%/"
                          "100% of the labels; minutes, so not on by default). Features are extracted once.",
                          choices=["knn", "linear", "few-label", "clustering", "low-shot", "retrieval", "tsne",
                                   "finetune"])
    cache_features: bool = opt(True, "Keep the extracted features in the run folder (features.safetensors, about 36 MB for Fashion-MNIST at 128 dims) so a later `selfsup eval` of the same encoder skips extraction.")
    lowshot_shots: list = opt([1, 2, 4, 8, 16], "Labels per class of the low-shot linear SVMs (Goyal et al. 2019 use 1, 2, 4, 8, 16, 32, 64, 96 on VOC07); counts a class has too few images for are left out with a note.")
    lowshot_draws: int = opt(5, "Random draws of the labelled images per shot count (Goyal et al. 2019: 5); mean and std over draws.", min=1)
    retrieval_ks: list = opt([1, 5, 10, 20], "k of precision@k in the retrieval protocol (test split, leave-one-out).")
    retrieval_queries: int = opt(10, "Query images pictured in retrieval.png (one per class, round-robin).", min=1)
    tsne_points: int = opt(2000, "Test images in the t-SNE map (a class-stratified seeded subset; t-SNE of 2000 x 128 features takes about 10 s).", min=5)
    finetune_fractions: list = opt([0.01, 0.1, 1.0], "Label fractions of the fine-tuning protocol, class-balanced and seeded (SimCLR's semi-supervised table: 1% and 10%).")
    finetune_steps: int = opt(1000, "Optimizer steps of each fine-tuning (per fraction and per init): a step budget, so the cost is the same whatever the fraction.", min=1)
    finetune_batch_size: int = opt(128, "Batch size of fine-tuning (smaller when a fraction has fewer images).", min=1)
    finetune_lr: float = opt(1e-3, "Peak AdamW learning rate of fine-tuning, for the pretrained and the random-init network alike (warm-up, then cosine).", min=0)


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "None")


_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def coerce(key: str, value: Any, f: dataclasses.Field, hints: dict[str, Any]) -> Any:
    """Check one value against a field's type and limits; returns the value converted, or raises SelfSupError."""
    tp = hints[f.name]
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if value is None:
        if type(None) in options:
            return None
        raise SelfSupError(f"config key '{key}' cannot be empty; give a {_type_name(tp)}")
    converted = _MISSING = object()
    for o in options:
        if o is type(None):
            continue
        base = typing.get_origin(o) or o
        if base is bool and isinstance(value, bool):
            converted = value
        elif base is int and isinstance(value, int) and not isinstance(value, bool):
            converted = value
        elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            converted = float(value)
        elif base is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            converted = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; a user means the number
        elif base is str and isinstance(value, str):
            converted = value
        elif base in (list, tuple) and isinstance(value, (list, tuple)):
            converted = base(value)
        elif base is list and isinstance(value, str):
            converted = [v for v in value.split(",") if v]
        if converted is not _MISSING:
            break
    if converted is _MISSING:
        raise SelfSupError(f"config key '{key}' must be {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    meta = f.metadata
    if "choices" in meta:
        items = converted if isinstance(converted, list) else [converted]
        for item in items:
            if item not in meta["choices"]:
                raise SelfSupError(f"config key '{key}' must be one of {', '.join(map(str, meta['choices']))}; got {item!r}")
    if isinstance(converted, (int, float)) and not isinstance(converted, bool):
        if "min" in meta and converted < meta["min"]:
            raise SelfSupError(f"config key '{key}' must be >= {meta['min']}, got {converted}")
        if "max" in meta and converted > meta["max"]:
            raise SelfSupError(f"config key '{key}' must be <= {meta['max']}, got {converted}")
    return converted


def build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a plain dict, rejecting unknown keys and checking types."""
    if not isinstance(values, dict):
        raise SelfSupError(f"config section '{prefix}' must be a mapping of keys to values, got {values!r}")
    fields = config_fields(cls)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SelfSupError(
            f"unknown config key '{prefix}.{unknown[0]}'; known keys in '{prefix}': {', '.join(fields)}"
        )
    kwargs = {}
    for k, v in values.items():
        if dataclasses.is_dataclass(hints[k]):
            kwargs[k] = build(hints[k], v, f"{prefix}.{k}")
        else:
            kwargs[k] = coerce(f"{prefix}.{k}", v, fields[k], hints)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=0.3' -> (['train', 'lr'], 0.3); the value is read as YAML so numbers, lists and null work."""
    if "=" not in text:
        raise SelfSupError(f"--set takes key=value (e.g. --set train.lr=0.3), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def merge(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SelfSupError(f"config key '{'.'.join(path)}' goes inside a value that is not a section")
    node[path[-1]] = value


def deep_update(target: dict, values: dict) -> None:
    """Merge `values` into `target`, descending into nested sections so a later layer changes one key at a time."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config tree as dotted keys: {"train": {"lr": 0.4}} -> {"train.lr": 0.4}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SelfSupError(f"config file {p} does not exist; give the path of a YAML file (see configs/ for examples)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise SelfSupError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SelfSupError(f"config file {p} must hold a mapping (section: {{key: value}}), not {type(data).__name__}")
    return data


SECTIONS = ("data", "views", "model", "method", "train", "eval")
PRESETS_DIR = Path(__file__).parent / "presets"


def presets() -> dict[str, Path]:
    """The named recipes shipped with selfsup (`--preset NAME`): name -> YAML file in selfsup/presets/."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def read_preset(name: str) -> dict:
    known = presets()
    if name not in known:
        raise SelfSupError(f"unknown preset '{name}'; known presets: {', '.join(known) or 'none'} "
                           f"(or give your own YAML file with --config)")
    return read_yaml(known[name])


BUDGET_KEYS = ("epochs", "steps", "minutes")


@dataclass
class Config:
    """The whole resolved configuration of a run; saved as config.yaml in the run folder."""

    data: DataConfig
    views: Any  # selfsup.views.recipes.ViewsConfig
    model: ModelConfig
    method: Any  # the chosen method's own config dataclass (a MethodConfig subclass)
    train: TrainConfig
    eval: EvalConfig


def load_config(tree: dict | None = None, overrides: list[str] = (), file: str | Path | None = None,
                preset: str | None = None) -> Config:
    """Resolve a Config from a preset, then a YAML file, then a dict (e.g. from CLI flags), then `--set` overrides.

    A preset is a whole recipe for one method. When a later layer names another method, the preset's method
    section (that method's own keys, e.g. a temperature) is left out; its data, views, model, train and eval
    settings still apply.
    """
    from selfsup.methods import METHODS
    from selfsup.methods.base import MethodConfig
    from selfsup.views.recipes import ViewsConfig

    merged: dict = {}
    layers = [read_yaml(file) if file else {}, tree or {}]
    over: dict = {}
    for text in overrides:
        path, value = parse_override(text)
        merge(over, path, value)
    layers.append(over)
    if preset is not None:
        base = read_preset(preset)
        named = [layer["method"]["name"] for layer in layers
                 if isinstance(layer.get("method"), dict) and layer["method"].get("name") is not None]
        if named and named[-1] != (base.get("method") or {}).get("name", MethodConfig.name):
            base = {k: v for k, v in base.items() if k != "method"}
        layers.insert(0, base)
    budget_given = None
    for layer in layers:
        unknown = sorted(set(layer) - set(SECTIONS))
        if unknown:
            raise SelfSupError(f"unknown config section '{unknown[0]}'; sections are: {', '.join(SECTIONS)}")
        for section, values in layer.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                raise SelfSupError(f"config section '{section}' must be a mapping of keys to values, got {values!r}")
            if section == "train" and any(values.get(k) is not None for k in BUDGET_KEYS):
                # A budget given in a later layer replaces the earlier one: one unit at a time.
                budget_given = {k: values.get(k) for k in BUDGET_KEYS}
            deep_update(merged.setdefault(section, {}), values)
    if budget_given is not None:
        merged["train"].update(budget_given)
    train = build(TrainConfig, merged.get("train", {}), "train")
    if sum(getattr(train, k) is not None for k in BUDGET_KEYS) != 1:
        raise SelfSupError("give exactly one training budget: train.epochs, train.steps or train.minutes (e.g. --minutes 5)")
    method_values = dict(merged.get("method", {}))
    name = method_values.get("name", MethodConfig.name)
    if name not in METHODS:
        raise SelfSupError(f"unknown method '{name}'; known methods: {', '.join(sorted(METHODS))} (see `selfsup methods`)")
    return Config(
        data=build(DataConfig, merged.get("data", {}), "data"),
        views=build(ViewsConfig, merged.get("views", {}), "views"),
        model=build(ModelConfig, merged.get("model", {}), "model"),
        method=build(METHODS[name].Config, method_values, "method"),
        train=train,
        eval=build(EvalConfig, merged.get("eval", {}), "eval"),
    )


def describe(cls: type, prefix: str) -> list[str]:
    """One line per field: key, default and help, for `selfsup config`."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lines += describe(hints[f.name], f"{prefix}.{f.name}")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {prefix}.{f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return lines
