from __future__ import annotations

import numpy as np
import pytest
import torch

from nnpipe.metrics import ScoredClass
from nnpipe.training.loss import DeepSupervisionLoss
from nnpipe.training.regions import (
    RegionLoss,
    head_loss,
    labels_to_regions,
    model_outputs,
    nested_regions,
    region_dice,
    regions_to_labels,
    validation_counts,
)

BRATS = {0: "background", 1: "edema", 2: "non-enhancing", 3: "enhancing"}


def test_brats_regions_are_nested_label_sets() -> None:
    assert nested_regions(BRATS) == (ScoredClass("WT", (1, 2, 3)), ScoredClass("TC", (2, 3)),
                                     ScoredClass("ET", (3,)))
    assert nested_regions([0, 2, 5]) == (ScoredClass("ge2", (2, 5)), ScoredClass("ge5", (5,)))
    with pytest.raises(ValueError, match="foreground"):
        nested_regions([0])
    assert model_outputs(4, True) == 3 and model_outputs(4, False) == 4


def test_labels_regions_round_trip() -> None:
    regions = nested_regions(BRATS)
    seg = torch.tensor([0, 1, 2, 3, 3, 1]).reshape(1, 1, 6)
    masks = labels_to_regions(seg, regions)
    assert masks[0].tolist() == [[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0]]
    labels = regions_to_labels(masks[0].numpy() * 0.9 + 0.05, regions)
    assert labels.tolist() == [0, 1, 2, 3, 3, 1] and labels.dtype == np.uint8


def test_region_loss_is_low_for_right_logits_and_works_with_deep_supervision() -> None:
    regions = nested_regions(BRATS)
    seg = torch.randint(0, 4, (2, 1, 6, 6, 6))
    right = (labels_to_regions(seg, regions) * 2 - 1) * 20  # large logits of the right sign
    loss = RegionLoss(regions)
    assert float(loss(right, seg)) < 1e-3
    assert float(loss(-right, seg)) > 1.0
    ds = DeepSupervisionLoss(head_loss(BRATS, True))
    heads = torch.stack([right, right, -right], dim=1)  # (B, H, R, *S)
    # heads weigh 4/7, 2/7, 1/7: only the last one is wrong
    assert float(ds(heads, seg)) == pytest.approx(float(loss(-right, seg)) / 7, rel=1e-3)
    assert head_loss(BRATS, False) is None


def test_validation_dice_per_region_or_per_class() -> None:
    regions = nested_regions(BRATS)
    seg = torch.tensor([1, 2, 3, 0]).reshape(1, 1, 4)
    logits = torch.tensor([[[1.0, 1, 1, -1], [-1, 1, 1, -1], [-1, -1, -1, -1]]])
    assert region_dice(logits, seg, regions) == [1.0, 1.0, 0.0]
    region_loss = DeepSupervisionLoss(head_loss(BRATS, True))
    counts = validation_counts(logits, seg, 4, region_loss, None)
    # |P and R|, |P|, |R| per region: WT 3 of 3, TC 2 of 2, ET none predicted of 1
    assert counts.tolist() == [[3, 3, 3], [2, 2, 2], [0, 0, 1]]
    called = validation_counts(logits, seg, 4, DeepSupervisionLoss(), lambda *a: "default")
    assert called == "default"


def test_region_mode_trains_predicts_and_scores_regions(tiny_study, tmp_path) -> None:
    """One short region-mode run through the real CLI: 3 sigmoid outputs, labels at export,
    regions in the evaluation CSV."""
    import json

    import pandas as pd

    from nnpipe.cli import main
    from nnpipe.training.checkpoint import load_checkpoint

    cfg = json.dumps({"training": {"epochs": 1, "steps_per_epoch": 2, "val_patches": 2,
                                   "regions": True}})
    run = tmp_path / "run"
    assert main(["train", "--config-json", cfg, "--preprocessed", str(tiny_study.preprocessed[3]),
                 "--splits", str(tiny_study.splits), "--fold", "0", "--threads", "1",
                 "--out", str(run)]) == 0
    ckpt = load_checkpoint(run / "final.pt")
    assert ckpt["settings"]["regions"] is True
    out_weights = [v for k, v in ckpt["model"].items() if k.startswith("output_block")]
    assert out_weights[0].shape[0] == 3  # WT, TC, ET
    metrics = (run / "metrics.csv").read_text().splitlines()[0]
    assert "val_dice_3" in metrics and "val_dice_4" not in metrics
    pred = tmp_path / "pred"
    assert main(["predict", "--config-json", cfg, "--model", str(run), "--raw",
                 str(tiny_study.raw), "--splits", str(tiny_study.splits), "--fold", "0",
                 "--out", str(pred)]) == 0
    assert main(["evaluate", "--config-json", cfg, "--pred", str(pred), "--raw",
                 str(tiny_study.raw), "--splits", str(tiny_study.splits), "--fold", "0",
                 "--out", str(tmp_path / "fold0.csv")]) == 0
    table = pd.read_csv(tmp_path / "fold0.csv")
    assert [c for c in table.columns if c.startswith("dice_")] == [
        "dice_WT", "dice_TC", "dice_ET", "dice_mean"]
    assert table["dice_mean"].between(0, 1).all()
