"""A run as a folder, on every kind of data: named sources with an unlabeled split, and image folders."""

import json

import numpy as np
import torch
from PIL import Image

from selfsup.config import load_config
from selfsup.data import sources
from selfsup.run import evaluate_run, load_data, pretrain
from test_data import stl_images, write_stl10, write_stl_x


def test_stl10_pretrains_on_the_unlabeled_split_too(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    made = write_stl10(tmp_path)
    cfg = load_config({"data": {"name": "stl10"}})
    pretrain_set, none = load_data(cfg, for_pretraining=True)
    assert none is None and len(pretrain_set) == len(made["train"]) + len(made["unlabeled"])
    train, test = load_data(cfg)
    assert len(train) == len(made["train"]) and len(test) == len(made["test"])
    assert (train.labels >= 0).all()


def colour_folder(root, per_class: int = 12):
    """Two classes of noisy images: reddish and bluish, so labels are learnable."""
    rng = np.random.default_rng(0)
    for name, channel in [("red", 0), ("blue", 2)]:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (20, 20, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_runs_end_to_end_with_a_held_out_fifth(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    folder = colour_folder(tmp_path / "photos")
    cfg = load_config({"data": {"name": str(folder), "image_size": 16}, "model": {"width": 4},
                       "train": {"steps": 2, "batch_size": 8, "device": "cpu"},
                       "eval": {"labels": 4, "scratch_epochs": 1}})
    run_dir, result = pretrain(cfg, out=tmp_path / "run", progress=False, log=lambda _: None)
    assert result.steps == 2
    evaluate_run(run_dir, log=lambda _: None)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    # 24 images: a fifth of each class (2 x 2) is held out for testing and never pretrained on.
    assert evaluation["data"]["test"] == 4 and evaluation["data"]["train"] == 20
    assert evaluation["few_label"]["labels"] == 4
    assert 0 <= evaluation["few_label"]["ssl"] <= 1
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 2


def test_flat_folder_pretrains_and_says_why_it_cannot_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    folder = colour_folder(tmp_path / "photos")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(folder.rglob("*.png"))):
        path.rename(flat / f"{i}.png")
    cfg = load_config({"data": {"name": str(flat), "image_size": 16}, "model": {"width": 4},
                       "train": {"steps": 1, "batch_size": 8, "device": "cpu"}})
    run_dir, _ = pretrain(cfg, out=tmp_path / "run", progress=False, log=lambda _: None)
    said = []
    evaluate_run(run_dir, log=said.append)
    assert json.loads((run_dir / "eval.json").read_text())["skipped"] == "no labels"
    assert "sub-folder per class" in said[0]
    assert "skipped" in (run_dir / "results.md").read_text()


def test_validation_split_stands_in_for_the_test_split(tmp_path, monkeypatch):
    """data.validation holds out the same training images whatever the seed, keeps them out of pretraining, never
    reads the test split, and every result names the validation split."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    base = {"data": {"name": "synthetic", "synthetic_size": 120, "validation": 0.25}, "model": {"width": 4}}
    full, _ = load_data(load_config({"data": {"name": "synthetic", "synthetic_size": 120}}))
    key = {bytes(img.numpy().tobytes()): i for i, img in enumerate(full.images)}
    # The synthetic source draws its images from train.seed; here the same images come for every seed, so the test
    # sees whether the hold-out itself depends on the seed. The test split is never read.
    loaded = []

    def fixed(name, split, **options):
        loaded.append(split)
        return full

    monkeypatch.setattr(sources, "load", fixed)

    def indices(images):
        return {key[bytes(img.numpy().tobytes())] for img in images.images}

    split = {}
    for seed in (0, 1):
        cfg = load_config({**base, "train": {"seed": seed}})
        train, val = load_data(cfg)
        pretrain_set, none = load_data(cfg, for_pretraining=True)
        assert none is None and len(train) + len(val) == len(full) and len(val) == 30
        assert indices(train).isdisjoint(indices(val)) and indices(pretrain_set) == indices(train)
        assert torch.bincount(val.labels).tolist() == torch.bincount(full.labels).div(4).round().long().tolist()
        split[seed] = indices(val)
    assert split[0] == split[1] and "test" not in loaded
    monkeypatch.undo()
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))

    cfg = load_config({**base, "train": {"steps": 2, "batch_size": 8, "device": "cpu"},
                       "eval": {"labels": 10, "scratch_epochs": 1, "protocols": ["knn", "few-label"]}})
    run_dir, _ = pretrain(cfg, out=tmp_path / "run", progress=False, log=lambda _: None)
    evaluate_run(run_dir, log=lambda _: None)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["data"]["split"] == "validation" and evaluation["data"]["test"] == 30
    assert "on the validation split" in (run_dir / "results.md").read_text()
    assert "test split" not in (run_dir / "results.md").read_text()
    assert "on the validation split" in (run_dir / "report.html").read_text()


def test_validation_images_are_left_out_of_stl10s_unlabeled_pretraining_set(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    made = write_stl10(tmp_path)
    # Eight training images, two per class, so a validation half holds out one of each.
    made["train"] = stl_images(8, 100)
    write_stl_x(tmp_path / "stl10_binary" / "train_X.bin", made["train"])
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 1, 2, 2, 3, 3, 4, 4]))
    cfg = load_config({"data": {"name": "stl10", "validation": 0.5}})
    pretrain_set, _ = load_data(cfg, for_pretraining=True)
    train, val = load_data(cfg)
    assert len(train) == len(val) == 4
    assert len(pretrain_set) == len(train) + len(made["unlabeled"])
    seen = {img.numpy().tobytes() for img in pretrain_set.images}
    assert all(img.numpy().tobytes() in seen for img in train.images)
    assert not any(img.numpy().tobytes() in seen for img in val.images)
