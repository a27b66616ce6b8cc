"""vit-tiny: shapes and stride at 28 and 32 px and 1 and 3 channels, DeiT-Ti's size by default, token subsets for
MAE, positions that need no image size, the config and the export. (Every method's one step on vit-tiny is
test_methods.py::test_one_step[...-vit-tiny].)"""

import pytest
import torch

from selfsup.config import ModelConfig, load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.nets.backbones import BACKBONES, VisionTransformer, build_backbone
from selfsup.nets.transformer import attention_heads, sincos_2d
from selfsup.run import backbone_notes, backbone_settings, load_encoder_backbone, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny ops run faster on one thread


def vit(channels: int = 1, width: int = 16, depth: int = 2, patch_size: int = 4) -> VisionTransformer:
    torch.manual_seed(0)
    return build_backbone("vit-tiny", channels, width, depth=depth, patch_size=patch_size).eval()


def images(b: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("side", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_stride_and_pooling(side, channels):
    net = vit(channels)
    x = images(3, channels, side)
    with torch.no_grad():
        features, fmap, tokens = net(x), net.feature_map(x), net.forward_tokens(x)
    grid = side // 4
    assert net.dim == 16 and net.stride == net.patch_size == 4
    assert features.shape == (3, 16)
    assert fmap.shape == (3, 16, grid, grid)
    assert tokens.shape == (3, grid * grid, 16)
    # The pooled features are the mean of the patch tokens, and the map is those tokens in their grid places.
    assert torch.allclose(features, fmap.mean(dim=(2, 3)), atol=1e-6)
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, 1 * grid + 2])


def test_default_is_deit_tiny():
    net = build_backbone("vit-tiny", 3)
    assert (net.dim, net.depth, net.heads, net.patch_size) == (192, 12, 3, 4)
    params = sum(p.numel() for p in net.parameters())
    assert 5.2e6 < params < 5.5e6  # DeiT-Ti: 5.7M with its 1000-class head and learned position table


def test_forward_tokens_on_all_indices_is_the_full_forward():
    net = vit(3)
    x = images(2, 3, 28)
    with torch.no_grad():
        full = net.forward_tokens(x)
        every = net.forward_tokens(x, torch.arange(49).expand(2, 49))
        shuffled = torch.stack([torch.randperm(49, generator=torch.Generator().manual_seed(i)) for i in range(2)])
        reordered = net.forward_tokens(x, shuffled)
    assert torch.allclose(every, full, atol=1e-6)
    # No causal mask, positions travel with the tokens: the order of the kept tokens does not matter.
    assert torch.allclose(reordered, torch.gather(full, 1, shuffled[..., None].expand(-1, -1, 16)), atol=1e-5)


def test_kept_tokens_see_nothing_of_the_dropped_patches_but_know_where_they_are():
    net = vit(1)
    x = images(2, 1, 28)
    keep = torch.tensor([[0, 5, 30], [3, 4, 48]])  # (B, n_keep)
    changed = x.clone()
    changed[:, :, 8:, :] = torch.rand(2, 1, 20, 28)  # pixel rows 8-27: grid rows 2-6 change
    keep_top = torch.tensor([[0, 5, 13], [3, 4, 8]])  # patches of grid rows 0-1 only (indices 0-13)
    with torch.no_grad():
        assert net.forward_tokens(x, keep).shape == (2, 3, 16)
        assert torch.allclose(net.forward_tokens(changed, keep_top), net.forward_tokens(x, keep_top), atol=1e-6)
        assert not torch.allclose(net.forward_tokens(changed), net.forward_tokens(x), atol=1e-3)  # full: it sees
        flat = torch.full((1, 1, 28, 28), 0.5)  # every patch identical: only the position tells them apart
        at_0, at_24 = net.forward_tokens(flat, torch.tensor([[0]])), net.forward_tokens(flat, torch.tensor([[24]]))
    assert not torch.allclose(at_0, at_24, atol=1e-3)


def test_positions_are_fixed_and_the_weights_do_not_depend_on_the_image_size():
    net = vit(1)
    assert not any("pos" in name for name, _ in net.named_parameters())  # nothing learned per grid position
    with torch.no_grad():  # one set of weights for 28, 32, 30 (7x7, the 2 px beyond the last patch unseen), 8 px
        assert net.feature_map(images(1, 1, 30)).shape == (1, 16, 7, 7)
        assert net(images(2, 1, 8)).shape == (2, 16)
    pe = sincos_2d(7, 8, 16)
    assert pe.shape == (56, 16)
    assert torch.equal(pe[0:8, :8], pe[0:1, :8].expand(8, 8))  # first half: the row (row 0 all along)
    assert torch.equal(pe[0::8, 8:], pe[0:1, 8:].expand(7, 8))  # second half: the column (column 0 all down)
    assert len({tuple(row.tolist()) for row in pe}) == 56  # every place its own code
    assert sincos_2d(3, 3, 5).shape == (9, 5)  # odd widths work too (a zero column)


def test_images_smaller_than_one_patch_are_one_clear_error():
    net = vit(1, patch_size=8)
    with pytest.raises(SelfSupError, match="smaller than one patch.*model.patch_size"):
        net(images(1, 1, 6))


@pytest.mark.parametrize("width, heads", [(192, 3), (128, 2), (4, 1), (64, 1), (200, 2), (384, 6)])
def test_about_one_head_per_64_dims_dividing_the_width(width, heads):
    assert attention_heads(width) == heads and width % heads == 0
    assert build_backbone("vit-tiny", 1, width, depth=1).heads == heads


def test_config_width_defaults_per_backbone_and_vit_options():
    assert set(BACKBONES) <= set(ModelConfig.__dataclass_fields__["backbone"].metadata["choices"])
    vit_cfg = load_config({"model": {"backbone": "vit-tiny"}})
    assert backbone_settings(vit_cfg.model) == (192, {"depth": 12, "patch_size": 4})
    assert backbone_settings(load_config({}).model) == (32, {})  # small-cnn keeps its 32
    set_cfg = load_config({"model": {"backbone": "vit-tiny", "width": 64, "depth": 3, "patch_size": 7}})
    assert backbone_settings(set_cfg.model) == (64, {"depth": 3, "patch_size": 7})
    with pytest.raises(SelfSupError, match="model.depth is a setting of vit-tiny.*--set model.backbone=vit-tiny"):
        backbone_settings(load_config({"model": {"depth": 3}}).model)
    with pytest.raises(SelfSupError, match="model.patch_size is a setting of vit-tiny"):
        build_backbone("resnet18", 3, patch_size=4)
    (note,) = backbone_notes(vit_cfg.model, 96)
    assert note.startswith("vit-tiny: width 192, depth 12, 4 px patches: 24x24 = 576 tokens on 96 px images")
    assert note.endswith("--set model.patch_size=12 gives 8x8")
    assert backbone_notes(load_config({}).model, 28) == []


def test_a_vit_run_exports_an_encoder_that_rebuilds_from_its_metadata(tmp_path):
    cfg = load_config({"data": {"name": "synthetic", "synthetic_size": 64}, "method": {"name": "simclr"},
                       "model": {"backbone": "vit-tiny", "width": 8, "depth": 1},
                       "train": {"steps": 1, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3}})
    lines = []
    run_dir, result = pretrain(cfg, out=tmp_path / "run", progress=False, log=lines.append)
    assert result.steps == 1
    assert "note: vit-tiny: width 8, depth 1, 4 px patches: 8x8 = 64 tokens on 32 px images" in lines
    from selfsup.checkpoint import load_encoder

    state, meta = load_encoder(run_dir / "encoder.safetensors")
    assert (meta["backbone"], meta["width"], meta["options"]) == ("vit-tiny", 8, {"depth": 1, "patch_size": 4})
    rebuilt = build_backbone(meta["backbone"], meta["in_channels"], meta["width"], **meta["options"])
    rebuilt.load_state_dict(state)  # strict: the metadata describes exactly this network
    encoder = load_encoder_backbone(run_dir, 1).eval()
    x = sources.load("synthetic", "train", n=4, seed=0).images.float() / 255  # 28 px: another size than trained on
    with torch.no_grad():
        assert torch.allclose(encoder(x), rebuilt.eval()(x), atol=1e-6)
