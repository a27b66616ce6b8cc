"""Config: YAML + flags + --set, with one-line errors for every kind of bad input."""

import pytest

from selfsup.config import load_config, to_dict
from selfsup.errors import SelfSupError


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.5\n  epochs: 3\nmethod:\n  name: simclr\n  temperature: 0.3\n")
    cfg = load_config({"train": {"seed": 4}}, ["train.lr=0.1", "views.crop.scale=[0.3, 1.0]"], path)
    assert cfg.train.lr == 0.1 and cfg.train.seed == 4 and cfg.method.temperature == 0.3
    # The file gave a budget in epochs: it replaces the default minutes budget.
    assert cfg.train.epochs == 3.0 and cfg.train.minutes is None
    assert tuple(cfg.views.crop.scale) == (0.3, 1.0)
    assert to_dict(cfg)["train"]["lr"] == 0.1


def test_a_later_budget_replaces_an_earlier_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    cfg = load_config({"train": {"steps": 10}}, [], path)
    assert cfg.train.steps == 10 and cfg.train.epochs is None and cfg.train.minutes is None


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=0.1"], "unknown config key 'train.lrr'"),
    (["trian.lr=0.1"], "unknown config section 'trian'"),
    (["train.lr=fast"], "config key 'train.lr' must be float"),
    (["train.batch_size=0"], "must be >= 2"),
    (["train.optimizer=adam"], "must be one of lars, sgd, adamw"),
    (["method.name=nope"], "unknown method 'nope'"),
    (["method.temperature=-1"], "must be >= 0.0001"),
    (["train.lr"], "--set takes key=value"),
    (["train.steps=10", "train.minutes=3"], "exactly one training budget"),
    (["model.backbone=vgg"], "must be one of small-cnn, resnet18"),
    (["views.color.strenght=1"], "unknown config key 'views.color.strenght'"),
    (["views.color=3"], "config section 'views.color' must be a mapping"),
    (["views.blur.p=2"], "must be <= 1"),
    (["data.validation=1"], "must be <= 0.999"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(SelfSupError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config({}, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(SelfSupError, match="does not exist"):
        load_config(file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(SelfSupError, match="not valid YAML"):
        load_config(file=bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(SelfSupError, match="must hold a mapping"):
        load_config(file=bad)


def test_nested_sections_merge_key_by_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("views:\n  color:\n    strength: 0.3\n    p: 0.5\n")
    cfg = load_config({}, ["views.color.p=0.9"], path)
    assert cfg.views.color.strength == 0.3 and cfg.views.color.p == 0.9
    assert to_dict(cfg)["views"]["color"] == {"strength": 0.3, "p": 0.9}


def test_exponent_floats_from_the_command_line():
    cfg = load_config({}, ["train.lr=1e-3", "train.weight_decay=5E-4"])
    assert cfg.train.lr == 0.001 and cfg.train.weight_decay == 0.0005
    with pytest.raises(SelfSupError, match="must be float"):
        load_config({}, ["train.lr=fast"])


def test_presets_sit_under_everything_else(tmp_path, monkeypatch):
    import selfsup.config as config

    shipped = tmp_path / "presets"
    shipped.mkdir()
    (shipped / "quick.yaml").write_text("# a test recipe\nmethod:\n  name: simclr\n  temperature: 0.3\n"
                                         "train:\n  lr: 0.5\n  lars_trust: 0.02\nmodel:\n  width: 8\n")
    monkeypatch.setattr(config, "PRESETS_DIR", shipped)
    assert list(config.presets()) == ["quick"]
    cfg = load_config({}, [], preset="quick")
    assert (cfg.method.temperature, cfg.train.lr, cfg.train.lars_trust, cfg.model.width) == (0.3, 0.5, 0.02, 8)
    # A file, the flags and --set each override the preset, key by key.
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 0.7\n")
    cfg = load_config({"model": {"width": 16}}, ["method.temperature=0.1"], path, preset="quick")
    assert (cfg.method.temperature, cfg.train.lr, cfg.train.lars_trust, cfg.model.width) == (0.1, 0.7, 0.02, 16)
    # Another method: the preset's method keys (a temperature BYOL does not have) are left out, the rest applies.
    cfg = load_config({"method": {"name": "byol"}}, [], preset="quick")
    assert cfg.method.name == "byol" and not hasattr(cfg.method, "temperature")
    assert (cfg.train.lr, cfg.train.lars_trust, cfg.model.width) == (0.5, 0.02, 8)
    with pytest.raises(SelfSupError, match="unknown preset 'qiuck'; known presets: quick"):
        load_config({}, [], preset="qiuck")


def test_shipped_presets_load_as_written():
    import yaml

    from selfsup.config import presets

    def check(written, got, where):
        if isinstance(written, dict):
            for key, value in written.items():
                check(value, got[key], f"{where}.{key}")
        else:
            assert (list(got) if isinstance(got, tuple) else got) == written, where

    assert "fast-cpu" in presets()
    for name, path in presets().items():
        check(yaml.safe_load(path.read_text()), to_dict(load_config({}, [], preset=name)), name)
