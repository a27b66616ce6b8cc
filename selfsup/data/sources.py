"""Image sources: every source returns an ImageSet of uint8 images (N, C, H, W) and int64 labels (-1 unknown).

Sources: fashion-mnist (IDX files), cifar10 / cifar100 (python pickle batches), stl10 (binary files), synthetic
(procedural shapes with known classes), and any image folder given by its path.

Where files are looked for, in order:
  fashion-mnist  $SELFSUP_DATA/fashion-mnist, $SELFSUP_DATA, $SELFSUP_DATA/FashionMNIST/raw,
                 /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist),
                 ~/.cache/selfsup/fashion-mnist, ~/.cache/selfsup/FashionMNIST/raw, then a torchvision download
  cifar10/100    $SELFSUP_DATA/cifar-10-batches-py (cifar-100-python), $SELFSUP_DATA, ~/.cache/selfsup/..., download
  stl10          $SELFSUP_DATA/stl10_binary, $SELFSUP_DATA, ~/.cache/selfsup/stl10_binary (download: `fetch("stl10")`)
SELFSUP_NO_DOWNLOAD=1 turns every download off. Image folders are decoded once into a memory-mapped cache (cache.py).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data import cache
# The file readers and the synthetic images live in their own modules; their names stay importable from here.
from selfsup.data.formats import (IDX_IMAGES, IDX_LABELS, STL10_IMAGE_BYTES, _get, _one_line, _stl10_images,
                                  _stl10_labels, read_idx, read_pickle_batch)
from selfsup.data.synthetic import SYNTHETIC_CLASSES, synthetic_images
from selfsup.errors import SelfSupError


@dataclass
class ImageSet:
    """A set of images held as one uint8 tensor.

    images: (N, C, H, W) uint8; labels: (N,) int64, -1 where unknown; classes: class names in label order;
    origin: where the files were found (a path, or "generated"); groups: (N,) int64 or None, images that must stay
    on the same side of a train/test split (the crops of one photo).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    origin: str
    notes: list[str] = field(default_factory=list)
    groups: torch.Tensor | None = None

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
        return ImageSet(self.images[index], self.labels[index], self.classes, self.name, self.origin, list(self.notes),
                        None if self.groups is None else self.groups[index])


SOURCES: dict[str, str] = {  # name -> one-line description, for `selfsup data info` and `--help`
    "fashion-mnist": "Zalando's clothing photos, 28x28 grayscale, 10 classes, 60k train / 10k test",
    "cifar10": "small photos, 32x32 RGB, 10 classes, 50k train / 10k test",
    "cifar100": "small photos, 32x32 RGB, 100 classes, 50k train / 10k test",
    "stl10": "96x96 RGB, 10 classes, 5k train / 8k test / 100k unlabeled (split 'unlabeled' or 'train+unlabeled')",
    "synthetic": "procedural shapes with known classes (10), generated from the seed in a second; for tests and demos",
}

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
IMAGE_EXTENSIONS = cache.IMAGE_EXTENSIONS

# Debian's dataset-fashion-mnist installs here (a module constant so tests can point it elsewhere).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

HOW_TO_GET = {
    "fashion-mnist": "run `apt-get install dataset-fashion-mnist`, or set SELFSUP_DATA to a folder holding "
                     "train-images-idx3-ubyte.gz and the other three Fashion-MNIST files, or allow the download "
                     "(unset SELFSUP_NO_DOWNLOAD; `selfsup data fetch fashion-mnist`)",
    "cifar10": "set SELFSUP_DATA to a folder holding cifar-10-batches-py/, or allow the download "
               "(unset SELFSUP_NO_DOWNLOAD; `selfsup data fetch cifar10`)",
    "cifar100": "set SELFSUP_DATA to a folder holding cifar-100-python/, or allow the download "
                "(unset SELFSUP_NO_DOWNLOAD; `selfsup data fetch cifar100`)",
    "stl10": "set SELFSUP_DATA to a folder holding stl10_binary/, or download it (2.6 GB) with "
             "`selfsup data fetch stl10`",
}

# Official sizes, reported by info() when the files are not present.
EXPECTED_SIZES = {
    "fashion-mnist": {"train": 60000, "test": 10000},
    "cifar10": {"train": 50000, "test": 10000},
    "cifar100": {"train": 50000, "test": 10000},
    "stl10": {"train": 5000, "test": 8000, "unlabeled": 100000},
    "synthetic": {"train": 6000, "test": 1000},
}

_ALIASES = {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar10": "cifar10",
            "cifar-10": "cifar10", "cifar100": "cifar100", "cifar-100": "cifar100", "stl10": "stl10",
            "stl-10": "stl10", "synthetic": "synthetic"}


# --- where files are -------------------------------------------------------------------------------------------

def downloads_allowed() -> bool:
    """False when SELFSUP_NO_DOWNLOAD is set to anything but '', '0', 'false' or 'no'."""
    return os.environ.get("SELFSUP_NO_DOWNLOAD", "").strip().lower() in ("", "0", "false", "no")


def download_root() -> Path:
    """Where downloads go (and are looked for): ~/.cache/selfsup."""
    return Path.home() / ".cache" / "selfsup"


def _data_root() -> Path | None:
    configured = os.environ.get("SELFSUP_DATA", "").strip()
    return Path(configured).expanduser() if configured else None


def _candidates(name: str) -> list[Path]:
    """Folders that may hold a named source's files, in search order."""
    data, home = _data_root(), download_root()
    if name == "fashion-mnist":
        user = [data / "fashion-mnist", data, data / "FashionMNIST" / "raw"] if data else []
        return user + [DEBIAN_FASHION_MNIST, home / "fashion-mnist", home / "FashionMNIST" / "raw"]
    sub = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}[name]
    return ([data / sub, data] if data else []) + [home / sub]


def _required_files(name: str, split: str) -> list[str]:
    """File names (gzip suffix optional for fashion-mnist) that a split needs."""
    if name == "fashion-mnist":
        prefix = "train" if split == "train" else "t10k"
        return [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    if name == "cifar10":
        batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return batches + ["batches.meta"]
    if name == "cifar100":
        return [split, "meta"]
    files = []  # stl10; "train+unlabeled" needs both parts, and unlabeled images have no y file
    for part in split.split("+"):
        files += [f"{part}_X.bin"] if part == "unlabeled" else [f"{part}_X.bin", f"{part}_y.bin"]
    return files


def _file(directory: Path, base: str) -> Path | None:
    """directory/base, or directory/base.gz for the IDX files that are usually gzipped."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find(name: str, split: str) -> Path | None:
    """The first candidate folder holding every file the split needs."""
    for directory in _candidates(name):
        if all(_file(directory, f) for f in _required_files(name, split)):
            return directory
    return None


def _download(name: str) -> None:
    """Fetch a named source with torchvision into ~/.cache/selfsup; SelfSupError with the fix when impossible."""
    if not downloads_allowed():
        raise SelfSupError(f"{name} is not on this machine and downloads are off (SELFSUP_NO_DOWNLOAD is set): "
                           f"{HOW_TO_GET[name]}")
    root = download_root()
    try:
        import torchvision.datasets as tvd

        root.mkdir(parents=True, exist_ok=True)
        if name == "fashion-mnist":
            tvd.FashionMNIST(str(root), train=True, download=True)
            tvd.FashionMNIST(str(root), train=False, download=True)
        elif name == "cifar10":
            tvd.CIFAR10(str(root), train=True, download=True)
        elif name == "cifar100":
            tvd.CIFAR100(str(root), train=True, download=True)
        else:
            tvd.STL10(str(root), split="train", download=True)
    except Exception as e:  # network, disk and checksum failures all come out the same way to the user
        raise SelfSupError(f"{name} is not on this machine and downloading it into {root} failed "
                           f"({type(e).__name__}: {_one_line(e)}): {HOW_TO_GET[name]}") from None


def _locate(name: str, split: str, allow_download: bool) -> Path:
    """The folder holding the split's files, downloading first when allowed and needed."""
    found = _find(name, split)
    if found is None and allow_download and downloads_allowed():
        _download(name)
        found = _find(name, split)
    if found is None:
        where = ", ".join(str(p) for p in _candidates(name))
        off = " and downloads are off (SELFSUP_NO_DOWNLOAD is set)" if allow_download and not downloads_allowed() \
            else ""
        raise SelfSupError(f"{name} {split} files not found (looked in {where}){off}: {HOW_TO_GET[name]}")
    return found


# --- Fashion-MNIST: IDX files ----------------------------------------------------------------------------------

def _load_fashion_mnist(split: str, allow_download: bool = True) -> ImageSet:
    directory = _locate("fashion-mnist", split, allow_download)
    image_file, label_file = (_file(directory, f) for f in _required_files("fashion-mnist", split))
    images = read_idx(image_file, IDX_IMAGES)
    labels = read_idx(label_file, IDX_LABELS)
    if len(images) != len(labels) or images.shape[1:] != (28, 28) or (len(labels) and labels.max() > 9):
        raise SelfSupError(f"{image_file} ({images.shape}) and {label_file} ({labels.shape}) do not form a "
                           f"Fashion-MNIST split: {HOW_TO_GET['fashion-mnist']}")
    return ImageSet(torch.from_numpy(images.reshape(-1, 1, 28, 28).copy()), torch.from_numpy(labels.astype(np.int64)),
                    list(FASHION_MNIST_CLASSES), "fashion-mnist", str(directory))


# --- CIFAR: python pickle batches ------------------------------------------------------------------------------

def _meta_class_names(path: Path, key: str) -> list[str]:
    """Class names from a CIFAR meta file (stored as bytes)."""
    return [c.decode() if isinstance(c, bytes) else str(c) for c in _get(read_pickle_batch(path), key, path)]


def _load_cifar(name: str, split: str, allow_download: bool = True) -> ImageSet:
    directory = _locate(name, split, allow_download)
    files = [directory / f for f in _required_files(name, split)]
    meta_path, batch_paths = files[-1], files[:-1]
    names_key, labels_key = ("label_names", "labels") if name == "cifar10" else ("fine_label_names", "fine_labels")
    classes = _meta_class_names(meta_path, names_key)
    images, labels = [], []
    for path in batch_paths:
        batch = read_pickle_batch(path)
        data = np.asarray(_get(batch, "data", path), dtype=np.uint8)
        batch_labels = np.asarray(_get(batch, labels_key, path), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise SelfSupError(f"{path} has data {data.shape} and {len(batch_labels)} labels, expected (N, 3072) "
                               "and N labels: delete the folder and get the files again")
        images.append(data.reshape(-1, 3, 32, 32))  # each row: the R plane, then G, then B, each row-major 32x32
        labels.append(batch_labels)
    label_array = np.concatenate(labels)
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= len(classes)):
        raise SelfSupError(f"labels in {directory} fall outside the {len(classes)} classes of {meta_path}: "
                           "delete the folder and get the files again")
    return ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(label_array), classes, name,
                    str(directory))


# --- STL-10: binary files ---------------------------------------------------------------------------------------

def _load_stl10(split: str, allow_download: bool = False) -> ImageSet:
    # No download from load(): 2.6 GB should be an explicit `selfsup data fetch stl10`.
    directory = _locate("stl10", split, allow_download=allow_download)
    names_file = directory / "class_names.txt"
    classes = names_file.read_text().split() if names_file.is_file() else list(STL10_CLASSES)
    if split in ("train", "test"):
        x = _stl10_images(directory / f"{split}_X.bin", HOW_TO_GET["stl10"])
        labels = _stl10_labels(directory / f"{split}_y.bin", len(x), HOW_TO_GET["stl10"])
        return ImageSet(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels), classes, "stl10",
                        str(directory))
    # The unlabeled split is 2.8 GB: decode it (with the training images in front) once into a cache file in
    # (N, C, H, W) order and memory-map that, instead of transposing it in memory on every load.
    train_x, unlabeled_x = (_stl10_images(directory / "train_X.bin", HOW_TO_GET["stl10"]),
                             _stl10_images(directory / "unlabeled_X.bin", HOW_TO_GET["stl10"]))
    train_labels = _stl10_labels(directory / "train_y.bin", len(train_x), HOW_TO_GET["stl10"])
    n_train = len(train_x)
    sources = [directory / "train_X.bin", directory / "unlabeled_X.bin"]
    key = cache.files_key(directory, sources, layout="train+unlabeled")
    cached = cache.load_cached("stl10", key)
    if cached is None:
        def fill(out: np.ndarray) -> tuple[int, dict]:
            for offset, x in ((0, train_x), (n_train, unlabeled_x)):
                for start in range(0, len(x), 2048):  # chunks: the transposed copy never sits in memory whole
                    stop = min(start + 2048, len(x))
                    out[offset + start:offset + stop] = x[start:stop]
            return len(out), {"root": str(directory.resolve()), "labels": [], "notes": []}

        cached = cache.build_cached("stl10", key, (n_train + len(unlabeled_x), 3, 96, 96), fill)
    images = torch.from_numpy(cached[0])
    if split == "unlabeled":
        return ImageSet(images[n_train:], torch.full((len(images) - n_train,), -1, dtype=torch.long), classes,
                        "stl10", str(directory))
    labels = torch.cat([torch.from_numpy(train_labels), torch.full((len(images) - n_train,), -1, dtype=torch.long)])
    return ImageSet(images, labels, classes, "stl10", str(directory))


# --- synthetic shapes --------------------------------------------------------------------------------------------

def _load_synthetic(split: str, image_size: int | None, seed: int, n: int | None = None,
                    channels: int = 1) -> ImageSet:
    size = 28 if image_size is None else int(image_size)
    count = EXPECTED_SIZES["synthetic"][split] if n is None else int(n)
    if count < 1 or size < 8 or channels not in (1, 3):
        raise SelfSupError(f"synthetic needs n >= 1, image_size >= 8 and channels 1 or 3, got n={count}, "
                           f"image_size={size}, channels={channels}: change those options")
    images, labels = synthetic_images(count, size, channels, seed, split)
    return ImageSet(images, labels, list(SYNTHETIC_CLASSES), "synthetic", "generated")


# --- image folders -----------------------------------------------------------------------------------------------

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _visible(name: str) -> bool:
    return not name.startswith(".")  # .DS_Store, .git, editor files


def scan_folder(root: Path) -> tuple[list[Path], list[int], list[str], list[str]]:
    """-> (image files, labels, classes, notes): class sub-folders (searched recursively) if any, else a flat folder."""
    entries = sorted((e for e in os.scandir(root) if _visible(e.name)), key=lambda e: e.name)
    by_class: dict[str, list[Path]] = {}
    others: list[str] = []
    for entry in entries:
        if not entry.is_dir():
            continue
        found: list[Path] = []
        for directory, dirs, names in os.walk(entry.path):
            dirs[:] = sorted(d for d in dirs if _visible(d))
            for name in sorted(names):
                if not _visible(name):
                    continue
                (found.append(Path(directory) / name) if _is_image(name)
                 else others.append(os.path.relpath(os.path.join(directory, name), root)))
        if found:
            by_class[entry.name] = found
    loose = [Path(e.path) for e in entries if e.is_file() and _is_image(e.name)]
    others += [e.name for e in entries if e.is_file() and not _is_image(e.name)]
    notes = []
    if by_class:
        classes = sorted(by_class)
        files = [f for c in classes for f in by_class[c]]
        labels = [i for i, c in enumerate(classes) for _ in by_class[c]]
        if loose:
            notes.append(f"ignored {len(loose)} images directly in {root} because it has class sub-folders: "
                         f"{cache.name_list([p.name for p in loose])}")
    else:
        classes, files, labels = [], loose, [-1] * len(loose)
    if others:
        notes.append(f"ignored {len(others)} non-image file{'s' if len(others) > 1 else ''} "
                     f"(accepted: {' '.join(IMAGE_EXTENSIONS)}): {cache.name_list(sorted(others))}")
    return files, labels, classes, notes


def _load_folder(root: Path, split: str, image_size: int | None, mode: str = "auto", seed: int = 0,
                 crops_per_image: int | None = None, crop_scale: int | None = None) -> ImageSet:
    if split != "train":
        raise SelfSupError(f"an image folder has no '{split}' split: load split 'train' and hold out a test set "
                           f"with selfsup.data.splits.holdout(images, 0.2, seed) (`selfsup run` does this itself)")
    files, labels, classes, notes = scan_folder(root)
    if not files:
        raise SelfSupError(f"no images found in {root} (accepted extensions: {' '.join(IMAGE_EXTENSIONS)}): put "
                           "images in it, flat or one sub-folder per class")
    size = 32 if image_size is None else int(image_size)
    if size < 1:
        raise SelfSupError(f"image_size must be a positive number of pixels, got {size}: use e.g. 32")
    if crops_per_image is not None:
        return _load_folder_crops(root, files, labels, classes, notes, size, mode, seed, crops_per_image, crop_scale)
    images, kept_labels, decode_notes = cache.decode_folder(root, files, labels, image_size=size, mode=mode)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(kept_labels), classes, root.resolve().name,
                    str(root), notes + decode_notes)


def _load_folder_crops(root: Path, files: list[Path], labels: list[int], classes: list[str], notes: list[str],
                       size: int, mode: str, seed: int, crops_per_image: int, crop_scale: int | None) -> ImageSet:
    """K random crops of every photo. Labels: the photo's class sub-folder, or in a flat folder the photo itself
    ("which photo is this crop from?"), so a flat folder of photos can still be evaluated."""
    if crops_per_image < 1:
        raise SelfSupError(f"crops_per_image must be at least 1, got {crops_per_image}: use e.g. "
                           "--set data.crops_per_image=100")
    scale = 4 * size if crop_scale is None else int(crop_scale)
    flat = not classes
    if flat:
        labels = list(range(len(files)))
        classes = [f.name for f in files]
    images, kept_labels, groups, decode_notes = cache.decode_folder_crops(
        root, files, labels, crop_size=size, crops_per_image=crops_per_image, crop_scale=scale, seed=seed, mode=mode)
    if flat:
        decode_notes.append(f"flat folder: each crop is labelled with its photo ({len(classes)} classes); a test "
                            "split holds out a fifth of every photo's crops, which can overlap that photo's "
                            "training crops, so the accuracy says how well features tell the scenes apart")
    else:
        decode_notes.append("a test split keeps all crops of a photo on one side (whole photos are held out; a class needs two photos)")
    return ImageSet(torch.from_numpy(images), torch.from_numpy(kept_labels), classes, root.resolve().name,
                    str(root), notes + decode_notes, torch.from_numpy(groups))


# --- the entry points --------------------------------------------------------------------------------------------

_SPLITS = {"fashion-mnist": ("train", "test"), "cifar10": ("train", "test"), "cifar100": ("train", "test"),
           "stl10": ("train", "test", "unlabeled", "train+unlabeled"), "synthetic": ("train", "test")}
_OPTIONS = {"synthetic": ("n", "channels"), "folder": ("mode", "crops_per_image", "crop_scale")}


def _canonical(name: str) -> str | None:
    return _ALIASES.get(name.strip().lower().replace("_", "-"))


def _check(source: str, split: str, options: dict) -> None:
    allowed = _OPTIONS.get(source, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise SelfSupError(f"option {', '.join(unknown)} is not understood by {source} ({takes}): remove it")
    if source != "folder" and split not in _SPLITS[source]:
        raise SelfSupError(f"{source} has no split '{split}': use one of {', '.join(_SPLITS[source])}")


def _unknown(name: str) -> SelfSupError:
    return SelfSupError(f"unknown data source '{name}' (not a source name, nor an existing folder): use one of "
                        f"{', '.join(SOURCES)}, or the path of a folder of images")


def is_folder(name: str) -> bool:
    """Whether `name` means an image folder: not a source name (or alias) but an existing path."""
    return _canonical(name) is None and Path(name).expanduser().exists()


def load(name: str, split: str = "train", *, image_size: int | None = None, seed: int = 0,
         **options: Any) -> ImageSet:
    """Load a source by name ("fashion-mnist", "cifar10", "cifar100", "stl10", "synthetic") or by folder path.

    split: "train", "test", or "unlabeled" (stl10 only; "train+unlabeled" for stl10 gives both).
    image_size: folders (default 32) and synthetic (default 28) only; the other named sources keep their own size.
    seed: synthetic, and folder crops. options: synthetic takes n and channels (1 or 3); a folder takes mode
    ("auto", "RGB", "L"), crops_per_image (K seeded random crops of image_size px per photo instead of one resized
    image) and crop_scale (the short side photos are resized to before cropping; default 4 x image_size).
    Raises SelfSupError with a one-line fix when the files cannot be found or read.
    """
    source = _canonical(name)
    if source is None:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise _unknown(name) if not path.exists() else SelfSupError(
                f"{path} is a file, not a folder: give a folder of images (flat or one sub-folder per class)")
        _check("folder", split, options)
        return _load_folder(path, split, image_size, seed=seed, **options)
    _check(source, split, options)
    if source == "synthetic":
        return _load_synthetic(split, image_size, seed, **options)
    if source == "fashion-mnist":
        return _load_fashion_mnist(split)
    if source == "stl10":
        return _load_stl10(split)
    return _load_cifar(source, split)


def fetch(name: str, *, image_size: int | None = None) -> str:
    """Make a source available (download when allowed and missing; decode a folder into the cache) -> where it is."""
    source = _canonical(name)
    if source == "synthetic":
        return "synthetic images are generated on the fly: nothing to fetch"
    if source is None:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise _unknown(name)
        _load_folder(path, "train", image_size)
        return str(path)
    splits = ["train", "test"] + (["unlabeled"] if source == "stl10" else [])
    if not all(_find(source, s) for s in splits):
        _download(source)
    return str(_locate(source, "train", allow_download=False))


def info(name: str) -> dict:
    """What `selfsup data info NAME` shows: sizes per split, classes, channels, image size, where the files are."""
    source = _canonical(name)
    if source is None:
        return _folder_info(name)
    result: dict[str, Any] = {"name": source, "description": SOURCES[source]}
    if source == "synthetic":
        return {**result, "found": True, "origin": "generated", "splits": dict(EXPECTED_SIZES["synthetic"]),
                "classes": len(SYNTHETIC_CLASSES), "class_names": list(SYNTHETIC_CLASSES), "channels": 1,
                "image_size": 28, "options": "n, image_size, channels (1 or 3), seed"}
    shape = {"fashion-mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32), "stl10": (3, 96)}[source]
    result.update(channels=shape[0], image_size=shape[1], splits={}, classes=None, class_names=None)
    split_dirs = {s: _find(source, s) for s in EXPECTED_SIZES[source]}
    found = [d for d in split_dirs.values() if d is not None]
    result["found"] = bool(found)
    result["origin"] = str(found[0]) if found else None
    try:
        for split, directory in split_dirs.items():
            result["splits"][split] = _split_size(source, split, directory) if directory else "not found"
        result["class_names"] = _class_names(source, found[0] if found else None)
        names = result["class_names"]
        result["classes"] = len(names) if names else (100 if source == "cifar100" else 10)
    except SelfSupError as e:
        result["error"] = str(e)
    if not all(split_dirs.values()):
        missing = [s for s, d in split_dirs.items() if d is None]
        result["status"] = f"not found ({', '.join(missing)}): {HOW_TO_GET[source]}"
        result["expected_sizes"] = dict(EXPECTED_SIZES[source])
        result["looked_in"] = [str(p) for p in _candidates(source)]
    return result


def _split_size(source: str, split: str, directory: Path) -> int:
    """Number of images in a split, read from headers or file sizes where the format allows."""
    if source == "fashion-mnist":
        labels = _file(directory, _required_files(source, split)[1])
        with (gzip.open(labels, "rb") if labels.suffix == ".gz" else open(labels, "rb")) as f:
            header = f.read(8)  # magic, then the number of items (big-endian)
        return int.from_bytes(header[4:8], "big") if len(header) == 8 else 0
    if source == "stl10":
        return (directory / f"{split}_X.bin").stat().st_size // STL10_IMAGE_BYTES
    return len(_load_cifar(source, split, allow_download=False))


def _class_names(source: str, directory: Path | None) -> list[str] | None:
    if source == "fashion-mnist":
        return list(FASHION_MNIST_CLASSES)
    if source == "stl10":
        names = directory / "class_names.txt" if directory else None
        return names.read_text().split() if names and names.is_file() else list(STL10_CLASSES)
    if directory is None:
        return None  # CIFAR's names live in its meta file
    if source == "cifar10":
        return _meta_class_names(directory / "batches.meta", "label_names")
    return _meta_class_names(directory / "meta", "fine_label_names")


def _folder_info(name: str) -> dict:
    path = Path(name).expanduser()
    if not path.is_dir():
        raise _unknown(name)
    files, labels, classes, notes = scan_folder(path)
    counts = {c: labels.count(i) for i, c in enumerate(classes)}
    result = {"name": str(path), "description": "image folder", "found": bool(files), "origin": str(path),
              "splits": {"train": len(files)}, "classes": len(classes), "class_names": classes,
              "images_per_class": counts, "channels": "1 if every image is grayscale, else 3",
              "image_size": "32 unless data.image_size says otherwise", "notes": notes,
              "test": "none: `selfsup run` holds out 20% of each class"}
    if not files:
        result["status"] = f"no images found (accepted extensions: {' '.join(IMAGE_EXTENSIONS)})"
    return result
