"""SeLa: equipartitioned pseudo-labels by Sinkhorn-Knopp at epoch starts, several heads, each image its own labels."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.cluster import hard_labels, sinkhorn
from selfsup.config import load_config
from selfsup.data import sources
from selfsup.evaluate.features import extract
from selfsup.run import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

N, K = 96, 6


def setup(seed: int = 0, **method):
    cfg = load_config({"data": {"name": "synthetic"}, "model": {"width": 4},
                       "method": {"name": "sela", "clusters": K, **method}})
    data = sources.load("synthetic", "train", n=N, seed=0, channels=1)
    m, _ = build_method(cfg, data)
    m.set_generator(torch.Generator().manual_seed(seed))
    return data, m


class Pixels(nn.Module):
    """A backbone whose features are the pixels: a head on them predicts differently for different images from
    the start (a random small CNN in eval mode, with BN's initial running statistics, gives nearly equal features)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def on_pixels(m, data):
    torch.manual_seed(0)
    m.backbone = Pixels(data.images[0].numel())
    m.heads = nn.ModuleList(nn.Linear(m.backbone.dim, K) for _ in m.heads)
    return extract(m.backbone, data.images, channels_last=False)  # (N, 784)


def test_first_labels_are_a_random_equipartition_per_head():
    data, m = setup(heads=3)
    assert m.uses_indices and not m.labelled
    m.on_epoch_start(0, data.images)
    assert m.labels.shape == (3, N) and m.labels.dtype == torch.long and "labels" in m.state_dict()
    for labels in m.labels:
        assert torch.equal(torch.bincount(labels, minlength=K), torch.full((K,), N // K))  # exactly N / K each
    assert not torch.equal(m.labels[0], m.labels[1])  # each head its own draw


def test_relabelling_is_sinkhorn_on_each_heads_log_probabilities():
    data, m = setup(heads=2, lam=10.0, sinkhorn_iterations=30)
    m.on_epoch_start(0, data.images)
    random_labels = m.labels.clone()
    m.on_epoch_start(1, data.images)
    features = extract(m.backbone, data.images, channels_last=False)
    for h, head in enumerate(m.heads):
        plan = sinkhorn(F.log_softmax(head(features), 1), epsilon=1 / 10.0, iterations=30)
        assert torch.equal(m.labels[h], hard_labels(plan))
    assert not torch.equal(m.labels, random_labels)
    assert m.backbone.training


def test_sinkhorn_labels_are_near_equipartitioned_where_the_heads_predictions_are_not():
    data, m = setup(heads=2, init="sinkhorn")
    features = on_pixels(m, data)
    raw = [torch.bincount(head(features).argmax(1), minlength=K) for head in m.heads]
    assert all(int(counts.max()) >= 2 * N // K for counts in raw)  # the heads alone favour some labels
    m.on_epoch_start(0, data.images)
    for labels in m.labels:
        counts = torch.bincount(labels, minlength=K)
        assert int(counts.min()) >= 0.75 * N / K and int(counts.max()) <= 1.25 * N / K, counts.tolist()
    _, logs = m.loss(data.images[:16], torch.arange(16))
    assert logs["clusters"] == K and logs["cluster_max_frac"] <= 1.25 / K
    assert logs["sinkhorn_col_err"] < 1e-3  # the plan's columns hold 1/K of the mass each


def test_relabel_every_keeps_the_labels_in_between():
    data, m = setup(relabel_every=2, init="sinkhorn")
    on_pixels(m, data)
    m.on_epoch_start(0, data.images)
    first = m.labels.clone()
    with torch.no_grad():
        for head in m.heads:
            head.weight.mul_(-1)  # other predictions, other labels when (and only when) it re-labels
    m.on_epoch_start(1, data.images)
    assert torch.equal(m.labels, first)
    m.on_epoch_start(2, data.images)
    assert not torch.equal(m.labels, first)
    _, logs = m.loss(data.images[:16], torch.arange(16))
    assert 0 <= logs["cluster_nmi"] <= 1 + 1e-9


def test_the_loss_is_the_heads_mean_cross_entropy_to_each_images_own_labels():
    data, m = setup(heads=3)
    m.on_epoch_start(0, data.images)
    indices = torch.tensor([5, 80, 17, 42, 3, 64, 29, 90])
    state = m.generator.get_state()
    loss, logs = m.loss(data.images[indices], indices)
    m.generator.set_state(state)  # the same views again
    (x,) = m.views(data.images[indices], m.generator)
    h = m.backbone(x)
    expected = torch.stack([F.cross_entropy(head(h), m.labels[i, indices]) for i, head in enumerate(m.heads)]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    m.generator.set_state(state)
    shifted, _ = m.loss(data.images[indices], indices.roll(1))
    assert shifted.item() != pytest.approx(loss.item(), rel=1e-6)
    assert "cluster_nmi" not in logs and logs["clusters"] == K


def test_more_labels_than_images_is_a_note_not_a_crash():
    cfg = load_config({"model": {"width": 4}, "method": {"name": "sela", "clusters": 500, "heads": 2}})
    data = sources.load("synthetic", "train", n=40, seed=0, channels=1)
    m, _ = build_method(cfg, data)
    assert m.k == 40 and all(head.out_features == 40 for head in m.heads) and any("500" in n for n in m.notes)
