"""TensorBoard event files beside ``metrics.csv``: the same per-epoch rows, as scalars.

``tensorboard --logdir results/<dataset>/train`` then shows every run and fold. The writer is
``torch.utils.tensorboard.SummaryWriter``; without the ``tensorboard`` package the log says so
once and training goes on with ``metrics.csv`` alone.

A resumed run starts its event files afresh and replays the history saved in the checkpoint,
so the event files always hold exactly the rows of ``metrics.csv``: no epoch twice (an epoch
logged after the last checkpoint and then run again), none missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnpipe.progress import log

EVENT_PREFIX = "events.out.tfevents."

# metrics.csv column -> TensorBoard tag; grouped so that TensorBoard shows one card per group
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_dice_mean": "dice/val_mean",
    "lr": "lr",
    "epoch_time_s": "time/epoch_s",
    "samples_per_s": "throughput/samples_per_s",
}


def tag_of(column: str) -> str:
    """The TensorBoard tag of a ``metrics.csv`` column (``val_dice_2`` -> ``dice/val_class2``)."""
    if column in TAGS:
        return TAGS[column]
    if column.startswith("val_dice_") and column[9:].isdigit():
        return f"dice/val_class{column[9:]}"
    return f"other/{column}"


class TensorBoardLog:
    """Scalars of each epoch row, step = epoch number, flushed at once.

    ``log_dir``: the run's ``tensorboard/`` folder; its old event files are removed and
    ``history`` (rows already trained, from a checkpoint) is written again. With ``enabled``
    false every call does nothing (ranks other than 0).
    """

    def __init__(self, log_dir: Path | str, history: Sequence[Mapping[str, Any]] = (), *,
                 enabled: bool = True) -> None:
        self._writer: Any = None
        if not enabled:  # other ranks of a DDP run: rank 0 writes
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional at run time; pyproject installs it
            log("tensorboard is not installed: training curves go to metrics.csv only")
            return
        log_dir = Path(log_dir)
        if log_dir.is_dir():
            for old in log_dir.glob(f"{EVENT_PREFIX}*"):
                old.unlink()
        self._writer = SummaryWriter(log_dir=str(log_dir))
        for row in history:
            _add(self._writer, row)
        self._writer.flush()

    def epoch(self, row: Mapping[str, Any]) -> None:
        """Write one ``metrics.csv`` row (needs an ``epoch`` key) and flush."""
        if self._writer is not None:
            _add(self._writer, row)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _add(writer: Any, row: Mapping[str, Any]) -> None:
    step = int(row["epoch"])
    for column, value in row.items():
        if column != "epoch" and value is not None:
            writer.add_scalar(tag_of(column), float(value), global_step=step)
