"""Fused CPU kernels for the views: resized crop, colour jitter, grayscale and Gaussian blur in C++ (kernels.cpp).

The PyTorch ops in ops.py make one pass over the batch per elementwise step; at 96 px that memory traffic, not
Python, bounds them. The C++ kernels run every step of an op on one image while it is in cache and split the
images between torch's threads. They only compute: the random parameters are drawn by ops.py as before, so a
seed gives the same views either way, up to float rounding (about 1e-6).

They are compiled once per machine (about a minute; needs a C++ compiler and the `ninja` package) into
~/.cache/selfsup/kernels, or $SELFSUP_CACHE/kernels, with -march=native, so a build serves only the CPU it was
made on (the cache key names the CPU). Which path the views take is set by the environment
variable SELFSUP_VIEW_KERNELS:

- ``auto`` (default): the kernels when they are already built for this machine, else the PyTorch ops. A run
  never stops to compile.
- ``build``: compile them first if needed; an error if that fails.
- ``off``: always the PyTorch ops.

`python -m selfsup.views.kernels` builds them now. Nothing builds them by default: on 28-32 px images the views
cost under 1% of a training step either way; they pay on large images (docs/benchmarks.md, views). Only CPU
float32 tensors that need no gradient take the kernels; anything else (a GPU batch, autograd) runs the PyTorch ops.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

from selfsup.errors import SelfSupError

SOURCE = Path(__file__).with_name("kernels.cpp")
MODES = ("auto", "build", "off")

_loaded: dict[str, ModuleType | None] = {}  # mode -> module (or None), once per process and mode
_forced: str | None = None


def mode() -> str:
    """The path asked for: set_mode()'s if called, else $SELFSUP_VIEW_KERNELS, else auto."""
    m = _forced or os.environ.get("SELFSUP_VIEW_KERNELS", "auto").strip().lower() or "auto"
    if m not in MODES:
        raise SelfSupError(f"SELFSUP_VIEW_KERNELS={m!r} is not one of {', '.join(MODES)}; unset it for auto")
    return m


def set_mode(m: str | None) -> None:
    """Override the environment for this process (None: back to it). Tests use it to run both paths."""
    global _forced
    if m is not None and m not in MODES:
        raise SelfSupError(f"view kernels mode {m!r} is not one of {', '.join(MODES)}")
    _forced = m


def _flags() -> list[str]:
    # -fno-trapping-math changes no result; it lets the compiler vectorize the branch-free hue rotation.
    flags = ["-O3", "-fno-trapping-math"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-march=native")  # AVX2 / AVX-512 where the CPU has them; the cache is per machine
    return flags


def build_dir() -> Path:
    """Where this machine's build lives: a digest of the source, the flags, torch, Python and the CPU."""
    from selfsup.hardware import cpu_key

    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(_flags()).encode(), torch.__version__.encode(),
                 sys.version.encode(), platform.machine().encode(), cpu_key().encode()):
        digest.update(part)
        digest.update(b"\0")
    root = Path(os.environ.get("SELFSUP_CACHE") or Path.home() / ".cache" / "selfsup")
    return root / "kernels" / digest.hexdigest()[:16]


def _name(where: Path) -> str:
    return f"selfsup_view_kernels_{where.name}"


def _built(where: Path) -> Path | None:
    found = sorted(where.glob(_name(where) + "*.so")) + sorted(where.glob(_name(where) + "*.pyd"))
    return found[0] if found else None


def _import(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def build(verbose: bool = False) -> ModuleType:
    """Compile the kernels for this machine if they are not built yet, and load them; SelfSupError if impossible."""
    where = build_dir()
    name = _name(where)
    path = _built(where)
    if path is not None:
        return _import(path, name)
    try:
        from torch.utils import cpp_extension
    except Exception as e:  # pragma: no cover - part of every torch install
        raise SelfSupError(f"cannot build the view kernels: torch.utils.cpp_extension failed to import ({e})")
    if not cpp_extension.is_ninja_available():
        raise SelfSupError("cannot build the view kernels: the `ninja` package is missing; "
                           "`pip install ninja` (selfsup's install has it), or SELFSUP_VIEW_KERNELS=off")
    where.mkdir(parents=True, exist_ok=True)
    try:
        module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=_flags(),
                                    build_directory=str(where), verbose=verbose, with_cuda=False)
    except Exception as e:
        raise SelfSupError(f"cannot build the view kernels ({type(e).__name__}: {str(e).strip()[-500:]}); "
                           "a C++ compiler is needed (Debian: apt-get install g++), or set "
                           "SELFSUP_VIEW_KERNELS=off to use the PyTorch ops") from e
    return module


def get() -> ModuleType | None:
    """The kernels if the current mode uses them and they can be had, else None (the PyTorch ops)."""
    m = mode()
    if m in _loaded:
        return _loaded[m]
    module = None
    if m == "build":
        module = build()
    elif m == "auto":
        where = build_dir()
        path = _built(where)
        if path is not None:
            try:
                module = _import(path, _name(where))
            except Exception:  # a broken or foreign build: the PyTorch ops are always correct
                module = None
    _loaded[m] = module
    return module


def usable(x: torch.Tensor) -> ModuleType | None:
    """The kernels if they may compute on x: a contiguous float32 CPU batch that needs no gradient."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return None
    return get()


def describe() -> str:
    """One line for logs: which path the views take on the CPU."""
    try:
        k = get()
    except SelfSupError as e:
        return f"PyTorch ops ({e})"
    if k is not None:
        return "fused C++ kernels (SELFSUP_VIEW_KERNELS=off for the PyTorch ops)"
    if mode() == "off":
        return "PyTorch ops (SELFSUP_VIEW_KERNELS=off)"
    return "PyTorch ops (fused kernels not built: python -m selfsup.views.kernels)"


def main() -> None:
    start = time.perf_counter()
    where = build_dir()
    had = _built(where) is not None
    try:
        build(verbose="-v" in sys.argv[1:])
    except SelfSupError as e:
        print(f"view kernels: not built: {e}. The views use the PyTorch ops, which are correct, only slower at "
              "large image sizes.")
        sys.exit(0 if "--optional" in sys.argv[1:] else 1)
    verb = "already built" if had else f"built in {time.perf_counter() - start:.0f} s"
    print(f"view kernels: {verb} in {where}")


if __name__ == "__main__":
    main()
