"""The clustering evaluation: NMI, ARI and Hungarian accuracy on partitions with known scores, and the protocol."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup.config import EvalConfig, load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.evaluate.clustering import cluster_and_score, clustering_scores, contingency, hungarian_accuracy
from selfsup.evaluate.protocol import evaluate
from selfsup.nets.backbones import build_backbone
from selfsup.run import results_table

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_relabelled_partition_scores_one():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    renamed = torch.tensor([2, 0, 3, 1])[labels]  # the same groups under other numbers
    scores = clustering_scores(labels, renamed)
    assert scores == pytest.approx({"nmi": 1.0, "ari": 1.0, "accuracy": 1.0})


def test_scores_of_a_constructed_partition_equal_the_hand_computed_values():
    # Six images of two classes; cluster 0 holds two of class 0, cluster 1 one of class 0 and three of class 1.
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clusters = torch.tensor([0, 0, 1, 1, 1, 1])
    assert contingency(labels, clusters).tolist() == [[2, 0], [1, 3]]
    scores = clustering_scores(labels, clusters)
    # accuracy: cluster 0 -> class 0 (2 right), cluster 1 -> class 1 (3 right): 5 of 6.
    assert scores["accuracy"] == pytest.approx(5 / 6)
    # ARI from pair counts: pairs within cells C(2,2) + C(3,2) = 4; within clusters C(2,2) + C(4,2) = 7; within
    # classes 2 C(3,2) = 6; all pairs C(6,2) = 15; expected 7 * 6 / 15 = 2.8; maximum (7 + 6) / 2 = 6.5.
    assert scores["ari"] == pytest.approx((4 - 2.8) / (6.5 - 2.8))
    # NMI = I / mean(H(classes), H(clusters)), natural logs, p(class, cluster) from the counts over 6.
    mutual = 2 / 6 * math.log((2 / 6) / (3 / 6 * 2 / 6)) + 1 / 6 * math.log((1 / 6) / (3 / 6 * 4 / 6)) \
        + 3 / 6 * math.log((3 / 6) / (3 / 6 * 4 / 6))
    h_classes = math.log(2)
    h_clusters = -(2 / 6 * math.log(2 / 6) + 4 / 6 * math.log(4 / 6))
    assert scores["nmi"] == pytest.approx(mutual / ((h_classes + h_clusters) / 2))


def test_hungarian_matching_is_one_to_one():
    # Three clusters, two classes: two clusters of class 0 cannot both be renamed to it.
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    clusters = torch.tensor([0, 0, 1, 1, 2, 2])
    assert hungarian_accuracy(labels, clusters) == pytest.approx(4 / 6)
    # Majority voting (many clusters to one class) would score 7/8 here; one to one, cluster 1 takes class 1 and
    # cluster 2 class 0, and cluster 0, mostly class 1 too, is left unmatched: 3 + 2 of 8.
    labels = torch.tensor([1, 1, 0, 1, 1, 1, 0, 0])
    clusters = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    assert hungarian_accuracy(labels, clusters) == pytest.approx(5 / 8)


def test_unknown_labels_are_refused():
    with pytest.raises(SelfSupError, match="labelled -1"):
        clustering_scores(torch.tensor([0, -1]), torch.tensor([0, 1]))


def test_kmeans_on_separated_features_finds_the_classes():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(40)
    features = torch.randn(6, 32, generator=g)[labels] * 4 + torch.randn(240, 32, generator=g)
    scores, result = cluster_and_score(features, labels, 6, seed=0)
    assert scores["accuracy"] == 1.0 and scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)
    assert scores["k"] == 6 and scores["metric"] == "cosine" and scores["inertia"] == pytest.approx(result.inertia)


def test_collapsed_features_score_zero():
    # Every image on one point (a collapsed representation): one cluster holds all, the rest stay empty.
    labels = torch.arange(10).repeat(20)
    scores, result = cluster_and_score(torch.ones(200, 8), labels, 10, seed=0)
    assert scores["nmi"] == pytest.approx(0.0, abs=1e-12) and scores["ari"] == pytest.approx(0.0, abs=1e-12)
    assert scores["accuracy"] == pytest.approx(20 / 200)  # the one cluster matches one class of 20 images
    assert result.iterations < 10  # gives up on splitting identical points instead of running every iteration


def tiny_backbone():
    return build_backbone("small-cnn", 1, width=4)


def test_the_protocol_writes_clustering_results_and_the_cluster_picture(tmp_path):
    train = sources.load("synthetic", "train", n=60, seed=0)
    test = sources.load("synthetic", "test", n=80, seed=0)
    torch.manual_seed(1)
    said = []
    result = evaluate(tiny_backbone(), tiny_backbone, train, test, EvalConfig(protocols=["clustering"]), seed=0,
                      device=torch.device("cpu"), run_dir=tmp_path, log=said.append)
    clustering = result["clustering"]
    assert set(result) >= {"clustering", "seconds"} and "knn" not in result and "few_label" not in result
    assert clustering["split"] == "test" and clustering["k"] == 10
    for scores in (clustering, clustering["random_init"]):
        assert 0 <= scores["nmi"] <= 1 and -1 <= scores["ari"] <= 1 and 0.1 <= scores["accuracy"] <= 1
    assert "clustering" in result["seconds"] and any("k-means clustering" in line for line in said)
    json.dumps(result)  # eval.json must be able to hold it

    png = tmp_path / clustering["figure"]
    with Image.open(png) as image:
        assert image.format == "PNG"
        rows = image.info["Description"].removeprefix("rows: ").split("; ")
    # one row per non-empty cluster, at most 10, largest first, each naming a class of the source and its share
    assert 1 <= len(rows) <= 10
    sizes = [int(row.split(", ")[1].split(" ")[0]) for row in rows]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) <= 80
    assert all(any(f"\n{name}: " in row for name in test.classes) and row.endswith("%") for row in rows)

    table = results_table(load_config({"data": {"name": "synthetic"}}), result, Path(tmp_path))
    assert "k-means accuracy / NMI / ARI" in table
    assert f"{100 * clustering['accuracy']:.1f}% / {clustering['nmi']:.3f} / {clustering['ari']:.3f}" in table
    assert f"{100 * clustering['random_init']['accuracy']:.1f}%" in table


def test_the_protocol_skips_clustering_with_fewer_test_images_than_classes():
    train = sources.load("synthetic", "train", n=30, seed=0)
    test = sources.load("synthetic", "test", n=6, seed=0)
    said = []
    result = evaluate(tiny_backbone(), tiny_backbone, train, test, EvalConfig(protocols=["clustering"]), seed=0,
                      device=torch.device("cpu"), log=said.append)
    assert "skipped" in result["clustering"] and "cannot form 10 clusters" in said[-1]


def test_clustering_is_a_default_protocol():
    assert "clustering" in EvalConfig().protocols
    assert load_config(overrides=["eval.protocols=[knn,clustering]"]).eval.protocols == ["knn", "clustering"]
