"""DINO: the loss against a loop over the paper's pairs, the schedules, the centre, the teacher taking no gradient."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.methods.dino import DINOHead, dino_loss, teacher_temperature
from selfsup.run import build_method


def dino_reference(student, teacher, center, ts, tt):
    """Paper Algorithm 1, written out: every (teacher global crop, different student crop) pair, one by one."""
    terms = []
    for i, t in enumerate(teacher):
        for j, s in enumerate(student):
            if i == j:
                continue
            for b in range(t.shape[0]):
                p_t = torch.exp((t[b] - center) / tt) / torch.exp((t[b] - center) / tt).sum()
                log_p_s = s[b] / ts - torch.log(torch.exp(s[b] / ts).sum())
                terms.append(-(p_t * log_p_s).sum())
    # mean over pairs of the batch mean = mean over all terms (every pair has B terms)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("views,b,k,tt", [(2, 3, 5, 0.04), (4, 2, 16, 0.07), (10, 4, 8, 0.05)])
def test_loss_matches_the_papers_pairs(views, b, k, tt):
    g = torch.Generator().manual_seed(views)
    student = [torch.randn(b, k, generator=g, dtype=torch.float64) for _ in range(views)]
    teacher = [torch.randn(b, k, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(k, generator=g, dtype=torch.float64) * 0.1
    got = dino_loss(student, teacher, center, 0.1, tt)
    assert got.item() == pytest.approx(dino_reference(student, teacher, center, 0.1, tt).item(), rel=1e-5)


def test_teacher_temperature_warms_up_linearly_then_stays():
    assert teacher_temperature(0, 100) == pytest.approx(0.04)
    assert teacher_temperature(15, 100) == pytest.approx(0.055)
    assert teacher_temperature(30, 100) == pytest.approx(0.07)
    assert teacher_temperature(99, 100) == pytest.approx(0.07)
    assert teacher_temperature(5, 100, warmup_fraction=0) == pytest.approx(0.07)


def test_head_last_layer_has_unit_rows_and_outputs_cosines():
    head = DINOHead(8, 16, 4, 10)
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 10) and out.abs().max() <= 1 + 1e-6


def dino(**method):
    cfg = load_config({"method": {"name": "dino", "out_dim": 32, "head_hidden": 16, "bottleneck": 8, **method},
                       "model": {"width": 4}, "views": {"multicrop": {"n_local": 2}}})
    data = sources.load("synthetic", "train", n=32, seed=0)
    model, _ = build_method(cfg, data)
    model.set_generator(torch.Generator().manual_seed(0))
    return model, data.images[:8]


def test_multicrop_student_sees_every_crop_and_teacher_only_the_global_ones(monkeypatch):
    model, images = dino()
    assert model.views.n_views == 4
    sizes = []
    forward = type(model.teacher_backbone.module).forward
    monkeypatch.setattr(type(model.teacher_backbone.module), "forward",
                        lambda self, x: sizes.append(tuple(x.shape)) or forward(self, x))
    model.loss(images)
    # the student ran the global pair and the local pair; the teacher (same class) only the global pair
    side = images.shape[-1]
    assert sizes.count((16, 1, side, side)) == 2  # student and teacher, the 2 global crops each
    assert sum(s[0] == 16 and s[-1] < side for s in sizes) == 1 and len(sizes) == 3  # the student's local crops


def test_teacher_takes_no_gradient_and_follows_by_ema():
    model, images = dino()
    frozen = list(model.teacher_backbone.parameters()) + list(model.teacher_head.parameters())
    assert frozen and not any(p.requires_grad for p in frozen)
    loss, logs = model.loss(images)
    loss.backward()
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert 0 <= logs["teacher_entropy"] <= 1 and logs["teacher_temp"] == pytest.approx(0.04)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher_head.parameters()]
    model.on_step_end(1, 10)  # tau at step 0 of 10: momentum_base 0.99
    for old, new, online in zip(before, model.teacher_head.parameters(), model.head.parameters()):
        assert torch.allclose(new, 0.99 * old + 0.01 * online, atol=1e-6)


def test_center_moves_towards_the_teacher_batch_mean_after_the_step():
    model, images = dino()
    model.loss(images)
    with torch.no_grad():
        glob = model.views(images, torch.Generator().manual_seed(0))[:2]  # the same crops: same generator state
    model.set_generator(torch.Generator().manual_seed(0))
    model.loss(images)
    with torch.no_grad():
        teacher = model.teacher_head(model.teacher_backbone(torch.cat(glob)))
    assert torch.equal(model.center, torch.zeros(32))  # unchanged until on_step_end
    model.on_step_end(1, 10)
    assert torch.allclose(model.center, 0.1 * teacher.mean(dim=0), atol=1e-5)
    assert model.progress.tolist() == [1, 10]
    assert model.current_teacher_temp() == pytest.approx(0.04 + 0.03 * 1 / 3)


def test_two_view_recipes_work_and_one_view_is_refused():
    model, images = dino(**{})
    cfg = load_config({"method": {"name": "dino", "out_dim": 32, "head_hidden": 16, "bottleneck": 8},
                       "model": {"width": 4}, "views": {"recipe": "simclr"}})
    data = sources.load("synthetic", "train", n=32, seed=0)
    two, _ = build_method(cfg, data)
    two.set_generator(torch.Generator().manual_seed(0))
    loss, _ = two.loss(data.images[:8])
    assert torch.isfinite(loss)
    from selfsup.views.recipes import ViewsConfig, build

    with pytest.raises(SelfSupError, match="needs 2 global crops"):
        type(model)(model.backbone, build(ViewsConfig(recipe="none"), 1, 32, n_views=1), model.cfg)


def test_sharpening_and_centring_pull_in_opposite_directions():
    """Centring alone flattens the teacher's distribution, a low temperature sharpens it (paper Sec. 5.3)."""
    t = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.5, 0.0]])
    flat = F.softmax((t - t.mean(dim=0)) / 1.0, dim=-1)
    sharp = F.softmax(t / 0.04, dim=-1)
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
    assert entropy(flat) > entropy(F.softmax(t, dim=-1)) > entropy(sharp)
