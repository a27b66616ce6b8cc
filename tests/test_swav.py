"""SwAV: the swapped-prediction loss against the paper's formula, the codes' marginals, unit prototypes, the
prototype freeze under every optimizer, the queue feeding Sinkhorn, and the student seeing every crop."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.cluster.sinkhorn import sinkhorn
from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.methods import swav as swav_module
from selfsup.methods.swav import swav_codes, swav_loss
from selfsup.optim import build_optimizer
from selfsup.run import build_method

pytestmark = pytest.mark.usefixtures("one_thread")


def swav_reference(scores, codes, temperature):
    """Paper Eq. (6) as the authors' code sums it: for each coded crop i, the mean over the batch of
    -sum_k q_i[k] log p_v[k] for every other crop v, divided by V - 1; then the mean over the coded crops."""
    total = 0.0
    for i, q in enumerate(codes):
        subloss = 0.0
        for v, s in enumerate(scores):
            if v == i:
                continue
            for b in range(s.shape[0]):
                p = torch.exp(s[b] / temperature) / torch.exp(s[b] / temperature).sum()
                subloss -= sum(q[b, k] * torch.log(p[k]) for k in range(s.shape[1])) / s.shape[0]
        total += subloss / (len(scores) - 1)
    return total / len(codes)


@pytest.mark.parametrize("views,b,k,t", [(2, 3, 5, 0.1), (4, 2, 7, 0.1), (8, 3, 4, 0.25)])
def test_loss_matches_the_papers_formula(views, b, k, t):
    g = torch.Generator().manual_seed(views)
    scores = [F.normalize(torch.randn(b, 6, generator=g, dtype=torch.float64), dim=1)
              @ F.normalize(torch.randn(k, 6, generator=g, dtype=torch.float64), dim=1).t() for _ in range(views)]
    codes = [torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64), dim=1) for _ in range(2)]
    got = swav_loss(scores, codes, t)
    assert got.item() == pytest.approx(swav_reference(scores, codes, t).item(), rel=1e-9)


def test_loss_gradient_flows_into_the_predictions_only():
    scores = [torch.randn(4, 6, requires_grad=True) for _ in range(3)]
    codes = [torch.softmax(torch.randn(4, 6), dim=1).requires_grad_() for _ in range(2)]
    swav_loss(scores, codes, 0.1).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scores)
    assert all(q.grad is None for q in codes)


def swav(recipe: str = "multicrop", **method):
    cfg = load_config({"method": {"name": "swav", "n_prototypes": 16, "proj_hidden": 16, "proj_dim": 8, **method},
                       "model": {"width": 4}, "views": {"recipe": recipe, "multicrop": {"n_local": 2}}})
    data = sources.load("synthetic", "train", n=64, seed=0)
    model, _ = build_method(cfg, data)
    model.set_generator(torch.Generator().manual_seed(0))
    return model, data.images


def test_codes_of_a_batch_satisfy_the_sinkhorn_marginals():
    model, images = swav()
    b, k = 32, model.cfg.n_prototypes
    with torch.no_grad():
        views = model.views(images[:b], model.generator)
        scores = (model.embed(views) @ model.prototypes.weight.t())[:b]  # (B, K) of the first global crop
    codes = swav_codes(scores)
    assert codes.shape == (b, k) and bool((codes >= 0).all())
    assert torch.allclose(codes.sum(dim=1), torch.ones(b), atol=1e-5)  # every row a distribution
    # Each prototype should take B / K = 2 images' worth. The paper's 3 iterations end on the rows, so the columns
    # hold only approximately (here within a factor 2, against 0 to 5x for a plain softmax of the same scores);
    # more iterations converge to the exact marginals.
    mass = codes.sum(dim=0)  # (K,)
    assert bool((mass > 0.5 * b / k).all() and (mass < 2 * b / k).all())
    plain = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert (mass - b / k).abs().max() < 0.2 * (plain - b / k).abs().max()
    assert torch.allclose(swav_codes(scores, iterations=100).sum(dim=0), torch.full((k,), b / k), rtol=1e-3)


def test_identical_embeddings_get_uniform_codes():
    """The trivial solution the paper warns of: one embedding for every image gives every code uniform (the logged
    code_entropy reads 1), so the swapped prediction has nothing to learn from."""
    row = F.normalize(torch.randn(1, 8), dim=1) @ F.normalize(torch.randn(6, 8), dim=1).t()
    codes = swav_codes(row.expand(10, 6))
    assert torch.allclose(codes, torch.full((10, 6), 1 / 6), atol=1e-6)


def test_prototypes_have_unit_rows_at_construction_and_after_on_step_end():
    model, images = swav(freeze_prototypes_steps=0)
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(16), atol=1e-6)
    loss, _ = model.loss(images[:16])
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=5.0).step()
    assert not torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(16), atol=1e-3)  # the step moved them
    model.on_step_end(1, 10)
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(16), atol=1e-6)
    assert model.progress.tolist() == [1, 10]


@pytest.mark.parametrize("optimizer", ["lars", "sgd", "adamw"])
def test_prototypes_are_fixed_by_optimizer_steps_while_frozen_then_move(optimizer):
    model, images = swav(freeze_prototypes_steps=2)
    # A large weight decay, to see that it does not move frozen prototypes either.
    opt = build_optimizer(model, optimizer, lr=0.5, weight_decay=0.1, momentum=0.9)
    start = model.prototypes.weight.detach().clone()
    for step in range(3):
        before = model.prototypes.weight.detach().clone()
        loss, _ = model.loss(images[16 * step:16 * (step + 1)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert model.backbone.features[0][0].weight.grad is not None  # the rest trains in every step
        frozen = step < 2
        assert (model.prototypes.weight.grad is None) == frozen
        opt.step()
        model.on_step_end(step + 1, 10)
        if frozen:
            assert torch.equal(model.prototypes.weight, before), step
        else:
            assert not torch.allclose(model.prototypes.weight, before), step
    assert not torch.equal(model.prototypes.weight, start)


def test_queue_feeds_sinkhorn_but_only_the_batch_rows_become_codes(monkeypatch):
    b, size = 8, 20
    model, images = swav(queue_size=size, queue_start_steps=1)
    calls = []
    monkeypatch.setattr(swav_module, "sinkhorn",
                        lambda scores, *a, **kw: calls.append(tuple(scores.shape)) or sinkhorn(scores, *a, **kw))
    fills = []
    for step in range(5):
        calls.clear()
        loss, logs = model.loss(images[b * step:b * (step + 1)])
        loss.backward()
        expected_rows = b + fills[-1] if fills else b
        assert calls == [(expected_rows, 16)] * 2, step  # one Sinkhorn per global crop, over batch + queue
        model.on_step_end(step + 1, 10)
        fills.append(int(model.queue_filled))
        assert logs["queue_rows"] == (fills[-2] if len(fills) > 1 else 0)
    assert fills == [0, 8, 16, 20, 20]  # step 0 is before queue_start_steps; then 8 a step, capped at the size
    assert all(int(q.ptr) == (4 * b) % size for q in model.queues)  # the ring buffer wrapped around

    # The batch rows of the joint plan, rescaled so each row is a distribution; the queue changes them.
    g = torch.Generator().manual_seed(1)
    scores, extra = torch.randn(b, 16, generator=g) * 0.3, torch.randn(12, 16, generator=g) * 0.3
    codes = swav_codes(scores, extra)
    assert codes.shape == (b, 16)
    assert torch.allclose(codes, sinkhorn(torch.cat([scores, extra]))[:b] * (b + 12))
    assert torch.allclose(codes.sum(dim=1), torch.ones(b), atol=1e-5)
    assert not torch.allclose(codes, swav_codes(scores), atol=1e-3)


def test_queue_holds_the_global_crops_embeddings_of_its_step():
    model, images = swav(queue_size=16, queue_start_steps=0)
    model.loss(images[:8])
    pending = [z.clone() for z in model._to_enqueue]
    model.on_step_end(1, 10)
    for queue, z in zip(model.queues, pending):
        assert z.shape == (8, 8) and torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)
        assert torch.equal(queue.keys[:8], z)
    assert not torch.equal(model.queues[0].keys[:8], model.queues[1].keys[:8])  # one queue per global crop


def test_student_sees_every_crop_and_the_loss_every_pair(monkeypatch):
    model, images = swav()
    assert model.views.n_views == 4
    sizes, projected, pairs = [], [], []
    backbone_forward = type(model.backbone).forward
    monkeypatch.setattr(type(model.backbone), "forward",
                        lambda self, x: sizes.append(tuple(x.shape)) or backbone_forward(self, x))
    model.projector.register_forward_hook(lambda mod, inp, out: projected.append(tuple(inp[0].shape)))
    loss_fn = swav_module.swav_loss
    monkeypatch.setattr(swav_module, "swav_loss",
                        lambda scores, codes, t: pairs.append((len(scores), len(codes))) or loss_fn(scores, codes, t))
    _, logs = model.loss(images[:8])
    side = images.shape[-1]
    assert sizes[0] == (16, 1, side, side)  # the 2 global crops together
    assert len(sizes) == 2 and sizes[1][0] == 16 and sizes[1][-1] < side  # then the 2 local crops together
    assert projected == [(32, model.backbone.dim)]  # one projector pass over all 4 crops (BN over all of them)
    assert pairs == [(4, 2)]  # 4 crops predict, 2 global crops give codes
    assert 0 <= logs["code_entropy"] <= 1 and 0 < logs["code_max"] <= 1
    assert logs["prototypes_used"] == int(logs["prototypes_used"]) and 1 <= logs["prototypes_used"] <= 16
    assert {"z_std", "z_rank"} <= set(logs) and "queue_rows" not in logs  # no queue, no queue column


def test_two_views_by_default_and_a_one_view_recipe_is_refused():
    model, images = swav(recipe="auto")
    assert model.views.name == "simclr" and model.views.n_views == 2
    loss, logs = model.loss(images[:8])
    assert torch.isfinite(loss) and 0 <= logs["code_entropy"] <= 1
    from selfsup.views.recipes import ViewsConfig, build

    with pytest.raises(SelfSupError, match="needs 2 global crops"):
        type(model)(model.backbone, build(ViewsConfig(recipe="none"), 1, 28, n_views=1), model.cfg)
