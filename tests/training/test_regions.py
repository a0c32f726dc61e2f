from __future__ import annotations

import numpy as np
import pytest
import torch

from nnpipe.labels import LabelScheme, outputs_to_labels
from nnpipe.metrics import ScoredClass
from nnpipe.training.loss import DeepSupervisionLoss
from nnpipe.training.regions import (
    RegionLoss,
    head_loss,
    labels_to_regions,
    nested_regions,
    region_dice,
    validation_counts,
)

BRATS = {0: "background", 1: "edema", 2: "non-enhancing", 3: "enhancing"}
BRATS_REGIONS = LabelScheme.from_values(BRATS, regions=True)


def test_brats_regions_are_nested_label_sets() -> None:
    assert nested_regions(BRATS) == (ScoredClass("WT", (1, 2, 3)), ScoredClass("TC", (2, 3)),
                                     ScoredClass("ET", (3,)))
    assert nested_regions([0, 2, 5]) == (ScoredClass("ge2", (2, 5)), ScoredClass("ge5", (5,)))
    with pytest.raises(ValueError, match="foreground"):
        nested_regions([0])
    assert BRATS_REGIONS.output_channels == 3
    assert LabelScheme.from_values(BRATS).output_channels == 4


def test_labels_regions_round_trip() -> None:
    regions = nested_regions(BRATS)
    seg = torch.tensor([0, 1, 2, 3, 3, 1]).reshape(1, 1, 6)
    masks = labels_to_regions(seg, regions)
    assert masks[0].tolist() == [[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0]]
    labels = outputs_to_labels(masks[0].numpy() * 0.9 + 0.05, BRATS_REGIONS)
    assert labels.tolist() == [0, 1, 2, 3, 3, 1] and labels.dtype == np.uint8


def test_region_loss_is_low_for_right_logits_and_works_with_deep_supervision() -> None:
    regions = nested_regions(BRATS)
    seg = torch.randint(0, 4, (2, 1, 6, 6, 6))
    right = (labels_to_regions(seg, regions) * 2 - 1) * 20  # large logits of the right sign
    loss = RegionLoss(regions)
    assert float(loss(right, seg)) < 1e-3
    assert float(loss(-right, seg)) > 1.0
    ds = DeepSupervisionLoss(head_loss(BRATS_REGIONS))
    heads = torch.stack([right, right, -right], dim=1)  # (B, H, R, *S)
    # heads weigh 4/7, 2/7, 1/7: only the last one is wrong
    assert float(ds(heads, seg)) == pytest.approx(float(loss(-right, seg)) / 7, rel=1e-3)
    assert not isinstance(head_loss(LabelScheme.from_values(BRATS)), RegionLoss)


def test_validation_dice_per_region_or_per_class() -> None:
    regions = nested_regions(BRATS)
    seg = torch.tensor([1, 2, 3, 0]).reshape(1, 1, 4)
    logits = torch.tensor([[[1.0, 1, 1, -1], [-1, 1, 1, -1], [-1, -1, -1, -1]]])
    assert region_dice(logits, seg, regions) == [1.0, 1.0, 0.0]
    region_loss = DeepSupervisionLoss(head_loss(BRATS_REGIONS))
    counts = validation_counts(logits, seg, 4, region_loss, None)
    # |P and R|, |P|, |R| per region: WT 3 of 3, TC 2 of 2, ET none predicted of 1
    assert counts.tolist() == [[3, 3, 3], [2, 2, 2], [0, 0, 1]]
    called = validation_counts(logits, seg, 4, DeepSupervisionLoss(), lambda *a: "default")
    assert called == "default"


def _region_preprocessed(tiny_study, tmp_path, recorded: bool):
    """The tiny study's 3D preprocessed folder with its plan in region mode: recorded in the
    plan (``recorded``), or an older plan without the label concept."""
    import shutil

    from nnpipe.io import read_json, write_json
    from nnpipe.planning.plan import Plan

    folder = tmp_path / "preprocessed"
    shutil.copytree(tiny_study.preprocessed[3], folder)
    manifest = read_json(folder / "manifest.json")
    plan = Plan.from_dict(manifest["plan"])
    if recorded:
        manifest["plan"] = plan.with_scheme(plan.scheme().with_nested_regions()).to_dict()
    else:
        manifest["plan"].pop("label_scheme", None)
    write_json(folder / "manifest.json", manifest)
    return folder


@pytest.mark.parametrize("recorded", [True, False], ids=["plan", "older-plan-config"])
def test_region_mode_trains_predicts_and_scores_regions(tiny_study, tmp_path, recorded) -> None:
    """One short region-mode run through the real CLI: 3 sigmoid outputs, labels at export,
    regions in the evaluation CSV. Region mode comes from the plan; a plan older than the
    recorded label concept takes it from training.regions (the old way)."""
    import json

    import pandas as pd

    from nnpipe.cli import main
    from nnpipe.training.checkpoint import load_checkpoint

    cfg = json.dumps({"training": {"epochs": 1, "steps_per_epoch": 2, "val_patches": 2,
                                   "regions": not recorded}})
    run = tmp_path / "run"
    folder = _region_preprocessed(tiny_study, tmp_path, recorded)
    assert main(["train", "--config-json", cfg, "--preprocessed", str(folder),
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
    plan_json = tmp_path / "plan.json"
    plan_json.write_text(json.dumps(load_checkpoint(run / "final.pt")["plan"]))
    # the plan says what is scored; config training.regions only for older plans
    eval_cfg = json.dumps({"training": {"regions": not recorded}})
    assert main(["evaluate", "--config-json", eval_cfg, "--pred", str(pred), "--raw",
                 str(tiny_study.raw), "--splits", str(tiny_study.splits), "--fold", "0",
                 "--plan", str(plan_json), "--out", str(tmp_path / "fold0.csv")]) == 0
    table = pd.read_csv(tmp_path / "fold0.csv")
    assert [c for c in table.columns if c.startswith("dice_")] == [
        "dice_WT", "dice_TC", "dice_ET", "dice_mean"]
    assert table["dice_mean"].between(0, 1).all()
