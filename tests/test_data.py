"""Data layer: every reader against miniature files written here in the exact on-disk format, folders and their
cache, synthetic shapes, splits, and the one-line errors. Nothing is downloaded."""

from __future__ import annotations

import gzip
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import cache, sources
from selfsup.data.sources import ImageSet
from selfsup.data.splits import few_label_split, holdout, load_split, save_split
from selfsup.errors import SelfSupError

REAL_FASHION_MNIST = sources.DEBIAN_FASHION_MNIST


@pytest.fixture(autouse=True)
def data_env(tmp_path, monkeypatch):
    """Empty data, cache and home folders; Debian's Fashion-MNIST hidden; downloads off."""
    for name in ("data", "cache", "home"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("SELFSUP_NO_DOWNLOAD", "1")
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    return tmp_path


def raises_with_fix(fn, *words: str) -> str:
    """Call fn, expect a one-line SelfSupError that contains every word; return the message."""
    with pytest.raises(SelfSupError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and ": " in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# --- Fashion-MNIST (IDX) ----------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: zero, zero, type 0x08 (uint8), number of dims, big-endian int32 dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fashion_images(n: int, offset: int = 0) -> np.ndarray:
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        images[i, 3, 20] = offset + i + 1  # asymmetric position: catches a row/column swap
        images[i, 27, 0] = 200
    return images


def write_fashion(directory: Path, gz: bool = True, n_train: int = 5, n_test: int = 3, offset: int = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", fashion_images(n_train, offset))
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", fashion_images(n_test, offset + 100))
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", (np.arange(n_test) + 7) % 10)


def test_fashion_mnist_reads_idx_gz(data_env):
    write_fashion(data_env / "data" / "fashion-mnist")
    train = sources.load("fashion-mnist")
    assert train.images.shape == (5, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.images.is_contiguous()
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 1, 2, 3, 4]
    assert train.images[:, 0, 3, 20].tolist() == [1, 2, 3, 4, 5] and int(train.images[0, 0, 20, 3]) == 0
    assert int(train.images[2, 0, 27, 0]) == 200
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot" and len(train.classes) == 10
    assert train.origin == str(data_env / "data" / "fashion-mnist") and train.name == "fashion-mnist"
    test = sources.load("fashion-mnist", "test", image_size=32)  # named sources keep their own size
    assert test.images.shape == (3, 1, 28, 28) and test.labels.tolist() == [7, 8, 9]
    assert test.images[:, 0, 3, 20].tolist() == [101, 102, 103]


def test_fashion_mnist_search_order(data_env, monkeypatch):
    debian = data_env / "debian"
    write_fashion(debian, offset=50)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    write_fashion(data_env / "data" / "FashionMNIST" / "raw", gz=False, n_train=4)  # torchvision layout, un-gzipped
    assert sources.load("fashion-mnist").origin == str(data_env / "data" / "FashionMNIST" / "raw")
    monkeypatch.delenv("SELFSUP_DATA")
    first = sources.load("fashion-mnist")
    assert first.origin == str(debian) and int(first.images[0, 0, 3, 20]) == 51
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", data_env / "gone")
    write_fashion(data_env / "home" / ".cache" / "selfsup" / "FashionMNIST" / "raw")
    home_cache = data_env / "home" / ".cache" / "selfsup"
    assert sources.load("fashion-mnist").origin == str(home_cache / "FashionMNIST" / "raw")


@pytest.mark.parametrize("damage, words", [
    ("truncate-gz", ["train-images-idx3-ubyte.gz", "get the files again"]),
    ("short-data", ["truncated or corrupt", "get the files again"]),
    ("magic", ["magic number 2049, expected 2051", "get the files again"]),
])
def test_fashion_mnist_corrupt_files(data_env, damage, words):
    directory = data_env / "data" / "fashion-mnist"
    write_fashion(directory)
    images = directory / "train-images-idx3-ubyte.gz"
    if damage == "truncate-gz":
        images.write_bytes(images.read_bytes()[:60])
    elif damage == "short-data":
        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(raw[:-30]))
    else:
        write_idx(images, np.zeros(5))  # a labels file (1 dim) where images belong
    raises_with_fix(lambda: sources.load("fashion-mnist"), *words)


def test_fashion_mnist_missing_names_both_fixes(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download although SELFSUP_NO_DOWNLOAD=1")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_download)
    raises_with_fix(lambda: sources.load("fashion-mnist"), "apt-get install dataset-fashion-mnist", "SELFSUP_DATA",
                    "SELFSUP_NO_DOWNLOAD")
    raises_with_fix(lambda: sources.fetch("fashion-mnist"), "apt-get install dataset-fashion-mnist", "SELFSUP_DATA")


def test_fashion_mnist_download_path(data_env, monkeypatch):
    """With downloads allowed, load() asks torchvision to download into ~/.cache/selfsup and then reads the files."""
    import torchvision.datasets

    calls = []

    def fake_download(root, train=True, download=False):
        calls.append((root, train, download))
        write_fashion(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.delenv("SELFSUP_NO_DOWNLOAD")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    images = sources.load("fashion-mnist")
    assert len(images) == 5 and calls[0] == (str(data_env / "home" / ".cache" / "selfsup"), True, True)
    assert sources.fetch("fashion-mnist") == str(data_env / "home" / ".cache" / "selfsup" / "FashionMNIST" / "raw")

    def offline(*args, **kwargs):
        raise OSError("Name or service not known\nsecond line")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    monkeypatch.setattr(sources, "download_root", lambda: data_env / "elsewhere")
    raises_with_fix(lambda: sources.load("fashion-mnist"), "download", "Name or service not known",
                    "apt-get install dataset-fashion-mnist", "SELFSUP_DATA")


def test_real_fashion_mnist(monkeypatch):
    if not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({REAL_FASHION_MNIST})")
    monkeypatch.delenv("SELFSUP_DATA")
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", REAL_FASHION_MNIST)
    train, test = sources.load("fashion-mnist"), sources.load("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert 0 < train.images.float().mean() < 255
    assert sources.info("fashion-mnist")["splits"] == {"train": 60000, "test": 10000}


# --- CIFAR (pickle batches) -------------------------------------------------------------------------------------

def cifar_rows(n: int, first: int) -> np.ndarray:
    """(n, 3072): R plane = first+i, G plane = 100+i, B plane = 200+i, and R at (row 1, column 2) = 255."""
    rows = np.zeros((n, 3072), dtype=np.uint8)
    for i in range(n):
        rows[i, :1024], rows[i, 1024:2048], rows[i, 2048:] = first + i, 100 + i, 200 + i
        rows[i, 1 * 32 + 2] = 255
    return rows


def write_pickle(path: Path, obj: dict, python2_names: bool = False) -> None:
    data = pickle.dumps(obj, protocol=2)
    if python2_names:  # files made by Python 2 / numpy 1 name the array rebuilder numpy.core.multiarray
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def write_cifar10(root: Path) -> Path:
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for b in range(1, 6):
        write_pickle(directory / f"data_batch_{b}", {b"batch_label": b"training batch", b"labels": [b, b + 1],
                                                     b"data": cifar_rows(2, 10 * b), b"filenames": [b"a", b"b"]},
                     python2_names=(b == 2))
    write_pickle(directory / "test_batch", {b"labels": [9, 0, 3], b"data": cifar_rows(3, 60)})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_pickle(directory / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return directory


def test_cifar10_reads_pickle_batches(data_env):
    write_cifar10(data_env / "data")
    train = sources.load("cifar10")
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert train.classes[1] == "automobile" and len(train.classes) == 10
    # channel order: R, G, B planes; row-major: (row 1, column 2) is the marked pixel, (row 2, column 1) is not
    assert train.images[:, 0, 0, 0].tolist() == [10, 11, 20, 21, 30, 31, 40, 41, 50, 51]
    assert train.images[:, 1, 5, 5].tolist() == [100, 101] * 5 and train.images[:, 2, 31, 31].tolist() == [200, 201] * 5
    assert (train.images[:, 0, 1, 2] == 255).all() and (train.images[:, 0, 2, 1] != 255).all()
    test = sources.load("cifar10", "test")
    assert test.labels.tolist() == [9, 0, 3] and test.images[:, 0, 0, 0].tolist() == [60, 61, 62]


def test_cifar100_reads_fine_labels(data_env):
    directory = data_env / "data" / "cifar-100-python"
    directory.mkdir()
    write_pickle(directory / "train", {b"fine_labels": [0, 99, 42, 7], b"coarse_labels": [0, 1, 2, 3],
                                       b"data": cifar_rows(4, 5)})
    write_pickle(directory / "test", {b"fine_labels": [1, 2], b"coarse_labels": [0, 0], b"data": cifar_rows(2, 9)})
    write_pickle(directory / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                                      b"coarse_label_names": [b"x"] * 20})
    train = sources.load("cifar100")
    assert train.images.shape == (4, 3, 32, 32) and train.labels.tolist() == [0, 99, 42, 7]
    assert len(train.classes) == 100 and train.classes[99] == "class99"
    assert train.images[:, 0, 0, 0].tolist() == [5, 6, 7, 8] and (train.images[:, 0, 1, 2] == 255).all()
    assert sources.load("cifar100", "test").labels.tolist() == [1, 2]
    assert sources.info("cifar100")["splits"] == {"train": 4, "test": 2}


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_cifar_refuses_code_in_pickles(data_env):
    directory = write_cifar10(data_env / "data")
    marker = data_env / "pwned"
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(marker), b"labels": []}))
    raises_with_fix(lambda: sources.load("cifar10", "test"), "refusing", "get the files again")
    assert not marker.exists()
    (directory / "data_batch_3").write_bytes(b"not a pickle")
    raises_with_fix(lambda: sources.load("cifar10"), "data_batch_3", "get the files again")


def test_cifar_missing(data_env):
    raises_with_fix(lambda: sources.load("cifar10"), "cifar-10-batches-py", "SELFSUP_DATA")
    raises_with_fix(lambda: sources.load("cifar100", "test"), "cifar-100-python", "SELFSUP_DATA")
    report = sources.info("cifar10")
    assert report["found"] is False and "SELFSUP_DATA" in report["status"]


# --- STL-10 (binary) --------------------------------------------------------------------------------------------

def stl_images(n: int, first: int) -> np.ndarray:
    """(n, 3, 96, 96) in (channel, row, column) order with an asymmetric pattern."""
    images = np.zeros((n, 3, 96, 96), dtype=np.uint8)
    images[:] = np.arange(96, dtype=np.uint8)[:, None]  # value = row index: transposing would make it the column
    for i in range(n):
        images[i, :, 5, 40] = [first + i, 250, 251]
    return images


def write_stl_x(path: Path, images: np.ndarray) -> None:
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())  # column-major per channel


def write_stl10(root: Path) -> dict[str, np.ndarray]:
    directory = root / "stl10_binary"
    directory.mkdir(parents=True)
    made = {"train": stl_images(3, 10), "test": stl_images(2, 20), "unlabeled": stl_images(4, 30)}
    for split, images in made.items():
        write_stl_x(directory / f"{split}_X.bin", images)
    (directory / "train_y.bin").write_bytes(bytes([1, 10, 4]))  # classes count from 1 on disk
    (directory / "test_y.bin").write_bytes(bytes([2, 3]))
    (directory / "class_names.txt").write_text("\n".join(sources.STL10_CLASSES) + "\n")
    return made


def test_stl10_reads_binary(data_env):
    made = write_stl10(data_env / "data")
    train = sources.load("stl10")
    assert train.images.shape == (3, 3, 96, 96) and train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert train.labels.tolist() == [0, 9, 3] and train.classes == sources.STL10_CLASSES
    assert torch.equal(train.images, torch.from_numpy(made["train"]))
    assert int(train.images[0, 0, 5, 40]) == 10 and int(train.images[0, 0, 40, 5]) == 40
    assert sources.load("stl10", "test").labels.tolist() == [1, 2]

    unlabeled = sources.load("stl10", "unlabeled")
    assert unlabeled.images.shape == (4, 3, 96, 96) and (unlabeled.labels == -1).all()
    assert torch.equal(unlabeled.images, torch.from_numpy(made["unlabeled"]))
    assert list((data_env / "cache").glob("stl10-*.npy")), "unlabeled images are decoded into a memory-mapped cache"
    both = sources.load("stl10", "train+unlabeled")
    assert both.labels.tolist() == [0, 9, 3, -1, -1, -1, -1]
    assert torch.equal(both.images, torch.cat([train.images, unlabeled.images]))
    report = sources.info("stl10")
    assert report["splits"] == {"train": 3, "test": 2, "unlabeled": 4} and report["found"] is True


def test_stl10_errors(data_env):
    raises_with_fix(lambda: sources.load("stl10"), "stl10_binary", "selfsup data fetch stl10")
    write_stl10(data_env / "data")
    raises_with_fix(lambda: sources.load("stl10", "validation"), "train, test, unlabeled")
    x = data_env / "data" / "stl10_binary" / "test_X.bin"
    x.write_bytes(x.read_bytes()[:-100])
    raises_with_fix(lambda: sources.load("stl10", "test"), "test_X.bin", "truncated")


# --- synthetic --------------------------------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_learnable_shape():
    a = sources.load("synthetic", seed=3)
    assert a.images.shape == (6000, 1, 28, 28) and a.images.dtype == torch.uint8 and a.images.is_contiguous()
    assert torch.bincount(a.labels).tolist() == [600] * 10 and len(a.classes) == 10 and a.origin == "generated"
    b = sources.load("synthetic", seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, sources.load("synthetic", seed=4).images)
    test = sources.load("synthetic", "test", seed=3)
    assert len(test) == 1000 and not torch.equal(test.images[:100], a.images[:100])
    assert a.images.float().std() > 20 and len(a.images.unique()) > 100
    # per class, images differ from each other (position, scale, levels, noise)
    for c in range(10):
        members = a.images[a.labels == c][:50].float()
        assert members.std(0).mean() > 10


def test_synthetic_options():
    small = sources.load("synthetic", n=25, image_size=16, channels=3, seed=1)
    assert small.images.shape == (25, 3, 16, 16) and set(small.labels.tolist()) == set(range(10))
    colours = small.images.float().mean((2, 3))
    assert (colours.std(1) > 1).any(), "channels=3 gives coloured images"
    raises_with_fix(lambda: sources.load("synthetic", channels=2), "channels 1 or 3")
    raises_with_fix(lambda: sources.load("synthetic", size=3), "takes n, channels")
    raises_with_fix(lambda: sources.load("synthetic", "unlabeled"), "train, test")


# --- image folders ----------------------------------------------------------------------------------------------

def solid(path: Path, colour, size=(20, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def make_class_folder(root: Path) -> Path:
    solid(root / "cat" / "a.png", (255, 0, 0))
    solid(root / "cat" / "b.JPG", (250, 0, 0))
    solid(root / "cat" / "c.bmp", (255, 0, 0), size=(7, 50))
    (root / "cat" / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes())
    solid(root / "dog" / "d.png", (0, 0, 255))
    solid(root / "dog" / "deeper" / "e.webp", (0, 0, 255))
    (root / "dog" / "readme.txt").write_text("not an image")
    (root / "empty-class").mkdir()
    return root


def test_folder_with_class_subfolders(data_env):
    root = make_class_folder(data_env / "pets")
    images = sources.load(str(root), image_size=16)
    assert images.images.shape == (5, 3, 16, 16) and images.images.dtype == torch.uint8
    assert images.classes == ["cat", "dog"] and images.labels.tolist() == [0, 0, 0, 1, 1]
    assert images.name == "pets" and images.origin == str(root)
    assert (images.images[:3, 0] > 240).all() and (images.images[:3, 2] < 10).all()  # cats are red
    assert (images.images[3:, 2] > 240).all() and (images.images[3:, 0] < 10).all()  # dogs are blue
    notes = " | ".join(images.notes)
    assert "skipped 1 unreadable image: cat/corrupt.jpg" in notes and "readme.txt" in notes
    assert len(list((data_env / "cache").glob("pets-*.npy"))) == 1
    assert len(list((data_env / "cache").glob("pets-*.json"))) == 1


def test_folder_flat_grayscale_and_centre_crop(data_env):
    root = data_env / "flat"
    root.mkdir()
    # 60x20: black left edge, 128 in the middle, white right edge; the centre crop keeps only the middle.
    stripes = np.zeros((20, 60), dtype=np.uint8)
    stripes[:, 10:50], stripes[:, 50:] = 128, 255
    Image.fromarray(stripes, "L").save(root / "wide.png")
    solid(root / "tall.gif", 90, size=(10, 40), mode="L")
    images = sources.load(str(root), image_size=8)
    assert images.images.shape == (2, 1, 8, 8), "every image is grayscale, so one channel"
    assert images.classes == [] and images.labels.tolist() == [-1, -1]
    assert (images.images[1] == 128).all() and (images.images[0] == 90).all()  # sorted: tall.gif, wide.png
    assert sources.load(str(root), image_size=8, mode="RGB").images.shape == (2, 3, 8, 8)


def test_folder_cache_is_reused_and_invalidated(data_env, monkeypatch):
    root = make_class_folder(data_env / "pets")
    first = sources.load(str(root))

    def no_pil(*args, **kwargs):
        raise AssertionError("PIL used although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_pil)
        second = sources.load(str(root))
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.notes == first.notes and second.images.shape == (5, 3, 32, 32)

    decoded = []
    real_decode = cache.decode_image
    monkeypatch.setattr(cache, "decode_image", lambda path, *a: decoded.append(path.name) or real_decode(path, *a))
    stamp = time.time() + 10
    os.utime(root / "dog" / "d.png", (stamp, stamp))
    third = sources.load(str(root))
    assert sorted(decoded) == ["a.png", "b.JPG", "c.bmp", "d.png", "e.webp"], "touching a file invalidates the cache"
    assert torch.equal(third.images, first.images)
    assert len(list((data_env / "cache").glob("pets-*.npy"))) == 1, "the stale cache is removed"
    decoded.clear()
    sources.load(str(root), image_size=24)
    assert len(decoded) == 5, "another image size is another cache"


def test_folder_errors(data_env):
    empty = data_env / "empty"
    empty.mkdir()
    raises_with_fix(lambda: sources.load(str(empty)), str(empty), ".jpg", ".png", ".webp")
    junk = data_env / "junk"
    junk.mkdir()
    (junk / "x.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (junk / "y.png").write_bytes(b"")
    raises_with_fix(lambda: sources.load(str(junk)), str(junk), "valid images", ".jpg", ".png")
    root = make_class_folder(data_env / "pets")
    raises_with_fix(lambda: sources.load(str(root), "test"), "holdout")
    raises_with_fix(lambda: sources.load(str(root / "cat" / "a.png")), "not a folder")
    raises_with_fix(lambda: sources.load(str(root), mode="CMYK"), "'auto', 'RGB' or 'L'")
    message = raises_with_fix(lambda: sources.load("imagenet"), "fashion-mnist", "synthetic", "folder")
    assert "imagenet" in message
    raises_with_fix(lambda: sources.load("fashion-mnist", n=5), "takes none")


def test_folder_info_and_fetch(data_env):
    root = make_class_folder(data_env / "pets")
    report = sources.info(str(root))
    assert report["classes"] == 2 and report["images_per_class"] == {"cat": 4, "dog": 2}
    assert sources.fetch(str(root)) == str(root) and list((data_env / "cache").glob("pets-*.npy"))
    assert "nothing to fetch" in sources.fetch("synthetic")
    raises_with_fix(lambda: sources.info("nonexistent-source"), "folder")


def test_info_never_crashes_when_missing():
    for name in sources.SOURCES:
        report = sources.info(name)
        assert {"splits", "classes", "channels", "image_size", "found", "origin"} <= set(report), name
        if name != "synthetic":
            assert report["found"] is False and "not found" in report["status"], name
    assert sources.info("fashion-mnist")["expected_sizes"] == {"train": 60000, "test": 10000}
    assert "apt-get install dataset-fashion-mnist" in sources.info("fashion-mnist")["status"]


# --- splits -----------------------------------------------------------------------------------------------------

def test_few_label_split_balanced_and_seeded():
    labels = torch.arange(1000) % 10
    labels[::7] = -1  # unknown labels are never chosen
    state = torch.get_rng_state()
    split = few_label_split(labels, 200, seed=0)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG is untouched"
    assert len(split) == 200 and split.dtype == torch.int64 and torch.equal(split, split.sort().values)
    assert len(split.unique()) == 200 and torch.bincount(labels[split]).tolist() == [20] * 10
    assert torch.equal(split, few_label_split(labels, 200, seed=0))
    assert not torch.equal(split, few_label_split(labels, 200, seed=1))
    odd = few_label_split(labels, 25, seed=5)
    counts = torch.bincount(labels[odd], minlength=10)
    assert len(odd) == 25 and set(counts.tolist()) == {2, 3} and torch.equal(odd, few_label_split(labels, 25, seed=5))
    remainders = {tuple(torch.bincount(labels[few_label_split(labels, 25, s)]).tolist()) for s in range(10)}
    assert len(remainders) > 1, "the remainder goes to classes chosen by the seed"


def test_few_label_split_errors():
    labels = torch.arange(100) % 10
    raises_with_fix(lambda: few_label_split(labels, 200, 0), "at most 100")
    raises_with_fix(lambda: few_label_split(labels, 5, 0), "at least 10")
    raises_with_fix(lambda: few_label_split(torch.full((50,), -1), 10, 0), "labelled")
    raises_with_fix(lambda: few_label_split(labels, 0, 0), "positive")


def small_set(labels: list[int]) -> ImageSet:
    n = len(labels)
    return ImageSet(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
                    torch.tensor(labels), ["a", "b"], "tiny", "memory")


def test_holdout_is_stratified_and_seeded():
    images = small_set([0] * 50 + [1] * 30 + [-1] * 20)
    train, test = holdout(images, 0.2, seed=0)
    assert (len(train), len(test)) == (80, 20)
    assert torch.bincount(test.labels + 1).tolist() == [4, 10, 6]
    seen = torch.cat([train.images[:, 0, 0, 0], test.images[:, 0, 0, 0]]).sort().values
    assert torch.equal(seen, torch.arange(100, dtype=torch.uint8)), "disjoint and complete"
    assert torch.equal(holdout(images, 0.2, seed=0)[1].images, test.images)
    assert not torch.equal(holdout(images, 0.2, seed=1)[1].images, test.images)
    assert test.classes == ["a", "b"]
    raises_with_fix(lambda: holdout(images, 1.5, 0), "between 0 and 1")
    raises_with_fix(lambda: holdout(small_set([0, 1]), 0.2, 0), "at least two per class")


def test_split_files_round_trip(tmp_path):
    path = tmp_path / "split.json"
    save_split(path, torch.tensor([3, 1, 4]), {"labels": 3, "seed": 0})
    indices, meta = load_split(path)
    assert indices.tolist() == [3, 1, 4] and indices.dtype == torch.int64 and meta == {"labels": 3, "seed": 0}
    path.write_text("{broken")
    raises_with_fix(lambda: load_split(path), "split.json")
    raises_with_fix(lambda: load_split(tmp_path / "missing.json"), "missing.json")


def test_holdout_keeps_whole_groups_even_with_two_per_label():
    from selfsup.data.sources import ImageSet
    from selfsup.data.splits import holdout

    # Two photos per class, 5 crops each: one whole photo per class must go to the test side.
    labels = torch.tensor([0] * 10 + [1] * 10)
    groups = torch.arange(4).repeat_interleave(5)
    images = ImageSet(torch.zeros(20, 1, 4, 4, dtype=torch.uint8), labels, ["a", "b"], "t", "t", groups=groups)
    train, test = holdout(images, 0.2, seed=0)
    assert set(train.groups.tolist()).isdisjoint(test.groups.tolist())
    assert len(test) == 10 and set(test.labels.tolist()) == {0, 1}
