"""Barlow Twins, VICReg and the collapse monitor: the losses against slow references written from the papers'
formulas, the cross-correlation picture, and the collapse statistics and their one warning (their exact resume
is in tests/test_train.py)."""

import json
import math

import pytest
import torch
from PIL import Image

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.losses import barlow_twins, standardize, vicreg
from selfsup.methods.collapse import MIN_RANK, STD_FRACTION, CollapseMonitor, embedding_stats
from selfsup.report.figures import matrix_png
from selfsup.run import build_method, method_figures
from selfsup.train import train


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread


def barlow_reference(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float) -> tuple[float, list[list[float]]]:
    """Zbontar et al. 2021, eq. 2 then eq. 1, one entry at a time in Python floats:
    C_ij = sum_b a_bi b_bj / (sqrt(sum_b a_bi^2 + B eps) sqrt(sum_b b_bj^2 + B eps)), a and b the views centred
    per dimension (eps = 0 is eq. 2 exactly; eps > 0 is BatchNorm's), and
    loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2."""
    a, b = z1.tolist(), z2.tolist()
    n, d = len(a), len(a[0])

    def centred_column(z, j):
        mean = sum(z[k][j] for k in range(n)) / n
        return [z[k][j] - mean for k in range(n)]

    ca = [centred_column(a, j) for j in range(d)]
    cb = [centred_column(b, j) for j in range(d)]
    c = [[0.0] * d for _ in range(d)]
    for i in range(d):
        for j in range(d):
            numerator = sum(ca[i][k] * cb[j][k] for k in range(n))
            c[i][j] = numerator / (math.sqrt(sum(x * x for x in ca[i]) + n * eps)
                                   * math.sqrt(sum(x * x for x in cb[j]) + n * eps))
    loss = 0.0
    for i in range(d):
        for j in range(d):
            loss += (1 - c[i][i]) ** 2 if i == j else lambd * c[i][j] ** 2
    return loss, c


def vicreg_reference(z1: torch.Tensor, z2: torch.Tensor, inv_w: float, var_w: float, cov_w: float, gamma: float,
                     eps: float = 1e-4) -> tuple[float, dict[str, float]]:
    """Bardes et al. 2022, eqs. 1-6, one entry at a time in Python floats, with Var and Cov over n - 1 (eqs. 1, 3).
    As in the authors' code the squared error is also averaged over dimensions and the two variance terms are
    averaged: loss = inv_w * s + var_w * (v(Z1) + v(Z2)) / 2 + cov_w * (c(Z1) + c(Z2))."""
    a, b = z1.tolist(), z2.tolist()
    n, d = len(a), len(a[0])
    s = sum((a[k][j] - b[k][j]) ** 2 for k in range(n) for j in range(d)) / (n * d)

    def means(z):
        return [sum(z[k][j] for k in range(n)) / n for j in range(d)]

    def v(z):
        m, total = means(z), 0.0
        for j in range(d):
            var = sum((z[k][j] - m[j]) ** 2 for k in range(n)) / (n - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
        return total / d

    def c(z):
        m, total = means(z), 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((z[k][i] - m[i]) * (z[k][j] - m[j]) for k in range(n)) / (n - 1)
                    total += cov ** 2
        return total / d

    terms = {"invariance": s, "variance": (v(a) + v(b)) / 2, "covariance": c(a) + c(b)}
    return inv_w * terms["invariance"] + var_w * terms["variance"] + cov_w * terms["covariance"], terms


def two_views(batch: int, dim: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated views with dimensions of very different scales and offsets (std 0.1 to 3)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, math.log10(3), dim, dtype=torch.float64)
    z1 = torch.randn(batch, dim, generator=g, dtype=torch.float64) * scale + torch.randn(dim, generator=g,
                                                                                        dtype=torch.float64)
    z2 = 0.8 * z1 + 0.6 * scale * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def close(value: float, reference: float, tol: float = 1e-5) -> bool:
    return abs(value - reference) <= tol * max(1.0, abs(reference))


@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize("dim", [1, 3, 8, 20])
@pytest.mark.parametrize("lambd", [0.0, 5e-3, 0.1, 1.0])
def test_barlow_twins_matches_reference(batch, dim, lambd):
    z1, z2 = two_views(batch, dim, seed=batch * 100 + dim)
    for eps in (0.0, 1e-5):
        loss, c = barlow_twins(z1, z2, lambd, eps=eps)
        ref_loss, ref_c = barlow_reference(z1, z2, lambd, eps)
        assert loss.dtype == torch.float64 and c.shape == (dim, dim)
        assert close(loss.item(), ref_loss)
        assert (c - torch.tensor(ref_c, dtype=torch.float64)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize("dim", [1, 3, 8, 20])
@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0, 1.0), (1.0, 10.0, 0.04, 0.5), (0.0, 1.0, 3.0, 2.0)],
                         ids=["paper", "other", "no-invariance"])
def test_vicreg_matches_reference(batch, dim, weights):
    z1, z2 = two_views(batch, dim, seed=batch * 100 + dim + 7)
    loss, terms = vicreg(z1, z2, *weights)
    ref_loss, ref_terms = vicreg_reference(z1, z2, *weights)
    assert close(loss.item(), ref_loss)
    for name, value in ref_terms.items():
        assert close(terms[name].item(), value), name
    assert 0 < ref_terms["variance"]  # the scales (0.1 to 3) put some dimensions under the hinge, some above


def test_losses_in_float32_agree_with_the_float64_references():
    z1, z2 = two_views(64, 32, seed=3, dtype=torch.float32)
    loss, _ = barlow_twins(z1, z2, 5e-3)
    assert loss.dtype == torch.float32 and close(loss.item(), barlow_reference(z1, z2, 5e-3, 1e-5)[0], 1e-4)
    loss, _ = vicreg(z1, z2)
    assert close(loss.item(), vicreg_reference(z1, z2, 25, 25, 1, 1)[0], 1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the losses leave autocast and compute in fp32
        assert barlow_twins(z1.bfloat16(), z2.bfloat16(), 5e-3)[1].dtype == torch.float32


def decorrelated(batch: int, dim: int, std: float, unbiased: bool) -> torch.Tensor:
    """A batch whose dimensions are centred, exactly uncorrelated and of standard deviation `std`."""
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))  # orthonormal columns, each orthogonal to the ones vector
    return q * std * math.sqrt(batch - 1 if unbiased else batch)


def test_the_losses_reach_zero_at_their_optimum_and_are_high_at_collapse():
    z = decorrelated(32, 8, 1.0, unbiased=False)
    loss, c = barlow_twins(3 * z + 1, 0.5 * z - 2, 5e-3, eps=0.0)  # scale and shift do not matter
    assert torch.allclose(c, torch.eye(8, dtype=torch.float64), atol=1e-12) and loss.item() < 1e-20
    assert barlow_twins(z, -z, 5e-3, eps=0.0)[0].item() == pytest.approx(4 * 8)  # C = -I
    z = decorrelated(32, 8, 2.0, unbiased=True)  # std 2 >= gamma: no variance penalty
    loss, terms = vicreg(z + 1, z + 1)
    assert loss.item() < 1e-20 and all(v.item() < 1e-20 for v in terms.values())
    constant = torch.ones(32, 8, dtype=torch.float64)
    loss, terms = vicreg(constant, constant)
    assert terms["variance"].item() == pytest.approx(1 - math.sqrt(1e-4))  # every std 0: the full hinge
    assert loss.item() == pytest.approx(25 * (1 - math.sqrt(1e-4)))


def test_losses_reject_bad_shapes():
    for loss in (lambda a, b: barlow_twins(a, b, 5e-3), vicreg):
        with pytest.raises(ValueError, match="equal shape"):
            loss(torch.zeros(4, 8), torch.zeros(5, 8))
        with pytest.raises(ValueError, match="B >= 2"):
            loss(torch.zeros(1, 8), torch.zeros(1, 8))


def test_standardize_matches_batchnorm_without_affine():
    z = two_views(16, 6, seed=1, dtype=torch.float32)[0]
    bn = torch.nn.BatchNorm1d(6, affine=False).train()
    assert torch.allclose(standardize(z), bn(z), atol=1e-6)


# --- the methods ---------------------------------------------------------------------------------------------------

SMALL = {"proj_hidden": 16, "proj_dim": 12}


def build(name: str, n: int = 64, channels: int = 1, **method):
    cfg = load_config({"method": {"name": name, **SMALL, **method}, "model": {"width": 4}})
    data = sources.load("synthetic", "train", n=n, channels=channels, seed=0)
    model, _ = build_method(cfg, data)
    model.set_generator(torch.Generator().manual_seed(0))
    return model, data


def test_barlow_defaults_and_logs():
    cfg = load_config({"method": {"name": "barlow"}})
    assert cfg.method.proj_layers == 3 and cfg.method.lambd is None and cfg.method.proj_dim == 512
    model, data = build("barlow")
    assert model.lambd == pytest.approx(1 / 12) and model.loss_scale == pytest.approx(1 / 12)
    assert "lambda = 0.0833" in model.notes[0] and "1 / proj_dim" in model.notes[0]
    assert model.views.n_views == 2 and model.views.name == "byol"
    loss, logs = model.loss(data.images[:16])
    assert set(logs) == {"c_diag", "c_offdiag_rms", "z_std", "z_rank"}
    # The returned loss is the paper's loss / D, and the buffer holds the C it was computed from.
    c = model.last_c
    paper = (1 - c.diagonal()).pow(2).sum() + model.lambd * (c.pow(2).sum() - c.diagonal().pow(2).sum())
    assert loss.item() == pytest.approx(paper.item() / 12, rel=1e-5)
    assert logs["c_diag"] == pytest.approx(c.diagonal().mean().item(), rel=1e-6)
    assert build("barlow", lambd=0.005, loss_scale=1.0)[0].lambd == 0.005


def test_vicreg_logs_its_three_terms():
    model, data = build("vicreg")
    assert model.views.name == "byol"
    loss, logs = model.loss(data.images[:16])
    assert set(logs) == {"invariance", "variance", "covariance", "z_std", "z_rank"}
    assert loss.item() == pytest.approx(25 * logs["invariance"] + 25 * logs["variance"] + logs["covariance"], rel=1e-5)


def test_barlow_draws_the_last_training_cross_correlation(tmp_path):
    model, data = build("barlow")
    assert method_figures(model, data.images, 0, tmp_path) == []  # nothing trained, nothing to draw
    model.train()
    _, logs = model.loss(data.images[:32])
    kept = model.last_c.clone()
    paths = method_figures(model, data.images, 0, tmp_path)  # eval mode, no_grad, 8 images: as after pretraining
    assert paths == [tmp_path / "barlow-crosscorrelation.png"]
    assert torch.equal(model.last_c, kept)  # drawing does not replace the training matrix
    with Image.open(paths[0]) as png:
        png.load()
        assert png.size[0] >= 400 and png.size[1] >= 400
        assert png.text["Description"].startswith("cross-correlation 12x12; diagonal mean "
                                                  f"{logs['c_diag']:.4f}; off-diagonal RMS {logs['c_offdiag_rms']:.4f}")
        assert "last training batch" in png.text["Title"]


def test_matrix_png_rejects_a_vector(tmp_path):
    with pytest.raises(ValueError, match="2-d"):
        matrix_png(torch.zeros(4), tmp_path / "m.png")


# --- the collapse monitor ------------------------------------------------------------------------------------------

def collapsed_batches(n: int = 64, d: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d, generator=g)
    return {
        "constant": v.expand(n, d).clone(),
        "constant + noise": v + 1e-4 * torch.randn(n, d, generator=g),
        "rank 1": (0.5 + torch.rand(n, 1, generator=g)) * v,
    }


@pytest.mark.parametrize("kind", ["constant", "constant + noise", "rank 1"])
def test_collapsed_embeddings_read_as_collapsed_and_warn_once(kind):
    z = collapsed_batches()[kind]
    stats = embedding_stats(z)
    assert stats["z_std"] < 1e-3 / math.sqrt(32) and stats["z_rank"] == pytest.approx(1.0, abs=0.05)
    monitor = CollapseMonitor(hint="raise method.lambd (now 0.002)")
    row = {"step": 40, **monitor.stats(z)}
    warning = monitor.check(row)
    assert warning is not None and "\n" not in warning
    for words in ["collapsed at step 40", "nearly the same embedding", "learning rate", "augmentations",
                  "predictor", "stop-gradient", "lambda", "variance weight", "Try: raise method.lambd (now 0.002)"]:
        assert words in warning
    assert monitor.check(row) is None  # once per run


def test_embeddings_along_one_line_warn_by_their_rank():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 1, generator=g) * torch.randn(32, generator=g)  # both signs: two opposite directions
    stats = embedding_stats(z)
    assert stats["z_std"] > STD_FRACTION / math.sqrt(32) and stats["z_rank"] == pytest.approx(1.0, abs=1e-4)
    monitor = CollapseMonitor()
    assert "along a single direction" in monitor.check({"step": 1, **monitor.stats(z)})


def test_isotropic_embeddings_look_healthy():
    z = torch.randn(512, 32, generator=torch.Generator().manual_seed(0))
    stats = embedding_stats(z)
    assert stats["z_std"] == pytest.approx(1 / math.sqrt(32), rel=0.05)
    assert stats["z_rank"] > 0.95 * 32
    monitor = CollapseMonitor()
    assert monitor.check({"step": 1, **monitor.stats(z)}) is None
    # just above both thresholds: no warning; just below the std threshold: the warning
    assert monitor.check({"z_std": 1.01 * STD_FRACTION / math.sqrt(32), "z_rank": MIN_RANK}) is None
    assert monitor.check({"z_std": 0.99 * STD_FRACTION / math.sqrt(32), "z_rank": 20.0}) is not None


def test_embedding_stats_take_no_gradient_and_reject_a_single_embedding():
    z = torch.randn(8, 4, requires_grad=True)
    assert all(isinstance(v, float) for v in embedding_stats(z * 2).values())
    assert embedding_stats(torch.zeros(8, 4)) == {"z_std": 0.0, "z_rank": 0.0}
    wide = embedding_stats(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)))  # N < D: the N x N Gram
    assert 3 < wide["z_rank"] <= 4
    with pytest.raises(ValueError, match="N >= 2"):
        embedding_stats(torch.zeros(1, 4))


def test_the_training_loop_logs_the_stats_and_warns_once(tmp_path, capsys, monkeypatch):
    cfg = load_config({"data": {"name": "synthetic"}, "model": {"width": 4}, "method": {"name": "simclr"},
                       "train": {"steps": 2, "batch_size": 16, "log_every": 1, "device": "cpu"}})
    data = sources.load("synthetic", "train", n=48, seed=0, channels=1)
    method, _ = build_method(cfg, data)
    train(method, data.images, cfg.train, tmp_path / "healthy", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "healthy" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["z_std"] * math.sqrt(128) > 0.3 and r["z_rank"] > 2 for r in rows)  # a random network is healthy
    assert "collapsed" not in capsys.readouterr().err

    method, _ = build_method(cfg, data)
    original = method.loss

    def collapsed(images):  # the real loss, but the logs of a batch of identical embeddings
        loss, _ = original(images)
        return loss, method.collapse.stats(torch.ones(16, 128))

    monkeypatch.setattr(method, "loss", collapsed)
    cfg.train.steps = 3
    train(method, data.images, cfg.train, tmp_path / "collapsed", progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: the embeddings collapsed") == 1 and "at step 1:" in err


def test_a_healthy_batch_of_two_does_not_warn_about_rank():
    """BatchNorm-centred batches of 2 always have rank 1: the rank test needs min(N, D) >= 8 to mean anything."""
    from selfsup.methods.collapse import CollapseMonitor

    monitor = CollapseMonitor()
    z = torch.nn.BatchNorm1d(512, affine=False)(torch.randn(2, 512, generator=torch.Generator().manual_seed(0)))
    row = {"step": 1, **monitor.stats(z)}
    assert row["z_rank"] < 1.5 and monitor.check(row) is None
