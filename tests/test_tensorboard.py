"""--tensorboard mirrors metrics.jsonl into TensorBoard event files, also across a resume."""

import dataclasses
import json

import pytest

from selfsup.errors import SelfSupError
from selfsup.train import train
from test_train import interrupt_after, tiny_setup

pytest.importorskip("tensorboard", reason="tensorboard is in the test extra: pip install -e '.[test]'")


def scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_every_logged_row_becomes_scalars(tmp_path):
    cfg, data, method = tiny_setup(steps=4)
    cfg.train = dataclasses.replace(cfg.train, tensorboard=True)
    train(method, data.images, cfg.train, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    loss = scalars(tmp_path / "tensorboard", "train/loss")
    assert [s for s, _ in loss] == [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [v for _, v in scalars(tmp_path / "tensorboard", "train/lr")] == pytest.approx([r["lr"] for r in rows])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tmp_path / "tensorboard"))
    tags.Reload()
    assert "train/z_std" in tags.Tags()["scalars"]  # the collapse monitor is a curve too
    assert "train/step" not in tags.Tags()["scalars"]


def test_a_resumed_run_has_each_step_once(tmp_path, monkeypatch):
    cfg, data, method = tiny_setup(steps=6)
    cfg.train = dataclasses.replace(cfg.train, tensorboard=True)
    interrupt_after(method, monkeypatch, 3)
    assert train(method, data.images, cfg.train, tmp_path, progress=False).interrupted
    _, _, resumed = tiny_setup(steps=6)
    train(resumed, data.images, cfg.train, tmp_path, resume=True, progress=False)
    steps = [s for s, _ in scalars(tmp_path / "tensorboard", "train/loss")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_without_the_package_the_run_is_refused_with_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    from selfsup.report.tensorboard import check_available

    with pytest.raises(SelfSupError, match=r"pip install -e '\.\[tensorboard\]'"):
        check_available()
