"""NPID: the NCE loss against the paper's formula, the memory bank, the method's use of indices, the bank kNN."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.evaluate.knn import knn_top1
from selfsup.losses import npid_nce
from selfsup.nets.memory_bank import MemoryBank
from selfsup.run import build_method
from selfsup.train import train


def nce_reference(positive, negatives, tau, n, z):
    """Wu et al. 2018, eqs. 3-6, one image and one noise sample at a time, in float64."""
    m = negatives.shape[1]
    total = 0.0
    for i in range(positive.shape[0]):
        p = math.exp(positive[i].item() / tau) / z
        loss = -math.log(p / (p + m / n))  # -log h(i, f)
        for j in range(m):
            q = math.exp(negatives[i, j].item() / tau) / z
            loss -= math.log(1 - q / (q + m / n))  # -log(1 - h(j, f))
        total += loss
    return total / positive.shape[0]


@pytest.mark.parametrize("b,m,tau,n", [(1, 1, 0.07, 10), (4, 16, 0.07, 1000), (8, 5, 0.5, 60000), (3, 64, 0.2, 64)])
def test_nce_matches_the_papers_formula(b, m, tau, n):
    g = torch.Generator().manual_seed(b * m)
    positive = torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1
    negatives = torch.rand(b, m, generator=g, dtype=torch.float64) * 2 - 1
    z = n * float(torch.exp(negatives / tau).mean())  # the Monte Carlo estimate the method makes
    got = npid_nce(positive, negatives, tau, n, math.log(z))
    assert got.item() == pytest.approx(nce_reference(positive, negatives, tau, n, z), rel=1e-5)


def test_nce_does_not_depend_on_the_order_of_the_noise():
    positive, negatives = torch.rand(4), torch.rand(4, 32)
    shuffled = negatives[:, torch.randperm(32)]
    assert torch.allclose(npid_nce(positive, negatives, 0.07, 100, 3.0), npid_nce(positive, shuffled, 0.07, 100, 3.0))


def test_bank_update_is_the_papers_momentum_rule_on_the_given_rows_only():
    torch.manual_seed(0)
    bank = MemoryBank(10, 4, momentum=0.5)
    before = bank.features.clone()
    rows, f = torch.tensor([7, 2]), torch.randn(2, 4)
    bank.update(rows, f)
    expected = F.normalize(0.5 * before[rows] + 0.5 * F.normalize(f, dim=1), dim=1)
    assert torch.allclose(bank.features[rows], expected)
    untouched = [i for i in range(10) if i not in (7, 2)]
    assert torch.equal(bank.features[untouched], before[untouched])
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(10))
    with pytest.raises(ValueError, match="update takes"):
        bank.update(rows, torch.randn(3, 4))


def test_bank_sampling_is_uniform_seeded_and_in_range():
    bank = MemoryBank(5, 2)
    a = bank.sample(3, 2000, torch.Generator().manual_seed(1))
    b = bank.sample(3, 2000, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 2000) and a.min() == 0 and a.max() == 4
    counts = torch.bincount(a.flatten(), minlength=5).float()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.02


def npid(n=48, channels=1, **method):
    cfg = load_config({"method": {"name": "npid", **method}, "model": {"width": 4}, "views": {"recipe": "none"}})
    data = sources.load("synthetic", "train", n=n, channels=channels, seed=0)
    model, _ = build_method(cfg, data)
    model.set_generator(torch.Generator().manual_seed(0))
    return model, data


def test_full_softmax_is_cross_entropy_over_the_whole_bank():
    model, data = npid(loss="softmax", negatives=0, temperature=0.1, bank_init="random")
    idx = torch.tensor([3, 10, 0, 47])
    loss, _ = model.loss(data.images[idx], idx)
    f = model.embed(data.images[idx].float() / 255)  # recipe none: the view is the image
    bank = model.bank.features
    expected = sum(-torch.log_softmax(bank @ f[r] / 0.1, dim=0)[idx[r]] for r in range(4)) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_z_is_estimated_once_and_the_bank_moves_only_after_the_step():
    model, data = npid(negatives=16)
    assert torch.isnan(model.log_z)
    idx = torch.arange(8)
    model.loss(data.images[idx], idx)
    z = model.log_z.item()
    assert math.isfinite(z)
    bank = model.bank.features.clone()
    model.loss(data.images[idx + 8], idx + 8)
    assert model.log_z.item() == z  # held fixed, as the paper's code does
    assert torch.equal(model.bank.features, bank)  # the loss read the bank; it changes in on_step_end
    model.on_step_end(1, 1)
    changed = (model.bank.features != bank).any(dim=1)
    assert changed[8:16].all() and not changed[:8].any() and not changed[16:].any()


def test_bank_init_embed_fills_every_row_once_and_leaves_batchnorm_statistics_alone():
    model, data = npid()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    model.fill_bank(batch_size=20)
    for k, v in model.state_dict().items():
        if "running_" in k:
            assert torch.equal(v, running[k]), k
    assert bool(model.bank_filled)
    with torch.no_grad():  # embed() in training mode uses batch statistics: the same chunks give the same rows
        expected = torch.cat([model.embed(data.images[i:i + 20].float() / 255) for i in range(0, 48, 20)])
    assert torch.allclose(model.bank.features, expected, atol=1e-6)


def test_nce_needs_negatives_and_loss_needs_indices():
    with pytest.raises(SelfSupError, match="loss=nce needs sampled noise"):
        npid(negatives=0)
    model, data = npid()
    with pytest.raises(SelfSupError, match="needs each image's row"):
        model.loss(data.images[:4])


def test_the_training_loop_gives_each_image_its_own_row(tmp_path, monkeypatch):
    model, data = npid(n=64, negatives=8)
    seen = []
    original = type(model).loss

    def spy(self, images, indices=None):
        seen.append((images.clone(), indices.clone()))
        return original(self, images, indices)

    monkeypatch.setattr(type(model), "loss", spy)
    cfg = load_config({"train": {"steps": 6, "batch_size": 16, "optimizer": "sgd", "log_every": 1}})
    train(model, data.images, cfg.train, tmp_path, progress=False)
    assert len(seen) == 6
    for images, indices in seen:
        assert torch.equal(images, data.images[indices])
    first_epoch = torch.cat([i for _, i in seen[:4]])
    assert sorted(first_epoch.tolist()) == list(range(64))  # an epoch visits every row once


def test_bank_knn_equals_knn_on_freshly_computed_embeddings_when_the_bank_is_current():
    model, data = npid(n=60)
    model.eval()
    with torch.no_grad():
        model.bank.features.copy_(model.embed(data.images.float() / 255))
    test = sources.load("synthetic", "test", n=30, seed=1)
    got = model.bank_knn(data.labels, test.images, test.labels, k=5)
    with torch.no_grad():
        expected = knn_top1(model.embed(data.images.float() / 255), data.labels,
                            model.embed(test.images.float() / 255), test.labels, 10, 5, 0.07)
    assert got == pytest.approx(expected)


def test_cli_run_logs_the_bank_knn(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "selfsup.cli", "run", "--data", "synthetic", "--method", "npid",
                           "--out", str(out), "--set", "data.synthetic_size=240", "--set", "train.steps=3",
                           "--set", "train.batch_size=32", "--set", "model.width=4", "--set", "method.negatives=64",
                           "--set", "eval.protocols=[knn]", "--set", "train.threads=1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "memory-bank kNN" in proc.stdout
    bank = json.loads((out / "train.json").read_text())["bank_knn"]
    assert 0 <= bank["top1"] <= 1 and bank["test_images"] == 40
