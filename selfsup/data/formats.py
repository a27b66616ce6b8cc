"""On-disk formats of the named sources, read without torchvision: Fashion-MNIST's IDX files (optionally gzipped),
CIFAR's python pickle batches (through an unpickler that can only build containers and numpy arrays), and STL-10's
binary files (memory-mapped). Every reader raises SelfSupError with a one-line fix on corrupt or truncated files.

Finding the files, and turning them into an ImageSet, is sources.py's part.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.errors import SelfSupError


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --- Fashion-MNIST: IDX files ----------------------------------------------------------------------------------

IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: 0x0803 = uint8 with 3 dims, 0x0801 = uint8 with 1 dim


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array shaped by its header; SelfSupError if corrupt or truncated."""
    fix = "delete it and get the files again (`apt-get install --reinstall dataset-fashion-mnist` or a new download)"
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut-off gzip stream is an EOFError
        raise SelfSupError(f"cannot read {path} ({type(e).__name__}: {_one_line(e)}): {fix}") from None
    if len(raw) < 4:
        raise SelfSupError(f"{path} is too short to be an IDX file ({len(raw)} bytes): {fix}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise SelfSupError(f"{path} has IDX magic number {found}, expected {magic} "
                           f"({'images' if magic == IDX_IMAGES else 'labels'}): {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SelfSupError(f"{path} is truncated inside its header: {fix}")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise SelfSupError(f"{path} holds {len(raw)} bytes but its header {dims} needs {expected} "
                           f"(truncated or corrupt): {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# --- CIFAR: python pickle batches ------------------------------------------------------------------------------

def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3's protocol-2 pickles call to rebuild bytes (as `_codecs.encode(text, 'latin1')`)."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing to encode with {encoding!r}")
    return text.encode("latin1")


# The batches hold dicts, lists, bytes and numpy arrays. Only the globals needed to rebuild those are allowed, so a
# replaced or tampered file cannot run code. The reconstruct function is looked up through ndarray.__reduce__
# because numpy 1 and 2 keep it in different modules (numpy.core vs numpy._core).
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_bytes,  # batches re-saved by Python 3 with protocol 2
    ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that only builds containers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_pickle_batch(path: Path) -> dict:
    """A CIFAR batch or meta file as a dict (keys decoded as bytes, as in the distributed files)."""
    fix = "delete the folder and get the files again (e.g. `selfsup data fetch cifar10`)"
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as e:  # unpickling can raise nearly anything on bad input
        raise SelfSupError(f"{path} is not a readable CIFAR file ({type(e).__name__}: {_one_line(e)}): {fix}") from None
    if not isinstance(batch, dict):
        raise SelfSupError(f"{path} holds a {type(batch).__name__}, not a CIFAR dict: {fix}")
    return batch


def _get(batch: dict, key: str, path: Path) -> Any:
    """batch[key] whether the file was written with bytes keys (Python 2, as distributed) or str keys."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise SelfSupError(f"{path} has no '{key}' entry (keys: {sorted(str(k) for k in batch)}): "
                       "delete the folder and get the files again")


# --- STL-10: binary files ---------------------------------------------------------------------------------------

STL10_IMAGE_BYTES = 3 * 96 * 96


def _stl10_images(path: Path, fix: str) -> np.ndarray:
    """A memory-mapped X file as (N, 3, 96, 96) in (channel, row, column) order: a transposed, non-copied view."""
    size = path.stat().st_size
    if size == 0 or size % STL10_IMAGE_BYTES:
        raise SelfSupError(f"{path} holds {size} bytes, not a whole number of 96x96x3 images (truncated?): "
                           f"{fix}")
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // STL10_IMAGE_BYTES, 3, 96, 96))
    # The files store each channel column by column (MATLAB order), so the last two axes arrive swapped.
    return raw.transpose(0, 1, 3, 2)


def _stl10_labels(path: Path, n: int, fix: str) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # files count classes from 1
    if len(labels) != n or (n and (labels.min() < 0 or labels.max() > 9)):
        raise SelfSupError(f"{path} holds {len(labels)} labels (range 1..10 expected) for {n} images: "
                           f"{fix}")
    return labels
