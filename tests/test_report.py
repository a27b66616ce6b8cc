"""report.html and compare.md/.html from run folders built by hand: full, interrupted, unlabelled, hostile text."""

import base64
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from PIL import Image

from selfsup.config import load_config, to_dict
from selfsup.errors import SelfSupError
from selfsup.report.compare import compare_runs
from selfsup.report.figures import image_grid_png, matrix_png
from selfsup.report.html import SECTIONS, embedding_dim, read_run, write_report

SECTION_IDS = [sid for sid, _ in SECTIONS]
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def full_eval() -> dict:
    """eval.json with every protocol, the numbers chosen so that each one is recognizable in the page."""
    def shots(base: float) -> dict:
        return {"results": {str(s): {"mean": base + 0.05 * i, "std": 0.02, "runs": [base] * 5, "costs": [1.0] * 5,
                                     "cost_selection": "cv"} for i, s in enumerate([1, 2, 4, 8, 16])}}

    return {
        "schema": 1, "data": {"name": "synthetic", "train": 512, "test": 100, "classes": 10},
        "knn": {"top1": 0.771, "k": 200, "temperature": 0.1},
        "linear": {"top1": 0.834, "weight_decay": 1e-4, "val_top1": 0.8, "train_size": 512},
        "few_label": {"labels": 200, "seed": 0, "split_file": "split.json", "ssl": 0.724, "random_init": 0.673,
                      "supervised_scratch": 0.735, "details": {}},
        "clustering": {"nmi": 0.612, "ari": 0.45, "accuracy": 0.66, "k": 10, "metric": "cosine", "restarts": 3,
                       "split": "test", "figure": "clusters.png",
                       "random_init": {"nmi": 0.301, "ari": 0.2, "accuracy": 0.4}},
        "low_shot": {"shots": [1, 2, 4, 8, 16], "draws": 5, "classifier": "logistic regression",
                     "ssl": shots(0.41), "random_init": shots(0.22)},
        "retrieval": {"database": "train", "ks": [1, 5, 10, 20],
                      "ssl": {"precision_at": {"1": 0.913, "5": 0.88, "10": 0.85, "20": 0.81}},
                      "random_init": {"precision_at": {"1": 0.5, "5": 0.45, "10": 0.4, "20": 0.35}},
                      "queries": [1, 2, 3], "figure": "retrieval.png"},
        "tsne": {"points": 100, "perplexity": 30, "ssl": {"kl_divergence": 1.234, "knn_2d_top1": 0.777},
                 "random_init": {"kl_divergence": 2.5, "knn_2d_top1": 0.3}, "figure": "tsne.png", "seconds": 2.0},
        "finetune": {"fractions": [0.01, 0.1, 1.0], "steps": 100, "batch_size": 64, "lr": 0.001,
                     "weight_decay": 0.05, "optimizer": "adamw",
                     "ssl": {"0.01": {"top1": 0.601, "labels": 5, "epochs": 20.0, "seconds": 1.0},
                             "0.1": {"top1": 0.7, "labels": 51, "epochs": 2.0, "seconds": 1.0},
                             "1.0": {"top1": 0.85, "labels": 512, "epochs": 0.2, "seconds": 1.0}},
                     "random_init": {"0.01": {"top1": 0.301, "labels": 5, "epochs": 20.0, "seconds": 1.0},
                                     "0.1": {"top1": 0.5, "labels": 51, "epochs": 2.0, "seconds": 1.0},
                                     "1.0": {"top1": 0.8, "labels": 512, "epochs": 0.2, "seconds": 1.0}}},
        "seconds": {"total": 12.0},
    }


def make_run(path, method: str = "simclr", data: str = "synthetic", evaluation: dict | None = None,
             interrupted: bool = False, figures: bool = True, steps: int = 40):
    """A run folder as `selfsup run` leaves it, written by hand: config, env, train, metrics, eval, PNGs."""
    path.mkdir(parents=True)
    cfg = load_config({"method": {"name": method}, "data": {"name": data}, "train": {"steps": steps}})
    (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (path / "env.json").write_text(json.dumps({
        "selfsup": "0.1.0", "git_revision": "0123abcd", "git_dirty": True, "python": "3.11.2", "torch": "2.14.1",
        "platform": "Linux", "cpu_count": 2, "device": "cpu", "command": f"selfsup run --data {data}",
        "started": "2026-01-01T12:00:00"}))
    done = steps // 2 if interrupted else steps
    rows = [{"step": s, "epoch": s / 10, "lr": 0.3 * s / done, "loss": 5.0 - s / done, "z_std": 0.08 - 0.001 * s,
             "z_rank": 40.0 - s / 2, "pretext_acc": s / done / 2, "knn_top1": 0.3 + s / done / 2,
             "images_per_s": 250.0, "elapsed_s": s * 0.5, "total_steps": steps} for s in range(5, done + 1, 5)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99, "lo')
    (path / "train.json").write_text(json.dumps({"steps": done, "total_steps": steps, "seconds": 300.0,
                                                 "images_per_s": 245.0, "final_loss": 4.0,
                                                 "interrupted": interrupted}))
    if evaluation is not None:
        (path / "eval.json").write_text(json.dumps(evaluation))
    if figures:
        images = torch.rand(4, 1, 8, 8)
        for name in ("clusters", "retrieval", "tsne"):
            image_grid_png([(name, images)], path / f"{name}.png", title=f"{name} picture")
        matrix_png(torch.eye(6), path / "barlow-crosscorrelation.png", title="cross-correlation C",
                   description="diagonal near 1 is the goal")
    return path


def embedded_pngs(page: str) -> list[Image.Image]:
    """Every data-URI image of the page, decoded (a broken one raises)."""
    images = []
    for payload in DATA_URI.findall(page):
        data = base64.b64decode(payload, validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.width > 0 and image.height > 0
        images.append(image)
    return images


def section(page: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert match, f"section {sid} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def full_page(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("full") / "20260101-120000-simclr-synthetic", evaluation=full_eval())
    return run, write_report(run).read_text()


def test_full_report_shows_every_section_and_the_headline(full_page):
    run, page = full_page
    assert (run / "report.html").is_file()
    assert "<title>20260101-120000-simclr-synthetic</title>" in page
    for sid in SECTION_IDS:
        assert re.sub(r"<h2>.*?</h2>", "", section(page, sid)).strip(), sid
    summary = section(page, "summary")
    assert "72.4%" in summary and "+5.1 points" in summary and "-1.1 points" in summary  # vs random, vs scratch
    assert "beats random init only" in summary and "40 of 40" in summary and "5.0" in summary
    results = section(page, "results")
    for text in ["77.1%", "83.4%", "73.5%", "0.612", "0.301", "91.3%", "77.7%", "1.234", "60.1%", "30.1%",
                 "+30.0 points", "41.0% ± 2.0", "22.0% ± 2.0"]:
        assert text in results, text
    assert "not run" not in page
    assert "--set eval.random_init_all_labels=true" in results  # no random-init kNN in this eval.json


def test_full_report_places_each_picture_once_with_its_caption(full_page):
    _, page = full_page
    assert "clusters.png" in section(page, "clusters") and "NMI 0.612" in section(page, "clusters")
    assert "precision" in section(page, "retrieval").lower() and "91.3%" in section(page, "retrieval")
    assert "77.7%" in section(page, "tsne")
    figures = section(page, "figures")
    assert "barlow-crosscorrelation.png" in figures and "diagonal near 1 is the goal" in figures
    assert not any(name in figures for name in ("clusters.png", "retrieval.png", "tsne.png"))
    # curves: loss, logged values (pretext_acc), schedule, collapse monitor, kNN monitor, + the low-shot plot
    assert len(DATA_URI.findall(section(page, "curves"))) == 5
    assert "pretext_acc" in section(page, "curves")


def test_every_embedded_image_is_a_png_and_nothing_is_fetched(full_page):
    _, page = full_page
    images = embedded_pngs(page)
    assert len(images) == 5 + 1 + 3 + 1  # curves, low-shot plot, three eval pictures, one method figure
    assert page.count("<img") == len(images)
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # only embedded data and in-page links


def test_text_from_the_run_is_escaped(tmp_path):
    hostile = '<script>alert("x")</script>'
    run = make_run(tmp_path / "run", data=hostile, evaluation=full_eval(), figures=False)
    page = write_report(run).read_text()
    assert hostile not in page and "<script" not in page.lower()
    assert "&lt;script&gt;" in section(page, "config") and "&lt;script&gt;" in section(page, "environment")
    assert "&lt;script&gt;" in section(page, "summary")


def test_interrupted_run_says_how_to_finish(tmp_path):
    run = make_run(tmp_path / "run", interrupted=True, figures=False)
    page = write_report(run).read_text()
    for sid in SECTION_IDS:
        assert section(page, sid).strip(), sid
    assert "at step 20 of 40" in section(page, "summary")
    assert f"selfsup run --resume {run}" in section(page, "results")
    assert "not run" not in page  # nothing to run before pretraining finishes
    assert len(embedded_pngs(section(page, "curves"))) == 5  # curves of the steps it made


def test_run_without_train_json_or_metrics_still_gets_a_page(tmp_path):
    run = make_run(tmp_path / "run", figures=False)
    (run / "train.json").unlink()
    (run / "metrics.jsonl").unlink()
    (run / "env.json").write_text("{not json")
    page = write_report(run).read_text()
    assert "no train.json" in section(page, "summary") and "env.json could not be read" in section(page, "summary")
    assert "metrics.jsonl is missing or empty" in section(page, "curves")


def test_finished_run_not_yet_evaluated_names_the_command(tmp_path):
    run = make_run(tmp_path / "run", figures=False)
    page = write_report(run).read_text()
    assert f"Not evaluated yet: <code>selfsup eval {run}</code>" in section(page, "results")
    assert "selfsup eval" in section(page, "summary") and "not run" not in page


def test_unlabelled_run_says_evaluation_was_skipped(tmp_path):
    run = make_run(tmp_path / "run", evaluation={"skipped": "the folder has no class sub-folders"}, figures=False)
    page = write_report(run).read_text()
    assert "Evaluation skipped: the folder has no class sub-folders." in section(page, "results")
    assert "not run" not in page


def test_protocols_not_run_are_named_with_the_command(tmp_path):
    evaluation = {k: v for k, v in full_eval().items() if k not in ("low_shot", "retrieval", "tsne", "finetune")}
    run = make_run(tmp_path / "run", evaluation=evaluation, figures=False)
    page = write_report(run).read_text()
    for name in ("low-shot", "retrieval", "tsne", "finetune"):
        assert f"not run: <code>selfsup eval {run} --protocols {name}</code>" in page, name
    assert "clusters.png is missing" in section(page, "clusters")


@pytest.mark.parametrize("drop", ["ssl", "random_init", "figure", "ks", "fractions", "results"])
def test_partial_protocol_results_do_not_break_the_page(tmp_path, drop):
    evaluation = full_eval()
    for key in ("low_shot", "retrieval", "tsne", "finetune", "clustering"):
        evaluation[key].pop(drop, None)
        for part in ("ssl", "random_init"):
            if isinstance(evaluation[key].get(part), dict):
                evaluation[key][part].pop(drop, None)
    run = make_run(tmp_path / "run", evaluation=evaluation, figures=False)
    page = write_report(run).read_text()
    assert all(section(page, sid).strip() for sid in SECTION_IDS)
    embedded_pngs(page)


def test_collapse_threshold_needs_the_embedding_width(tmp_path):
    assert embedding_dim(read_run(make_run(tmp_path / "simclr", figures=False))) == 128  # simclr's proj_dim
    run = make_run(tmp_path / "rotnet", method="rotnet", figures=False)
    assert embedding_dim(read_run(run)) is None
    assert "needs the embedding width" in section(write_report(run).read_text(), "curves")


def test_a_folder_without_config_is_not_a_run(tmp_path):
    with pytest.raises(SelfSupError, match="not a run folder"):
        write_report(tmp_path)


def test_compare_two_runs_writes_markdown_html_and_curves(tmp_path):
    a = make_run(tmp_path / "run-a", evaluation=full_eval(), figures=False)
    b = make_run(tmp_path / "run-b", method="byol", evaluation=None, figures=False, steps=60)
    md, html = compare_runs([a, b], tmp_path / "cmp")
    text, page = md.read_text(), html.read_text()
    for name in ("run-a", "run-b"):
        assert name in text and name in page
    assert "| run-a | simclr |" in text and "72.4%" in text and "byol" in text
    assert "61.0% / 42.0% (16-shot)" in text and "60.1% / 30.1%" in text  # low-shot at 16, fine-tune at 1%
    assert "normalized" in text.lower() or "divided by its first" in text
    assert (tmp_path / "cmp" / "compare.png").is_file() and "![training curves](compare.png)" in text
    assert len(embedded_pngs(page)) == 1 and "<script" not in page


def test_compare_rejects_bad_input(tmp_path):
    run = make_run(tmp_path / "run", figures=False)
    with pytest.raises(SelfSupError, match="at least one run"):
        compare_runs([], tmp_path / "out")
    with pytest.raises(SelfSupError, match="nowhere is not a run folder"):
        compare_runs([run, tmp_path / "nowhere"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_report_of_a_real_cli_run(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "SELFSUP_NO_DOWNLOAD": "1"}
    r = subprocess.run([sys.executable, "-m", "selfsup", "run", "--data", "synthetic", "--steps", "3", "--limit", "512",
                        "--out", str(out), "--no-progress", "--labels", "50", "--set", "train.batch_size=64",
                        "--set", "eval.scratch_epochs=2", "--set", "train.log_every=1"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    page = write_report(out).read_text()
    assert all(section(page, sid).strip() for sid in SECTION_IDS)
    few = json.loads((out / "eval.json").read_text())["few_label"]
    assert f"{100 * few['ssl']:.1f}%" in section(page, "summary")
    assert len(embedded_pngs(section(page, "curves"))) >= 3  # loss, z_std/z_rank, schedule
    embedded_pngs(page)
