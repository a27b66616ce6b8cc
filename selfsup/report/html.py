"""report.html: one self-contained page that shows what a run did and how good its features are.

Everything is in the one file (pictures as base64 data URIs, CSS inline, no JavaScript), so the page can be mailed,
archived or opened offline years later. It reads only the run folder (config.yaml, env.json, train.json, eval.json,
metrics.jsonl and its PNGs) and renders whatever is there: an interrupted run, a run never evaluated and a run on
unlabelled images each get a page that says what is missing and the command that makes it. Sections have stable
ids (summary, results, curves, retrieval, tsne, clusters, figures, config, environment) so links and tests can
point at them.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import yaml

from selfsup.checkpoint import atomic_write
from selfsup.errors import SelfSupError
from selfsup.report import curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# eval.json key of each protocol -> its name for `selfsup eval --protocols`.
PROTOCOLS = {"knn": "knn", "linear": "linear", "few_label": "few-label", "clustering": "clustering",
             "low_shot": "low-shot", "retrieval": "retrieval", "tsne": "tsne", "finetune": "finetune"}
SECTIONS = (("summary", "Summary"), ("results", "Results"), ("curves", "Training curves"),
            ("retrieval", "Retrieval"), ("tsne", "t-SNE"), ("clusters", "Clusters"), ("figures", "Method figures"),
            ("config", "Configuration"), ("environment", "Environment"))
ENV_ORDER = ("selfsup", "git_revision", "python", "torch", "torchvision", "numpy", "platform", "processor", "cpu",
             "cpu_count", "torch_threads", "device", "cuda", "command", "started")


@dataclass
class RunFolder:
    """What a run folder holds, read once; a file that is missing or unreadable is None (and a note says why)."""

    path: Path
    name: str
    config: dict
    config_text: str
    env: dict | None
    train: dict | None
    eval: dict | None
    rows: list[dict]
    notes: list[str] = field(default_factory=list)

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """A value of config.yaml, e.g. get("method", "name")."""
        values = self.config.get(section)
        return values.get(key, default) if isinstance(values, dict) else default


def read_run(run_dir: str | Path) -> RunFolder:
    """Read a run folder for a report; a folder without config.yaml is a SelfSupError."""
    path = Path(run_dir)
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise SelfSupError(f"{run_dir} is not a run folder (no config.yaml); give a folder made by `selfsup run`")
    notes: list[str] = []
    text = config_file.read_text(errors="replace")
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        config = {}
        notes.append("config.yaml is not valid YAML; it is shown as written")
    if not isinstance(config, dict):
        config = {}
        notes.append("config.yaml does not hold a mapping; settings below are shown as written")
    return RunFolder(path=path, name=path.resolve().name, config=config, config_text=text,
                     env=_read_json(path / "env.json", notes), train=_read_json(path / "train.json", notes),
                     eval=_read_json(path / "eval.json", notes), rows=curves.read_metrics(path / "metrics.jsonl"),
                     notes=notes)


def _read_json(path: Path, notes: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        notes.append(f"{path.name} could not be read ({type(e).__name__}); it is left out")
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------------- formatting


def pct(x: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal, or a dash."""
    return f"{100 * x:.1f}%" if curves.is_number(x) else "—"


def points(a: Any, b: Any) -> str:
    """a - b in percentage points, signed, or a dash."""
    return f"{100 * (a - b):+.1f} points" if curves.is_number(a) and curves.is_number(b) else "—"


def number(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if curves.is_number(x) else "—"


def as_dict(value: Any) -> dict:
    """value when it is a dict, else an empty one: eval.json parts may be absent or of another shape."""
    return value if isinstance(value, dict) else {}


def split_name(ev: dict) -> str:
    """The split an eval.json scored on: 'validation' (data.validation, held-out training images) or 'test'."""
    return str(as_dict(as_dict(ev).get("data")).get("split", "test"))


def code(text: str) -> str:
    return f"<code>{escape(text)}</code>"


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; header cells are escaped here, body cells must already be HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    opening = f'<table class="{cls}">' if cls else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(pairs: list[tuple[str, str]]) -> str:
    """A two-column table of (label, HTML value)."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when the bytes are not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def figure(data: bytes, caption_html: str, alt: str) -> str:
    """<figure> with the PNG embedded; shown at its own size, narrower on a narrow window."""
    size = png_size(data)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return (f'<figure><img src="{png_data_uri(data)}" alt="{escape(alt)}"{dims}>'
            f"<figcaption>{caption_html}</figcaption></figure>")


def read_png(path: Path) -> tuple[bytes, dict] | None:
    """(bytes, text chunks) of a PNG file that decodes, else None."""
    from PIL import Image

    try:
        data = path.read_bytes()
        if not data.startswith(PNG_SIGNATURE):
            return None
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            info = {k: v for k, v in image.info.items() if isinstance(v, str)}
    except (OSError, ValueError, SyntaxError):
        return None
    return data, info


def not_run(run: RunFolder, key: str) -> str:
    name = PROTOCOLS[key]
    return f'<p class="missing">not run: {code(f"selfsup eval {run.path} --protocols {name}")}</p>'


# ------------------------------------------------------------------------------------------------------ sections


def status(run: RunFolder) -> str | None:
    """Why there are no results, with the command that makes them; None when eval.json holds results."""
    train = run.train or {}
    resume = code(f"selfsup run --resume {run.path}")
    if train.get("interrupted"):
        return (f"Pretraining stopped at step {escape(str(train.get('steps')))} of "
                f"{escape(str(train.get('total_steps')))}. Continue from its last checkpoint (and evaluate) with "
                f"{resume}.")
    if run.eval is None and run.train is None:
        return ("Pretraining has not finished (no train.json: it was killed, or it is still running). Continue from "
                f"its last checkpoint (and evaluate) with {resume}.")
    if run.eval is None:
        return f"Not evaluated yet: {code(f'selfsup eval {run.path}')}."
    if "skipped" in run.eval:
        return f"Evaluation skipped: {escape(str(run.eval['skipped']))}."
    return None


def headline(run: RunFolder) -> str:
    """The few-label experiment in one sentence: SSL against both baselines, with the gains."""
    ev = run.eval or {}
    few = as_dict(ev.get("few_label"))
    if not curves.is_number(few.get("ssl")):
        return f"The few-label experiment was not run: {code(f'selfsup eval {run.path} --protocols few-label')}."
    ssl, rnd, scratch = few.get("ssl"), few.get("random_init"), few.get("supervised_scratch")
    n = few.get("labels", run.get("eval", "labels", "N"))
    method = escape(str(run.get("method", "name", "SSL")))
    text = (f"With {escape(str(n))} labels, a linear probe on the frozen {method}"
            f" features reaches <strong>{pct(ssl)}</strong> on the {escape(split_name(ev))} split")
    parts = []
    if curves.is_number(rnd):
        parts.append(f"<strong>{points(ssl, rnd)}</strong> against random-init features ({pct(rnd)})")
    if curves.is_number(scratch):
        parts.append(f"<strong>{points(ssl, scratch)}</strong> against the same network trained from scratch on "
                     f"those labels ({pct(scratch)})")
    text += (": " + " and ".join(parts) if parts else "") + "."
    if curves.is_number(rnd) and curves.is_number(scratch):
        beaten = [name for name, other in (("random init", rnd), ("training from scratch", scratch)) if ssl > other]
        if len(beaten) == 2:
            text += " Pretraining beats both baselines."
        elif beaten:
            text += f" Pretraining beats {beaten[0]} only."
        else:
            text += " Pretraining beats neither baseline yet."
    return text


def summary_section(run: RunFolder) -> str:
    train, ev = run.train or {}, run.eval or {}
    data = str(run.get("data", "name", "?"))
    limit = run.get("data", "limit")
    backbone = str(run.get("model", "backbone", "?"))
    width = run.get("model", "width")
    pairs = [("method", escape(str(run.get("method", "name", "?")))),
             ("pretraining data", escape(data + (f" (first {limit} images)" if limit else ""))),
             ("backbone", escape(backbone + (f", width {width}" if width else ""))),
             ("seed", escape(str(run.get("train", "seed", "?"))))]
    evaluated_on = as_dict(ev.get("data"))
    if evaluated_on:
        pairs.append(("evaluation data", escape(f"{evaluated_on.get('name', '?')}: {evaluated_on.get('train', '?')} "
                                                f"training, {evaluated_on.get('test', '?')} "
                                                f"{split_name(ev)} images, "
                                                f"{evaluated_on.get('classes', '?')} classes")))
    if train:
        minutes = train.get("seconds")
        pairs.append(("steps", escape(f"{train.get('steps', '?')} of {train.get('total_steps', '?')}"
                                      + (" (interrupted)" if train.get("interrupted") else ""))))
        pairs.append(("minutes", f"{minutes / 60:.1f}" if curves.is_number(minutes) else "—"))
        if curves.is_number(train.get("images_per_s")):
            pairs.append(("images/s", f"{train['images_per_s']:.0f}"))
        if curves.is_number(train.get("final_loss")):
            pairs.append(("final loss", f"{train['final_loss']:.4f}"))
    message = status(run)
    body = kv_table(pairs)
    body += f'<p class="headline">{headline(run)}</p>' if message is None else f'<p class="status">{message}</p>'
    body += "".join(f'<p class="note">note: {escape(n)}</p>' for n in run.notes)
    return body


def main_table(run: RunFolder) -> str:
    """The three rows of the few-label experiment beside kNN, the all-label probe and k-means, like results.md."""
    ev = run.eval or {}
    knn, lin, few, cl = (as_dict(ev.get(k)) for k in ("knn", "linear", "few_label", "clustering"))
    cl_rnd = as_dict(cl.get("random_init"))
    n = few.get("labels", run.get("eval", "labels", "N"))
    method = run.get("method", "name", "SSL")
    header = [f"features", f"kNN top-1 (k={knn.get('k', run.get('eval', 'knn_k', '?'))})", "linear, all labels",
              f"few-label, {n} labels", "k-means accuracy", "k-means NMI", "k-means ARI"]
    rows = [[escape(f"SSL ({method}), frozen"), pct(knn.get("top1")), pct(lin.get("top1")), pct(few.get("ssl")),
             pct(cl.get("accuracy")), number(cl.get("nmi")), number(cl.get("ari"))],
            ["random init, frozen", pct(knn.get("random_init_top1")), pct(lin.get("random_init_top1")),
             pct(few.get("random_init")), pct(cl_rnd.get("accuracy")), number(cl_rnd.get("nmi")),
             number(cl_rnd.get("ari"))],
            [escape(f"supervised from scratch on the {n} labels"), "—", "—", pct(few.get("supervised_scratch")),
             "—", "—", "—"]]
    notes = [f"Accuracies are top-1 on the {escape(split_name(ev))} split. Frozen rows use the same linear probe (L-BFGS logistic "
             "regression, weight decay chosen on the training labels only)."]
    if knn and "random_init_top1" not in knn:
        notes.append("Random-init kNN and all-label probe not measured (about a minute more): "
                     + code("--set eval.random_init_all_labels=true") + ".")
    if "skipped" in cl:
        notes.append(f"k-means skipped: {escape(str(cl['skipped']))}.")
    bank = as_dict((run.train or {}).get("bank_knn"))
    if curves.is_number(bank.get("top1")):
        notes.append(f"Memory-bank kNN monitor at the end of pretraining: {pct(bank['top1'])} "
                     f"(k={escape(str(bank.get('k', '?')))}).")
    missing = [k for k in ("knn", "linear", "few_label", "clustering") if k not in ev]
    html = f'<div class="wide">{table(header, rows, "results")}</div>'
    html += "".join(f'<p class="note">{n}</p>' for n in notes)
    return html + "".join(not_run(run, k) for k in missing)


def mean_std(result: Any) -> str:
    r = as_dict(result)
    if not curves.is_number(r.get("mean")):
        return "—"
    std = r.get("std")
    return pct(r["mean"]) + (f" ± {100 * std:.1f}" if curves.is_number(std) else "")


def _sorted_keys(*dicts: dict) -> list[str]:
    """The keys of the dicts that are numbers, in numeric order."""
    def value(k: str) -> float:
        try:
            return float(k)
        except (TypeError, ValueError):
            return math.inf
    return sorted({k for d in dicts for k in d}, key=value)


def low_shot_html(run: RunFolder) -> str:
    ls = as_dict((run.eval or {}).get("low_shot"))
    if not ls:
        return not_run(run, "low_shot")
    ssl, rnd = as_dict(as_dict(ls.get("ssl")).get("results")), as_dict(as_dict(ls.get("random_init")).get("results"))
    rows = []
    for shot in _sorted_keys(ssl, rnd):
        a, b = as_dict(ssl.get(shot)).get("mean"), as_dict(rnd.get(shot)).get("mean")
        rows.append([escape(str(shot)), mean_std(ssl.get(shot)), mean_std(rnd.get(shot)), points(a, b)])
    selection = {str(as_dict(r).get("cost_selection")) for r in list(ssl.values()) + list(rnd.values())
                 if as_dict(r).get("cost_selection")}
    about = (f"Classifier {escape(str(ls.get('classifier', '?')))} on frozen features, trained on that many "
             f"labelled images per class, {escape(str(ls.get('draws', '?')))} random draws per row (mean ± std in "
             "points)" + (f"; its cost chosen by {escape(', '.join(sorted(selection)))}" if selection else "") + ".")
    html = table(["labels per class", "SSL, frozen", "random init, frozen", "difference"], rows)
    html += f'<p class="note">{about}</p>'
    plot = curves.low_shot_png(ls)
    if plot:
        html += figure(plot, "Low-shot accuracy against labelled images per class (log2 axis); bars: ± one std "
                       "over the draws.", "low-shot accuracy plot")
    return html


def retrieval_html(run: RunFolder) -> str:
    rt = as_dict((run.eval or {}).get("retrieval"))
    if not rt:
        return not_run(run, "retrieval")
    ssl, rnd = (as_dict(as_dict(rt.get(e)).get("precision_at")) for e in ("ssl", "random_init"))
    ks = [str(k) for k in rt.get("ks") or []] or _sorted_keys(ssl, rnd)
    rows = [["SSL, frozen"] + [pct(ssl.get(k)) for k in ks], ["random init, frozen"] + [pct(rnd.get(k)) for k in ks]]
    html = table(["features"] + [f"precision@{k}" for k in ks], rows)
    return html + (f'<p class="note">Each query image against the {escape(str(rt.get("database", "?")))} '
                   "images: the share of its k nearest neighbours (cosine) that have its class.</p>")


def tsne_html(run: RunFolder) -> str:
    ts = as_dict((run.eval or {}).get("tsne"))
    if not ts:
        return not_run(run, "tsne")
    ssl, rnd = as_dict(ts.get("ssl")), as_dict(ts.get("random_init"))
    rows = [[name, pct(d.get("knn_2d_top1")), number(d.get("kl_divergence"))]
            for name, d in (("SSL, frozen", ssl), ("random init, frozen", rnd))]
    html = table(["features", "kNN top-1 in the 2-D map", "KL divergence"], rows)
    return html + (f'<p class="note">t-SNE of {escape(str(ts.get("points", "?")))} test images, perplexity '
                   f'{escape(str(ts.get("perplexity", "?")))}; the 2-D kNN accuracy says how well the map keeps the '
                   "classes apart.</p>")


def fraction_key(d: dict, fraction: Any) -> str | None:
    """The key of d that stands for the fraction (0.01 may be saved as "0.01" or "0.010")."""
    for k in d:
        try:
            if math.isclose(float(k), float(fraction)):
                return k
        except (TypeError, ValueError):
            continue
    return None


def finetune_html(run: RunFolder) -> str:
    ft = as_dict((run.eval or {}).get("finetune"))
    if not ft:
        return not_run(run, "finetune")
    ssl, rnd = as_dict(ft.get("ssl")), as_dict(ft.get("random_init"))
    fractions = ft.get("fractions") or _sorted_keys(ssl, rnd)
    rows = []
    for fraction in fractions:
        a, b = as_dict(ssl.get(fraction_key(ssl, fraction))), as_dict(rnd.get(fraction_key(rnd, fraction)))
        try:
            share = f"{100 * float(fraction):g}%"
        except (TypeError, ValueError):
            share = str(fraction)
        labels = a.get("labels", b.get("labels"))
        rows.append([escape(share), escape(str(labels)) if labels is not None else "—", pct(a.get("top1")),
                     pct(b.get("top1")), points(a.get("top1"), b.get("top1"))])
    html = table(["labelled share", "labels", "SSL, fine-tuned", "random init, trained", "difference"], rows)
    settings = ", ".join(f"{k.replace('_', ' ')} {ft[k]}" for k in ("steps", "batch_size", "lr", "weight_decay",
                                                                     "optimizer") if k in ft)
    return html + (f'<p class="note">The whole network trained end to end on a class-balanced share of the '
                   f"labels, starting from the SSL weights or from random ones ({escape(settings)}).</p>")


def results_section(run: RunFolder) -> str:
    message = status(run)
    if message is not None:
        return f'<p class="status">{message}</p>'
    parts = [main_table(run)]
    for key, title, render in (("low_shot", "Low-shot", low_shot_html), ("retrieval", "Retrieval", retrieval_html),
                               ("tsne", "t-SNE", tsne_html), ("finetune", "Fine-tuning", finetune_html)):
        parts.append(f'<h3 id="results-{PROTOCOLS[key]}">{title}</h3>' + render(run))
    return "".join(parts)


def embedding_dim(run: RunFolder) -> int | None:
    """The width D of the embeddings the collapse monitor measured: a logged z_dim, else the method's projector
    output (method.proj_dim; DINO's head output, method.out_dim); None when unknown."""
    for row in run.rows:
        if curves.is_number(row.get("z_dim")):
            return int(row["z_dim"])
    for key in ("proj_dim", "out_dim"):
        value = run.get("method", key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def curves_section(run: RunFolder) -> str:
    if not run.rows:
        return ('<p class="missing">No training curves: metrics.jsonl is missing or empty (pretraining logs a row '
                f"every {escape(str(run.get('train', 'log_every', 'N')))} steps).</p>")
    parts = []
    loss = curves.loss_png(run.rows)
    if loss:
        parts.append(figure(loss, "Training loss against the step.", "training loss"))
    keys = curves.method_keys(run.rows)
    multiples = curves.small_multiples_png(run.rows, keys)
    if multiples:
        parts.append(figure(multiples, "Other values the method logged: " + escape(", ".join(keys)) + ".",
                            "values the method logged"))
    schedule = curves.schedule_png(run.rows)
    if schedule:
        parts.append(figure(schedule, "Learning rate (left axis) and throughput in images per second (right axis).",
                            "learning rate and throughput"))
    dim = embedding_dim(run)
    collapse = curves.collapse_png(run.rows, dim)
    if collapse:
        parts.append(figure(collapse, "Collapse monitor: dashed red lines are the warning thresholds"
                            + ("" if dim else " (the z_std line needs the embedding width, which is unknown)")
                            + "; the run warns once when a value falls below one.", "collapse monitor"))
    knn = curves.knn_png(run.rows)
    if knn:
        parts.append(figure(knn, "kNN monitor during pretraining.", "kNN monitor"))
    return "".join(parts) or '<p class="missing">metrics.jsonl holds no numbers to plot.</p>'


def eval_figure(run: RunFolder, key: str) -> Path | None:
    """The PNG named by eval.json[key]["figure"], inside the run folder, if it exists."""
    name = as_dict((run.eval or {}).get(key)).get("figure")
    if not isinstance(name, str) or not name:
        return None
    path = run.path / Path(name).name  # a name, never a path out of the folder
    return path if path.is_file() else None


def eval_figure_section(run: RunFolder, key: str, caption: str) -> str:
    ev = as_dict((run.eval or {}).get(key))
    if not ev:
        message = status(run)
        return f'<p class="missing">{message}</p>' if message else not_run(run, key)
    path = eval_figure(run, key)
    png = read_png(path) if path else None
    if png is None:
        name = ev.get("figure")
        why = f"{escape(str(name))} is missing or not a PNG" if name else "no picture was made"
        return f'<p class="missing">{why}. {caption}</p>'
    return figure(png[0], f"{code(path.name)}: {caption}", path.name)


def retrieval_caption(run: RunFolder) -> str:
    rt = as_dict((run.eval or {}).get("retrieval"))
    ssl, rnd = (as_dict(as_dict(rt.get(e)).get("precision_at")) for e in ("ssl", "random_init"))
    ks = [str(k) for k in rt.get("ks") or []] or _sorted_keys(ssl)
    text = "Query images (left) and their nearest neighbours by cosine similarity of the frozen SSL features."
    if ssl:
        text += " Precision@k (share of neighbours of the query's class): SSL " + ", ".join(
            f"@{escape(k)} {pct(ssl.get(k))}" for k in ks)
        if rnd:
            text += "; random init " + ", ".join(f"@{escape(k)} {pct(rnd.get(k))}" for k in ks)
        text += "."
    return text


def tsne_caption(run: RunFolder) -> str:
    ts = as_dict((run.eval or {}).get("tsne"))
    ssl, rnd = as_dict(ts.get("ssl")), as_dict(ts.get("random_init"))
    text = f"t-SNE map of {escape(str(ts.get('points', '?')))} test images' SSL features, coloured by class."
    if curves.is_number(ssl.get("knn_2d_top1")):
        text += f" kNN top-1 in the 2-D map: SSL {pct(ssl['knn_2d_top1'])}"
        text += f", random init {pct(rnd.get('knn_2d_top1'))}." if rnd else "."
    return text


def clusters_caption(run: RunFolder) -> str:
    cl = as_dict((run.eval or {}).get("clustering"))
    text = ("The largest k-means clusters of the test images' SSL features, one row each, the images nearest "
            "the centroid; the label gives the cluster's size, majority class and purity.")
    if curves.is_number(cl.get("nmi")):
        rnd = as_dict(cl.get("random_init"))
        text += f" NMI {number(cl['nmi'])}" + (f" (random init {number(rnd['nmi'])})"
                                                 if curves.is_number(rnd.get("nmi")) else "")
        text += f", clustering accuracy {pct(cl.get('accuracy'))}."
    return text


def figures_section(run: RunFolder) -> str:
    shown = {p.name for p in (eval_figure(run, k) for k in ("retrieval", "tsne", "clustering")) if p}
    parts = []
    for path in sorted(run.path.glob("*.png")):
        if path.name in shown:
            continue
        png = read_png(path)
        if png is None:
            parts.append(f'<p class="missing">{code(path.name)} is not a readable PNG.</p>')
            continue
        data, info = png
        words = [escape(info[k]) for k in ("Title", "Description") if info.get(k)]
        parts.append(figure(data, code(path.name) + (": " + " — ".join(words) if words else ""), path.name))
    return "".join(parts) or '<p class="missing">This method makes no pictures of its own.</p>'


def config_section(run: RunFolder) -> str:
    return f"<pre>{escape(run.config_text)}</pre>"


def environment_section(run: RunFolder) -> str:
    env = run.env
    if env is None:
        return '<p class="missing">No env.json in the run folder.</p>'
    pairs = []
    for key in list(ENV_ORDER) + sorted(set(env) - set(ENV_ORDER) - {"git_dirty"}):
        if key not in env:
            continue
        value = env[key]
        if key == "git_revision":
            dirty = env.get("git_dirty")
            value = ("not a git checkout" if not value else
                     f"{value}" + (" (uncommitted changes)" if dirty else " (clean)" if dirty is False else ""))
        pairs.append((key.replace("_", " "), code(str(value)) if key in ("command", "git_revision")
                      else escape(str(value))))
    return kv_table(pairs)


# ---------------------------------------------------------------------------------------------------------- page

STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1d1f21; background: #fafafa; margin: 0; }
main { max-width: 1080px; margin: 0 auto; padding: 0 24px 48px; }
header { background: #23303d; color: #fff; padding: 18px 24px 12px; }
header h1 { max-width: 1080px; margin: 0 auto 2px; font-size: 22px; font-weight: 600; overflow-wrap: anywhere; }
header p { max-width: 1080px; margin: 0 auto 8px; color: #cfd8e0; font-size: 14px; }
nav { max-width: 1080px; margin: 0 auto; font-size: 13px; }
nav a { color: #cfe3f7; margin-right: 14px; text-decoration: none; }
nav a:hover { text-decoration: underline; }
section { background: #fff; border: 1px solid #e2e4e7; border-radius: 6px; padding: 4px 22px 16px; margin-top: 18px; }
h2 { font-size: 18px; border-bottom: 1px solid #e2e4e7; padding-bottom: 6px; }
h3 { font-size: 15px; margin: 22px 0 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #d9dce0; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: #f0f2f4; font-weight: 600; }
table.results td:not(:first-child), table td + td { font-variant-numeric: tabular-nums; }
div.wide { overflow-x: auto; max-width: 100%; }
table.compare td { white-space: nowrap; }
table.kv { min-width: 420px; max-width: 100%; }
table.kv th { background: #f6f7f8; font-weight: 500; white-space: nowrap; }
table.kv td { overflow-wrap: anywhere; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eceef0; background: #fff; }
figcaption { font-size: 13px; color: #4a4f55; margin-top: 4px; max-width: 860px; }
pre { background: #f6f7f8; border: 1px solid #e2e4e7; padding: 10px 12px; overflow-x: auto; font-size: 12.5px;
  line-height: 1.35; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.92em;
  background: #f1f3f5; padding: 0 3px; border-radius: 3px; overflow-wrap: anywhere; }
p.headline { font-size: 16px; background: #eef6ee; border-left: 4px solid #3c8d40; padding: 8px 12px; }
p.status { background: #fff6e5; border-left: 4px solid #d9901a; padding: 8px 12px; }
p.missing { color: #5f6368; font-style: italic; }
p.note { font-size: 13px; color: #4a4f55; margin: 4px 0; }
"""


def render(run: RunFolder) -> str:
    """The whole page as a string."""
    bodies = {
        "summary": summary_section(run),
        "results": results_section(run),
        "curves": curves_section(run),
        "retrieval": eval_figure_section(run, "retrieval", retrieval_caption(run)),
        "tsne": eval_figure_section(run, "tsne", tsne_caption(run)),
        "clusters": eval_figure_section(run, "clustering", clusters_caption(run)),
        "figures": figures_section(run),
        "config": config_section(run),
        "environment": environment_section(run),
    }
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS)
    sections = "\n".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{bodies[sid]}</section>'
                          for sid, title in SECTIONS)
    title = escape(run.name)
    about = escape(f"{run.get('method', 'name', '?')} on {run.get('data', 'name', '?')}, "
                   f"{run.get('model', 'backbone', '?')} backbone, seed {run.get('train', 'seed', '?')}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<header><h1>{title}</h1><p>{about}</p><nav>{nav}</nav>"
            "</header>\n"
            f"<main>\n{sections}\n</main>\n</body>\n</html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.html (self-contained: pictures embedded, no scripts) and return its path."""
    run = read_run(run_dir)
    page = render(run)
    path = run.path / "report.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path
