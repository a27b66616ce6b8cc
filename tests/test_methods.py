"""Every registered method takes one CPU step on a tiny backbone, a CNN and a ViT (new methods are covered
automatically)."""

import pytest
import torch

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.methods import METHODS
from selfsup.run import build_method

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread

# Tiny versions of the backbones: one step of every method in well under a second.
TINY = {"small-cnn": {"width": 4}, "vit-tiny": {"backbone": "vit-tiny", "width": 4, "depth": 1}}


def tiny_model(name: str) -> dict:
    """The tiny model for a method's test step: the backbone the method requires (MAE: vit-tiny), else small-cnn."""
    return TINY[METHODS[name].requires_backbone or "small-cnn"]


@pytest.mark.parametrize("backbone", sorted(TINY))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step(name, channels, backbone):
    cfg = load_config({"method": {"name": name}, "model": TINY[backbone], "train": {"steps": 1}})
    data = sources.load("synthetic", "train", n=32, channels=channels, seed=0)
    if channels < METHODS[name].min_channels:  # a colour-only method refuses grey data with the fix
        with pytest.raises(SelfSupError, match="needs colour images.*folder of photos"):
            build_method(cfg, data)
        return
    required = METHODS[name].requires_backbone
    if required not in (None, backbone):  # MAE on a CNN: one error naming the fix
        with pytest.raises(SelfSupError, match=f"{name} needs the {required} backbone.*model.backbone={required}"):
            build_method(cfg, data)
        return
    method, make_backbone = build_method(cfg, data)
    method.set_generator(torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    loss, logs = method.step_loss(data.images[:16], torch.arange(16))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) for v in logs.values())
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    torch.optim.SGD(method.parameters(), lr=0.1).step()
    method.on_step_end(1, 1)
    changed = [k for k, v in method.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "one step changed no backbone weight"
    features = method.backbone(data.images[:4].float() / 255)
    assert features.shape == (4, method.backbone.dim)
    assert make_backbone().dim == method.backbone.dim


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registry_entries_describe_their_paper(name):
    cls = METHODS[name]
    assert cls.name == name and cls.family and cls.paper and 2000 < cls.year < 2100
    assert cls.Config().name == name


def test_resnet18_backbone_small_image_stem():
    from selfsup.nets.backbones import build_backbone

    net = build_backbone("resnet18", 3)
    assert net.dim == 512 and net.net.conv1.kernel_size == (3, 3) and net.net.conv1.stride == (1, 1)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("name", [n for n in sorted(METHODS) if METHODS[n].n_views == 1])
def test_a_recipe_with_the_wrong_number_of_views_is_one_clear_error(name):
    cfg = load_config({"method": {"name": name}, "model": tiny_model(name), "views": {"recipe": "multicrop"}})
    data = sources.load("synthetic", "train", n=32, channels=METHODS[name].min_channels, seed=0)
    with pytest.raises(SelfSupError, match=f"{name} takes 1 view"):
        build_method(cfg, data)


@pytest.mark.parametrize("name, backbone", [(n, b) for n in sorted(METHODS) for b in sorted(TINY)
                                             if METHODS[n].requires_backbone in (None, b)])  # refusals: test_one_step
def test_one_step_under_bf16_autocast(name, backbone):
    """precision=auto picks bf16 on recent GPUs and on CPUs with native bf16: every method's loss, views included,
    must run under it."""
    channels = max(3, METHODS[name].min_channels)
    cfg = load_config({"method": {"name": name}, "model": TINY[backbone]})
    data = sources.load("synthetic", "train", n=32, channels=channels, image_size=32, seed=0)
    method, _ = build_method(cfg, data)
    method.set_generator(torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = method.step_loss(data.images[:16], torch.arange(16))
    assert torch.isfinite(loss.float())
    loss.backward()
