"""The evaluation protocols of a run, on a frozen backbone: kNN, linear probe, and the few-label experiment.

The few-label experiment (the lecture's CIFAR-10 set-up: pretrain on every unlabeled image, then learn from N
labels) always reports three numbers measured here, on the same split and the same test images:
  ssl                 linear probe on the pretrained, frozen backbone;
  random_init         the same probe on the same architecture with random weights, frozen;
  supervised_scratch  the same architecture trained end to end from scratch on the N labelled images.
Results go to eval.json; its schema is documented in docs/evaluation.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from selfsup.config import EvalConfig
from selfsup.data.sources import ImageSet
from selfsup.data.splits import few_label_split, save_split
from selfsup.errors import SelfSupError
from selfsup.evaluate.features import extract
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.supervised import classifier_accuracy, train_from_scratch

PROTOCOLS = ("knn", "linear", "few-label")


def evaluate(backbone: nn.Module, fresh_backbone: Callable[[], nn.Module], train: ImageSet, test: ImageSet,
             cfg: EvalConfig, seed: int, device: torch.device, run_dir: str | Path | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Run cfg.protocols on `backbone`; `fresh_backbone()` builds the same architecture with random weights."""
    unknown = [p for p in cfg.protocols if p not in PROTOCOLS]
    if unknown:
        raise SelfSupError(f"unknown evaluation protocol '{unknown[0]}'; known: {', '.join(PROTOCOLS)}")
    labelled = train.labels >= 0
    if not bool(labelled.any()) or not bool((test.labels >= 0).any()):
        log("evaluation skipped: the data has no labels (a flat folder); give a folder with one sub-folder per class")
        return {"schema": 1, "skipped": "no labels"}
    train = train.subset(labelled.nonzero().flatten())
    test = test.subset((test.labels >= 0).nonzero().flatten())
    num_classes = max(len(train.classes), int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    result: dict = {"schema": 1, "data": {"name": train.name, "train": len(train), "test": len(test),
                                          "classes": num_classes}, "seconds": {}}
    t0 = time.perf_counter()
    train_f = extract(backbone, train.images, cfg.batch_size, device)
    test_f = extract(backbone, test.images, cfg.batch_size, device)
    # The random-init baseline: same architecture, weights drawn under the run's seed, frozen like the SSL one.
    torch.manual_seed(seed)
    random_net = fresh_backbone()
    random_train_f = extract(random_net, train.images, cfg.batch_size, device)
    random_test_f = extract(random_net, test.images, cfg.batch_size, device)
    result["seconds"]["features"] = round(time.perf_counter() - t0, 2)

    if "knn" in cfg.protocols:
        t0 = time.perf_counter()
        args = (train.labels, test_f, test.labels, num_classes, cfg.knn_k, cfg.knn_temperature)
        top1 = knn_top1(train_f, *args)
        random_top1 = knn_top1(random_train_f, train.labels, random_test_f, *args[2:])
        result["knn"] = {"top1": top1, "random_init_top1": random_top1, "k": cfg.knn_k,
                         "temperature": cfg.knn_temperature}
        result["seconds"]["knn"] = round(time.perf_counter() - t0, 2)
        log(f"kNN (k={cfg.knn_k}) top-1: SSL {top1:.4f}, random init {random_top1:.4f}")

    if "linear" in cfg.protocols:
        t0 = time.perf_counter()
        ssl = linear_probe(train_f, train.labels, test_f, test.labels, num_classes, seed=seed)
        random = linear_probe(random_train_f, train.labels, random_test_f, test.labels, num_classes, seed=seed)
        result["linear"] = {**ssl, "random_init_top1": random["top1"], "random_init": random}
        result["seconds"]["linear"] = round(time.perf_counter() - t0, 2)
        log(f"linear probe, all {len(train)} labels, top-1: SSL {ssl['top1']:.4f}, random init {random['top1']:.4f}")

    if "few-label" in cfg.protocols:
        t0 = time.perf_counter()
        result["few_label"] = few_label((train_f, test_f), (random_train_f, random_test_f), fresh_backbone, train,
                                        test, num_classes, cfg, seed, device, run_dir, log)
        result["seconds"]["few_label"] = round(time.perf_counter() - t0, 2)
    return result


def few_label(ssl_features: tuple[torch.Tensor, torch.Tensor], random_features: tuple[torch.Tensor, torch.Tensor],
              fresh_backbone: Callable[[], nn.Module], train: ImageSet, test: ImageSet, num_classes: int,
              cfg: EvalConfig, seed: int, device: torch.device, run_dir: str | Path | None,
              log: Callable[[str], None]) -> dict:
    """The few-label experiment with both baselines; features are (train, test) pairs for all labelled images."""
    split = few_label_split(train.labels, cfg.labels, seed)
    split_file = None
    if run_dir is not None:
        split_file = "split.json"
        save_split(Path(run_dir) / split_file, split, {"labels": cfg.labels, "seed": seed, "data": train.name})
    y = train.labels[split]
    ssl = linear_probe(ssl_features[0][split], y, ssl_features[1], test.labels, num_classes, seed=seed)
    log(f"few-label ({cfg.labels} labels) SSL linear probe: {ssl['top1']:.4f}")
    random = linear_probe(random_features[0][split], y, random_features[1], test.labels, num_classes, seed=seed)
    log(f"few-label random-init linear probe: {random['top1']:.4f}")

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    scratch_net = train_from_scratch(fresh_backbone(), num_classes, train.images[split], y, cfg.scratch_epochs,
                                     seed, device)
    scratch = classifier_accuracy(scratch_net, test.images, test.labels, device, cfg.batch_size)
    seconds = time.perf_counter() - t0
    log(f"few-label supervised from scratch ({cfg.scratch_epochs} epochs, {seconds:.0f}s): {scratch:.4f}")
    return {
        "labels": int(cfg.labels), "seed": seed, "split_file": split_file,
        "ssl": ssl["top1"], "random_init": random["top1"], "supervised_scratch": scratch,
        "details": {"ssl": ssl, "random_init": random,
                    "supervised_scratch": {"epochs": cfg.scratch_epochs, "seconds": round(seconds, 2)}},
    }
