"""MoCo v2, BYOL, SimSiam and their shared parts: the losses against slow references written from the papers'
formulas, the queue's ring buffer, the EMA helper and momentum schedule, stop-gradients, MoCo's shuffling-BN
equivalent (their exact resume is in tests/test_train.py)."""

import math

import pytest
import torch
from torch import nn

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.losses import byol_loss, info_nce, info_nce_logits, simsiam_loss
from selfsup.methods.moco import encode_in_groups, strided_order
from selfsup.nets.momentum import EMA, cosine_momentum
from selfsup.nets.queue import Queue
from selfsup.run import build_method


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread


def unit(v: torch.Tensor) -> list[float]:
    """A vector as a list of floats divided by its Euclidean norm (for the loop references)."""
    values = [float(x) for x in v.double()]
    norm = math.sqrt(sum(x * x for x in values))
    return [x / norm for x in values]


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


# ---- losses against references -------------------------------------------------------------------------------


def info_nce_reference(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, tau: float) -> float:
    """MoCo eq. 1 as loops: L_q = -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_i exp(q.k_i/tau)), mean over queries."""
    total = 0.0
    for i in range(len(q)):
        qi = unit(q[i])
        positive = math.exp(dot(qi, unit(k[i])) / tau)
        denominator = positive + sum(math.exp(dot(qi, unit(n)) / tau) for n in negatives)
        total += -math.log(positive / denominator)
    return total / len(q)


@pytest.mark.parametrize("batch,queue,dim", [(1, 1, 2), (3, 5, 7), (8, 17, 16), (5, 64, 3)])
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_info_nce_matches_reference(batch, queue, dim, tau):
    g = torch.Generator().manual_seed(batch * 1000 + queue * 10 + dim)
    q, k, negatives = (torch.randn(n, dim, generator=g) for n in (batch, batch, queue))
    assert info_nce(q, k, negatives, tau).item() == pytest.approx(info_nce_reference(q, k, negatives, tau), abs=1e-5)


def test_info_nce_logits_put_the_positive_first():
    g = torch.Generator().manual_seed(0)
    q, k, negatives = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    logits = info_nce_logits(q, k, negatives, 0.2)
    assert logits.shape == (4, 7)  # B x (1 + K)
    for i in range(4):
        assert logits[i, 0].item() == pytest.approx(dot(unit(q[i]), unit(k[i])) / 0.2, abs=1e-5)
        for j in range(6):
            assert logits[i, 1 + j].item() == pytest.approx(dot(unit(q[i]), unit(negatives[j])) / 0.2, abs=1e-5)


def test_info_nce_does_not_depend_on_the_order_of_negatives():
    g = torch.Generator().manual_seed(1)
    q, k, negatives = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(50, 16, generator=g)
    base = info_nce(q, k, negatives, 0.2)
    for _ in range(3):
        permuted = info_nce(q, k, negatives[torch.randperm(50, generator=g)], 0.2)
        assert torch.allclose(base, permuted, atol=1e-6, rtol=0)
    assert not torch.allclose(base, info_nce(q, k.roll(1, dims=0), negatives, 0.2))  # but it does see the positive


def byol_reference(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> float:
    """BYOL eq. 2, symmetrized: mean_i ||p1_i/|p1_i| - z2_i/|z2_i| ||^2 + the same with the views swapped."""
    def term(p, z):
        return sum(sum((a - b) ** 2 for a, b in zip(unit(p[i]), unit(z[i]))) for i in range(len(p))) / len(p)

    return term(p1, z2) + term(p2, z1)


def simsiam_reference(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> float:
    """SimSiam eq. 1 and 4: D(p, z) = -(p/|p|).(z/|z|) averaged over the batch; L = D(p1, z2)/2 + D(p2, z1)/2."""
    def d(p, z):
        return -sum(dot(unit(p[i]), unit(z[i])) for i in range(len(p))) / len(p)

    return d(p1, z2) / 2 + d(p2, z1) / 2


@pytest.mark.parametrize("loss,reference", [(byol_loss, byol_reference), (simsiam_loss, simsiam_reference)],
                         ids=["byol", "simsiam"])
@pytest.mark.parametrize("batch,dim", [(1, 2), (2, 3), (7, 16), (32, 5)])
@pytest.mark.parametrize("scale", [1e-2, 1.0, 30.0])  # the losses are scale-free in p and z
def test_non_contrastive_losses_match_references(loss, reference, batch, dim, scale):
    g = torch.Generator().manual_seed(batch * 10 + dim)
    p1, p2, z1, z2 = (scale * torch.randn(batch, dim, generator=g) for _ in range(4))
    assert loss(p1, p2, z1, z2).item() == pytest.approx(reference(p1, p2, z1, z2), abs=1e-5)


def test_non_contrastive_losses_at_their_extremes():
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    assert byol_loss(z, z, z, z).item() == pytest.approx(0.0, abs=1e-5)  # predictions equal the targets
    assert byol_loss(z, z, -z, -z).item() == pytest.approx(8.0, abs=1e-5)  # 2 - 2 cos = 4 in each of two terms
    assert simsiam_loss(z, z, z, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert simsiam_loss(z, z, -z, -z).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["info_nce", "byol", "simsiam"])
def test_losses_stop_the_gradient_at_the_targets(name):
    """Keys (MoCo) and target projections (BYOL, SimSiam) get no gradient even when they would accept one."""
    g = torch.Generator().manual_seed(3)
    p1, p2, z1, z2 = (torch.randn(5, 8, generator=g).requires_grad_() for _ in range(4))
    if name == "info_nce":
        loss = info_nce(p1, z1, z2, 0.2)  # queries p1, keys z1, negatives z2
        trained, targets = [p1], [z1, z2]
    else:
        loss = (byol_loss if name == "byol" else simsiam_loss)(p1, p2, z1, z2)
        trained, targets = [p1, p2], [z1, z2]
    loss.backward()
    assert all(t.grad is None for t in targets)
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in trained)


# ---- queue --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,batches", [(5, [3, 3, 3]), (8, [4, 4, 4]), (5, [7, 2]), (6, [1, 13, 5, 6]), (4, [4])])
def test_queue_wraps_around_like_writing_keys_one_by_one(size, batches):
    queue = Queue(size, 3)
    reference = queue.keys.clone()  # the initial random rows, overwritten oldest-first
    position, counter = 0, 0
    for b in batches:
        keys = torch.arange(counter, counter + b, dtype=torch.float32).unsqueeze(1).repeat(1, 3)  # key c = (c, c, c)
        counter += b
        queue.enqueue(keys)
        for row in keys:  # the slow reference: one key at a time into the next row, wrapping at the end
            reference[position] = row
            position = (position + 1) % size
        assert torch.equal(queue.keys, reference)
        assert int(queue.ptr) == position
    assert counter >= size  # so the queue now holds exactly the last `size` keys, whatever the batch sizes were
    assert sorted(int(v) for v in queue.negatives[:, 0]) == list(range(counter - size, counter))


def test_queue_is_in_the_state_dict_and_resumes_exactly():
    torch.manual_seed(0)
    first = Queue(7, 4)
    first.enqueue(torch.randn(5, 4))
    torch.manual_seed(1)  # another random start: all of it must come from the state dict
    second = Queue(7, 4)
    second.load_state_dict(first.state_dict())
    assert set(first.state_dict()) == {"keys", "ptr"}
    more = torch.randn(4, 4)
    first.enqueue(more)
    second.enqueue(more)
    assert torch.equal(first.keys, second.keys) and int(first.ptr) == int(second.ptr) == 2


def test_queue_starts_with_unit_vectors_and_refuses_wrong_shapes():
    queue = Queue(16, 8)
    assert queue.negatives.shape == (16, 8)
    assert torch.allclose(queue.negatives.norm(dim=1), torch.ones(16))
    with pytest.raises(ValueError, match="enqueue takes"):
        queue.enqueue(torch.randn(3, 5))


# ---- EMA and momentum schedule ------------------------------------------------------------------------------------


def small_bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def test_ema_update_averages_parameters_and_copies_buffers():
    torch.manual_seed(0)
    online = small_bn_net()
    ema = EMA(online)
    assert all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in online.parameters())  # the online module is left trainable
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(8, 4))  # train mode: moves the BN running statistics
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    ema.update(online, 0.9)
    online_state = online.state_dict()
    for name, p in ema.module.named_parameters():
        assert torch.allclose(p, 0.9 * before[name] + 0.1 * online_state[name], atol=1e-6, rtol=0), name
    for name, b in ema.module.named_buffers():
        assert torch.equal(b, online_state[name]), name  # running_mean, running_var, num_batches_tracked
    x = torch.randn(8, 4)
    assert torch.equal(ema(x), ema.module(x))


def test_ema_momentum_one_keeps_and_zero_copies():
    torch.manual_seed(0)
    online = small_bn_net()
    ema = EMA(online)
    with torch.no_grad():
        for p in online.parameters():
            p.mul_(3).add_(1)
    kept = [p.clone() for p in ema.parameters()]
    ema.update(online, 1.0)
    assert all(torch.equal(p, q) for p, q in zip(ema.parameters(), kept))
    ema.update(online, 0.0)
    assert all(torch.allclose(p, q, atol=1e-6, rtol=0) for p, q in zip(ema.parameters(), online.parameters()))
    with pytest.raises(ValueError, match="momentum"):
        ema.update(online, 1.5)


def test_cosine_momentum_schedule_values():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)  # half way between base and final
    assert cosine_momentum(25, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(100, 100) == 1.0 and cosine_momentum(150, 100) == 1.0  # clamped after the end
    assert cosine_momentum(0, 10, base=0.99, final=0.999) == pytest.approx(0.99)
    assert cosine_momentum(10, 10, base=0.99, final=0.999) == pytest.approx(0.999)
    values = [cosine_momentum(s, 40, base=0.9) for s in range(41)]
    assert all(a <= b for a, b in zip(values, values[1:]))  # rises monotonically
    assert cosine_momentum(3, 0) == 1.0  # an empty run is at its end


# ---- the methods --------------------------------------------------------------------------------------------------


def tiny_method(name: str, channels: int = 1, **method):
    cfg = load_config({"method": {"name": name, **method}, "model": {"width": 4}, "train": {"steps": 1}})
    data = sources.load("synthetic", "train", n=32, channels=channels, seed=0)
    model, _ = build_method(cfg, data)
    model.set_generator(torch.Generator().manual_seed(0))
    return model, data.images[:16]


TARGETS = {"moco": ["key_backbone", "key_projector"], "byol": ["target_backbone", "target_projector"]}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_momentum_networks_receive_no_gradient(name):
    """Even with requires_grad switched on, no autograd path leads from the loss to the key / target network."""
    model, images = tiny_method(name)
    frozen = [p for part in TARGETS[name] for p in getattr(model, part).parameters()]
    assert frozen and all(not p.requires_grad for p in frozen)
    assert not any(p is q for p in frozen for q in model.backbone.parameters())  # a copy, not shared weights
    for p in frozen:
        p.requires_grad_(True)
    loss, _ = model.loss(images)
    grads = torch.autograd.grad(loss, frozen, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)
    for p in frozen:
        p.requires_grad_(False)
    loss.backward()
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_moco_step_enqueues_keys_and_moves_the_key_encoder():
    model, images = tiny_method("moco", queue_size=40, momentum=0.9)
    model.train()
    start_ptr = int(model.queue.ptr)
    key_before = [p.clone() for p in model.key_backbone.parameters()]
    loss, logs = model.loss(images)
    assert 0.0 <= logs["pretext_acc"] <= 1.0
    new_keys = model._new_keys.clone()
    assert torch.allclose(new_keys.norm(dim=1), torch.ones(16))
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    model.on_step_end(1, 10)
    assert int(model.queue.ptr) == start_ptr + 16
    assert torch.equal(model.queue.keys[start_ptr:start_ptr + 16], new_keys)
    for old, new, online in zip(key_before, model.key_backbone.parameters(), model.backbone.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * online, atol=1e-6, rtol=0)


def test_moco_keys_do_not_share_batch_statistics_with_their_queries():
    """With B=16 and 4 BN groups, query 0's block is samples 0-3 and key 0's group is 0, 4, 8, 12: changing
    samples 1-3 changes query 0 (same BN statistics) but not key 0. Whole-batch BN (bn_groups=1) leaks."""
    model, _ = tiny_method("moco", bn_groups=4)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[1:4] = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q, q_changed = model.encode_queries(x), model.encode_queries(changed)
    k, k_changed = model.encode_keys(x), model.encode_keys(changed)
    assert not torch.allclose(q[0], q_changed[0])
    assert torch.equal(k[0], k_changed[0])
    assert not torch.allclose(k[1], k_changed[1])  # key 1's own image changed
    # Queries are grouped too: samples outside query 0's block (4-7) do not move it.
    other_block = x.clone()
    other_block[4:8] = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(q[0], model.encode_queries(other_block)[0])

    leaky, _ = tiny_method("moco", bn_groups=1)
    assert not torch.allclose(leaky.encode_keys(x)[0], leaky.encode_keys(changed)[0])


def test_strided_key_groups_take_equally_from_every_query_block():
    b, groups = 256, 8
    query_block = torch.empty(b, dtype=torch.long)
    for g, part in enumerate(torch.arange(b).tensor_split(groups)):
        query_block[part] = g
    key_groups = strided_order(b, groups).tensor_split(groups)
    for members in key_groups:
        counts = torch.bincount(query_block[members], minlength=groups)
        assert counts.tolist() == [b // groups ** 2] * groups  # 4 samples of each query block in every key group


def test_encode_in_groups_returns_the_batch_in_its_own_order():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)  # no batch statistics: grouping must not change anything
    x = torch.randn(10, 3)
    for order in (None, strided_order(10, 3), torch.randperm(10)):
        assert torch.allclose(encode_in_groups(net, x, 3, order), net(x), atol=1e-6)


def test_moco_refuses_a_batch_too_small_for_its_bn_groups():
    model, images = tiny_method("moco", bn_groups=8)
    with pytest.raises(SelfSupError, match="bn_groups=8.*bn_groups=3"):
        model.loss(images[:7])


def test_byol_momentum_follows_the_cosine_schedule_over_the_run():
    model, images = tiny_method("byol", momentum_base=0.99)
    assert model.loss(images)[1]["momentum"] == pytest.approx(0.99)
    model.on_step_end(1, 10)  # after the first step of ten: the base value
    assert float(model.tau) == pytest.approx(0.99)
    model.on_step_end(10, 10)
    assert float(model.tau) == pytest.approx(cosine_momentum(9, 10, 0.99, 1.0))
    assert model.loss(images)[1]["momentum"] == pytest.approx(float(model.tau))


def test_simsiam_predictor_is_a_bottleneck_and_logs_the_collapse_monitor():
    model, images = tiny_method("simsiam", proj_dim=64)
    assert model.predictor[0].out_features == 16  # hidden = out / 4, as in the paper (512 for 2048)
    assert model.predictor[-1].out_features == 64
    loss, logs = model.loss(images)
    assert -1.0 <= loss.item() <= 1.0
    assert 0.0 < logs["z_std"] <= 1.0


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_each_view_is_predicted_from_itself_and_regressed_on_the_other(name, monkeypatch):
    """The loss gets p1, p2 from views 1 and 2 and z1, z2 from the same views (the loss then pairs p1 with z2):
    a method that swapped its arguments would regress each view on itself, a far easier and useless task."""
    import importlib

    module = importlib.import_module(f"selfsup.methods.{name}")
    model, images = tiny_method(name)
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.rand(8, 1, 28, 28, generator=g), torch.rand(8, 1, 28, 28, generator=g)
    model.views = lambda imgs, gen: [x1, x2]  # two known, different views
    seen = {}
    loss_fn = getattr(module, f"{name}_loss")
    monkeypatch.setattr(module, f"{name}_loss", lambda p1, p2, z1, z2: seen.update(p1=p1, p2=p2, z1=z1, z2=z2)
                        or loss_fn(p1, p2, z1, z2))
    model.loss(images[:8])
    with torch.no_grad():  # BN in training mode: the same batch gives the same outputs
        for i, x in ((1, x1), (2, x2)):
            online = model.projector(model.backbone(x))
            assert torch.allclose(seen[f"p{i}"], model.predictor(online), atol=1e-5), f"p{i}"
            target = (model.target_projector(model.target_backbone(x)) if name == "byol" else online)
            assert torch.allclose(seen[f"z{i}"], target, atol=1e-5), f"z{i}"
