"""Decode once, then memory-map: uint8 arrays (N, C, H, W) kept as .npy files beside a JSON of their metadata.

An image folder is decoded with PIL a single time into `<cache dir>/<folder name>-<key>.npy`; later loads find the
file by its key and memory-map it, so training never touches PIL. The key hashes everything the decoded array
depends on (the folder, its files' relative paths, sizes and modification times, the image size and the colour
mode), so editing, adding or touching a file makes a new cache and the stale one is removed.

Files are written atomically (temporary file, fsync, os.replace): an interrupted decode never leaves a half-written
cache that a later run would trust, and two processes decoding the same folder at once both end with a valid file.

The cache directory is `$SELFSUP_CACHE` when set, else `~/.cache/selfsup/folders`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from selfsup.errors import SelfSupError

# Bump when the decoded layout changes, so caches written by older code are not trusted.
FORMAT_VERSION = 1

# Files with these name endings (any case) are images; everything else in a folder is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Source modes that hold no colour: a folder made only of these decodes to one channel.
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# How many file names a note quotes before saying "and N more".
NAMES_IN_NOTES = 5


def cache_dir() -> Path:
    """Where decoded arrays live: $SELFSUP_CACHE, else ~/.cache/selfsup/folders."""
    configured = os.environ.get("SELFSUP_CACHE", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "selfsup" / "folders"


def name_list(names: Sequence[str]) -> str:
    """'a.jpg, b.jpg' or 'a.jpg, ..., e.jpg and 7 more': file names short enough for a one-line note."""
    shown = ", ".join(names[:NAMES_IN_NOTES])
    return shown if len(names) <= NAMES_IN_NOTES else f"{shown} and {len(names) - NAMES_IN_NOTES} more"


def files_key(root: Path, files: Sequence[Path], **settings: object) -> str:
    """A hash of the files' relative paths, sizes and mtimes plus the decode settings: changes when any of them does."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": FORMAT_VERSION, "root": str(root.resolve()), **settings},
                             sort_keys=True).encode())
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"\n{path.relative_to(root).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _paths(stem: str, key: str) -> tuple[Path, Path]:
    base = cache_dir() / f"{stem}-{key}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def load_cached(stem: str, key: str) -> tuple[np.ndarray, dict] | None:
    """The memory-mapped array and its metadata if a complete cache for this key exists, else None."""
    array_path, meta_path = _paths(stem, key)
    if not (array_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        # Copy-on-write mapping: pages are read lazily like mode "r", but the array is writable, so torch.from_numpy
        # does not warn, and an accidental in-place edit changes only this process's memory, never the file.
        array = np.load(array_path, mmap_mode="c")
    except (OSError, ValueError):
        return None  # unreadable cache: decode again and overwrite it
    if meta.get("version") != FORMAT_VERSION or meta.get("key") != key or list(array.shape) != meta.get("shape"):
        return None
    return array, meta


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _temp_path(directory: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    return Path(name)


def build_cached(stem: str, key: str, shape: tuple[int, ...],
                 fill: Callable[[np.ndarray], tuple[int, dict]]) -> tuple[np.ndarray, dict]:
    """Create the cache for `key`: fill(array) writes rows into a (shape) uint8 memmap and returns (rows used, meta).

    Rows past `rows used` are dropped (images that failed to decode). fill may raise; no cache is left behind then.
    """
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SelfSupError(f"cannot create the cache directory {directory} ({e.strerror}): "
                           "set SELFSUP_CACHE to a writable folder") from None
    array_path, meta_path = _paths(stem, key)
    temps: list[Path] = []
    try:
        tmp = _temp_path(directory, ".npy")
        temps.append(tmp)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        used, meta = fill(array)
        array.flush()
        if used < shape[0]:
            # Some inputs were skipped: copy the filled rows into a file of the right length, in chunks so a large
            # folder is never held in memory at once.
            trimmed_tmp = _temp_path(directory, ".npy")
            temps.append(trimmed_tmp)
            trimmed = np.lib.format.open_memmap(trimmed_tmp, mode="w+", dtype=np.uint8, shape=(used, *shape[1:]))
            for start in range(0, used, 4096):
                trimmed[start:start + 4096] = array[start:min(used, start + 4096)]
            trimmed.flush()
            del trimmed
            tmp = trimmed_tmp
        del array
        meta = {**meta, "version": FORMAT_VERSION, "key": key, "shape": [used, *shape[1:]]}
        meta_tmp = _temp_path(directory, ".json")
        temps.append(meta_tmp)
        meta_tmp.write_text(json.dumps(meta))
        _fsync_replace(tmp, array_path)
        _fsync_replace(meta_tmp, meta_path)
    except OSError as e:
        raise SelfSupError(f"cannot write the cache file {array_path} ({e.strerror or e}): free disk space "
                           "or set SELFSUP_CACHE to another folder") from None
    finally:
        for path in temps:
            path.unlink(missing_ok=True)
    _remove_stale(stem, key, meta.get("root"))
    loaded = load_cached(stem, key)
    if loaded is None:
        raise SelfSupError(f"the cache file {array_path} could not be read back: "
                           "set SELFSUP_CACHE to a folder on a local disk")
    return loaded


def _remove_stale(stem: str, key: str, root: str | None) -> None:
    """Delete older caches of the same source (same stem and root), which can never be hit again."""
    for meta_path in cache_dir().glob(f"{stem}-*.json"):
        if meta_path.stem == f"{stem}-{key}":
            continue
        try:
            if json.loads(meta_path.read_text()).get("root") != root:
                continue
        except (OSError, ValueError):
            continue
        meta_path.with_suffix(".npy").unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)


def decode_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 (C, S, S): short side resized to S, centre-cropped; mode "RGB" or "L"."""
    from PIL import Image, ImageOps  # imported here so that loading a cache never imports PIL

    with Image.open(path) as im:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: large photos become cheap (never below the target).
        im.draft(mode, (image_size, image_size))
        im = ImageOps.exif_transpose(im)  # phone photos store their rotation in EXIF
        im = im.convert(mode)
        w, h = im.size
        scale = image_size / min(w, h)
        new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        pixels = np.asarray(im, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _source_mode(path: Path) -> str | None:
    """The file's PIL mode read from its header only (no pixel decoding), or None when it is not an image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode == "P":  # GIFs are palette images even when grey: a grey palette counts as grayscale
                palette = np.asarray(im.getpalette() or [0, 0, 1]).reshape(-1, 3)
                return "L" if (palette == palette[:, :1]).all() else "P"
            return im.mode
    except Exception:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError, ...)
        return None


def decode_folder(root: Path, files: Sequence[Path], labels: Sequence[int], *, image_size: int,
                  mode: str = "auto") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode image files once into a cached (N, C, S, S) uint8 memmap; -> (images, labels, notes about skipped files).

    mode: "auto" (one channel if every image is grayscale, else RGB), "RGB" or "L". Unreadable files are skipped and
    named in the notes. Raises SelfSupError when no file can be read.
    """
    if mode not in ("auto", "RGB", "L"):
        raise SelfSupError(f"unknown colour mode {mode!r} for an image folder: use 'auto', 'RGB' or 'L'")
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in root.resolve().name) or "folder"
    key = files_key(root, files, labels=list(labels), image_size=image_size, mode=mode)
    cached = load_cached(stem, key)
    if cached is None:
        cached = build_cached(stem, key, *_folder_plan(root, files, labels, image_size, mode))
    array, meta = cached
    return array, np.asarray(meta["labels"], dtype=np.int64), list(meta["notes"])


def _folder_plan(root: Path, files: Sequence[Path], labels: Sequence[int], image_size: int,
                 mode: str) -> tuple[tuple[int, ...], Callable[[np.ndarray], tuple[int, dict]]]:
    """Read headers to settle the channel count, and return (array shape, fill function) for build_cached."""
    unreadable: list[str] = []
    readable: list[tuple[Path, int]] = []
    grayscale = True
    for path, label in zip(files, labels):
        source_mode = _source_mode(path)
        if source_mode is None:
            unreadable.append(path.relative_to(root).as_posix())
            continue
        readable.append((path, label))
        grayscale = grayscale and source_mode in GRAYSCALE_MODES
    if mode == "auto":
        mode = "L" if grayscale else "RGB"
    if not readable:
        raise SelfSupError(f"none of the {len(files)} image files in {root} could be read "
                           f"(e.g. {name_list(unreadable)}): "
                           f"put valid images in it (accepted extensions: {' '.join(IMAGE_EXTENSIONS)})")
    channels = 1 if mode == "L" else 3

    def fill(array: np.ndarray) -> tuple[int, dict]:
        kept: list[int] = []
        for path, label in readable:
            try:
                array[len(kept)] = decode_image(path, image_size, mode)
            except Exception:  # a file whose header parses can still fail to decode (truncated, bad data)
                unreadable.append(path.relative_to(root).as_posix())
                continue
            kept.append(int(label))
        if not kept:
            raise SelfSupError(f"none of the {len(files)} image files in {root} could be decoded "
                               f"(e.g. {name_list(unreadable)}): put valid images in it "
                               f"(accepted extensions: {' '.join(IMAGE_EXTENSIONS)})")
        notes = []
        if unreadable:
            plural = "image" if len(unreadable) == 1 else "images"
            notes.append(f"skipped {len(unreadable)} unreadable {plural}: {name_list(sorted(unreadable))}")
        return len(kept), {"root": str(root.resolve()), "labels": kept, "notes": notes, "mode": mode}

    return (len(readable), channels, image_size, image_size), fill


def _decode_short_side(path: Path, short_side: int, mode: str) -> tuple[np.ndarray, bool]:
    """One image file -> (uint8 (C, h, w) with min(h, w) == short_side, whether it had to be enlarged)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft(mode, (short_side, short_side))  # JPEG: decode at a reduced scale, never below the target
        im = ImageOps.exif_transpose(im)
        im = im.convert(mode)
        w, h = im.size
        scale = short_side / min(w, h)
        size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
        enlarged = scale > 1
        if size != (w, h):
            im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        pixels = np.asarray(im, dtype=np.uint8)
    return (pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)), enlarged


def crop_corners(height: int, width: int, crop: int, count: int, seed: int, index: int) -> np.ndarray:
    """(count, 2) seeded top-left corners of crop x crop windows inside a height x width image (photo `index`)."""
    rng = np.random.default_rng([seed, index])
    return np.stack([rng.integers(0, height - crop + 1, count), rng.integers(0, width - crop + 1, count)], axis=1)


def decode_folder_crops(root: Path, files: Sequence[Path], labels: Sequence[int], *, crop_size: int,
                        crops_per_image: int, crop_scale: int, seed: int,
                        mode: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Cut `crops_per_image` seeded random crops of `crop_size` px from every photo, its short side first resized
    to `crop_scale`; cached like decode_folder. -> (images (N*K, C, S, S), labels, groups (the photo of each crop,
    0.. in file order), notes). Crop k of a photo is always the same crop for the same seed and settings.
    """
    if mode not in ("auto", "RGB", "L"):
        raise SelfSupError(f"unknown colour mode {mode!r} for an image folder: use 'auto', 'RGB' or 'L'")
    if crops_per_image < 1:
        raise SelfSupError(f"crops_per_image must be at least 1, got {crops_per_image}: use e.g. "
                           "--set data.crops_per_image=100")
    if crop_size > crop_scale:
        raise SelfSupError(f"crops of {crop_size} px do not fit in photos resized to {crop_scale} px on their short "
                           f"side: set data.crop_scale to at least {crop_size} (e.g. {4 * crop_size}) or lower "
                           "data.image_size")
    # Its own stem, so a folder's whole-image cache and its crop cache do not evict each other.
    stem = ("".join(c if c.isalnum() or c in "-_." else "_" for c in root.resolve().name) or "folder") + "-crops"
    key = files_key(root, files, labels=list(labels), image_size=crop_size, mode=mode,
                    crops_per_image=crops_per_image, crop_scale=crop_scale, seed=seed)
    cached = load_cached(stem, key)
    if cached is None:
        shape, _ = _folder_plan(root, files, labels, crop_size, mode)  # settles the channels, errors if none read
        readable = [(p, lab) for p, lab in zip(files, labels) if _source_mode(p) is not None]
        unreadable = sorted({p.relative_to(root).as_posix() for p in files} - {p.relative_to(root).as_posix()
                                                                                 for p, _ in readable})
        resolved = "L" if shape[1] == 1 else "RGB"

        def fill_crops(array: np.ndarray) -> tuple[int, dict]:
            kept_labels: list[int] = []
            groups: list[int] = []
            enlarged: list[str] = []
            photo = 0
            for path, label in readable:
                try:
                    pixels, grew = _decode_short_side(path, crop_scale, resolved)
                except Exception:  # a header that parses can still hide a truncated file
                    unreadable.append(path.relative_to(root).as_posix())
                    continue
                if grew:
                    enlarged.append(path.relative_to(root).as_posix())
                _, h, w = pixels.shape
                row = len(kept_labels)
                for k, (top, left) in enumerate(crop_corners(h, w, crop_size, crops_per_image, seed, photo)):
                    array[row + k] = pixels[:, top:top + crop_size, left:left + crop_size]
                kept_labels += [int(label)] * crops_per_image
                groups += [photo] * crops_per_image
                photo += 1
            if not kept_labels:
                raise SelfSupError(f"none of the {len(files)} image files in {root} could be decoded: put valid "
                                   f"images in it (accepted extensions: {' '.join(IMAGE_EXTENSIONS)})")
            notes = [f"cut {crops_per_image} random {crop_size} px crops from each of {photo} photos "
                     f"(short side resized to {crop_scale} px first)"]
            skipped = sorted(unreadable)
            if skipped:
                notes.append(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: "
                             f"{name_list(skipped)}")
            if enlarged:
                notes.append(f"{len(enlarged)} photo{'s were' if len(enlarged) > 1 else ' was'} smaller than "
                             f"data.crop_scale={crop_scale} px and enlarged: {name_list(sorted(enlarged))}")
            return len(kept_labels), {"root": str(root.resolve()), "labels": kept_labels, "groups": groups,
                                      "notes": notes, "mode": resolved}

        cached = build_cached(stem, key, (len(readable) * crops_per_image, shape[1], crop_size, crop_size), fill_crops)
    array, meta = cached
    return (array, np.asarray(meta["labels"], dtype=np.int64), np.asarray(meta["groups"], dtype=np.int64),
            list(meta["notes"]))
