"""Several runs side by side: compare.md and compare.html with one table (a row per run) and overlaid curves.

Made for the questions one asks of a set of runs: which method, which budget, which seed gave the best features,
and did the training curves behave alike. Losses of different methods have different scales, so each run's loss is
divided by its first logged value before the curves share an axis. The PNG of the curves is written beside
compare.md and embedded in compare.html, which, like report.html, needs nothing but itself.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from selfsup.checkpoint import atomic_write
from selfsup.errors import SelfSupError
from selfsup.report import curves
from selfsup.report.html import STYLE, RunFolder, as_dict, code, figure, fraction_key, number, pct, read_run, table

COLUMNS = ["run", "method", "data", "backbone", "seed", "steps", "minutes", "kNN", "linear", "few-label SSL",
           "few-label random init", "few-label scratch", "k-means NMI"]
LOW_SHOT = "low-shot, most shots: SSL / random init"
FINETUNE = "fine-tune, 1%: SSL / random init"


def low_shot_cell(ev: dict) -> str | None:
    """SSL / random-init accuracy at the largest number of shots the run measured, or None."""
    ls = as_dict(ev.get("low_shot"))
    ssl, rnd = as_dict(as_dict(ls.get("ssl")).get("results")), as_dict(as_dict(ls.get("random_init")).get("results"))
    shots = [k for k in ssl if curves.is_shot(k) and curves.is_number(as_dict(ssl[k]).get("mean"))]
    if not shots:
        return None
    top = max(shots, key=float)
    return f"{pct(ssl[top]['mean'])} / {pct(as_dict(rnd.get(top)).get('mean'))} ({top}-shot)"


def finetune_cell(ev: dict) -> str | None:
    """SSL / random-init top-1 fine-tuned on 1% of the labels, or None."""
    ft = as_dict(ev.get("finetune"))
    ssl, rnd = as_dict(ft.get("ssl")), as_dict(ft.get("random_init"))
    key = fraction_key(ssl, 0.01)
    if key is None:
        return None
    return f"{pct(as_dict(ssl[key]).get('top1'))} / {pct(as_dict(rnd.get(fraction_key(rnd, 0.01))).get('top1'))}"


def run_row(run: RunFolder, label: str) -> dict[str, str]:
    """The table row of one run, as plain text cells keyed by column."""
    train, ev = run.train or {}, run.eval or {}
    few, cl = as_dict(ev.get("few_label")), as_dict(ev.get("clustering"))
    seconds = train.get("seconds")
    steps = str(train.get("steps", "—")) + (" (stopped)" if train.get("interrupted") else "")
    row = {
        "run": label, "method": str(run.get("method", "name", "?")), "data": str(run.get("data", "name", "?")),
        "backbone": str(run.get("model", "backbone", "?")), "seed": str(run.get("train", "seed", "?")),
        "steps": steps, "minutes": f"{seconds / 60:.1f}" if curves.is_number(seconds) else "—",
        "kNN": pct(as_dict(ev.get("knn")).get("top1")), "linear": pct(as_dict(ev.get("linear")).get("top1")),
        "few-label SSL": pct(few.get("ssl")), "few-label random init": pct(few.get("random_init")),
        "few-label scratch": pct(few.get("supervised_scratch")), "k-means NMI": number(cl.get("nmi")),
    }
    for column, cell in ((LOW_SHOT, low_shot_cell(ev)), (FINETUNE, finetune_cell(ev))):
        if cell is not None:
            row[column] = cell
    return row


def labels_for(runs: list[RunFolder], run_dirs: list[Path]) -> list[str]:
    """Run folder names, or the paths as given where two names are the same."""
    names = [run.name for run in runs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, run_dirs)]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def compare_runs(run_dirs: list[Path], out: Path) -> tuple[Path, Path]:
    """Write out/compare.md (with out/compare.png beside it) and out/compare.html; returns (md, html).

    Every folder must hold a run (config.yaml); runs not evaluated or interrupted get dashes where numbers are
    missing.
    """
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise SelfSupError("compare needs at least one run folder; give the folders made by `selfsup run`")
    for path in run_dirs:
        if not (path / "config.yaml").is_file():
            raise SelfSupError(f"{path} is not a run folder (no config.yaml); give folders made by `selfsup run`")
    runs = [read_run(p) for p in run_dirs]
    labels = labels_for(runs, run_dirs)
    rows = [run_row(run, label) for run, label in zip(runs, labels)]
    columns = COLUMNS + [c for c in (LOW_SHOT, FINETUNE) if any(c in row for row in rows)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = curves.compare_png([(label, run.rows) for run, label in zip(runs, labels)])
    has_knn = any(curves.knn_keys(run.rows) for run in runs)
    png_path = out / "compare.png"
    if png is not None:
        atomic_write(png_path, lambda tmp: Path(tmp).write_bytes(png))
    low_shot = ("; low-shot: the mean over draws at the largest number of labelled images per class measured"
                if LOW_SHOT in columns else "")
    note = ("Accuracies are top-1 on each run's test split; few-label columns: the linear probe on N labels on frozen "
            "SSL features, on frozen random-init features, and the same network trained from scratch on the N labels"
            f"{low_shot}. A dash: not measured (run {{command}} or the named protocol).")
    curve_note = ("Curves: each run's loss divided by its first logged value, so losses of different methods share "
                  "an axis (compare shapes, not levels)" + ("; right: the kNN monitor." if has_knn else "."))
    no_curves = "No training curves: no run has a metrics.jsonl with a loss."
    heading = f"{len(runs)} run{'s' if len(runs) != 1 else ''} compared"

    md = [f"# {heading}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_md_cell(row.get(c, "—")) for c in columns) + " |" for row in rows]
    md += ["", note.format(command="`selfsup eval RUN_DIR`"), ""]
    md += [f"![training curves]({png_path.name})", "", curve_note, ""] if png is not None else [no_curves, ""]
    md_path = out / "compare.md"
    atomic_write(md_path, lambda tmp: Path(tmp).write_text("\n".join(md)))

    grid = table(columns, [[escape(row.get(c, "—")) for c in columns] for row in rows], "compare")
    body = (f'<div class="wide">{grid}</div>'
            f'<p class="note">{escape(note).format(command=code("selfsup eval RUN_DIR"))}</p>')
    body += (figure(png, escape(curve_note), "training curves of the runs") if png is not None else
             f'<p class="missing">{no_curves}</p>')
    title = escape(f"{heading}: " + ", ".join(labels))
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
            f"<style>{STYLE}main, header h1 {{ max-width: 1400px; }}</style>\n</head>\n<body>\n"
            f"<header><h1>{title}</h1></header>\n<main>\n"
            f'<section id="compare"><h2>Runs</h2>{body}</section>\n</main>\n</body>\n</html>\n')
    html_path = out / "compare.html"
    atomic_write(html_path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return md_path, html_path

