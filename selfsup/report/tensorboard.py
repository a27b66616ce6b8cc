"""Optional TensorBoard logging of the training curves (`selfsup run --tensorboard`).

metrics.jsonl stays the record of a run; this mirrors each of its rows into TensorBoard event files under
RUN_DIR/tensorboard/, for people who watch runs there (`tensorboard --logdir runs`). It needs the optional
`tensorboard` package (`pip install -e '.[tensorboard]'`); without it the run is refused before it starts, with
that fix. A resumed run purges the events logged after its checkpoint, so the curves have no doubled steps.
"""

from __future__ import annotations

import math
from pathlib import Path

from selfsup.errors import SelfSupError

SKIP = ("step", "total_steps")  # not curves: the x-axis, and the planned length


def check_available() -> None:
    """A SelfSupError with the fix when TensorBoard's writer cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise SelfSupError(f"--tensorboard needs the tensorboard package ({e}); install it with "
                           "`pip install -e '.[tensorboard]'` (or `pip install tensorboard`), or drop --tensorboard"
                           ) from None


class TensorBoardLog:
    """Writes metrics.jsonl rows as scalars named train/KEY at their step."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.dir), purge_step=purge_step)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
