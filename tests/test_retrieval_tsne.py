"""Retrieval (precision@k, leave-one-out neighbours, the neighbour picture) and t-SNE maps of known structure."""

import json

import pytest
import torch
from PIL import Image

from selfsup.errors import SelfSupError
from selfsup.evaluate import retrieval as retrieval_module
from selfsup.evaluate.retrieval import neighbours, pick_queries, precision_at_k, retrieval
from selfsup.evaluate.tsne import effective_perplexity, knn_2d_top1, pick_points, tsne, tsne_embed, tsne_png

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return torch.randn(classes, dim, generator=g)[labels] * 4 + spread * torch.randn(len(labels), dim, generator=g), \
        labels


def reference_precision(features: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Slow, from the definition: cosine to every other image, sort, count the same class in the top k."""
    unit = [row / row.norm() for row in features.double()]
    total = 0.0
    for i in range(len(unit)):
        others = sorted((j for j in range(len(unit)) if j != i), key=lambda j: -float(unit[i] @ unit[j]))
        total += sum(int(labels[j] == labels[i]) for j in others[:k]) / k
    return total / len(unit)


def test_precision_at_k_equals_the_reference_and_does_not_depend_on_the_chunk():
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g)
    got = precision_at_k(features, labels, ks=(1, 3, 7, 29))
    assert set(got) == {"1", "3", "7", "29"}
    for k in (1, 3, 7, 29):
        assert got[str(k)] == pytest.approx(reference_precision(features, labels, k), abs=1e-12)
    assert precision_at_k(features, labels, ks=(1, 3, 7, 29), chunk=7) == got
    # k = N - 1 takes every other image: the mean share of the query's class among the rest
    counts = torch.bincount(labels).double()
    assert got["29"] == pytest.approx(float(((counts[labels] - 1) / 29).mean()))


def test_precision_is_one_on_perfect_clusters_and_chance_on_noise():
    features, labels = blobs(25, 4, 16, 0.1, seed=1)
    assert precision_at_k(features, labels, ks=(1, 5, 24)) == {"1": 1.0, "5": 1.0, "24": 1.0}
    g = torch.Generator().manual_seed(2)
    noise, balanced = torch.randn(2000, 16, generator=g), torch.arange(4).repeat(500)
    for value in precision_at_k(noise, balanced, ks=(5, 20)).values():
        assert value == pytest.approx(0.25, abs=0.03)


def test_neighbours_never_include_the_query_even_beside_an_identical_image():
    features, _ = blobs(10, 3, 8, 0.5, seed=3)
    features[5] = features[4]  # a duplicate ties with the query itself
    queries = torch.tensor([0, 4, 5, 29])
    found = neighbours(features, queries, k=29)  # every other image
    assert found.shape == (4, 29)
    for query, row in zip(queries.tolist(), found.tolist()):
        assert query not in row and len(set(row)) == 29
    assert found[1, 0] == 5 and found[2, 0] == 4  # the twin is the nearest
    with pytest.raises(SelfSupError, match="k = 30 neighbours"):
        neighbours(features, queries, k=30)


def test_bad_input_is_refused_with_a_message():
    features, labels = blobs(5, 2, 4, 0.5, seed=0)
    with pytest.raises(SelfSupError, match="labelled -1"):
        precision_at_k(features, torch.cat([labels[:-1], torch.tensor([-1])]))
    with pytest.raises(SelfSupError, match="use 1 <= k <= 9"):
        precision_at_k(features, labels, ks=(1, 20))
    with pytest.raises(SelfSupError, match="NaN"):
        precision_at_k(features.index_fill(0, torch.tensor([2]), float("nan")), labels, ks=(1,))


def test_pick_queries_takes_the_classes_round_robin():
    labels = torch.tensor([2, 0, 1, 2, 0, 1, 2, 2, 1, 0, 2, 2])
    queries = pick_queries(labels, n=7, seed=0)
    assert labels[queries].tolist() == [0, 1, 2, 0, 1, 2, 0]  # every class, in class order
    assert len(set(queries.tolist())) == 7
    assert torch.equal(queries, pick_queries(labels, n=7, seed=0))
    assert not torch.equal(pick_queries(labels, n=12, seed=0), pick_queries(labels, n=12, seed=1))
    # more queries than images: every image once, the largest class last
    everything = pick_queries(labels, n=50, seed=0)
    assert sorted(everything.tolist()) == list(range(12)) and labels[everything[-3:]].tolist() == [2, 2, 2]
    assert labels[pick_queries(labels, n=2, seed=0)].tolist() == [0, 1]


def retrieval_data(seed: int = 0, channels: int = 1):
    """40 test images of 4 classes; the SSL features know the class, the random-init features are noise."""
    g = torch.Generator().manual_seed(seed)
    ssl, labels = blobs(10, 4, 8, 1.0, seed)
    random_init = torch.randn(40, 8, generator=g)
    images = (labels.view(40, 1, 1, 1) * 60 + torch.randint(0, 40, (40, channels, 12, 12), generator=g)).byte()
    return ssl, random_init, images, labels, ["disc", "square", "T-shirt/top", "ring"]


def test_retrieval_returns_the_schema_and_writes_a_picture(tmp_path):
    ssl, random_init, images, labels, names = retrieval_data()
    out = retrieval(ssl, random_init, images, labels, names, tmp_path, ks=(1, 5, 20, 100), n_queries=6, k_show=5)
    json.dumps(out)
    assert out["database"] == "test split, leave-one-out" and out["ks"] == [1, 5, 20]  # k = 100 > N - 1 dropped
    assert out["ssl"]["precision_at"] == {"1": 1.0, "5": 1.0, "20": pytest.approx(9 / 20)}  # 9 of a class
    assert set(out["random_init"]["precision_at"]) == {"1", "5", "20"}
    assert out["random_init"]["precision_at"]["5"] < 0.6
    assert len(out["queries"]) == 6 and labels[out["queries"]].tolist() == [0, 1, 2, 3, 0, 1]

    assert out["figure"] == "retrieval.png"
    with Image.open(tmp_path / "retrieval.png") as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
        image.load()
        rows = image.info["Description"].removeprefix("rows: ").split("; ")
    assert len(rows) == 6
    ssl_hits = (labels[neighbours(ssl, torch.tensor(out["queries"]), 5)] == labels[out["queries"], None]).sum(1)
    random_hits = (labels[neighbours(random_init, torch.tensor(out["queries"]), 5)]
                   == labels[out["queries"], None]).sum(1)
    for i, row in enumerate(rows):
        assert row == (f"query {i} (image {out['queries'][i]}): {names[int(labels[out['queries'][i]])]} / "
                       f"SSL {int(ssl_hits[i])}/5 / random init {int(random_hits[i])}/5")


def test_retrieval_draws_colour_images_and_keeps_the_numbers_when_the_figure_fails(tmp_path, monkeypatch):
    ssl, random_init, images, labels, names = retrieval_data(seed=1, channels=3)
    assert retrieval(ssl, random_init, images, labels, names, tmp_path, n_queries=3)["figure"] == "retrieval.png"
    with Image.open(tmp_path / "retrieval.png") as image:
        assert image.width > 0 and image.height > 0

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(retrieval_module, "retrieval_png", broken)
    said = []
    out = retrieval(ssl, random_init, images, labels, names, tmp_path / "other", log=said.append)
    assert out["figure"] is None and out["ssl"]["precision_at"]["1"] == 1.0
    assert said == ["note: retrieval.png skipped: OSError: disk full"]
    assert retrieval(ssl, random_init, images, labels, names, None)["figure"] is None


def test_tsne_separates_blobs_and_not_noise_and_draws_both(tmp_path):
    features, labels = blobs(30, 3, 16, 0.5, seed=4)
    noise = torch.randn(90, 16, generator=torch.Generator().manual_seed(5))
    out = tsne(features, noise, labels, ["a", "b", "c"], tmp_path, points=1000, seed=0, perplexity=10)
    json.dumps(out)
    assert out["points"] == 90 and out["perplexity"] == 10 and "note" not in out
    assert out["ssl"]["knn_2d_top1"] >= 0.95
    assert out["random_init"]["knn_2d_top1"] < 0.6  # chance is 1/3
    assert out["ssl"]["kl_divergence"] > 0 and out["random_init"]["kl_divergence"] > 0 and out["seconds"] > 0
    with Image.open(tmp_path / out["figure"]) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
        assert image.info["Description"] == "panels: SSL; random init; classes: a, b, c"


def test_tsne_embed_is_seeded_and_ignores_the_scale_of_a_feature():
    features, _ = blobs(8, 2, 6, 0.5, seed=6)
    xy, kl = tsne_embed(features, seed=3, perplexity=5)
    assert xy.shape == (16, 2) and kl >= 0
    assert torch.equal(xy, tsne_embed(features, seed=3, perplexity=5)[0])
    # Powers of two scale exactly, so the L2-normalized input, and with it the map, is the same to the last bit.
    scales = 2.0 ** torch.randint(-3, 4, (16, 1), generator=torch.Generator().manual_seed(0))
    assert torch.equal(xy, tsne_embed(features * scales, seed=3, perplexity=5)[0])


def test_tsne_png_draws_many_classes_without_a_legend(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(25).repeat(4)
    path = tsne_png(torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g), labels,
                    [f"class {c}" for c in range(25)], tmp_path / "many.png", title="25 classes")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
    with pytest.raises(SelfSupError, match="two maps"):
        tsne_png(torch.randn(100, 2), torch.randn(99, 2), labels, [], tmp_path / "bad.png")


def test_perplexity_is_clamped_for_few_points_and_too_few_points_are_refused():
    assert effective_perplexity(10, 30.0) == 3.0 and effective_perplexity(1000, 30.0) == 30.0
    features, labels = blobs(5, 2, 4, 0.5, seed=7)
    out = tsne(features, features.flip(0), labels, ["a", "b"], None, seed=0)
    assert out["perplexity"] == 3.0 and "clamped" in out["note"] and out["figure"] is None
    with pytest.raises(SelfSupError, match="at least 5 points"):
        tsne_embed(torch.randn(4, 8), seed=0)
    with pytest.raises(SelfSupError, match="at least 5 points"):
        tsne(features, features, labels, ["a", "b"], None, points=4)


def test_pick_points_is_stratified_and_seeded():
    labels = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2), torch.full((5,), -1)]).long()
    chosen = pick_points(labels, 100, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [60, 30, 10]  # in proportion to the classes, unknowns left out
    assert len(set(chosen.tolist())) == 100 and torch.equal(chosen, chosen.sort().values)
    assert torch.equal(chosen, pick_points(labels, 100, seed=0))
    assert not torch.equal(chosen, pick_points(labels, 100, seed=1))
    assert torch.bincount(labels[pick_points(labels, 7, seed=0)]).tolist() == [4, 2, 1]  # largest remainders
    assert len(pick_points(labels, 5000, seed=0)) == 1000


def test_knn_2d_top1_on_a_hand_built_map():
    # Two tight groups of 11 points of classes 0 and 1 far apart; one point of class 1 sits inside group 0.
    g = torch.Generator().manual_seed(0)
    xy = torch.cat([torch.randn(11, 2, generator=g) * 0.01, torch.randn(11, 2, generator=g) * 0.01 + 10])
    labels = torch.tensor([0] * 10 + [1] + [1] * 11)
    assert knn_2d_top1(xy, labels, k=10) == pytest.approx(21 / 22)  # only the stray point is outvoted
    # A 1-1 tie among the two nearest goes to the nearer one.
    line, classes = torch.tensor([[0.0, 0], [1, 0], [3, 0], [10, 0]]), torch.tensor([0, 0, 1, 1])
    assert knn_2d_top1(line, classes, k=2) == pytest.approx(3 / 4)
