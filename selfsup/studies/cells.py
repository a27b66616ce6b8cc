"""What every study does with one of its cells: pretrain it into its own folder, or continue it after a stop."""

from __future__ import annotations

import shutil
from pathlib import Path

from selfsup.config import Config
from selfsup.train import TrainResult
from selfsup.views.recipes import Recipe


def pretrain_cell(cfg: Config, cell_dir: Path, views: Recipe | None = None) -> tuple[Path, TrainResult]:
    """Pretrain one cell quietly into cell_dir; a cell stopped midway continues from its checkpoint.

    A folder left without a checkpoint (stopped before the first save) is started again from scratch.
    """
    from selfsup.run import pretrain

    quiet = lambda _: None  # noqa: E731
    if (cell_dir / "checkpoints" / "last.pt").exists():
        return pretrain(cfg, resume_dir=cell_dir, progress=False, log=quiet, views=views)
    if cell_dir.exists():
        shutil.rmtree(cell_dir)
    return pretrain(cfg, out=cell_dir, progress=False, log=quiet, views=views)
