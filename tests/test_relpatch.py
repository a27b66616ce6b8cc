"""Relative patch location: labels, chroma defences, synthetic aberration, folder crops, and the shortcut study."""

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import load_config
from selfsup.data import cache, sources
from selfsup.data.splits import holdout
from selfsup.errors import SelfSupError
from selfsup.methods.relpatch import NEIGHBOURS, OFFSETS, patch_geometry
from selfsup.run import build_method, load_data
from selfsup.views.chroma import (GREEN_MAGENTA, chroma_defence, chromatic_aberration, drop_channels,
                                  project_green_magenta, replicate_channel)


def relpatch(channels=3, size=28, **method):
    cfg = load_config({"method": {"name": "relpatch", **method}, "model": {"width": 4}, "train": {"steps": 1}})
    data = sources.load("synthetic", "train", n=32, channels=channels, seed=0, image_size=size)
    m, _ = build_method(cfg, data)
    m.set_generator(torch.Generator().manual_seed(0))
    return m, data


# --- the pretext task ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("jitter", [0.0, 0.075])
def test_label_is_the_neighbours_place_relative_to_the_centre(jitter):
    m, data = relpatch(jitter=jitter, chroma="none")
    assert m.working == 64 and m.tile in (15, 16) and m.gap == 8  # 28 px enlarged to 64; half a patch apart
    x = m.working_images(data.images)
    m.set_generator(torch.Generator().manual_seed(3))
    centre, neighbour, labels, corners = m.pairs(data.images)
    assert centre.shape == neighbour.shape == (32, 3, m.tile, m.tile) and labels.min() >= 0 and labels.max() <= 7
    assert len(set(labels.tolist())) > 4
    pitch, j = m.tile + m.gap, m.jitter
    for b in range(32):
        k = NEIGHBOURS[int(labels[b])]
        d = corners[b, k] - corners[b, 4]
        for axis, step in enumerate(OFFSETS[int(labels[b])]):
            if step == 0:
                assert abs(int(d[axis])) <= 2 * j
            else:
                assert int(torch.sign(d[axis])) == step and abs(int(d[axis])) >= pitch - 2 * j
        (r, c), (r0, c0) = corners[b, k].tolist(), corners[b, 4].tolist()
        assert torch.equal(neighbour[b], x[b, :, r:r + m.tile, c:c + m.tile])
        assert torch.equal(centre[b], x[b, :, r0:r0 + m.tile, c0:c0 + m.tile])


def test_geometry_notes_and_errors():
    assert patch_geometry(96, load_config({"method": {"name": "relpatch"}}).method)[:3] == (96, 22, 11)
    m, _ = relpatch(channels=1)
    assert any("skipped: 1 channel" in n for n in m.notes)
    m, _ = relpatch(channels=3, gap=0, jitter=0, chroma="none")
    assert m.gap == 0 and m.jitter == 0 and m.tile == 21
    assert sum("defence off" in n for n in m.notes) == 3
    with pytest.raises(SelfSupError, match="needs RGB"):
        relpatch(channels=1, aberration=0.05)
    with pytest.raises(SelfSupError, match="method.tile=40"):
        relpatch(tile=40)
    with pytest.raises(SelfSupError, match="upsample"):
        relpatch(upsample=0, size=12)


def test_loss_logs_pretext_accuracy_and_figure(tmp_path):
    m, data = relpatch(channels=3, aberration=0.05, chroma="project")
    loss, logs = m.loss(data.images[:16])
    assert torch.isfinite(loss) and 0 <= logs["pretext_acc"] <= 1
    m.eval()
    with torch.no_grad():
        paths = m.figures(data.images[:4], tmp_path)
    assert paths[0].stat().st_size > 1000


# --- colour ops --------------------------------------------------------------------------------------------------

def test_drop_keeps_one_channel_and_fills_the_others_with_faint_noise():
    x = torch.rand(64, 3, 12, 12)
    out = drop_channels(x, torch.Generator().manual_seed(0), noise=0.01)
    kept_counts = [0, 0, 0]
    for b in range(64):
        same = [torch.equal(out[b, c], x[b, c]) for c in range(3)]
        assert sum(same) == 1
        k = same.index(True)
        kept_counts[k] += 1
        for c in range(3):
            if c != k:
                assert abs(out[b, c].mean() - x[b, k].mean()) < 0.01
                assert math.isclose(out[b, c].std(), 0.01 * x[b, k].std(), rel_tol=0.35)
    assert min(kept_counts) > 5  # every channel gets kept sometimes


def test_project_removes_the_green_magenta_component_only():
    x = torch.rand(8, 3, 6, 6)
    out = project_green_magenta(x)
    a = torch.tensor(GREEN_MAGENTA).view(1, 3, 1, 1)
    assert (out * a).sum(1).abs().max() < 1e-6
    gray, red_blue = torch.tensor([1.0, 1, 1]).view(1, 3, 1, 1), torch.tensor([1.0, 0, -1]).view(1, 3, 1, 1)
    for axis in (gray, red_blue):  # the components orthogonal to the axis are untouched
        assert torch.allclose((out * axis).sum(1), (x * axis).sum(1), atol=1e-6)
    assert torch.allclose(project_green_magenta(out), out, atol=1e-6)
    assert torch.allclose(project_green_magenta(torch.tensor([0.0, 1, 0]).view(1, 3, 1, 1)).flatten(),
                          torch.full((3,), 1 / 3))  # pure green becomes gray


def test_replace_copies_one_channel_into_all_three_and_gray_is_untouched():
    x = torch.rand(16, 3, 5, 5)
    out = replicate_channel(x, torch.Generator().manual_seed(0))
    for b in range(16):
        assert torch.equal(out[b, 0], out[b, 1]) and torch.equal(out[b, 1], out[b, 2])
        assert any(torch.equal(out[b, 0], x[b, c]) for c in range(3))
    gray = torch.rand(2, 1, 5, 5)
    for name in ("drop", "project", "replace"):
        assert chroma_defence(gray, name, torch.Generator()) is gray
    with pytest.raises(SelfSupError, match="unknown chroma defence"):
        chroma_defence(x, "blur", torch.Generator())


def test_aberration_moves_red_and_blue_outward_in_proportion_to_the_distance():
    x = torch.zeros(1, 3, 64, 64)
    for col in (8, 32, 56):  # left of the centre, at it, right of it
        x[..., col] = 1.0
    out = chromatic_aberration(x, 0.1)
    assert torch.equal(out[:, 1], x[:, 1])  # green is the reference

    def centroid(channel, lo, hi):
        profile = out[0, channel, 32, lo:hi]
        return float((profile * torch.arange(lo, hi)).sum() / profile.sum())

    for channel in (0, 2):
        assert centroid(channel, 0, 20) < 8 - 1.5  # left line moved left by ~0.1 * 24 px
        assert centroid(channel, 44, 64) > 56 + 1.5  # right line moved right
        assert abs(centroid(channel, 26, 38) - 32) < 0.3  # the centre stays put
    assert chromatic_aberration(x, 0.0) is x
    with pytest.raises(SelfSupError, match="RGB"):
        chromatic_aberration(torch.zeros(1, 1, 8, 8), 0.1)


# --- folder crops ------------------------------------------------------------------------------------------------

def write_photos(root, sizes=((60, 40), (50, 44), (40, 36)), classes=None):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        folder = root / classes[i] if classes else root
        folder.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
        arrays.append(pixels.transpose(2, 0, 1))
    return arrays


def test_folder_crops_count_size_content_and_labels(tmp_path):
    arrays = write_photos(tmp_path / "photos")
    # crop_scale 36 = the smallest photo's short side: that photo is cut as it is, so its crops are exact windows.
    data = sources.load(str(tmp_path / "photos"), image_size=16, seed=5, crops_per_image=4, crop_scale=36)
    assert data.images.shape == (12, 3, 16, 16)
    assert data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and data.groups.tolist() == data.labels.tolist()
    assert data.classes == ["photo0.png", "photo1.png", "photo2.png"]
    for k, (top, left) in enumerate(cache.crop_corners(36, 40, 16, 4, seed=5, index=2)):
        assert np.array_equal(data.images[8 + k].numpy(), arrays[2][:, top:top + 16, left:left + 16])
    assert any("each crop is labelled with its photo" in n for n in data.notes)


def test_folder_crops_are_seeded_cached_and_keyed_by_their_settings(tmp_path, monkeypatch):
    write_photos(tmp_path / "keyed")
    load = lambda **kw: sources.load(str(tmp_path / "keyed"), image_size=16, **kw)  # noqa: E731
    a = load(seed=0, crops_per_image=3)
    count = len(list(cache.cache_dir().glob("keyed-crops-*.npy")))
    assert count == 1 and any("enlarged" in n for n in a.notes)  # default crop_scale 64 > these small photos
    b = load(seed=0, crops_per_image=3)
    assert torch.equal(a.images, b.images)
    for path in cache.cache_dir().glob("keyed-crops-*"):
        path.unlink()
    assert torch.equal(load(seed=0, crops_per_image=3).images, a.images)  # decoded again: the same crops
    assert not torch.equal(load(seed=1, crops_per_image=3).images, a.images)
    keys = {cache.files_key(tmp_path / "keyed", sorted((tmp_path / "keyed").iterdir()), **s) for s in (
        {"crops_per_image": 3, "crop_scale": 64, "seed": 0}, {"crops_per_image": 4, "crop_scale": 64, "seed": 0},
        {"crops_per_image": 3, "crop_scale": 48, "seed": 0}, {"crops_per_image": 3, "crop_scale": 64, "seed": 1})}
    assert len(keys) == 4
    whole = sources.load(str(tmp_path / "keyed"), image_size=16)  # the whole-image cache lives beside it
    assert whole.images.shape == (3, 3, 16, 16) and whole.groups is None
    assert len(load(seed=0, crops_per_image=5)) == 15


def test_folder_crop_errors(tmp_path):
    write_photos(tmp_path / "photos")
    with pytest.raises(SelfSupError, match="crop_scale to at least 32"):
        sources.load(str(tmp_path / "photos"), image_size=32, crops_per_image=2, crop_scale=20)
    with pytest.raises(SelfSupError, match="at least 1"):
        sources.load(str(tmp_path / "photos"), image_size=16, crops_per_image=0)
    with pytest.raises(SelfSupError, match="data.crops_per_image' must be >= 1"):
        load_config({"data": {"crops_per_image": 0}})
    with pytest.raises(SelfSupError, match="not a folder"):
        load_data(load_config({"data": {"name": "synthetic", "crops_per_image": 4}}))


def test_holdout_keeps_a_photos_crops_together_unless_the_photo_is_the_label(tmp_path):
    write_photos(tmp_path / "flat")
    flat = sources.load(str(tmp_path / "flat"), image_size=16, crops_per_image=10, crop_scale=36)
    train, test = holdout(flat, 0.2, 0)
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1, 2, 2]  # a fifth of every photo's crops
    write_photos(tmp_path / "classes", sizes=[(40, 40)] * 6, classes=["a", "a", "a", "b", "b", "b"])
    labelled = sources.load(str(tmp_path / "classes"), image_size=16, crops_per_image=5, crop_scale=40)
    assert labelled.classes == ["a", "b"] and labelled.groups.unique().numel() == 6
    train, test = holdout(labelled, 0.34, 0)
    assert not set(train.groups.tolist()) & set(test.groups.tolist())  # whole photos on each side
    assert sorted(test.labels.unique().tolist()) == [0, 1] and len(test) == 10


# --- the shortcut study --------------------------------------------------------------------------------------------

def test_shortcut_study_end_to_end_and_resume(tmp_path):
    from selfsup.studies.shortcuts import run_study

    write_photos(tmp_path / "photos", sizes=[(80, 64)] * 3)
    cfg = load_config({"data": {"name": str(tmp_path / "photos"), "crops_per_image": 10, "image_size": 32},
                       "model": {"width": 4}, "method": {"name": "relpatch", "upsample": 0},
                       "train": {"batch_size": 8, "device": "cpu", "checkpoint_minutes": 0}, "eval": {"labels": 6}})
    said = []
    out = tmp_path / "study"
    results = run_study(cfg, None, out, cells=["aberration"], steps_per_cell=2, eval_limit=50, position_images=6,
                        log=said.append)
    assert list(results) == ["random init", "aberration"]
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert [r["cell"] for r in rows] == ["random init", "aberration"]
    for r in rows:
        for key in ("pretext_heldout", "linear_top1", "position_clean", "position_aberrated"):
            assert 0 <= float(r[key]) <= 1
    assert rows[1]["steps"] == "2" and rows[1]["chroma"] == "none"
    assert (out / "shortcuts.png").stat().st_size > 5000
    assert "without a chroma defence" in said[-1] and json.loads((out / "study.json").read_text())["conclusion"]
    cells = sorted((out / "cells").glob("*/cell.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    again = run_study(cfg, None, out, cells=["aberration"], steps_per_cell=2, eval_limit=50, position_images=6,
                      log=lambda _: None)
    assert again == results and [c.stat().st_mtime_ns for c in cells] == stamps  # nothing recomputed
    with pytest.raises(SelfSupError, match="other settings"):
        run_study(cfg, None, out, cells=["aberration"], steps_per_cell=3, eval_limit=50, position_images=6)
    other = copy.deepcopy(cfg)
    other.train.batch_size = 4  # any shared setting, not only the budget, makes cells incomparable
    with pytest.raises(SelfSupError, match="other settings"):
        run_study(other, None, out, cells=["aberration"], steps_per_cell=2, eval_limit=50, position_images=6)


def test_shortcut_study_needs_colour_for_its_colour_cells(tmp_path):
    from selfsup.studies.shortcuts import run_study

    cfg = load_config({"data": {"name": "synthetic", "synthetic_size": 60}, "method": {"name": "relpatch"}})
    with pytest.raises(SelfSupError, match="crops_per_image=100.*--cells none$"):
        run_study(cfg, None, tmp_path, cells=["none", "aberration+drop"], steps_per_cell=1)
    with pytest.raises(SelfSupError, match="unknown shortcut-study cell 'blur'"):
        run_study(cfg, None, tmp_path, cells=["blur"], steps_per_cell=1)
    with pytest.raises(SelfSupError, match="one of them"):
        run_study(cfg, 1.0, tmp_path, steps_per_cell=1)


def test_cli_knows_the_shortcut_study():
    from selfsup.cli import build_parser

    args = build_parser().parse_args(["study", "shortcuts", "--cells", "none,gap", "--steps-per-cell", "5"])
    assert args.study == "shortcuts" and args.cells == "none,gap" and args.steps_per_cell == 5
