"""Image sources: every source returns an ImageSet of uint8 images (N, C, H, W) and int64 labels (-1 unknown).

SKELETON written by the lead: the helper implementing data sources fills in the bodies, keeping these
signatures (other modules call them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """A set of images held as one uint8 tensor.

    images: (N, C, H, W) uint8; labels: (N,) int64, -1 where unknown; classes: class names in label order;
    origin: where the files were found (a path, or "generated").
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    origin: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> int:
        """Image side in pixels (images are square)."""
        return int(self.images.shape[-1])

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.classes, self.name, self.origin, list(self.notes))


def load(name: str, split: str = "train", *, image_size: int | None = None, seed: int = 0) -> ImageSet:
    """Load a source by name ("fashion-mnist", "cifar10", "cifar100", "stl10", "synthetic") or by folder path.

    split: "train", "test", or "unlabeled" (stl10 only; "train+unlabeled" for stl10 gives both).
    Raises SelfSupError with a one-line fix when the files cannot be found or read.
    """
    raise NotImplementedError


SOURCES: dict[str, str] = {}  # name -> one-line description, for `selfsup data info` and `--help`
