"""CPC: the patch grid, the row-causal context network, the loss against a loop over the paper's formula."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.methods.cpc import ContextNet, PatchGridEncoder, cut_patches, patch_grid
from selfsup.run import build_method


@pytest.mark.parametrize("side,expected", [(28, (8, 4, 6)), (32, (8, 4, 7)), (64, (16, 8, 7)), (96, (24, 12, 7)),
                                           (16, (4, 2, 7))])
def test_patch_grid_scales_cpcs_seven_by_seven_grid(side, expected):
    patch, stride, grid = patch_grid(side)
    assert (patch, stride, grid) == expected
    assert (grid - 1) * stride + patch <= side  # the grid fits in the image


def test_patch_grid_refuses_images_too_small_for_the_backbone():
    with pytest.raises(SelfSupError, match="16 px or more"):
        patch_grid(8)


def test_cut_patches_are_the_grids_slices_in_row_major_order():
    x = torch.rand(2, 3, 28, 28)
    patches, grid = cut_patches(x)
    assert patches.shape == (2 * 36, 3, 8, 8) and grid == 6
    for b, i, j in [(0, 0, 0), (1, 2, 5), (1, 5, 0)]:
        assert torch.equal(patches[b * 36 + i * 6 + j], x[b, :, 4 * i:4 * i + 8, 4 * j:4 * j + 8])


def test_context_row_i_depends_on_rows_up_to_i_only():
    torch.manual_seed(0)
    net = ContextNet(8, blocks=3)
    z = torch.randn(2, 8, 6, 6)
    c = net(z)
    for row in range(5):
        changed = z.clone()
        changed[:, :, row + 1:] += torch.randn_like(changed[:, :, row + 1:])  # everything below row `row`
        c2 = net(changed)
        assert torch.allclose(c2[:, :, :row + 1], c[:, :, :row + 1]), row
        assert not torch.allclose(c2[:, :, row + 1:], c[:, :, row + 1:])


def cpc(pred_rows=2, n=32):
    cfg = load_config({"method": {"name": "cpc", "pred_rows": pred_rows, "context_blocks": 2}, "model": {"width": 4},
                       "views": {"recipe": "none"}})
    data = sources.load("synthetic", "train", n=n, image_size=16, seed=0)
    model, _ = build_method(cfg, data)
    model.set_generator(torch.Generator().manual_seed(0))
    return model, data


def test_loss_matches_a_loop_over_the_papers_formula():
    model, data = cpc(pred_rows=2)
    images = data.images[:3]
    loss, logs = model.loss(images)
    x = images.float() / 255  # recipe none
    patches, g = cut_patches(x)
    z = model.backbone.net(patches).view(3, g, g, -1).double()  # z[b, i, j]
    c = model.context(z.float().permute(0, 3, 1, 2)).double()  # c[b, :, i, j]
    everything = z.reshape(-1, z.shape[-1])
    per_k = []
    for k, w in enumerate(model.predictors, start=1):
        W = w.weight[:, :, 0, 0].double()
        terms = []
        for b in range(3):
            for i in range(g - k):
                for j in range(g):
                    scores = everything @ (W @ c[b, :, i, j])  # z_n^T W_k c_t for every patch n of the batch
                    true = b * g * g + (i + k) * g + j
                    terms.append(-(scores[true] - torch.logsumexp(scores, 0)))
        per_k.append(torch.stack(terms).mean())
    assert loss.item() == pytest.approx(torch.stack(per_k).mean().item(), rel=1e-5)
    assert logs["loss_k1"] == pytest.approx(per_k[0].item(), rel=1e-5)


def test_loss_does_not_depend_on_the_order_of_the_batch():
    """InfoNCE over the batch: reordering the images (and so the negatives) leaves the loss as it is."""
    model, data = cpc()
    images = data.images[:6]
    a, _ = model.loss(images)
    b, _ = model.loss(images[torch.tensor([3, 0, 5, 1, 4, 2])])
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_the_kept_encoder_averages_the_backbone_over_the_grid():
    model, data = cpc()
    enc = model.backbone
    assert isinstance(enc, PatchGridEncoder)
    enc.eval()
    x = data.images[:2].float() / 255
    patches, g = cut_patches(x)
    expected = enc.net(patches).view(2, g * g, -1).mean(dim=1)
    assert torch.allclose(enc(x), expected, atol=1e-6) and enc(x).shape == (2, enc.dim)


def test_too_few_rows_for_the_prediction_offsets_is_one_clear_error():
    with pytest.raises(SelfSupError, match="method.pred_rows=6 or less"):
        cpc(pred_rows=7)


def test_training_lowers_the_loss_on_a_fixed_batch():
    model, data = cpc()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = data.images[:16]
    first = None
    for _ in range(30):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.8 * first  # 7.35 -> 5.36 when written
