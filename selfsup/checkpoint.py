"""Checkpoints that survive crashes: atomic writes, exact resume, safe loading, encoder export.

A checkpoint holds only tensors and plain Python containers, so it loads with `torch.load(weights_only=True)`
and never runs code from the file.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selfsup.errors import SelfSupError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Write a file so that `path` holds either the old or the new complete content, never a torn one.

    `write(tmp_path)` writes the content; we fsync it, rename it over `path`, and fsync the folder so the rename
    itself is durable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes the file private (0600), and some writers (safetensors) replace it with a private file of
        # their own: give the result the mode open() would have given.
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state a run draws from: torch (CPU and CUDA), numpy, Python, and the run's own generators."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _to_lists(random.getstate()),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_to_tuples(state["python"]))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a training state (model, optimizer, step, RNG states, ...)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only: tensors and plain containers, no code)."""
    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"no checkpoint at {path}; resume needs a run folder holding checkpoints/last.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and what to do
        raise SelfSupError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                           "delete it to start the run afresh") from None


def export_encoder(path: str | Path, backbone: nn.Module, meta: dict[str, Any]) -> None:
    """Save the backbone's weights alone as safetensors, with what is needed to rebuild it in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    text_meta = {"selfsup": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=text_meta))


def load_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of an exported encoder."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("selfsup", "{}"))
    return load_file(str(path)), meta
