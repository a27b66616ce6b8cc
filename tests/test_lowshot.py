"""Low-shot linear SVMs (Goyal et al. 2019): class-balanced seeded draws, and SVMs on features of known structure."""

import json

import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.evaluate.lowshot import COSTS, ONE_SHOT_COST, draw_low_shot, low_shot_svm, union_of_draws

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_classes(n_per_class: int, classes: int, dim: int, spread: float, seed: int, centre_seed: int = 0):
    """Features (n, dim) around fixed class centres (drawn from centre_seed) with noise drawn from seed."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(centre_seed)) * 2
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return centres[labels] + spread * noise, labels


def rows_of(features: torch.Tensor):
    return lambda idx: features[idx]


def test_draws_hold_exactly_k_images_of_every_class():
    labels = torch.arange(4).repeat_interleave(30)[torch.randperm(120, generator=torch.Generator().manual_seed(0))]
    draws = draw_low_shot(labels, [1, 2, 5], draws=3, seed=7)
    assert sorted(draws) == [1, 2, 5]
    for k, per_shot in draws.items():
        assert len(per_shot) == 3
        for idx in per_shot:
            assert idx.dtype == torch.long and len(idx.unique()) == len(idx) == 4 * k
            assert torch.bincount(labels[idx], minlength=4).tolist() == [k] * 4
            assert torch.equal(idx, idx.sort().values)


def test_draws_are_seeded_and_independent():
    labels = torch.arange(5).repeat(40)
    first = draw_low_shot(labels, [2, 4], draws=4, seed=3)
    again = draw_low_shot(labels, [4, 2], draws=4, seed=3)
    other = draw_low_shot(labels, [2, 4], draws=4, seed=4)
    for k in (2, 4):
        assert all(torch.equal(a, b) for a, b in zip(first[k], again[k]))
        assert not all(torch.equal(a, b) for a, b in zip(first[k], other[k]))
        # 4 of 40 images per class: two independent draws coincide with negligible probability.
        assert len({tuple(idx.tolist()) for idx in first[k]}) == 4
    # A draw depends on its own shot count only: asking for more shot counts leaves it as it was.
    alone = draw_low_shot(labels, [4], draws=4, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first[4], alone[4]))


def test_unknown_labels_are_never_drawn():
    labels = torch.tensor([-1, 0, 1, -1, 0, 1, -1, 0, 1, -1] * 5)
    draws = draw_low_shot(labels, [1, 3, 15], draws=5, seed=0)
    union = union_of_draws(draws)
    assert bool((labels[union] >= 0).all())
    # 15 shots take every labelled image of both classes.
    assert torch.equal(union, (labels >= 0).nonzero().flatten())


def test_union_of_draws_is_sorted_and_unique():
    draws = {1: [torch.tensor([5, 9]), torch.tensor([2, 9])], 2: [torch.tensor([1, 2, 5, 7])]}
    assert union_of_draws(draws).tolist() == [1, 2, 5, 7, 9]


def test_too_few_images_names_the_class_and_the_fix():
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 3)
    with pytest.raises(SelfSupError, match=r"class 2 has only 3.*eval\.lowshot_shots=\[1,2\]"):
        draw_low_shot(labels, [1, 2, 4, 8], draws=5, seed=0)


@pytest.mark.parametrize("shots, draws", [([], 5), ([0, 1], 5), ([2, 2], 5), ([1], 0)])
def test_bad_shot_counts_are_refused(shots, draws):
    with pytest.raises(SelfSupError):
        draw_low_shot(torch.arange(3).repeat(10), shots, draws=draws, seed=0)


def test_svm_separates_well_separated_clusters():
    train, train_y = gaussian_classes(30, 5, 16, 0.3, seed=1)
    test, test_y = gaussian_classes(100, 5, 16, 0.3, seed=2)
    draws = draw_low_shot(train_y, [1, 4, 8], draws=3, seed=0)
    out = low_shot_svm(rows_of(train), train_y, test, test_y, draws)
    for k in ("4", "8"):
        assert out["results"][k]["mean"] >= 0.99
    assert out["results"]["1"]["mean"] >= 0.9


def test_accuracy_rises_with_shots_on_noisy_clusters():
    train, train_y = gaussian_classes(40, 5, 16, 2.5, seed=1)
    test, test_y = gaussian_classes(200, 5, 16, 2.5, seed=2)
    draws = draw_low_shot(train_y, [1, 4, 16], draws=5, seed=0)
    res = low_shot_svm(rows_of(train), train_y, test, test_y, draws)["results"]
    means = [res[k]["mean"] for k in ("1", "4", "16")]
    assert 0.3 < means[0] < means[1] < means[2] < 0.999  # hard enough that shots matter, above chance (0.2)
    assert all(res[k]["std"] > 0 for k in ("1", "4", "16"))  # noisy data: the draws disagree


def test_pure_noise_features_score_near_chance():
    g = torch.Generator().manual_seed(5)
    train, train_y = torch.randn(200, 16, generator=g), torch.arange(4).repeat(50)
    test, test_y = torch.randn(2000, 16, generator=g), torch.randint(0, 4, (2000,), generator=g)
    draws = draw_low_shot(train_y, [1, 8], draws=5, seed=0)
    res = low_shot_svm(rows_of(train), train_y, test, test_y, draws)["results"]
    for k in ("1", "8"):
        assert abs(res[k]["mean"] - 0.25) < 0.05
        assert all(0.15 < r < 0.35 for r in res[k]["runs"])


def test_train_rows_is_asked_only_for_drawn_images():
    train, train_y = gaussian_classes(50, 3, 8, 1.0, seed=1)
    train_y = train_y.clone()
    train_y[::7] = -1  # unknown labels: features of these rows must never be needed
    test, test_y = gaussian_classes(20, 3, 8, 1.0, seed=2)
    draws = draw_low_shot(train_y, [1, 2, 4], draws=2, seed=0)
    asked = []

    def spy(idx):
        asked.append(idx.clone())
        return train[idx]

    low_shot_svm(spy, train_y, test, test_y, draws)
    drawn = set(union_of_draws(draws).tolist())
    assert asked and all(set(idx.tolist()) <= drawn for idx in asked)
    assert drawn <= set(torch.cat(asked).tolist())
    assert len(drawn) < 0.3 * len(train)


def test_schema_is_json_ready_and_one_shot_cost_is_fixed():
    train, train_y = gaussian_classes(20, 4, 8, 1.0, seed=1)
    test, test_y = gaussian_classes(20, 4, 8, 1.0, seed=2)
    test_y[:5] = -1  # unknown test labels are not scored
    draws = draw_low_shot(train_y, [1, 2, 4], draws=3, seed=0)
    out = low_shot_svm(rows_of(train), train_y, test, test_y, draws, seed=1)
    assert json.loads(json.dumps(out)) == out  # plain python types all the way down
    assert out["shots"] == [1, 2, 4] and out["draws"] == 3 and isinstance(out["classifier"], str)
    assert out["costs_grid"] == sorted(COSTS)
    assert sorted(out["results"]) == ["1", "2", "4"]
    for k, row in out["results"].items():
        assert set(row) == {"mean", "std", "runs", "costs", "cost_selection"}
        assert len(row["runs"]) == len(row["costs"]) == 3
        assert all(0 <= r <= 1 for r in row["runs"])
        assert row["mean"] == pytest.approx(sum(row["runs"]) / 3)
        assert row["std"] == pytest.approx(torch.tensor(row["runs"], dtype=torch.float64).std().item())
        # Every test image scored is one of the 75 labelled ones: accuracies are multiples of 1/75.
        assert all(abs(r * 75 - round(r * 75)) < 1e-9 for r in row["runs"])
    assert out["results"]["1"]["cost_selection"] == "fixed"
    assert out["results"]["1"]["costs"] == [ONE_SHOT_COST] * 3
    assert out["results"]["2"]["cost_selection"] == out["results"]["4"]["cost_selection"] == "cv"
    assert all(c in COSTS for k in ("2", "4") for c in out["results"][k]["costs"])


def test_results_are_deterministic_and_one_draw_has_zero_std():
    train, train_y = gaussian_classes(20, 3, 8, 2.0, seed=1)
    test, test_y = gaussian_classes(30, 3, 8, 2.0, seed=2)
    draws = draw_low_shot(train_y, [2, 5], draws=1, seed=0)
    first = low_shot_svm(rows_of(train), train_y, test, test_y, draws, seed=3)
    assert first == low_shot_svm(rows_of(train), train_y, test, test_y, draws, seed=3)
    assert first["results"]["2"]["std"] == 0.0 and first["draws"] == 1


def test_cross_validation_moves_off_a_cost_that_underfits():
    # The class is the sign of coordinate 0 (a small +-0.1), beside a large coordinate of pure noise. The tiniest
    # cost gives a nearest-class-mean rule, whose direction the noise coordinate's sampling error swamps (near
    # chance); a larger cost finds the separating direction. Cross-validation on the draw must see that.
    def two_classes(n, seed):
        labels = torch.arange(2).repeat(n // 2)
        x = torch.ones(n, 3)
        x[:, 0] = 0.1 * (2 * labels - 1)
        x[:, 1] = torch.randn(n, generator=torch.Generator().manual_seed(seed))
        return x, labels

    (train, train_y), (test, test_y) = two_classes(80, 0), two_classes(400, 1)
    draws = draw_low_shot(train_y, [10], draws=3, seed=0)
    tuned = low_shot_svm(rows_of(train), train_y, test, test_y, draws)["results"]["10"]
    smallest = low_shot_svm(rows_of(train), train_y, test, test_y, draws, costs=[min(COSTS)])["results"]["10"]
    assert tuned["cost_selection"] == "cv" and min(tuned["costs"]) >= 1.0
    assert smallest["mean"] < 0.7 and tuned["mean"] > 0.95


def test_mismatched_features_are_refused():
    train, train_y = gaussian_classes(5, 2, 8, 1.0, seed=1)
    test, test_y = gaussian_classes(5, 2, 8, 1.0, seed=2)
    draws = draw_low_shot(train_y, [2], draws=1, seed=0)
    with pytest.raises(SelfSupError, match="train_rows returned"):
        low_shot_svm(lambda idx: train[idx, :4], train_y, test, test_y, draws)
    with pytest.raises(SelfSupError, match="do not match"):
        low_shot_svm(rows_of(train), train_y, test, test_y[:3], draws)


def test_shot_counts_are_nested_within_a_draw():
    # Draw d of k shots holds draw d of every smaller shot count: the curve over shots adds labels, and the union
    # (the rows whose features are extracted) is no larger than the largest shot count's draws.
    labels = torch.arange(3).repeat(50)
    draws = draw_low_shot(labels, [1, 4, 16], draws=3, seed=2)
    for d in range(3):
        assert set(draws[1][d].tolist()) <= set(draws[4][d].tolist()) <= set(draws[16][d].tolist())
    assert len(union_of_draws(draws)) <= 3 * 16 * 3


def test_a_single_class_is_refused():
    with pytest.raises(SelfSupError, match="at least 2 classes"):
        draw_low_shot(torch.tensor([0] * 10 + [-1] * 10), [1], draws=1, seed=0)
