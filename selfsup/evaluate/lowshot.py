"""Low-shot linear SVM protocol (Goyal et al. 2019, "Scaling and Benchmarking Self-Supervised Visual Representation
Learning"): train a linear SVM on frozen features of only k labelled images per class, for several k and several
seeded draws, and report test accuracy as mean and std over the draws.

A single few-label split measures one lucky (or unlucky) sample; repeating the draw shows how much of a difference
between two representations is the sample's doing. Each shot count k gets `draws` independent class-balanced draws.
Within draw d the shot counts are nested (the 1-shot images are among the 2-shot images, and so on): the curve over
k then measures more labels rather than other labels, and the union of all draws, the only training rows whose
features are needed, stays as small as the largest shot count's draws.

Classifier, for each draw:
  - features are L2-normalized per image. A per-dimension standardization would have to estimate a mean and a std
    from the draw itself, e.g. 10 images in 128 dimensions at one shot, and a dimension on which those few images
    happen to agree would be blown up; L2 normalization estimates nothing, treats train and test images alike, and
    is the cosine geometry of the kNN monitor.
  - one-vs-rest linear SVM with squared hinge loss and an L2 penalty (scikit-learn's LinearSVC, liblinear), the
    classifier of Goyal et al.'s SVM benchmarks; squared hinge is differentiable, so liblinear's solvers converge in
    few iterations on these small problems. The dual solver is used when images are fewer than dimensions, the
    primal one otherwise (dual="auto"), which is the faster of the two in each regime.
  - the cost C is chosen from a log grid by stratified k-fold cross-validation on the draw's own labels, k = min(shots,
    5); ties go to the smaller C (the stronger regularization, as in the linear probe). With one shot per class no
    image can be held out, so C is fixed (ONE_SHOT_COST) and the result says "cost_selection": "fixed".
  - the chosen C is refitted on the whole draw, and the test split is scored once per draw, by that model.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError

COSTS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
# One shot per class: the images are always separable, so large C is a hard-margin SVM and small C tends to a
# nearest-class-mean rule; on synthetic clusters the two differ by about a point. 1.0 is liblinear's default and
# sits mid-grid.
ONE_SHOT_COST = 1.0
MAX_FOLDS = 5
MAX_ITER = 5000  # liblinear stops far earlier on these problems (tens to a few hundred iterations); this is a cap
CLASSIFIER = "one-vs-rest linear SVM (LinearSVC, squared hinge, L2 penalty) on L2-normalized features"


def _suggested_shots(shots: Sequence[int], fewest: int) -> list[int]:
    """Shot counts that fit a class of `fewest` images: the requested ones that fit, else powers of two."""
    fitting = [k for k in shots if k <= fewest]
    return fitting or [2 ** i for i in range(int(math.log2(fewest)) + 1)]


def draw_low_shot(labels: torch.Tensor, shots: Sequence[int], draws: int, seed: int) -> dict[int, list[torch.Tensor]]:
    """{k: [draws sorted index tensors of k images per class]} for each k in shots; labels (N,), -1 never drawn.

    Draw d shuffles each class once under a generator seeded by `seed` and takes the first k of each class for
    every k, so draw d depends only on (labels, seed, d), not on the shot list or on how many draws follow.
    """
    labels = torch.as_tensor(labels).long().flatten().cpu()
    wanted = sorted(int(k) for k in shots)
    if not wanted or wanted[0] < 1 or len(set(wanted)) < len(wanted):
        raise SelfSupError(f"low-shot needs distinct positive shot counts, got {list(shots)}: use e.g. "
                           "--set eval.lowshot_shots=[1,2,4,8,16]")
    if draws < 1:
        raise SelfSupError(f"low-shot needs at least one draw, got {draws}: use e.g. 5")
    classes, counts = torch.unique(labels[labels >= 0], return_counts=True)
    if len(classes) < 2:
        raise SelfSupError(f"low-shot classification needs labelled images of at least 2 classes, found "
                           f"{len(classes)}: evaluate on a labelled source with several classes")
    fewest = int(counts.min())
    if fewest < wanted[-1]:
        c = int(classes[counts.argmin()])
        suggestion = ",".join(str(k) for k in _suggested_shots(wanted, fewest))
        raise SelfSupError(f"{wanted[-1]} shots per class need {wanted[-1]} labelled images of every class, but class "
                           f"{c} has only {fewest}: use fewer shots, e.g. --set eval.lowshot_shots=[{suggestion}]")
    members = [(labels == c).nonzero().flatten() for c in classes.tolist()]  # one (n_c,) index tensor per class
    generator = torch.Generator().manual_seed(seed)
    result: dict[int, list[torch.Tensor]] = {k: [] for k in wanted}
    for _ in range(draws):
        shuffled = [m[torch.randperm(len(m), generator=generator)[:wanted[-1]]] for m in members]
        for k in wanted:
            result[k].append(torch.cat([s[:k] for s in shuffled]).sort().values)
    return result


def union_of_draws(draws: dict[int, list[torch.Tensor]]) -> torch.Tensor:
    """Sorted unique training indices over every draw of every shot count: the rows whose features are needed."""
    parts = [idx.long().flatten() for runs in draws.values() for idx in runs]
    return torch.cat(parts).unique() if parts else torch.zeros(0, dtype=torch.long)


def _fit_svm(x, y, cost: float, seed: int, unconverged: list[int]):
    """LinearSVC fitted on numpy features x (n, D) and labels y (n,).

    liblinear can stop at MAX_ITER before its tolerance at the largest costs (a nearly hard margin, slow in the
    primal); the fit is still used, the warning is not printed (it would repeat dozens of times in a run's log) and
    counted in unconverged[0] instead, which the result reports.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC  # here: scikit-learn is slow to import

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm = LinearSVC(C=cost, loss="squared_hinge", penalty="l2", dual="auto", max_iter=MAX_ITER,
                        random_state=seed).fit(x, y)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            unconverged[0] += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return svm


def _predict(svm, x: torch.Tensor) -> torch.Tensor:
    """Classes of features x (M, D), already normalized, under a fitted LinearSVC; the matmul runs in torch."""
    coef = torch.from_numpy(svm.coef_).to(x.dtype)  # (K, D), or (1, D) for two classes
    scores = x @ coef.t() + torch.from_numpy(svm.intercept_).to(x.dtype)  # (M, K) or (M, 1)
    if scores.shape[1] == 1:
        scores = torch.cat([-scores, scores], dim=1)  # (M, 2): liblinear's one row scores the second class
    return torch.from_numpy(svm.classes_)[scores.argmax(dim=1)]


def select_cost(x, y, costs: Sequence[float], folds: int, seed: int, unconverged: list[int] | None = None) -> float:
    """The cost of best mean accuracy over stratified folds of (x (n, D), y (n,)) numpy arrays; ties: smaller C.
    unconverged[0] counts the fits that stopped at MAX_ITER."""
    unconverged = unconverged if unconverged is not None else [0]
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accuracy = {c: 0.0 for c in costs}
    for fit_rows, val_rows in splitter.split(x, y):
        for c in costs:
            svm = _fit_svm(x[fit_rows], y[fit_rows], c, seed, unconverged)
            accuracy[c] += float((svm.predict(x[val_rows]) == y[val_rows]).mean()) / folds
    best = max(accuracy.values())
    return min(c for c, a in accuracy.items() if a >= best - 1e-9)


def low_shot_svm(train_rows: Callable[[torch.Tensor], torch.Tensor], train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, draws: dict[int, list[torch.Tensor]],
                 costs: Sequence[float] = COSTS, seed: int = 0, fixed_cost: float = ONE_SHOT_COST) -> dict:
    """Test accuracy of a linear SVM trained on each draw, as a JSON-ready dict (fractions in [0, 1]).

    train_rows(idx) -> (len(idx), D) features of those training rows, called once per draw with that draw's
    indices; train_labels (N,); test_features (M, D); test_labels (M,), rows of -1 (unknown) not scored;
    draws from draw_low_shot. Returns
    {"shots", "draws", "classifier", "costs_grid",
     "results": {"k": {"mean", "std", "runs", "costs", "cost_selection": "fixed" | "cv"}}}
    with std the sample std (ddof 1) over draws, 0 for a single draw.
    """
    grid = sorted(float(c) for c in costs)
    if not grid or grid[0] <= 0 or fixed_cost <= 0:
        raise SelfSupError(f"SVM costs must be positive, got grid {list(costs)} and fixed cost {fixed_cost}: "
                           "use e.g. (1e-3, 1e-2, 1e-1, 1, 10, 100)")
    counts = {len(runs) for runs in draws.values()}
    if not draws or len(counts) != 1 or 0 in counts:
        raise SelfSupError("low_shot_svm needs the same positive number of draws for every shot count: pass the "
                           "output of draw_low_shot")
    train_labels = torch.as_tensor(train_labels).long().flatten().cpu()
    test_labels = torch.as_tensor(test_labels).long().flatten().cpu()
    if test_features.dim() != 2 or test_features.shape[0] != test_labels.shape[0]:
        raise SelfSupError(f"test features {tuple(test_features.shape)} and test labels {tuple(test_labels.shape)} "
                           "do not match: pass (M, D) features with one label per row")
    known = test_labels >= 0  # test images of unknown class (-1) are not scored
    if not bool(known.any()):
        raise SelfSupError("low-shot accuracy needs test images of known class, but every test label is -1: "
                           "evaluate on a labelled test split")
    test_x = F.normalize(test_features[known].detach().float().cpu(), dim=1)  # (M', D)
    test_labels = test_labels[known]  # (M',)
    dim = test_x.shape[1]

    results: dict[str, dict] = {}
    unconverged, fits = [0], 0
    for shots in sorted(draws):
        runs, chosen = [], []
        selection = "fixed"
        for d, idx in enumerate(draws[shots]):
            idx = torch.as_tensor(idx).long().flatten().cpu()
            if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(train_labels) \
                    or bool((train_labels[idx] < 0).any()):
                raise SelfSupError(f"draw {d} of {shots} shots holds indices outside the labelled training images: "
                                   "pass the output of draw_low_shot on these train_labels")
            x = train_rows(idx)
            if tuple(x.shape) != (len(idx), dim):
                raise SelfSupError(f"train_rows returned features of shape {tuple(x.shape)} for {len(idx)} rows, "
                                   f"expected ({len(idx)}, {dim}) like the test features")
            x = F.normalize(x.detach().float().cpu(), dim=1).double().numpy()  # (n, D)
            y = train_labels[idx].numpy()  # (n,)
            fewest = int(torch.unique(train_labels[idx], return_counts=True)[1].min())
            if len(set(y.tolist())) < 2:
                raise SelfSupError(f"draw {d} of {shots} shots has a single class: an SVM needs at least 2, pass "
                                   "the output of draw_low_shot")
            if fewest >= 2:
                selection = "cv"
                folds = min(fewest, MAX_FOLDS)
                cost = select_cost(x, y, grid, folds, seed + d, unconverged)
                fits += folds * len(grid)
            else:
                cost = float(fixed_cost)
            svm = _fit_svm(x, y, cost, seed + d, unconverged)
            fits += 1
            runs.append(int((_predict(svm, test_x) == test_labels).sum()) / len(test_labels))
            chosen.append(cost)
        results[str(shots)] = {"mean": statistics.fmean(runs), "std": statistics.stdev(runs) if len(runs) > 1 else 0.0,
                               "runs": runs, "costs": chosen, "cost_selection": selection}
    return {"shots": sorted(int(k) for k in draws), "draws": counts.pop(), "classifier": CLASSIFIER,
            "costs_grid": grid, "results": results, "fits": fits, "unconverged_fits": unconverged[0]}
