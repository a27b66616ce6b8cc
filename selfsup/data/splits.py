"""Seeded index splits: class-balanced few-label subsets and stratified hold-out sets, saved as JSON beside a run.

Every function draws from its own `torch.Generator` seeded by the caller, never from the global RNG, so a split
depends only on (labels, size, seed) and is the same whatever else the program has drawn before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from selfsup.checkpoint import atomic_write
from selfsup.errors import SelfSupError

if TYPE_CHECKING:
    from selfsup.data.sources import ImageSet


def few_label_split(labels: torch.Tensor, n_labels: int, seed: int) -> torch.Tensor:
    """Sorted indices of n_labels labelled images, n_labels / n_classes per class (remainder: seeded random classes)."""
    labels = torch.as_tensor(labels).long().flatten()
    if n_labels < 1:
        raise SelfSupError(f"the few-label split needs at least one label, got {n_labels}: set eval.labels to a "
                           "positive number such as 200")
    known = labels[labels >= 0]
    if known.numel() == 0:
        raise SelfSupError("the few-label split needs labelled images but every label is -1 (unknown): evaluate on a "
                           "labelled source, or use an image folder with one sub-folder per class")
    classes, counts = torch.unique(known, return_counts=True)
    n_classes = len(classes)
    if n_labels < n_classes:
        raise SelfSupError(f"{n_labels} labels cannot cover the {n_classes} classes: set eval.labels to at least "
                           f"{n_classes} (one per class)")
    generator = torch.Generator().manual_seed(seed)
    wanted = torch.full((n_classes,), n_labels // n_classes, dtype=torch.long)
    wanted[torch.randperm(n_classes, generator=generator)[:n_labels % n_classes]] += 1
    short = (counts < wanted).nonzero().flatten()
    if len(short):
        c = int(short[0])
        raise SelfSupError(f"{n_labels} class-balanced labels need {int(wanted[c])} images of class "
                           f"{int(classes[c])}, which has only {int(counts[c])}: set eval.labels to at most "
                           f"{int(counts.min()) * n_classes}")
    chosen = []
    for c, label in enumerate(classes.tolist()):
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:int(wanted[c])]])
    return torch.cat(chosen).sort().values


def holdout(images: "ImageSet", fraction: float, seed: int) -> tuple["ImageSet", "ImageSet"]:
    """Split an ImageSet into (train, test), holding out `fraction` of each label (unknown -1 counts as a label).

    With images.groups (the crops of one photo share a group), a label spread over several groups holds out whole
    groups, so no photo has crops on both sides; a label with a single group (a flat folder's "which photo" label)
    splits that group's images instead.
    """
    is_test = held_out_rows(images.labels, images.groups, fraction, seed)
    return images.subset((~is_test).nonzero().flatten()), images.subset(is_test.nonzero().flatten())


def held_out_rows(labels: torch.Tensor, groups: torch.Tensor | None, fraction: float, seed: int) -> torch.Tensor:
    """(N,) bool, True on the rows `holdout` puts on the test side; only labels and groups decide."""
    if not 0 < fraction < 1:
        raise SelfSupError(f"hold-out fraction must be between 0 and 1, got {fraction}: use e.g. 0.2")
    generator = torch.Generator().manual_seed(seed)
    test_parts = []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        if groups is not None:
            kinds = torch.unique(groups[members])
            # At least one whole group goes to the test side whenever a label has two or more.
            n_test = min(max(1, int(len(kinds) * fraction + 0.5)), len(kinds) - 1)
            if n_test > 0:
                held = kinds[torch.randperm(len(kinds), generator=generator)[:n_test]]
                test_parts.append(members[torch.isin(groups[members], held)])
                continue
        # Round to nearest but keep at least one image of every class on the training side.
        n_test = min(int(len(members) * fraction + 0.5), len(members) - 1)
        test_parts.append(members[torch.randperm(len(members), generator=generator)[:n_test]])
    test_index = torch.cat(test_parts) if test_parts else torch.zeros(0, dtype=torch.long)
    if len(test_index) == 0:
        raise SelfSupError(f"{len(labels)} images are too few to hold out {fraction:.0%} for testing: "
                           "add images (at least two per class)")
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[test_index] = True
    return is_test


def seeded_subset(images: "ImageSet", n: int, seed: int) -> "ImageSet":
    """n images chosen at random under `seed`, kept in their original order (all of them if n >= len)."""
    if n >= len(images):
        return images
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images.subset(pick.sort().values)


def save_split(path: str | Path, indices: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write indices and a metadata dict as JSON (atomically, so a crash never leaves half a file)."""
    text = json.dumps({"meta": meta, "indices": [int(i) for i in torch.as_tensor(indices).tolist()]})
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_split(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read (indices as int64 tensor, metadata) written by save_split."""
    try:
        saved = json.loads(Path(path).read_text())
        return torch.tensor(saved["indices"], dtype=torch.long), dict(saved["meta"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SelfSupError(f"cannot read the split file {path} ({type(e).__name__}: {e}): "
                           "give the split.json that a run wrote, or re-run to write it again") from None
