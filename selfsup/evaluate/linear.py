"""Linear probe: multinomial logistic regression on standardized frozen features, fitted full-batch with L-BFGS.

The weight decay is chosen on the training labels alone (k-fold cross-validation when there are few labels, a
held-out tenth otherwise); the test split is touched once, by the final model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearModel:
    weight: torch.Tensor  # (D, K)
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (D,) feature standardization
    std: torch.Tensor  # (D,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features.float() - self.mean) / self.std) @ self.weight + self.bias

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.logits(features).argmax(1) == labels).float().mean())


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 200, init: LinearModel | None = None) -> LinearModel:
    """Minimize mean cross-entropy + weight_decay/2 * ||W||^2 with L-BFGS; features: (N, D), labels: (N,).

    `init` warm-starts from another solution (e.g. the neighbouring weight decay), which cuts iterations.
    """
    x = features.float()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    w = (init.weight.clone() if init is not None else torch.zeros(x.shape[1], num_classes)).requires_grad_(True)
    b = (init.bias.clone() if init is not None else torch.zeros(num_classes)).requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, labels) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    # Small problems run faster on one thread: L-BFGS makes many tiny matmuls, and waking a thread pool
    # for each costs more than the matmul (seconds instead of milliseconds on a busy 2-core machine).
    threads = torch.get_num_threads()
    if x.numel() < 4_000_000:
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    return LinearModel(w.detach(), b.detach(), mean, std)


def _folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """k stratified folds of indices: each class is dealt round-robin after a seeded shuffle, each class starting
    where the last one stopped, so folds stay equal in size even when classes have fewer than k images (one label
    per class would otherwise put every image in the first fold and leave its training side empty)."""
    g = torch.Generator().manual_seed(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        for i in idx.tolist():
            folds[dealt % k].append(i)
            dealt += 1
    return [torch.tensor(sorted(f), dtype=torch.long) for f in folds if f]


def select_weight_decay(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        grid=WEIGHT_DECAYS, seed: int = 0) -> tuple[float, float, LinearModel | None]:
    """(best weight decay, its validation accuracy, a fitted model to warm-start from).

    5-fold CV under 5000 labels, else one held-out tenth. Within a fold the grid is walked from strong to weak
    regularization, each fit warm-started from the previous one (a regularization path).
    """
    n = labels.shape[0]
    folds = _folds(labels, 5 if n < 5000 else 10, seed)
    rounds = folds if n < 5000 else folds[:1]
    order = sorted(grid, reverse=True)
    accs: dict[float, list[float]] = {wd: [] for wd in order}
    models: dict[float, LinearModel] = {}
    for val in rounds:
        mask = torch.ones(n, dtype=torch.bool)
        mask[val] = False
        if not bool(mask.any()):  # a single fold (one labelled image): nothing to fit on
            continue
        model = None
        for wd in order:
            model = fit_logistic(features[mask], labels[mask], num_classes, wd, max_iter=50, init=model)
            accs[wd].append(model.accuracy(features[val], labels[val]))
            models[wd] = model
    if not models:  # one labelled image: no split to validate on, take the strongest regularization
        return order[0], float("nan"), None
    mean = {wd: sum(a) / len(a) for wd, a in accs.items()}
    best = max(mean.values())
    # Ties go to the stronger regularization: the simpler model.
    wd = max(w for w, a in mean.items() if a >= best - 1e-9)
    return wd, best, models.get(wd)


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, seed: int = 0) -> dict:
    """Pick weight decay on the training labels, refit on all of them, report test top-1 (fractions in [0, 1])."""
    wd, val_acc, warm = select_weight_decay(train_features, train_labels, num_classes, seed=seed)
    model = fit_logistic(train_features, train_labels, num_classes, wd, init=warm)
    return {"top1": model.accuracy(test_features, test_labels), "weight_decay": wd, "val_top1": val_acc,
            "train_size": int(train_labels.shape[0])}
