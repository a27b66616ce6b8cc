"""RotNet and jigsaw: pretext labels, the permutation sets, the tile defences, and the jigsaw-permutations study."""

import csv
import itertools
import json
import subprocess
import sys

import pytest
import torch

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.methods.jigsaw import JigsawConfig, tile_geometry
from selfsup.methods.permutations import _SETS, MODES, all_permutations, hamming_permutations, set_distances
from selfsup.run import build_method
from selfsup.views import ops


def _method(name: str, channels: int = 1, size: int = 28, **method):
    cfg = load_config({"method": {"name": name, **method}, "model": {"width": 4}})
    data = sources.load("synthetic", "train", n=16, channels=channels, seed=0)
    if size != data.size:
        data.images = torch.nn.functional.interpolate(data.images.float(), size=size).to(torch.uint8)
    method, _ = build_method(cfg, data)
    method.set_generator(torch.Generator().manual_seed(0))
    return method, data


# ------------------------------------------------------------------------------------------------ RotNet

@pytest.mark.parametrize("all_rotations", [True, False])
def test_rotnet_label_undoes_the_rotation(all_rotations):
    method, data = _method("rotnet", all_rotations=all_rotations)
    x = data.images[:6].float() / 255
    rotated, labels = method.rotated(x)
    B = x.shape[0]
    assert rotated.shape[0] == len(labels) == (4 * B if all_rotations else B)
    if all_rotations:
        assert labels.tolist() == [k for k in range(4) for _ in range(B)]
    for j in range(len(labels)):
        back = torch.rot90(rotated[j], -int(labels[j]), dims=(-2, -1))  # turning back by the label
        assert torch.equal(back, x[j % B])
    # A quarter turn counter-clockwise moves the top-right corner to the top-left.
    probe = torch.zeros(1, 1, 4, 4)
    probe[..., 0, 3] = 1
    assert ops.rotate90(probe, 1)[0, 0, 0, 0] == 1


def test_rotnet_logs_pretext_accuracy_and_learns(tmp_path):
    method, data = _method("rotnet")
    loss, logs = method.loss(data.images)
    assert 0 <= logs["pretext_acc"] <= 1 and abs(loss.item() - torch.log(torch.tensor(4.0)).item()) < 1.0
    method.eval()
    with torch.no_grad():
        paths = method.figures(data.images[:3], tmp_path)
    assert paths and paths[0].stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ permutations

def _brute_force_min_distance(perms: torch.Tensor) -> int:
    rows = [tuple(p) for p in perms.tolist()]
    return min(sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(rows, 2))


@pytest.mark.parametrize("P", [10, 64, 100, 1000])
def test_permutation_sets_are_distinct_valid_and_report_their_min_distance(P):
    perms, min_distance = hamming_permutations(P, seed=0)
    assert perms.shape == (P, 9) and perms.dtype == torch.int64
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(P, 9))  # each row a permutation of 0..8
    assert len({tuple(p) for p in perms.tolist()}) == P
    if P <= 100:
        assert min_distance == _brute_force_min_distance(perms)
    else:  # 500k pairs: the same count by a separate, vectorized route
        d = (perms[:, None, :] != perms[None, :, :]).sum(-1) + 99 * torch.eye(P, dtype=torch.long)
        assert min_distance == int(d.min())
    assert 2 <= min_distance <= 9


def test_greedy_modes_follow_their_criteria():
    """Each added permutation is the best remaining candidate under its mode's criterion (checked against all
    n! candidates; n = 7 keeps the check fast, the code path is the one n = 9 takes)."""
    n = 7
    every = all_permutations(n).long()

    def check(mode: str, criterion, best) -> None:
        perms, _ = hamming_permutations(15, n=n, seed=3, mode=mode)
        for k in range(1, len(perms)):
            d = (every[:, None, :] != perms[None, :k, :]).sum(-1)  # (n!, k)
            chosen = (every[:, None, :] == perms[None, :k, :]).all(-1).any(-1)
            mine = criterion((perms[k][None] != perms[:k]).sum(-1))
            assert int(best(criterion(d.T)[~chosen])) == int(mine), (mode, k)

    check("max", lambda d: d.sum(0), torch.max)  # Algorithm 1 of the paper: largest summed distance
    check("maximin", lambda d: d.min(0).values, torch.max)
    check("min", lambda d: d.sum(0), torch.min)


def test_permutation_sets_are_seeded_nested_and_min_distance_falls_with_P():
    a, _ = hamming_permutations(64, seed=1)
    b, _ = hamming_permutations(64, seed=1)
    c, _ = hamming_permutations(64, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for mode in MODES:
        big, _ = hamming_permutations(1000 if mode == "max" else 200, seed=0, mode=mode)
        distances = []
        for P in (10, 64, 100, len(big)):
            perms, d = hamming_permutations(P, seed=0, mode=mode)
            distances.append(d)
        # Nested: a set built for a small P from scratch (not from the cache) is the prefix of the large one.
        cached = dict(_SETS)
        _SETS.clear()
        try:
            assert torch.equal(hamming_permutations(64, seed=0, mode=mode)[0], big[:64])
        finally:
            _SETS.update(cached)
        assert distances == sorted(distances, reverse=True), mode
    # The criteria order the sets as in the paper's ablation: maximin keeps the largest minimum distance, the
    # "min" set is crowded (small average distance), max and random average about 8 (n - 1 for random pairs).
    assert hamming_permutations(100, mode="maximin")[1] > hamming_permutations(100, mode="max")[1]
    assert set_distances(hamming_permutations(100, mode="min")[0])[1] < 5
    assert set_distances(hamming_permutations(100, mode="max")[0])[1] > 8


def test_permutation_set_errors():
    with pytest.raises(SelfSupError, match="unknown permutation-set mode"):
        hamming_permutations(10, mode="average")
    with pytest.raises(SelfSupError, match="holds 1 to 24"):
        hamming_permutations(100, n=4)


# ------------------------------------------------------------------------------------------------ jigsaw

def test_tile_geometry_upsamples_small_images():
    assert tile_geometry(28, JigsawConfig()) == (64, 18, 3, 2)
    assert tile_geometry(96, JigsawConfig()) == (96, 27, 5, 2)  # STL-10: no upsampling
    assert tile_geometry(28, JigsawConfig(upsample=0)) == (28, 7, 1, 1)
    with pytest.raises(SelfSupError, match="method.upsample"):
        tile_geometry(16, JigsawConfig(upsample=0, gap=1.0))


@pytest.mark.parametrize("channels", [1, 3])
def test_jigsaw_label_names_the_shuffle(channels):
    """Un-permuting the shuffled tiles with the label's permutation gives the tiles in grid order."""
    method, data = _method("jigsaw", channels=channels, permutations=64, tile_norm=False, channel_shift=0, gray_p=0.0)
    shuffled, labels, tiles = method.puzzles(data.images[:8])
    assert shuffled.shape == tiles.shape == (8, 9, channels, 18, 18)
    perms = method.permutations[labels]  # (B, 9)
    restored = shuffled.gather(1, perms.argsort(1).view(8, 9, 1, 1, 1).expand_as(shuffled))
    assert torch.equal(restored, tiles)
    assert not torch.equal(shuffled, tiles)


def test_jigsaw_tiles_come_from_their_grid_places():
    """With no gap and no jitter, tile k of a 64 px image is the block at row k // 3, column k % 3."""
    method, _ = _method("jigsaw", size=64, upsample=0, gap=0.0, jitter=0.0, tile=21, tile_norm=False,
                        permutations=10)
    x = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    _, _, tiles = method.puzzles(x)
    image = x.float() / 255
    for b in range(2):
        # The 63 px grid sits at one of 2 x 2 places in the 64 px image, the same for all tiles of an image.
        fits = [(dy, dx) for dy in (0, 1) for dx in (0, 1)
                if all(torch.equal(tiles[b, k, 0], image[b, 0, dy + (k // 3) * 21:dy + (k // 3) * 21 + 21,
                                                           dx + (k % 3) * 21:dx + (k % 3) * 21 + 21])
                       for k in range(9))]
        assert len(fits) == 1


def test_jigsaw_defences():
    method, data = _method("jigsaw", channels=3, permutations=10)
    assert any("min Hamming distance" in n for n in method.notes)
    tiles = torch.rand(2, 9, 3, 18, 18) * torch.rand(2, 9, 3, 1, 1) + torch.rand(2, 9, 3, 1, 1)
    tiles[0, 0] = 0.3  # a blank tile
    # After the backbone's input normalization every tile channel is zero mean, unit std; a blank one stays flat.
    seen = method.backbone.normalize(method._normalize_tiles(tiles).flatten(0, 1)).view(2, 9, 3, 18, 18)
    mean, std = seen.mean(dim=(-2, -1)), seen.std(dim=(-2, -1))
    assert mean.abs().max() < 1e-4 and std[0, 0].max() == 0
    busy = tiles.std(dim=(-2, -1)) > 0.02
    assert (std[busy] - 1).abs().max() < 1e-4
    gray, _ = _method("jigsaw", channels=1)
    assert any("skipped" in n for n in gray.notes)


def test_jigsaw_channel_shift_moves_each_channel_by_at_most_s():
    method, _ = _method("jigsaw", channels=3, channel_shift=2, permutations=10)
    tiles = torch.rand(2, 9, 3, 18, 18)
    shifted = method._shift_channels(tiles)
    assert shifted.shape == tiles.shape
    # The centre of every channel is the original content moved by (dy, dx) in [-2, 2]^2.
    for b, k, c in [(0, 0, 0), (1, 8, 2), (0, 4, 1)]:
        centre = shifted[b, k, c, 2:-2, 2:-2]
        assert any(torch.equal(centre, tiles[b, k, c, 2 + dy:16 + dy, 2 + dx:16 + dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))


def test_jigsaw_loss_figures_and_checkpointed_permutations(tmp_path):
    method, data = _method("jigsaw", permutations=10)
    loss, logs = method.loss(data.images)
    assert torch.isfinite(loss) and 0 <= logs["pretext_acc"] <= 1
    assert "permutations" in method.state_dict()
    method.eval()
    with torch.no_grad():
        paths = method.figures(data.images[:2], tmp_path)
    assert paths[0].stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ the study

def _study_cfg():
    return load_config({"data": {"name": "synthetic", "limit": 256, "synthetic_size": 600}, "model": {"width": 4},
                        "train": {"batch_size": 32, "device": "cpu"}, "eval": {"labels": 50}})


def test_study_runs_resumes_and_writes_outputs(tmp_path):
    from selfsup.studies.jigsaw_permutations import run_study

    said = []
    rows = run_study(_study_cfg(), [10], ["max", "min"], tmp_path, steps_per_cell=2, eval_limit=200,
                     log=said.append)
    assert [(r["mode"], r["P"]) for r in rows] == [("max", 10), ("min", 10)]
    table = list(csv.DictReader(open(tmp_path / "study.csv")))
    assert len(table) == 2 and all(0 <= float(r["linear_top1"]) <= 1 for r in table)
    assert int(table[0]["min_hamming"]) == hamming_permutations(10, mode="max")[1]
    assert (tmp_path / "study.png").stat().st_size > 1000
    assert said[-1].startswith("conclusion:")
    cells = sorted((tmp_path / "cells").glob("*/cell.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    again = run_study(_study_cfg(), [10], ["max", "min"], tmp_path, steps_per_cell=2, eval_limit=200,
                      log=lambda _: None)
    assert again == rows and [c.stat().st_mtime_ns for c in cells] == stamps  # nothing recomputed
    with pytest.raises(SelfSupError, match="different settings"):
        run_study(_study_cfg(), [10], ["max"], tmp_path, steps_per_cell=3, eval_limit=200, log=lambda _: None)


def test_study_errors(tmp_path):
    from selfsup.studies.jigsaw_permutations import run_study

    with pytest.raises(SelfSupError, match="unknown permutation-set mode"):
        run_study(_study_cfg(), [10], ["avg"], tmp_path, steps_per_cell=1)
    with pytest.raises(SelfSupError, match="exactly one"):
        run_study(_study_cfg(), [10], ["max"], tmp_path)
    with pytest.raises(SelfSupError, match="must be positive"):
        run_study(_study_cfg(), [10], ["max"], tmp_path, steps_per_cell=0)
    two_by_two = load_config({"data": {"name": "synthetic"},
                              "method": {"name": "jigsaw", "grid": 2, "permutations": 10}})
    with pytest.raises(SelfSupError, match="sizes must be 2 to 24"):
        run_study(two_by_two, [100], ["max"], tmp_path, steps_per_cell=1)


def test_study_cli(tmp_path):
    out = tmp_path / "study"
    result = subprocess.run(
        [sys.executable, "-m", "selfsup", "study", "jigsaw-permutations", "--data", "synthetic", "--permutations",
         "24", "--steps-per-cell", "1", "--limit", "128", "--eval-limit", "100", "--out", str(out),
         "--set", "model.width=4", "--set", "train.batch_size=32", "--set", "data.synthetic_size=300",
         "--set", "eval.labels=20"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "conclusion:" in result.stdout and (out / "study.png").exists()
    assert json.loads((out / "study.json").read_text())["permutations"] == [24]
