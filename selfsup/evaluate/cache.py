"""The frozen features of one evaluation, extracted once, shared by every protocol and kept in the run folder.

An evaluation needs the features of the training and test images under the pretrained encoder and under a
random-init copy of it (the baseline). Extracting them costs most of a short evaluation (seconds to a minute on a
CPU), so `FeatureStore` extracts each set at most once, on first use, and saves the full sets to
`features.safetensors` in the run folder; `selfsup eval RUN_DIR --protocols tsne` after `selfsup run` then starts
from the saved features. The file is used only while everything that made it is unchanged: the encoder file, the
evaluation images (a fingerprint of their bytes and labels), the seed of the random-init weights and the code of
the toolkit (its version). Anything else makes a fresh extraction, which then replaces the file.

Random-init features of a few training rows (the few-label split, the low-shot draws) are extracted on demand and
not saved: they cost a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import selfsup
from selfsup.checkpoint import atomic_write
from selfsup.evaluate.features import extract

CACHE_FILE = "features.safetensors"
SETS = ("ssl_train", "ssl_test", "random_train", "random_test")


def fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A short hash of a set of uint8 images (N, C, H, W) and labels (N,): shape, every label and a strided sample
    of about a million pixel values (hashing all of a large set would cost more than it saves)."""
    flat = images.reshape(-1)
    stride = max(1, flat.numel() // 1_000_000)
    h = hashlib.sha256()
    h.update(repr(tuple(images.shape)).encode())
    h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    h.update(flat[::stride].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes (the exported encoder, a few MB), None when it is missing."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class FeatureStore:
    """Features of the SSL backbone and of its random-init twin on one (train, test) pair, each set extracted once.

    backbone: the pretrained encoder; fresh_backbone(): the same architecture with random weights, built under
    torch.manual_seed(seed) on first use; run_dir: where features.safetensors is read and written (None: no file);
    encoder_file: the file the backbone's weights came from, part of the cache key (None: no cache).
    """

    def __init__(self, backbone: nn.Module, fresh_backbone: Callable[[], nn.Module], train_images: torch.Tensor,
                 train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor, seed: int,
                 batch_size: int, device: torch.device, run_dir: str | Path | None = None,
                 encoder_file: str | Path | None = None, log: Callable[[str], None] = print):
        self.backbone, self.fresh_backbone = backbone, fresh_backbone
        self.images = {"train": train_images, "test": test_images}
        self.seed, self.batch_size, self.device, self.log = seed, batch_size, device, log
        self._random_net: nn.Module | None = None
        self._sets: dict[str, torch.Tensor] = {}
        self._unsaved = False  # sets extracted since the file was last written
        self.loaded: list[str] = []  # the sets read from the file, for the log and the tests
        self.extracted: list[str] = []
        self.path = Path(run_dir) / CACHE_FILE if run_dir is not None and encoder_file is not None else None
        self.key = None
        if self.path is not None:
            digest = file_digest(Path(encoder_file))
            if digest is not None:
                self.key = {"encoder": digest, "train": fingerprint(train_images, train_labels),
                            "test": fingerprint(test_images, test_labels), "seed": seed,
                            "selfsup": selfsup.__version__}
                self._load()

    # ---- the four sets --------------------------------------------------------------------------------------
    def ssl(self, split: str) -> torch.Tensor:
        """(N, D) features of every image of `split` ("train" or "test") under the pretrained backbone."""
        return self._get(f"ssl_{split}", self.backbone)

    def random(self, split: str) -> torch.Tensor:
        """(N, D) features of every image of `split` under the random-init backbone."""
        return self._get(f"random_{split}", None)

    def random_rows(self, indices: torch.Tensor) -> torch.Tensor:
        """(len(indices), D) random-init features of these training rows; from the full set when it exists."""
        if "random_train" in self._sets:
            return self._sets["random_train"][indices]
        return extract(self.random_net(), self.images["train"][indices], self.batch_size, self.device)

    def has(self, name: str) -> bool:
        return name in self._sets

    def random_net(self) -> nn.Module:
        """The random-init backbone: weights drawn under the run's seed, the same on every call and every run."""
        if self._random_net is None:
            torch.manual_seed(self.seed)
            self._random_net = self.fresh_backbone()
        return self._random_net

    def _get(self, name: str, net: nn.Module | None) -> torch.Tensor:
        if name not in self._sets:
            split = name.split("_", 1)[1]
            self._sets[name] = extract(net if net is not None else self.random_net(), self.images[split],
                                       self.batch_size, self.device)
            self.extracted.append(name)
            self._unsaved = True
        return self._sets[name]

    # ---- the file -------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                if json.loads(meta.get("key", "null")) != self.key:
                    self.log(f"note: {self.path.name} was made from another encoder, data or seed; extracting afresh")
                    return
                for name in f.keys():
                    if name in SETS:
                        self._sets[name] = f.get_tensor(name)
                        self.loaded.append(name)
        except (OSError, ValueError, SafetensorError, json.JSONDecodeError) as e:
            self._sets.clear()
            self.loaded.clear()
            self.log(f"note: {self.path.name} unreadable ({type(e).__name__}); extracting afresh")

    def save(self) -> None:
        """Write every set held to the file, when some were extracted since the last write (one file write per
        evaluation rather than one per set: the file holds all of them, about 36 MB on Fashion-MNIST)."""
        if self.path is None or self.key is None or not self._unsaved:
            return
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in self._sets.items()}
        metadata = {"key": json.dumps(self.key), "note": "frozen features of selfsup's evaluation (evaluate/cache.py)"}
        atomic_write(self.path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        self._unsaved = False
