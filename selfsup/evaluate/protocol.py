"""The evaluation protocols of a run: on the frozen backbone kNN, linear probe, k-means clustering, the few-label
experiment, low-shot linear SVMs, nearest-neighbour retrieval and t-SNE; on a copy of it, fine-tuning. Every
protocol is measured beside the same architecture at random init, in the same run.

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
from selfsup.evaluate.cache import CACHE_FILE, FeatureStore
from selfsup.evaluate.clustering import cluster_and_score, largest_clusters_png
from selfsup.evaluate.finetune import finetune
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.lowshot import draw_low_shot, low_shot_svm, union_of_draws
from selfsup.evaluate.retrieval import retrieval
from selfsup.evaluate.tsne import tsne
from selfsup.report.figures import optional_figure
from selfsup.evaluate.supervised import classifier_accuracy, train_from_scratch

PROTOCOLS = ("knn", "linear", "few-label", "clustering", "low-shot", "retrieval", "tsne", "finetune")
TSNE_MIN_POINTS = 5  # fewer points make no t-SNE map (evaluate/tsne.py)


def evaluate(backbone: nn.Module, fresh_backbone: Callable[[], nn.Module], train: ImageSet, test: ImageSet,
             cfg: EvalConfig, seed: int, device: torch.device, run_dir: str | Path | None = None,
             log: Callable[[str], None] = print, encoder_file: str | Path | None = None) -> dict:
    """Run cfg.protocols on `backbone`; `fresh_backbone()` builds the same architecture with random weights.

    With run_dir and encoder_file (the file the backbone was loaded from) and eval.cache_features, the features
    are kept in run_dir/features.safetensors and reused by the next evaluation of the same encoder (evaluate/cache.py).
    """
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
    protocols = set(cfg.protocols)
    t0 = time.perf_counter()
    store = FeatureStore(backbone, fresh_backbone, train.images, train.labels, test.images, test.labels, seed,
                         cfg.batch_size, device, run_dir if cfg.cache_features else None, encoder_file, log)
    # The random-init baseline: same architecture, weights drawn under the run's seed, frozen like the SSL one.
    # Its training features are needed for the few-label split only, unless the all-label rows are asked for too.
    few_split = few_label_split(train.labels, cfg.labels, seed) if "few-label" in protocols else None
    all_labels = bool(protocols & {"knn", "linear"}) and (cfg.random_init_all_labels or few_split is None
                                                          or store.has("random_train"))
    needs_train = bool(protocols & {"knn", "linear", "few-label", "low-shot"})
    train_f = store.ssl("train") if needs_train else None
    test_f = store.ssl("test")
    random_test_f = store.random("test")
    random_train_f = store.random("train") if all_labels else None
    store.save()  # the only sets the store keeps are these four; later protocols extract rows, not sets
    if store.loaded:
        log(f"features: reused {', '.join(store.loaded)} from {CACHE_FILE}")
    result["seconds"]["features"] = round(time.perf_counter() - t0, 2)

    if "knn" in protocols:
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

    if "linear" in protocols:
        t0 = time.perf_counter()
        result["linear"] = linear_probe(train_f, train.labels, test_f, test.labels, num_classes, seed=seed)
        message = f"linear probe, all {len(train)} labels, top-1: SSL {result['linear']['top1']:.4f}"
        if all_labels:
            random = linear_probe(random_train_f, train.labels, random_test_f, test.labels, num_classes, seed=seed)
            result["linear"].update(random_init_top1=random["top1"], random_init=random)
            message += f", random init {random['top1']:.4f}"
        result["seconds"]["linear"] = round(time.perf_counter() - t0, 2)
        log(message)

    if "clustering" in protocols:
        t0 = time.perf_counter()
        result["clustering"] = clustering(test_f, random_test_f, test, num_classes, seed, run_dir, log)
        result["seconds"]["clustering"] = round(time.perf_counter() - t0, 2)

    if "few-label" in protocols:
        t0 = time.perf_counter()
        result["few_label"] = few_label(few_split, (train_f[few_split], test_f),
                                        (store.random_rows(few_split), random_test_f),
                                        fresh_backbone, train, test, num_classes, cfg, seed, device, run_dir, log)
        result["seconds"]["few_label"] = round(time.perf_counter() - t0, 2)

    if "low-shot" in protocols:
        t0 = time.perf_counter()
        result["low_shot"] = low_shot(store, train_f, train, test_f, random_test_f, test, cfg, seed, log)
        result["seconds"]["low_shot"] = round(time.perf_counter() - t0, 2)

    if "retrieval" in protocols and len(test) < 2:
        log(f"retrieval skipped: {len(test)} test image(s) cannot retrieve one another")
        result["retrieval"] = {"skipped": f"{len(test)} test images"}
    elif "retrieval" in protocols:
        t0 = time.perf_counter()
        result["retrieval"] = retrieval(test_f, random_test_f, test.images, test.labels, test.classes, run_dir,
                                        ks=cfg.retrieval_ks, n_queries=cfg.retrieval_queries, seed=seed, log=log)
        ssl_p, random_p = result["retrieval"]["ssl"]["precision_at"], result["retrieval"]["random_init"]["precision_at"]
        log("retrieval (test split, leave-one-out) precision@k: "
            + ", ".join(f"@{k} SSL {ssl_p[k]:.4f} / random init {random_p[k]:.4f}" for k in ssl_p))
        result["seconds"]["retrieval"] = round(time.perf_counter() - t0, 2)

    if "tsne" in protocols and len(test) < TSNE_MIN_POINTS:
        log(f"t-SNE skipped: {len(test)} test images make no map (it needs {TSNE_MIN_POINTS})")
        result["tsne"] = {"skipped": f"{len(test)} test images"}
    elif "tsne" in protocols:
        t0 = time.perf_counter()
        result["tsne"] = tsne(test_f, random_test_f, test.labels, test.classes, run_dir, points=cfg.tsne_points,
                              seed=seed, log=log)
        ssl_2d, random_2d = result["tsne"]["ssl"]["knn_2d_top1"], result["tsne"]["random_init"]["knn_2d_top1"]
        log(f"t-SNE of {result['tsne']['points']} test images: 10-NN accuracy of the 2-d map SSL {ssl_2d:.4f}, "
            f"random init {random_2d:.4f}")
        result["seconds"]["tsne"] = round(time.perf_counter() - t0, 2)

    if "finetune" in protocols:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        result["finetune"] = finetune(backbone, fresh_backbone, train.images, train.labels, test.images, test.labels,
                                      num_classes, fractions=cfg.finetune_fractions, steps=cfg.finetune_steps,
                                      batch_size=cfg.finetune_batch_size, lr=cfg.finetune_lr, seed=seed,
                                      device=device, log=log)
        result["seconds"]["finetune"] = round(time.perf_counter() - t0, 2)
    return result


def usable_shots(labels: torch.Tensor, shots: list[int]) -> list[int]:
    """The shot counts every class has enough images for (labels (N,) of the labelled training images)."""
    counts = torch.bincount(labels[labels >= 0])
    fewest = int(counts[counts > 0].min())
    return [k for k in shots if k <= fewest]


def low_shot(store: FeatureStore, train_f: torch.Tensor, train: ImageSet, test_f: torch.Tensor,
             random_test_f: torch.Tensor, test: ImageSet, cfg: EvalConfig, seed: int,
             log: Callable[[str], None]) -> dict:
    """Goyal et al.'s low-shot linear SVMs on the SSL and the random-init features, on the same draws."""
    shots = usable_shots(train.labels, list(cfg.lowshot_shots))
    dropped = [k for k in cfg.lowshot_shots if k not in shots]
    if not shots:
        log("low-shot skipped: a class has fewer training images than the smallest shot count "
            f"{min(cfg.lowshot_shots)}")
        return {"skipped": "too few images per class"}
    if dropped:
        log(f"note: low-shot without {', '.join(map(str, dropped))} shots: a class has fewer training images")
    draws = draw_low_shot(train.labels, shots, cfg.lowshot_draws, seed)
    rows = union_of_draws(draws)  # (M,) every training row some draw uses
    position = torch.full((len(train),), -1, dtype=torch.long)
    position[rows] = torch.arange(len(rows))
    random_rows = store.random_rows(rows)  # (M, D): only the rows the draws use

    ssl = low_shot_svm(lambda idx: train_f[idx], train.labels, test_f, test.labels, draws, seed=seed)
    random = low_shot_svm(lambda idx: random_rows[position[idx]], train.labels, random_test_f, test.labels, draws,
                          seed=seed)
    out = {k: v for k, v in ssl.items() if k not in ("results", "fits", "unconverged_fits")}
    out.update(ssl={k: ssl[k] for k in ("results", "fits", "unconverged_fits")},
               random_init={k: random[k] for k in ("results", "fits", "unconverged_fits")})
    stopped = ssl["unconverged_fits"] + random["unconverged_fits"]
    if stopped:
        log(f"note: low-shot: {stopped} of {ssl['fits'] + random['fits']} SVM fits stopped at liblinear's iteration "
            "cap before its tolerance (large costs, nearly hard margins); their models are used as they are")
    if dropped:
        out["dropped_shots"] = dropped
    log("low-shot linear SVM (" + f"{cfg.lowshot_draws} draws) top-1, SSL / random init: " + ", ".join(
        f"{k}-shot {100 * ssl['results'][str(k)]['mean']:.1f}±{100 * ssl['results'][str(k)]['std']:.1f} / "
        f"{100 * random['results'][str(k)]['mean']:.1f}" for k in shots))
    return out


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
        out["figure"] = optional_figure("clusters.png", lambda: largest_clusters_png(
            test.images, test.labels, ssl_features, kmeans_result, test.classes, Path(run_dir) / "clusters.png",
            title=f"k-means on frozen SSL features of {len(test)} test images: largest clusters, "
                  "images nearest the centroid"), log)
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
