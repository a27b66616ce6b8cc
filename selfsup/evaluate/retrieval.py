"""Nearest-neighbour retrieval on frozen features: precision@k and a picture of the neighbours of a few queries.

The lecture's comparison: for fixed query images, the k nearest images under the trained encoder beside the k
nearest under a random-init copy of it. Similarity is cosine, as for the kNN monitor and the clustering protocol.

The database is the test split itself, leave-one-out (a query never retrieves itself): the test images' SSL and
random-init features are always extracted by the evaluation, so both rows are always measured on the same images,
and nothing is fitted, so using the test labels only to score is fair.

precision@k is the mean over queries of (neighbours among the k nearest that share the query's class) / k. Ties in
similarity (e.g. duplicate images) are ordered as `torch.topk` returns them, so the k-th neighbour of a tie is an
arbitrary but deterministic member of it; the query itself is excluded even when another image equals it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.checkpoint import atomic_write
from selfsup.errors import SelfSupError
from selfsup.report.figures import as_image, optional_figure

RIGHT, WRONG, QUERY = "#1a9850", "#d73027", "#222222"  # frame colours: same class, other class, the query


def _check(features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if features.dim() != 2 or features.shape[0] < 2:
        raise SelfSupError(f"retrieval needs features (N, D) with N >= 2, got shape {tuple(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise SelfSupError("retrieval features hold NaN or inf; check the encoder's output (a diverged run?)")
    if labels is not None:
        if labels.shape != (features.shape[0],):
            raise SelfSupError(f"labels must be (N,) = ({features.shape[0]},) to match the features, "
                               f"got {tuple(labels.shape)}")
        if bool((labels < 0).any()):
            raise SelfSupError("retrieval scores need a known class for every image; drop the images labelled -1 "
                               "(unknown) first")


def _top_k_excluding_self(unit: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (Q, k) of the k rows of unit (N, D) most cosine-similar to each query row, the query excluded."""
    sim = unit[queries] @ unit.t()  # (Q, N)
    sim[torch.arange(len(queries)), queries] = float("-inf")  # a query never retrieves itself
    return sim.topk(k, dim=1).indices


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n - 1:
        raise SelfSupError(f"k = {k} neighbours cannot be drawn from {n - 1} other images; use 1 <= k <= {n - 1}")


@torch.no_grad()
def neighbours(features: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out top-k: indices (Q, k) of the k nearest images (cosine) to each query index, nearest first."""
    _check(features)
    _check_k(k, features.shape[0])
    queries = queries.long().cpu()
    if queries.dim() != 1 or (queries.numel() and not 0 <= int(queries.min()) <= int(queries.max()) < len(features)):
        raise SelfSupError(f"queries must be a 1-d tensor of indices into the {len(features)} images")
    unit = F.normalize(features.detach().float().cpu(), dim=1)  # (N, D)
    return _top_k_excluding_self(unit, queries, k)


@torch.no_grad()
def precision_at_k(features: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10, 20),
                   chunk: int = 1024) -> dict[str, float]:
    """{str(k): precision@k} with every image a query against all the others; memory O(chunk * N).

    features: (N, D), labels: (N,). precision@k is in [0, 1]; about 1 / classes for features that ignore the class
    (balanced classes), 1 when every image's k nearest share its class.
    """
    _check(features, labels)
    if not ks:
        raise SelfSupError("precision_at_k needs at least one k, e.g. ks=(1, 5, 10, 20)")
    n, k_max = features.shape[0], max(ks)
    for k in ks:
        _check_k(k, n)
    unit = F.normalize(features.detach().float().cpu(), dim=1)  # (N, D)
    labels = labels.long().cpu()
    hits = torch.zeros(k_max, dtype=torch.float64)  # same-class neighbours at each rank, summed over queries
    for start in range(0, n, chunk):
        queries = torch.arange(start, min(start + chunk, n))
        idx = _top_k_excluding_self(unit, queries, k_max)  # (m, k_max)
        hits += (labels[idx] == labels[queries, None]).sum(dim=0).double()
    cumulative = hits.cumsum(0)  # (k_max,): same-class neighbours within the top 1, 2, ...
    return {str(k): float(cumulative[k - 1]) / (n * k) for k in ks}


def pick_queries(labels: torch.Tensor, n: int = 10, seed: int = 0) -> torch.Tensor:
    """n seeded query indices (n,), classes taken round-robin in class order, so every class appears when
    n >= classes; query i is of the (i mod classes)-th class. Fewer when fewer labelled images exist."""
    if n < 1:
        raise SelfSupError(f"pick_queries needs n >= 1 queries, got {n}")
    labels = labels.long().cpu()
    g = torch.Generator().manual_seed(seed)
    members = []  # per class, in class order: its images in a seeded random order
    for c in torch.unique(labels[labels >= 0]).tolist():
        idx = (labels == c).nonzero().flatten()
        members.append(idx[torch.randperm(len(idx), generator=g)].tolist())
    picked, rank = [], 0
    while len(picked) < n and any(rank < len(m) for m in members):
        picked += [m[rank] for m in members if rank < len(m)][:n - len(picked)]
        rank += 1
    if not picked:
        raise SelfSupError("pick_queries found no labelled image (all labels are -1); retrieval needs classes")
    return torch.tensor(picked, dtype=torch.long)


def retrieval_png(images: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, ssl_neighbours: torch.Tensor,
                  random_neighbours: torch.Tensor, class_names: Sequence[str], path: str | Path,
                  title: str = "") -> Path:
    """A PNG with one row per query: the query, then its k SSL neighbours, then its k random-init neighbours.

    images: (N, C, H, W) uint8; queries (Q,); *_neighbours (Q, k) indices, nearest first. A neighbour of the
    query's class has a solid green frame, one of another class a thick dashed red frame (told apart without colour
    too). Row labels give the query's class and how many of the k share it; they also go into the PNG's Description
    text chunk ("rows: a; b; c"). Written atomically.
    """
    q, k = ssl_neighbours.shape
    if random_neighbours.shape != (q, k) or queries.shape != (q,) or q == 0 or k == 0:
        raise SelfSupError(f"retrieval_png needs queries (Q,) and two neighbour tables (Q, k) with Q, k >= 1, got "
                           f"{tuple(queries.shape)}, {tuple(ssl_neighbours.shape)}, {tuple(random_neighbours.shape)}")
    import matplotlib  # here, not at import time: importing selfsup must not switch a user's plotting backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, queries = labels.long().cpu(), queries.long().cpu()
    blocks = (("SSL", ssl_neighbours.long().cpu()), ("random init", random_neighbours.long().cpu()))

    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else str(c)

    rows, lines = [], []
    for i, query in enumerate(queries.tolist()):
        c = int(labels[query])
        counts = [int((labels[table[i]] == c).sum()) for _, table in blocks]
        rows.append(f"query {i}: {name(c)}\n" + " · ".join(f"{b} {m}/{k}" for (b, _), m in zip(blocks, counts)))
        lines.append(f"query {i} (image {query}): {name(c)} / " + " / ".join(
            f"{b} {m}/{k}" for (b, _), m in zip(blocks, counts)))

    cell, pad, gap = 0.72, 0.06, 0.3  # inches: an image, the space between images, the space between blocks
    longest = max(len(line) for row in rows for line in row.split("\n"))
    label_w, head = max(1.2, 0.068 * longest + 0.2), (0.75 if title else 0.4)
    width = label_w + (1 + 2 * k) * (cell + pad) + 2 * gap + 0.1
    height = head + q * (cell + pad) + 0.1
    fig = plt.figure(figsize=(width, height))
    gray = images.shape[1] == 1

    def draw(x: float, r: int, index: int, colour: str, dashed: bool = False, label: str = "") -> None:
        ax = fig.add_axes((x / width, 1 - (head + (r + 1) * (cell + pad)) / height, cell / width, cell / height))
        ax.imshow(as_image(images[index].float() / 255), cmap="gray" if gray else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3.2 if dashed else 2.2)
            spine.set_linestyle((0, (1.5, 1)) if dashed else "-")
            spine.set_capstyle("butt")  # the default projecting caps would fill the gaps of the dashes
        if label:
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8, labelpad=6)

    x_block = [label_w + (cell + pad) + gap, label_w + (1 + k) * (cell + pad) + 2 * gap]
    for r, query in enumerate(queries.tolist()):
        draw(label_w, r, query, QUERY, label=rows[r])
        c = int(labels[query])
        for (_, table), x0 in zip(blocks, x_block):
            for j, index in enumerate(table[r].tolist()):
                same = int(labels[index]) == c
                draw(x0 + j * (cell + pad), r, index, RIGHT if same else WRONG, dashed=not same)
    top = 1 - (head - 0.08) / height
    fig.text((label_w + cell / 2) / width, top, "query", ha="center", va="bottom", fontsize=9)
    for (b, _), x0 in zip(blocks, x_block):
        fig.text((x0 + k * (cell + pad) / 2) / width, top, f"{b}: {k} nearest test images", ha="center",
                 va="bottom", fontsize=9, weight="bold")
    if title:
        fig.text(0.5, 1 - 0.08 / height, title, ha="center", va="top", fontsize=9)
    path = Path(path)
    metadata = {"Title": title, "Description": "rows: " + "; ".join(lines)}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata=metadata))
    plt.close(fig)
    return path


def retrieval(ssl_test: torch.Tensor, random_test: torch.Tensor, test_images: torch.Tensor,
              test_labels: torch.Tensor, class_names: Sequence[str], run_dir: str | Path | None,
              ks: Sequence[int] = (1, 5, 10, 20), n_queries: int = 10, k_show: int = 8, seed: int = 0,
              log: Callable[[str], None] | None = None) -> dict:
    """precision@k of the SSL and random-init test features (test split, leave-one-out) and, with run_dir, the
    picture retrieval.png of the neighbours of n_queries seeded queries. JSON-ready.

    ks larger than the test split allows (N - 1) are dropped, and k_show is capped likewise. A figure failure
    costs only the figure ("figure": None; the reason goes to log, or to a warning without one).
    """
    n = test_labels.shape[0]
    if ssl_test.shape[0] != n or random_test.shape[0] != n or test_images.shape[0] != n:
        raise SelfSupError(f"retrieval needs one row per test image: {n} labels, {ssl_test.shape[0]} SSL and "
                           f"{random_test.shape[0]} random-init features, {test_images.shape[0]} images")
    ks = sorted({int(k) for k in ks if 1 <= int(k) <= n - 1})
    if not ks:
        raise SelfSupError(f"retrieval needs at least 2 test images and some k in 1..N-1, got N = {n}")
    out = {"database": "test split, leave-one-out", "ks": ks,
           "ssl": {"precision_at": precision_at_k(ssl_test, test_labels, ks)},
           "random_init": {"precision_at": precision_at_k(random_test, test_labels, ks)},
           "queries": pick_queries(test_labels, n_queries, seed).tolist(), "figure": None}
    if run_dir is not None:
        queries, k = torch.tensor(out["queries"]), min(k_show, n - 1)
        out["figure"] = optional_figure("retrieval.png", lambda: retrieval_png(
            test_images, test_labels, queries, neighbours(ssl_test, queries, k), neighbours(random_test, queries, k),
            class_names, Path(run_dir) / "retrieval.png",
            title=f"nearest neighbours by cosine similarity among the {n} test images (leave-one-out); "
                  "green frame: same class as the query, dashed red: another class"), log)
    return out
