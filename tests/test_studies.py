"""The augmentation study: the cells' views, resuming, and its outputs."""

import csv
import json

import pytest
import torch

from selfsup.config import load_config
from selfsup.errors import SelfSupError
from selfsup.studies.augmentations import STUDY_OPS, cell_recipe, run_study


def test_cell_views_in_both_modes():
    split = cell_recipe("crop", "noise", 1, 28, "split")
    assert [g.count for g in split.groups] == [1, 1]
    assert split.names[0].startswith("view 1: random resized crop") and split.names[1].startswith("view 2: gaussian noise")
    paper = cell_recipe("crop", "noise", 1, 28, "paper")
    assert len(paper.groups[0].stages) == 2 and paper.groups[1].stages == []
    assert paper.names[-1] == "view 2: identity"
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    v1, v2 = paper(x, torch.Generator().manual_seed(0))
    assert torch.equal(v2, x.float() / 255)  # the identity branch
    assert len(cell_recipe("rotate", "rotate", 3, 32, "paper").groups[0].stages) == 1  # diagonal: one op alone


@pytest.mark.parametrize("op", sorted(STUDY_OPS))
def test_every_study_op_runs_on_one_and_three_channels(op):
    for channels in (1, 3):
        r = cell_recipe(op, op, channels, 28, "split")
        views = r(torch.randint(0, 256, (3, channels, 28, 28), dtype=torch.uint8), torch.Generator().manual_seed(0))
        assert all(v.shape == (3, channels, 28, 28) and 0 <= v.min() and v.max() <= 1 for v in views)


def test_study_runs_resumes_and_writes_outputs(tmp_path):
    cfg = load_config({"data": {"name": "synthetic", "limit": 300, "synthetic_size": 600}, "model": {"width": 4},
                       "train": {"batch_size": 32, "device": "cpu"}})
    said = []
    results = run_study(cfg, ["crop", "noise"], 0.01, tmp_path, eval_limit=200, log=said.append)
    assert set(results) == {"crop+crop", "crop+noise", "noise+crop", "noise+noise"}
    rows = list(csv.DictReader(open(tmp_path / "study.csv")))
    assert len(rows) == 4 and all(0 <= float(r["linear_top1"]) <= 1 for r in rows)
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    assert said[-1].startswith("best")
    cells = sorted((tmp_path / "cells").glob("*/cell.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    again = run_study(cfg, ["crop", "noise"], 0.01, tmp_path, eval_limit=200, log=lambda _: None)
    assert again == results and [c.stat().st_mtime_ns for c in cells] == stamps  # nothing recomputed
    assert json.loads(cells[0].read_text())["views"]


def test_study_errors():
    cfg = load_config({"data": {"name": "synthetic"}})
    with pytest.raises(SelfSupError, match="unknown study op 'zoom'"):
        run_study(cfg, ["crop", "zoom"], 0.01, None)


def test_study_by_steps_is_reproducible_and_refuses_mixed_settings(tmp_path):
    cfg = lambda: load_config({"data": {"name": "synthetic", "limit": 200, "synthetic_size": 400},  # noqa: E731
                               "model": {"width": 4}, "train": {"batch_size": 32, "device": "cpu"}})
    a = run_study(cfg(), ["noise"], None, tmp_path / "a", eval_limit=100, log=lambda _: None, steps_per_cell=3)
    b = run_study(cfg(), ["noise"], None, tmp_path / "b", eval_limit=100, log=lambda _: None, steps_per_cell=3)
    assert a == b  # a step budget makes the same cells whatever the machine's load
    assert json.loads((tmp_path / "a" / "cells" / "noise__noise" / "cell.json").read_text())["steps"] == 3
    with pytest.raises(SelfSupError, match="holds a study with other settings"):
        run_study(cfg(), ["noise"], None, tmp_path / "a", eval_limit=100, steps_per_cell=5)
    with pytest.raises(SelfSupError, match="one of them"):
        run_study(cfg(), ["noise"], 1.0, tmp_path / "c", steps_per_cell=5)
