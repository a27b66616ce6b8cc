"""Fine-tuning with label fractions: the class-balanced fraction split, and fine-tuning a backbone whose features
already separate the classes beside the same architecture from random weights, on stripes of known classes."""

import copy
import json
import math

import pytest
import torch

from selfsup.data.splits import few_label_split
from selfsup.errors import SelfSupError
from selfsup.evaluate.finetune import finetune, fraction_split
from selfsup.evaluate.supervised import classifier_accuracy, train_from_scratch
from selfsup.nets.backbones import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def stripes(n_per_class: int, seed: int, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes of noisy sine stripes with a random phase: horizontal or vertical, period 4 or 8 px.

    Crops of 0.6-1 and horizontal flips keep every class what it is, so the augmentation cannot blur the task."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat(n_per_class)
    pos = torch.arange(side).float()
    period = torch.tensor([4.0, 4.0, 8.0, 8.0])[labels].view(-1, 1, 1)
    phase = torch.rand(len(labels), 1, 1, generator=g) * 2 * math.pi
    rows = torch.sin(2 * math.pi * pos.view(1, side, 1) / period + phase).expand(-1, side, side)
    cols = torch.sin(2 * math.pi * pos.view(1, 1, side) / period + phase).expand(-1, side, side)
    x = torch.where((labels % 2 == 1).view(-1, 1, 1), cols, rows) * 0.3 + 0.5
    x = x + 0.15 * torch.randn(len(labels), side, side, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).unsqueeze(1), labels  # (N, 1, side, side), (N,)


def tiny_backbone() -> torch.nn.Module:
    return build_backbone("small-cnn", 1, width=4)


@pytest.fixture(scope="module")
def task():
    """Training and test stripes, and a 'pretrained' backbone: one trained with every label, so its features
    separate the classes (what a good SSL encoder would give), whose head is then thrown away."""
    train_x, train_y = stripes(100, seed=0)
    test_x, test_y = stripes(50, seed=1)
    torch.manual_seed(0)
    classifier = train_from_scratch(tiny_backbone(), 4, train_x, train_y, epochs=3, seed=0, device=CPU,
                                    batch_size=32, lr=1e-2)
    assert classifier_accuracy(classifier, test_x, test_y, CPU) > 0.95
    return train_x, train_y, test_x, test_y, classifier[0]


def count_training_forwards(calls: list[bool]):
    """A forward hook that appends, for each forward pass in train mode, whether its output needs gradients (it
    does only when the weights train). A deep copy of the module shares the hook function, hence the list."""

    def hook(module, inputs, output):
        if module.training:
            calls.append(output.requires_grad)

    return hook


def quick_finetune(task, pretrained=None, fresh=tiny_backbone, **overrides) -> dict:
    train_x, train_y, test_x, test_y, backbone = task
    settings = dict(fractions=(0.01, 0.1), steps=20, batch_size=32, lr=3e-3, seed=0, log=lambda line: None)
    settings.update(overrides)
    return finetune(backbone if pretrained is None else pretrained, fresh, train_x, train_y, test_x, test_y, 4,
                    **settings)


def without_seconds(result: dict) -> dict:
    return {init: {key: {k: v for k, v in row.items() if k != "seconds"} for key, row in result[init].items()}
            for init in ("ssl", "random_init")}


# --- fraction_split ---------------------------------------------------------------------------------------------

def test_fraction_split_is_class_balanced_seeded_and_sized():
    labels = torch.arange(1100) % 10
    labels[::11] = -1  # 1000 labelled images, 100 per class; unknown labels are never chosen
    state = torch.get_rng_state()
    split = fraction_split(labels, 0.1, seed=0)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG is untouched"
    assert len(split) == 100 and split.dtype == torch.int64 and torch.equal(split, split.sort().values)
    assert len(split.unique()) == 100 and torch.bincount(labels[split]).tolist() == [10] * 10
    assert torch.equal(split, fraction_split(labels, 0.1, seed=0))
    assert not torch.equal(split, fraction_split(labels, 0.1, seed=1))
    # On balanced classes it is the few-label split of the same size: 0.2 of the labels = the 200-label split.
    assert torch.equal(fraction_split(labels, 0.2, seed=3), few_label_split(labels, 200, seed=3))
    # 2.5% = 25 labels: 2 or 3 per class; 0.1% rounds to 1 label, raised to one per class.
    assert len(fraction_split(labels, 0.025, seed=0)) == 25
    assert torch.bincount(labels[fraction_split(labels, 0.001, seed=0)]).tolist() == [1] * 10
    everything = fraction_split(labels, 1.0, seed=0)
    assert torch.equal(everything, (labels >= 0).nonzero().flatten())


def test_fraction_split_of_unequal_classes_fills_the_small_ones_first():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 6)
    # 25% of 96 = 24: an equal share is 8, class 2 has 6 and gives them all, the other two share 18.
    split = fraction_split(labels, 0.25, seed=0)
    assert torch.bincount(labels[split]).tolist() == [9, 9, 6]
    # 75% = 72: class 2 gives 6, then an equal 33 each is more than class 1's 30, so it gives all; class 0 takes 36.
    assert torch.bincount(labels[fraction_split(labels, 0.75, seed=0)]).tolist() == [36, 30, 6]
    assert torch.equal(fraction_split(labels, 1.0, seed=4), torch.arange(96))


def test_fraction_split_errors_name_the_fix():
    labels = torch.arange(100) % 10
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(SelfSupError, match=r"in \(0, 1\].*e\.g\. 0\.01"):
            fraction_split(labels, fraction, seed=0)
    with pytest.raises(SelfSupError, match="every label is -1"):
        fraction_split(torch.full((50,), -1), 0.5, seed=0)


# --- finetune ---------------------------------------------------------------------------------------------------

def test_pretrained_features_beat_random_init_with_one_label_per_class(task):
    lines = []
    result = quick_finetune(task, log=lines.append)
    ssl, random = result["ssl"]["0.01"], result["random_init"]["0.01"]
    assert ssl["labels"] == random["labels"] == 4  # 1% of 400: one image per class
    assert ssl["top1"] > 0.9 and ssl["top1"] - random["top1"] > 0.2
    assert ssl["epochs"] == random["epochs"] == 20.0  # 20 steps of 4 images (the batch shrinks to the split)
    assert result["ssl"]["0.1"]["labels"] == 40 and result["ssl"]["0.1"]["epochs"] == 16.0  # 20 * 32 / 40
    assert len(lines) == 2 and lines[0].startswith("fine-tune 1% (4 labels, 20 steps = 20.0 epochs): SSL ")
    assert f"SSL {ssl['top1']:.4f}, random init {random['top1']:.4f}" in lines[0]
    assert lines[1].startswith("fine-tune 10% (40 labels, 20 steps = 16.0 epochs)")


def test_result_is_json_ready_with_the_documented_schema(task):
    result = json.loads(json.dumps(quick_finetune(task, fractions=(0.1,), steps=3, lr=1e-3, weight_decay=1e-4)))
    assert result["fractions"] == [0.1] and result["steps"] == 3 and result["batch_size"] == 32
    assert result["lr"] == 1e-3 and result["weight_decay"] == 1e-4 and result["optimizer"] == "AdamW, warmup + cosine"
    for init in ("ssl", "random_init"):
        assert list(result[init]) == ["0.1"]
        row = result[init]["0.1"]
        assert set(row) == {"top1", "labels", "epochs", "seconds"}
        assert 0 <= row["top1"] <= 1 and row["labels"] == 40 and row["epochs"] == 2.4 and row["seconds"] > 0


def test_the_callers_module_is_unchanged_and_both_inits_train_every_step(task):
    backbone = copy.deepcopy(task[4])
    backbone.eval().requires_grad_(False)  # as an encoder comes back from feature extraction: frozen
    before = {k: v.clone() for k, v in backbone.state_dict().items()}  # weights and batch-norm statistics
    ssl_calls, fresh_calls = [], []
    handle = backbone.register_forward_hook(count_training_forwards(ssl_calls))

    def fresh():
        net = tiny_backbone()
        net.register_forward_hook(count_training_forwards(fresh_calls))
        return net

    try:
        quick_finetune(task, pretrained=backbone, fresh=fresh, steps=7)
    finally:
        handle.remove()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    # One training forward per optimizer step, 7 steps for each of the 2 fractions, for both inits alike; and
    # the copy of the frozen encoder was fine-tuned (its outputs carried gradients), not only its new head.
    assert len(ssl_calls) == len(fresh_calls) == 14
    assert all(ssl_calls) and all(fresh_calls)


def test_the_same_seed_gives_the_same_results(task):
    first = quick_finetune(task, steps=8)
    again = quick_finetune(task, steps=8)
    assert without_seconds(first) == without_seconds(again)


def test_finetune_refuses_bad_input(task):
    train_x, train_y, test_x, test_y, backbone = task
    cases = [
        (dict(fractions=(0.1, 0.1)), "distinct label fractions"),
        (dict(fractions=()), "distinct label fractions"),
        (dict(fractions=(2.0,)), r"in \(0, 1\]"),
        (dict(steps=0), "at least one step"),
    ]
    for overrides, message in cases:
        with pytest.raises(SelfSupError, match=message):
            quick_finetune(task, **overrides)
    with pytest.raises(SelfSupError, match="num_classes is 3"):
        finetune(backbone, tiny_backbone, train_x, train_y, test_x, test_y, 3, steps=1)
    with pytest.raises(SelfSupError, match="uint8 training images"):
        finetune(backbone, tiny_backbone, train_x.float(), train_y, test_x, test_y, 4, steps=1)
    with pytest.raises(SelfSupError, match="400 training images need 400 labels"):
        finetune(backbone, tiny_backbone, train_x, train_y[:10], test_x, test_y, 4, steps=1)
    with pytest.raises(SelfSupError, match="exposes .dim"):
        finetune(torch.nn.Conv2d(1, 4, 3), tiny_backbone, train_x, train_y, test_x, test_y, 4, steps=1)
