"""TensorBoard event files hold exactly the rows of metrics.csv, also after a resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from nnpipe.config import study_config
from nnpipe.training.tensorboard import EVENT_PREFIX, TensorBoardLog, tag_of

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator")


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def row(epoch: int, loss: float) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": loss, "val_dice_mean": 0.5, "val_dice_2": 0.25,
            "lr": 0.001}


@pytest.mark.parametrize(("column", "tag"), [
    ("train_loss", "loss/train"), ("val_loss", "loss/val"), ("val_dice_mean", "dice/val_mean"),
    ("val_dice_3", "dice/val_class3"), ("lr", "lr"), ("samples_per_s", "throughput/samples_per_s"),
    ("something", "other/something")])
def test_tags(column: str, tag: str) -> None:
    assert tag_of(column) == tag


def test_resume_replays_the_checkpoint_history_once(tmp_path: Path) -> None:
    board = TensorBoardLog(tmp_path, [])
    for epoch in (1, 2, 3):
        board.epoch(row(epoch, 1.0 / epoch))
    board.close()
    # killed after epoch 3 was logged but before its checkpoint: the resumed run holds 2 rows
    board = TensorBoardLog(tmp_path, [row(1, 1.0), row(2, 0.5)])
    board.epoch(row(3, 0.3))
    board.close()
    assert len(list(tmp_path.glob(f"{EVENT_PREFIX}*"))) == 1
    scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["loss/train"]] == [1, 2, 3]
    assert [round(v, 6) for _, v in scalars["loss/train"]] == [1.0, 0.5, 0.3]
    assert scalars["dice/val_class2"] == [(1, 0.25), (2, 0.25), (3, 0.25)]


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    board = TensorBoardLog(tmp_path / "tb", [row(1, 1.0)], enabled=False)
    board.epoch(row(2, 0.5))
    board.close()
    assert not (tmp_path / "tb").exists()


def test_trainer_writes_events_equal_to_metrics_csv(tiny_study, tmp_path: Path) -> None:
    from nnpipe.training.trainer import TrainRun, train

    settings = study_config({"training": {"epochs": 2, "steps_per_epoch": 1, "val_patches": 1,
                                          "deterministic": True}}).training
    run = TrainRun(tiny_study.preprocessed[2], tiny_study.splits, 0, "fp32", tmp_path, settings,
                   force_cpu=True)
    train(run, threads=1)
    # asking for one more epoch extends the finished run: history replayed, one epoch added
    train(TrainRun(**{**run.__dict__, "epochs": 3}), threads=1)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["loss/val"]] == [1, 2, 3]
    for column in ("train_loss", "val_loss", "val_dice_mean", "lr"):
        assert [v for _, v in scalars[tag_of(column)]] == pytest.approx(
            [float(r[column]) for r in rows], rel=1e-6), column
