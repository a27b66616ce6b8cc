"""The CLI as a user runs it: a subprocess, from flags to a complete run folder, and every bad-input error."""

import json
import os
import subprocess
import sys

import pytest
import torch


def selfsup(*args, cwd=None, env_extra=None):
    env = {**os.environ, "SELFSUP_NO_DOWNLOAD": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "selfsup", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_run_produces_a_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    r = selfsup("run", "--data", "synthetic", "--steps", "3", "--limit", "512", "--out", str(out), "--no-progress",
                "--labels", "50", "--set", "train.batch_size=64", "--set", "eval.scratch_epochs=2",
                "--set", "eval.tsne_points=300")
    assert r.returncode == 0, r.stderr
    for name in ["config.yaml", "env.json", "metrics.jsonl", "checkpoints/last.pt", "encoder.safetensors",
                 "eval.json", "results.md", "split.json", "train.json", "features.safetensors", "retrieval.png",
                 "tsne.png", "clusters.png", "report.html"]:
        assert (out / name).is_file(), name
    result = json.loads((out / "eval.json").read_text())
    for value in [result["knn"]["top1"], result["linear"]["top1"], result["few_label"]["ssl"],
                  result["few_label"]["random_init"], result["few_label"]["supervised_scratch"]]:
        assert 0.0 <= value <= 1.0
    assert result["few_label"]["labels"] == 50
    assert "few-label, 50 labels" in r.stdout and "random init" in r.stdout
    assert "random_init_top1" not in result["knn"]  # the all-label random-init rows are opt-in
    for protocol in ["clustering", "low_shot", "retrieval", "tsne"]:  # on by default, each beside random init
        assert "random_init" in result[protocol], protocol
    assert "finetune" not in result  # minutes of training: asked for explicitly
    assert "Low-shot linear SVM" in r.stdout and "Retrieval (test split" in r.stdout
    torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__
    from selfsup.hardware import cpu_label
    assert env["cpu"] == cpu_label() and "cores" in env["cpu"]  # which CPU: minutes mean different work on others

    # Evaluate again with other labels; the same split seed gives the same numbers for the same labels.
    r2 = selfsup("eval", str(out), "--labels", "50", "--protocols", "few-label")
    assert r2.returncode == 0, r2.stderr
    again = json.loads((out / "eval.json").read_text())
    assert again["few_label"]["ssl"] == result["few_label"]["ssl"]
    assert again["tsne"] == result["tsne"] and again["knn"] == result["knn"]  # the other protocols' results stay
    assert "reused" in r2.stdout + r2.stderr  # features.safetensors: nothing extracted twice


@pytest.mark.parametrize("args, message", [
    (["run", "--data", "synthetic", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["run", "--data", "synthetic", "--set", "train.lr=abc"], "must be float"),
    (["run", "--data", "synthetic", "--method", "nope"], "unknown method 'nope'"),
    (["run", "--data", "nowhere-dataset"], "nowhere-dataset"),
    (["run", "--data", "synthetic", "--limit", "100", "--set", "train.batch_size=200"], "larger than the data"),
    (["run", "--data", "synthetic", "--limit", "100", "--set", "train.batch_size=20", "--labels", "5000"],
     "eval.labels=5000"),
    (["run", "--config", "missing.yaml"], "does not exist"),
    (["run", "--data", "synthetic", "--labels", "5"], "labels"),
    (["run", "--data", "synthetic", "--device", "gpu"], "is not a device"),
    (["run", "--data", "synthetic", "--set", "eval.protocols=[knn,svm]"], "must be one of knn, linear, few-label"),
    (["eval", "not-a-run"], "not a run folder"),
    (["report", "not-a-run"], "not a run folder"),
    (["compare", "not-a-run"], "not-a-run"),
    (["run", "--data", "synthetic", "--set", "eval.lowshot_shots=[0,2]"], "eval.lowshot_shots"),
    (["run", "--data", "synthetic", "--set", "eval.protocols=[finetune]", "--set", "eval.finetune_fractions=[2]"],
     "eval.finetune_fractions"),
    (["study", "augmentations", "--data", "synthetic", "--minutes-per-cell", "1", "--steps-per-cell", "5"],
     "not both"),
    (["study", "augmentations", "--data", "synthetic", "--steps-per-cell", "0"], "must be positive"),
    (["run", "--resume", "not-a-run"], "not a run folder"),
    (["config", "--method", "nope"], "unknown method"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = selfsup(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "runs").exists()  # bad input leaves no half-made run folder behind


@pytest.mark.parametrize("command", ["run", "pretrain", "eval", "methods", "data", "views", "config"])
def test_help_has_examples(command):
    r = selfsup(command, "--help")
    assert r.returncode == 0 and "example" in r.stdout


def test_methods_lists_simclr():
    r = selfsup("methods")
    assert r.returncode == 0 and "simclr" in r.stdout and "2020" in r.stdout


def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "selfsup", "pretrain", "--data", "synthetic", "--steps", "400", "--limit", "256",
            "--out", str(out), "--no-progress", "--set", "train.batch_size=32", "--set", "model.width=4"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SELFSUP_NO_DOWNLOAD": "1"})
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < state["step"] < 400
    refused = selfsup("eval", str(out))
    assert refused.returncode == 2 and "has not finished" in refused.stderr
    r = selfsup("pretrain", "--resume", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 400
    assert json.loads((out / "train.json").read_text())["steps"] == 400
    assert (out / "encoder.safetensors").is_file()


def test_views_gallery_png(tmp_path):
    out = tmp_path / "g.png"
    r = selfsup("views", "--data", "synthetic", "--recipe", "byol", "--n", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    from PIL import Image

    with Image.open(out) as img:
        assert img.width > 200 and img.height > 200
    assert "view 2: solarize (p=0.2" in r.stdout


def test_config_lists_the_presets_and_run_takes_one():
    r = selfsup("config")
    assert r.returncode == 0 and "presets (--preset NAME" in r.stdout and "fast-cpu" in r.stdout
    r = selfsup("run", "--preset", "fsat-cpu", "--data", "synthetic")
    assert r.returncode != 0 and "unknown preset 'fsat-cpu'; known presets: fast-cpu" in r.stderr


def test_pretrain_with_a_preset_saves_its_settings(tmp_path):
    import yaml

    from selfsup.config import presets

    out = tmp_path / "run"
    r = selfsup("pretrain", "--preset", "fast-cpu", "--data", "synthetic", "--steps", "2", "--limit", "256",
                "--set", "model.width=4", "--set", "train.device=cpu", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    preset = yaml.safe_load(presets()["fast-cpu"].read_text())
    for key, value in preset["train"].items():
        assert saved["train"][key] == value, key
    assert saved["model"]["width"] == 4  # --set still wins over the preset
    assert "\nprecision: " in r.stdout  # what precision auto chose on this machine, and why
    native = json.loads((out / "env.json").read_text())["cpu_bf16"]
    assert json.loads((out / "train.json").read_text())["precision"] == ("bf16" if native else "fp32")  # as trained
