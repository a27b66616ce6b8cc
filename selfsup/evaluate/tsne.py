"""t-SNE maps of frozen features: a picture of the SSL and the random-init test features, points coloured by class.

t-SNE (van der Maaten & Hinton 2008, scikit-learn's Barnes-Hut implementation) places points in 2-D so that
neighbours stay neighbours; distances between far-apart groups and the size of a group mean little. The features
are L2-normalized first: every other protocol here (kNN, clustering, retrieval) compares features by cosine, and on
unit vectors the Euclidean distance t-SNE uses is a monotone function of cosine (|a - b|^2 = 2 - 2 cos), so the map
shows the neighbourhoods the numbers are computed on; it also removes the arbitrary scale of a random-init encoder.

A picture is easy to over-read, so each map comes with a number about the map itself: `knn_2d_top1`, the
leave-one-out 10-nearest-neighbour majority-vote accuracy of the 2-D points (how well the picture separates the
classes, not how good the features are; kNN and the linear probe answer that).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.checkpoint import atomic_write
from selfsup.errors import SelfSupError
from selfsup.report.figures import optional_figure


def effective_perplexity(n: int, perplexity: float) -> float:
    """The perplexity t-SNE can use on n points: at most (n - 1) / 3, since scikit-learn's Barnes-Hut t-SNE draws
    3 * perplexity neighbours per point (and it must stay below n)."""
    if n < 5:
        raise SelfSupError(f"t-SNE needs at least 5 points, got {n}; evaluate on more test images")
    if perplexity <= 0:
        raise SelfSupError(f"t-SNE perplexity must be > 0, got {perplexity}; 5 to 50 is usual, 30 the default")
    return min(float(perplexity), (n - 1) / 3)


def tsne_embed(features: torch.Tensor, seed: int, perplexity: float = 30.0) -> tuple[torch.Tensor, float]:
    """2-D t-SNE map (N, 2) of features (N, D), L2-normalized first, and the final KL divergence of the fit.

    PCA initialisation and the automatic learning rate (max(N / 12 / 4, 50)), seeded; perplexity is clamped to
    (N - 1) / 3 (see effective_perplexity).
    """
    if features.dim() != 2 or features.shape[1] < 2:
        raise SelfSupError(f"t-SNE needs features (N, D) with D >= 2, got shape {tuple(features.shape)}")
    perplexity = effective_perplexity(features.shape[0], perplexity)
    if not bool(torch.isfinite(features).all()):
        raise SelfSupError("t-SNE features hold NaN or inf; check the encoder's output (a diverged run?)")
    from sklearn.manifold import TSNE  # here: scikit-learn takes about a second to import

    unit = F.normalize(features.detach().double().cpu(), dim=1).numpy()  # (N, D)
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    xy = model.fit_transform(unit)  # (N, 2)
    return torch.from_numpy(xy).float(), float(model.kl_divergence_)


def pick_points(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded class-stratified subset (sorted indices) of n labelled images: each class gets its share of n in
    proportion to its size (largest remainders first). All labelled images when there are at most n."""
    if n < 1:
        raise SelfSupError(f"t-SNE needs n >= 1 points, got {n}")
    labels = labels.long().cpu()
    labelled = (labels >= 0).nonzero().flatten()  # (M,)
    if len(labelled) <= n:
        return labelled
    classes, counts = torch.unique(labels[labelled], return_counts=True)
    share = counts.double() * n / len(labelled)  # (C,)
    quota = share.floor().long()
    rest = n - int(quota.sum())
    quota[(share - quota).argsort(descending=True, stable=True)[:rest]] += 1
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = (labels == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:q]])
    return torch.cat(picked).sort().values


def knn_2d_top1(xy: torch.Tensor, labels: torch.Tensor, k: int = 10, chunk: int = 1024) -> float:
    """Leave-one-out k-NN majority-vote accuracy in [0, 1] of 2-D points xy (N, 2) with labels (N,).

    A tie in the vote goes to the class whose tied neighbours rank nearer (a rank bonus too small to overturn a
    count). About 1 / classes when the map ignores the classes, 1 when every point sits among its own class.
    """
    n = xy.shape[0]
    if n < 2 or labels.shape != (n,):
        raise SelfSupError(f"knn_2d_top1 needs points (N, 2) with N >= 2 and labels (N,), got {tuple(xy.shape)} "
                           f"and {tuple(labels.shape)}")
    k = min(k, n - 1)
    xy, labels = xy.double().cpu(), labels.long().cpu()
    classes = int(labels.max()) + 1
    bonus = (k - torch.arange(k, dtype=torch.float64)) / (k * (k + 1))  # (k,), 1/2 summed over all k ranks
    right = 0
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        dist = torch.cdist(xy[rows], xy)  # (m, N)
        dist[torch.arange(len(rows)), rows] = float("inf")  # leave the point itself out
        idx = dist.topk(k, dim=1, largest=False).indices  # (m, k), nearest first
        votes = torch.zeros(len(rows), classes, dtype=torch.float64)
        votes.scatter_add_(1, labels[idx], 1 + bonus.expand(len(rows), k))
        right += int((votes.argmax(dim=1) == labels[rows]).sum())
    return right / n


def tsne_png(ssl_xy: torch.Tensor, random_xy: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
             path: str | Path, title: str = "", panel_notes: tuple[str, str] = ("", "")) -> Path:
    """A PNG of two t-SNE maps side by side, "SSL" and "random init", points coloured by class.

    ssl_xy, random_xy: (N, 2); labels (N,). tab10 colours for up to 10 classes, tab20 up to 20, both with a legend
    of class names; more classes share one colormap without a legend. panel_notes are added under the panel
    titles (e.g. a score). The panels and classes go into the PNG's Description text chunk. Written atomically.
    """
    n = labels.shape[0]
    if ssl_xy.shape != (n, 2) or random_xy.shape != (n, 2):
        raise SelfSupError(f"tsne_png needs two maps (N, 2) for N = {n} labels, got {tuple(ssl_xy.shape)} and "
                           f"{tuple(random_xy.shape)}")
    import matplotlib  # here, not at import time: importing selfsup must not switch a user's plotting backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels.long().cpu()
    classes = max(int(labels.max()) + 1 if n else 0, len(class_names))
    legend = classes <= 20
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20" if legend else "turbo")
    colour = (lambda c: cmap(c)) if legend else (lambda c: cmap(c / max(1, classes - 1)))
    names = [class_names[c] if c < len(class_names) else str(c) for c in range(classes)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), layout="constrained")
    for ax, name, xy, note in zip(axes, ("SSL", "random init"), (ssl_xy, random_xy), panel_notes):
        xy = xy.detach().float().cpu()
        for c in range(classes):
            mask = labels == c
            if bool(mask.any()):
                ax.scatter(xy[mask, 0], xy[mask, 1], s=3, color=colour(c), label=names[c], linewidths=0, alpha=0.85)
        ax.set_title(name + (f"\n{note}" if note else ""), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    if legend:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8, markerscale=3,
                   frameon=False, ncols=1 if classes <= 10 else 2)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    metadata = {"Title": title, "Description": "panels: SSL; random init; classes: " + ", ".join(names)}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata=metadata))
    plt.close(fig)
    return path


def tsne(ssl_test: torch.Tensor, random_test: torch.Tensor, test_labels: torch.Tensor, class_names: Sequence[str],
         run_dir: str | Path | None, points: int = 2000, seed: int = 0, perplexity: float = 30.0,
         log: Callable[[str], None] | None = None) -> dict:
    """t-SNE maps of a seeded class-stratified subset of the test split's SSL and random-init features, with
    each map's KL divergence and knn_2d_top1, and with run_dir the picture tsne.png. JSON-ready.

    A clamped perplexity is reported under "note". A figure failure costs only the figure ("figure": None; the
    reason goes to log, or to a warning without one).
    """
    t0 = time.perf_counter()
    n = test_labels.shape[0]
    if ssl_test.shape[0] != n or random_test.shape[0] != n:
        raise SelfSupError(f"t-SNE needs one feature row per test label: {n} labels, {ssl_test.shape[0]} SSL and "
                           f"{random_test.shape[0]} random-init rows")
    chosen = pick_points(test_labels, points, seed)  # (n,)
    used = effective_perplexity(len(chosen), perplexity)
    labels = test_labels[chosen].long().cpu()
    out: dict = {"points": len(chosen), "perplexity": used}
    if used < perplexity:
        out["note"] = f"perplexity {perplexity:g} clamped to (points - 1) / 3 = {used:.4g} for {len(chosen)} points"
    maps = {}
    for key, features in (("ssl", ssl_test), ("random_init", random_test)):
        xy, kl = tsne_embed(features[chosen], seed, used)
        maps[key] = xy
        out[key] = {"kl_divergence": kl, "knn_2d_top1": knn_2d_top1(xy, labels)}
    out["figure"] = None
    if run_dir is not None:
        out["figure"] = optional_figure("tsne.png", lambda: tsne_png(
            maps["ssl"], maps["random_init"], labels, class_names, Path(run_dir) / "tsne.png",
            title=f"t-SNE of the frozen features of {len(chosen)} test images (L2-normalized, "
                  f"perplexity {used:.3g}); colour = class, which t-SNE does not see",
            panel_notes=tuple(f"2-D 10-NN accuracy {out[key]['knn_2d_top1']:.1%}" for key in ("ssl", "random_init"))),
            log)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
