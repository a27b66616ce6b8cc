"""The evaluation protocols of a run, on a frozen backbone: kNN, linear probe, k-means clustering, and the
few-label experiment.

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
from selfsup.evaluate.clustering import cluster_and_score, largest_clusters_png
from selfsup.evaluate.features import extract
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.supervised import classifier_accuracy, train_from_scratch

PROTOCOLS = ("knn", "linear", "few-label", "clustering")


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
        return {"schema": 1, "skipped": "no labels", "seconds": {}}
    train = train.subset(labelled.nonzero().flatten())
    test = test.subset((test.labels >= 0).nonzero().flatten())
    num_classes = max(len(train.classes), int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    result: dict = {"schema": 1, "data": {"name": train.name, "train": len(train), "test": len(test),
                                          "classes": num_classes}, "seconds": {}}
    t0 = time.perf_counter()
    train_f = extract(backbone, train.images, cfg.batch_size, device)
    test_f = extract(backbone, test.images, cfg.batch_size, device)
    # The random-init baseline: same architecture, weights drawn under the run's seed, frozen like the SSL one.
    # Its features are needed for the few-label split only, unless the all-label rows are asked for too.
    torch.manual_seed(seed)
    random_net = fresh_backbone()
    few_split = few_label_split(train.labels, cfg.labels, seed) if "few-label" in cfg.protocols else None
    all_labels = cfg.random_init_all_labels or few_split is None
    random_train_f = extract(random_net, train.images if all_labels else train.images[few_split], cfg.batch_size, device)
    random_test_f = extract(random_net, test.images, cfg.batch_size, device)
    result["seconds"]["features"] = round(time.perf_counter() - t0, 2)

    if "knn" in cfg.protocols:
        t0 = time.perf_counter()
        top1 = knn_top1(train_f, train.labels, test_f, test.labels, num_classes, cfg.knn_k, cfg.knn_temperature)
        result["knn"] = {"top1": top1, "k": cfg.knn_k, "temperature": cfg.knn_temperature}
        message = f"kNN (k={cfg.knn_k}) top-1: SSL {top1:.4f}"
        if all_labels:
            result["knn"]["random_init_top1"] = knn_top1(random_train_f, train.labels, random_test_f, test.labels,
                                                         num_classes, cfg.knn_k, cfg.knn_temperature)
            message += f", random init {result['knn']['random_init_top1']:.4f}"
        result["seconds"]["knn"] = round(time.perf_counter() - t0, 2)
        log(message)

    if "linear" in cfg.protocols:
        t0 = time.perf_counter()
        result["linear"] = linear_probe(train_f, train.labels, test_f, test.labels, num_classes, seed=seed)
        message = f"linear probe, all {len(train)} labels, top-1: SSL {result['linear']['top1']:.4f}"
        if all_labels:
            random = linear_probe(random_train_f, train.labels, random_test_f, test.labels, num_classes, seed=seed)
            result["linear"].update(random_init_top1=random["top1"], random_init=random)
            message += f", random init {random['top1']:.4f}"
        result["seconds"]["linear"] = round(time.perf_counter() - t0, 2)
        log(message)

    if "clustering" in cfg.protocols:
        t0 = time.perf_counter()
        result["clustering"] = clustering(test_f, random_test_f, test, num_classes, seed, run_dir, log)
        result["seconds"]["clustering"] = round(time.perf_counter() - t0, 2)

    if "few-label" in cfg.protocols:
        t0 = time.perf_counter()
        random_split_f = random_train_f[few_split] if all_labels else random_train_f
        result["few_label"] = few_label(few_split, (train_f[few_split], test_f), (random_split_f, random_test_f),
                                        fresh_backbone, train, test, num_classes, cfg, seed, device, run_dir, log)
        result["seconds"]["few_label"] = round(time.perf_counter() - t0, 2)
    return result


def clustering(ssl_features: torch.Tensor, random_features: torch.Tensor, test: ImageSet, num_classes: int,
               seed: int, run_dir: str | Path | None, log: Callable[[str], None]) -> dict:
    """k-means with one cluster per class on the test split's SSL and random-init features, scored by the labels.

    The test split, because its random-init features are always extracted (the training split's only with
    eval.random_init_all_labels), so the baseline is always beside; k-means sees no labels, so nothing is fitted
    to the test labels. With run_dir, clusters.png pictures the largest SSL clusters.
    """
    if len(test) < num_classes:
        log(f"clustering skipped: {len(test)} test images cannot form {num_classes} clusters")
        return {"skipped": f"{len(test)} test images, {num_classes} classes"}
    ssl, kmeans_result = cluster_and_score(ssl_features, test.labels, num_classes, seed)
    random, _ = cluster_and_score(random_features, test.labels, num_classes, seed)
    out = {"split": "test", **ssl, "random_init": random, "figure": None}
    log(f"k-means clustering (k={num_classes}, test split): SSL accuracy {ssl['accuracy']:.4f}, NMI {ssl['nmi']:.4f}, "
        f"ARI {ssl['ari']:.4f}; random init accuracy {random['accuracy']:.4f}, NMI {random['nmi']:.4f}, "
        f"ARI {random['ari']:.4f}")
    if run_dir is not None:
        try:  # a picture is a bonus: a failure here must not cost the numbers
            largest_clusters_png(test.images, test.labels, ssl_features, kmeans_result, test.classes,
                                 Path(run_dir) / "clusters.png",
                                 title=f"k-means on frozen SSL features of {len(test)} test images: largest clusters, "
                                       "images nearest the centroid")
            out["figure"] = "clusters.png"
        except (RuntimeError, ValueError, OSError) as e:
            log(f"note: clusters.png skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return out


def few_label(split: torch.Tensor, ssl_features: tuple[torch.Tensor, torch.Tensor],
              random_features: tuple[torch.Tensor, torch.Tensor], fresh_backbone: Callable[[], nn.Module],
              train: ImageSet, test: ImageSet, num_classes: int, cfg: EvalConfig, seed: int, device: torch.device,
              run_dir: str | Path | None, log: Callable[[str], None]) -> dict:
    """The few-label experiment with both baselines; features are (split images, test images) pairs."""
    split_file = None
    if run_dir is not None:
        split_file = "split.json"
        save_split(Path(run_dir) / split_file, split, {"labels": cfg.labels, "seed": seed, "data": train.name})
    y = train.labels[split]
    ssl = linear_probe(ssl_features[0], y, ssl_features[1], test.labels, num_classes, seed=seed)
    log(f"few-label ({cfg.labels} labels) SSL linear probe: {ssl['top1']:.4f}")
    random = linear_probe(random_features[0], y, random_features[1], test.labels, num_classes, seed=seed)
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
