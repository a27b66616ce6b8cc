"""DeepCluster: pseudo-labels from k-means at each epoch start, the classifier reset, cluster-balanced weights."""

import json

import pytest
import torch
import torch.nn.functional as F

from selfsup.cluster import kmeans, pca_whiten
from selfsup.cluster.pseudolabels import balanced_weights, label_stats
from selfsup.config import load_config
from selfsup.data import sources
from selfsup.evaluate.features import extract
from selfsup.run import build_method
from selfsup.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

N, K = 96, 6


def setup(seed: int = 0, **method):
    cfg = load_config({"data": {"name": "synthetic"}, "model": {"width": 4},
                       "method": {"name": "deepcluster", "clusters": K, **method},
                       "train": {"batch_size": 16, "steps": 12, "log_every": 4, "optimizer": "sgd", "device": "cpu"}})
    data = sources.load("synthetic", "train", n=N, seed=0, channels=1)
    m, _ = build_method(cfg, data)
    m.set_generator(torch.Generator().manual_seed(seed))
    return cfg, data, m


def test_epoch_start_gives_every_image_the_k_means_cluster_of_its_whitened_features():
    _, data, m = setup()
    assert m.uses_indices and not m.clustered
    state = m.generator.get_state()
    m.on_epoch_start(0, data.images)
    assert m.labels.shape == (N,) and m.labels.dtype == torch.long and "labels" in m.state_dict()
    assert int(m.labels.min()) >= 0 and int(m.labels.max()) < K
    # The same pipeline by hand: eval-mode features of the unaugmented images, PCA-whitening, k-means from the
    # seed the method draws from its generator.
    g = torch.Generator()
    g.set_state(state)
    seed = int(torch.randint(2**31 - 1, (1,), generator=g))
    features = extract(m.backbone, data.images, channels_last=False)
    expected = kmeans(pca_whiten(features, 256), K, "euclidean", 20, seed=seed).assignments
    assert torch.equal(m.labels, expected)
    assert m.backbone.training  # eval mode for the features only


def test_the_classifier_is_a_fresh_draw_at_every_reclustering():
    _, data, m = setup()
    m.on_epoch_start(0, data.images)
    first = m.classifier.weight.detach().clone()
    assert float(m.classifier.bias.detach().abs().max()) == 0
    assert first.std().item() == pytest.approx(0.01, rel=0.15)  # the authors' N(0, 0.01)
    with torch.no_grad():  # as if the epoch had trained it
        m.classifier.weight.add_(1.0)
        m.classifier.bias.add_(1.0)
    m.on_epoch_start(1, data.images)
    second = m.classifier.weight.detach()
    assert float(m.classifier.bias.detach().abs().max()) == 0
    assert second.std().item() == pytest.approx(0.01, rel=0.15) and not torch.equal(second, first)


def test_recluster_every_keeps_the_clusters_and_the_classifier_in_between():
    _, data, m = setup(recluster_every=2)
    m.on_epoch_start(0, data.images)
    with torch.no_grad():
        m.classifier.weight.add_(1.0)
    labels, weight = m.labels.clone(), m.classifier.weight.detach().clone()
    m.on_epoch_start(1, data.images)
    assert torch.equal(m.labels, labels) and torch.equal(m.classifier.weight, weight)
    m.on_epoch_start(2, data.images)
    assert not torch.equal(m.classifier.weight, weight)


def test_balanced_weights_make_every_cluster_count_the_same():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])  # cluster 3 is empty: k' = 3 non-empty clusters
    w = balanced_weights(labels, 4)
    assert w.sum().item() == pytest.approx(7)  # sum N, mean 1
    for c in range(3):
        assert w[labels == c].sum().item() == pytest.approx(7 / 3)  # N / k' each
    # The expected weighted loss of a uniformly drawn image = the loss under the paper's sampler (a cluster
    # uniformly, then an image in it): the mean over clusters of each cluster's mean loss.
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 7.0])
    per_cluster = torch.stack([losses[labels == c].mean() for c in range(3)]).mean()
    assert (w * losses).mean().item() == pytest.approx(per_cluster.item())


def test_the_methods_weights_follow_its_clusters():
    _, data, m = setup()
    m.on_epoch_start(0, data.images)
    assert m.weights.sum().item() == pytest.approx(N, rel=1e-5)
    assert torch.allclose(m.weights, balanced_weights(m.labels, K))
    _, _, plain = setup(balance="none")
    plain.on_epoch_start(0, data.images)
    assert torch.equal(plain.weights, torch.ones(N))


def test_the_loss_is_each_images_weighted_cross_entropy_to_its_own_pseudo_label():
    _, data, m = setup()
    m.on_epoch_start(0, data.images)
    indices = torch.tensor([5, 80, 17, 42, 3, 64, 29, 90])
    state = m.generator.get_state()
    loss, logs = m.loss(data.images[indices], indices)
    m.generator.set_state(state)  # the same views again
    (x,) = m.views(data.images[indices], m.generator)
    logits = m.classifier(m.backbone(x))
    own = m.labels[indices]
    expected = (m.weights[indices] * F.cross_entropy(logits, own, reduction="none")).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["pretext_acc"] == pytest.approx((logits.argmax(1) == own).float().mean().item())
    # Someone else's labels give another loss: the indices are what ties an image to its label.
    m.generator.set_state(state)
    shifted, _ = m.loss(data.images[indices], indices.roll(1))
    assert shifted.item() != pytest.approx(loss.item(), rel=1e-6)


def test_logs_describe_the_clustering_and_its_stability():
    _, data, m = setup()
    m.on_epoch_start(0, data.images)
    _, logs = m.loss(data.images[:16], torch.arange(16))
    assert "cluster_nmi" not in logs  # nothing to compare the first clustering with
    assert 1 <= logs["clusters"] <= K and logs["clusters"] == len(m.labels.unique())
    assert logs["cluster_max_frac"] == pytest.approx(torch.bincount(m.labels).max().item() / N)
    previous = m.labels.clone()
    m.on_epoch_start(1, data.images)
    _, logs = m.loss(data.images[:16], torch.arange(16))
    expected = label_stats(m.labels, K, previous)
    assert logs["cluster_nmi"] == pytest.approx(expected["cluster_nmi"])
    assert logs["cluster_nmi_chance"] == pytest.approx(expected["cluster_nmi_chance"])
    assert 0 <= logs["cluster_nmi"] <= 1 + 1e-9


def test_label_stats_nmi_is_one_for_a_renumbering_and_near_chance_for_an_unrelated_labelling():
    a = torch.arange(600) % 6
    renumbered = label_stats((a + 2) % 6, 6, a)
    assert renumbered["cluster_nmi"] == pytest.approx(1.0) and renumbered["cluster_nmi_chance"] < 0.05
    assert label_stats(torch.arange(600) // 100, 6, a)["cluster_nmi"] < 0.05
    stats = label_stats(torch.tensor([0, 0, 0, 2]), 4)
    assert stats == {"clusters": 2.0, "cluster_max_frac": 0.75}


def test_more_clusters_than_images_is_a_note_not_a_crash():
    cfg = load_config({"model": {"width": 4}, "method": {"name": "deepcluster", "clusters": 500}})
    data = sources.load("synthetic", "train", n=40, seed=0, channels=1)
    m, _ = build_method(cfg, data)
    assert m.k == 40 and m.classifier.out_features == 40 and any("500" in note for note in m.notes)


def test_training_logs_the_clustering_each_epoch(tmp_path):
    cfg, data, m = setup()  # 96 images / 16 = 6 steps an epoch; 12 steps, a metrics row every 4
    calls = []
    original = m.on_epoch_start
    m.on_epoch_start = lambda epoch, images: (calls.append(epoch), original(epoch, images))
    train(m, data.images, cfg.train, tmp_path, progress=False)
    assert calls == [0, 1]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert all(r["clusters"] >= 1 and 0 < r["cluster_max_frac"] <= 1 for r in rows)
    assert "cluster_nmi" not in rows[0]
    # Row 8 averages steps 5-8, of which only 7 and 8 (epoch 1) have an NMI: its value, not half of it.
    assert rows[1]["cluster_nmi"] == pytest.approx(float(m.stats[3]))
    assert rows[2]["cluster_nmi"] == pytest.approx(rows[1]["cluster_nmi"])
