"""Fine-tuning: planning a dataset like a trained model, and its weights for a new run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nnpipe.finetune import plan_like, pretrained_weights
from nnpipe.labels import LabelScheme
from nnpipe.model import build_unet
from nnpipe.planning.cascade import plan_configuration
from nnpipe.planning.plan import Plan
from nnpipe.planning.planner import PlannerSettings
from nnpipe.training.checkpoint import save_checkpoint
from tests.planning.conftest import fingerprint

SETTINGS = PlannerSettings(max_patch_voxels_3d=16**3, max_patch_voxels_2d=16 * 16,
                           base_filters=4, max_batch_size=4)


def _study_model(root: Path, plan: Plan, channels: list[str], folds=(0, 1)) -> Path:
    """``root/train/3d-fp32-1gpu`` with fold checkpoints, and ``root/raw/dataset.json``."""
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "dataset.json").write_text(json.dumps(
        {"name": root.name, "modality": {str(i): c for i, c in enumerate(channels)},
         "labels": {str(k): v for k, v in plan.labels.items()}}))
    run = root / "train" / f"{plan.dim}d-fp32-1gpu"
    for fold in folds:
        torch.manual_seed(fold)
        net = build_unet(plan, deep_supervision=False)
        save_checkpoint(run / f"fold{fold}" / "final.pt",
                        {"model": net.state_dict(), "plan": plan.to_dict(),
                         "settings": {"regions": False}})
    return run


@pytest.fixture()
def source(tmp_path) -> tuple[Plan, Path]:
    fp = fingerprint([(1.0, 1.0, 1.0)] * 3, [(40, 48, 36)] * 3)
    plan = plan_configuration(fp, "3d", SETTINGS, "Pretrain")
    return plan, _study_model(tmp_path / "Pretrain", plan, ["T1"])


def _new_plan(channels: int = 1) -> Plan:
    labels = {0: "background", 1: "liver", 2: "tumour", 3: "vessel"}
    fp = fingerprint([(2.0, 2.0, 3.0)] * 2, [(30, 30, 20)] * 2, (False,) * channels, labels)
    return plan_configuration(fp, "3d", SETTINGS, "Target")


def test_plan_like_takes_the_models_network_and_keeps_the_datasets_labels(source):
    src, run = source
    own = _new_plan()
    assert own.patch_size != src.patch_size  # the automatic plans differ
    liked = plan_like(own, run, ("t1",))  # channel names compare case-insensitively
    for key in ("spacing", "full_spacing", "patch_size", "kernels", "strides", "filters",
                "batch_size", "network", "encoder_blocks"):
        assert getattr(liked, key) == getattr(src, key), key
    assert liked.labels == own.labels and liked.num_classes == 4
    assert liked.dataset == "Target" and liked.median_shape == own.median_shape
    assert liked.notes[0].startswith(f"planned like {run}")


def test_plan_like_takes_the_models_z_score_and_refuses_ct_against_mr(source, tmp_path):
    """A model trained with the mask (``zscore_nonzero``) sees its inputs normalised that way
    on a dataset where nnU-Net's rule alone would z-score over every voxel; CT statistics
    cannot be borrowed across datasets, so a CT channel against an MR one is refused."""
    src, run = source
    masked = replace(src, channel_norms=(replace(src.channel_norms[0], scheme="zscore_nonzero"),))
    masked_run = _study_model(tmp_path / "Masked", masked, ["T1"])
    own = _new_plan()
    assert [n.scheme for n in own.channel_norms] == ["zscore"]  # nothing cropped: no mask
    assert [n.scheme for n in plan_like(own, masked_run, ("T1",)).channel_norms] == \
        ["zscore_nonzero"]
    ct = replace(src, channel_norms=(replace(src.channel_norms[0], scheme="ct", clip_low=0.0,
                                             clip_high=1.0, mean=0.0, std=1.0),))
    ct_run = _study_model(tmp_path / "Ct", ct, ["T1"])
    with pytest.raises(ValueError, match=r"normalised with 'ct' by model.*'zscore'.*CT "
                                         "statistics"):
        plan_like(own, ct_run, ("T1",))


def test_plan_like_refuses_other_channel_names(source):
    _, run = source
    with pytest.raises(ValueError, match=r"trained on channels \['T1'\].*has \['CT'\].*cannot "
                                         "match"):
        plan_like(_new_plan(), run, ("CT",))


def test_plan_like_refuses_another_channel_count(source):
    _, run = source
    with pytest.raises(ValueError, match=r"takes 1 channel\(s\).*has 2.*cannot match"):
        plan_like(_new_plan(channels=2), run, ("T1", "T2"))


def test_plan_like_refuses_another_dimensionality_and_the_cascade(source):
    _, run = source
    own2d = plan_configuration(fingerprint([(2.0, 2.0, 3.0)] * 2, [(30, 30, 20)] * 2), "2d",
                               SETTINGS, "Target")
    with pytest.raises(ValueError, match="has no 2D network"):
        plan_like(own2d, run, ("T1",))
    with pytest.raises(ValueError, match="planning.cascade: off"):
        plan_like(replace(_new_plan(), configuration="3d_lowres"), run, ("T1",))


def test_pretrained_weights_take_the_same_fold_else_the_first(source):
    src, run = source
    weights, where = pretrained_weights(run, src, fold=1)
    assert where.endswith("fold1/final.pt")
    expected = torch.load(run / "fold1" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    _, where = pretrained_weights(run, src, fold=4)
    assert where.endswith("fold0/final.pt")


def test_pretrained_weights_read_only_the_fold_they_take(source, tmp_path, monkeypatch):
    """A run folder, best.json and model.zip each give fold 1 without reading fold 0's
    weights: fold 0's checkpoint is overwritten with garbage, and the archive unpickles one
    fold."""
    import nnpipe.inference.archive as archive
    from nnpipe.inference.resolve import resolve_model

    src, run = source
    expected = torch.load(run / "fold1" / "final.pt", weights_only=True)["model"]
    archive.export_model(resolve_model([run]), tmp_path / "model.zip")
    calls: list[str] = []
    load = archive._load_tensors
    monkeypatch.setattr(archive, "_load_tensors",
                        lambda raw, where: calls.append(where) or load(raw, where))
    weights, where = pretrained_weights(tmp_path / "model.zip", src, fold=1)
    assert calls == [where] and where.endswith("fold1.pt")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)

    study = run.parent.parent
    (study / "plan.json").write_text(json.dumps(src.to_dict()))
    best = study / "best.json"
    best.write_text(json.dumps({
        "format": "nnpipe-best", "format_version": 1, "dataset_json": "raw/dataset.json",
        "best": {"name": run.name, "postprocess": None, "members": [
            {"run": run.name, "plan": "plan.json",
             "models": [f"train/{run.name}/fold{f}/final.pt" for f in (0, 1)]}]}}))
    (run / "fold0" / "final.pt").write_bytes(b"not a checkpoint")  # read it and fail
    for model in (run, best):
        weights, where = pretrained_weights(model, src, fold=1)
        assert where.endswith("fold1/final.pt"), model
        assert all(torch.equal(weights[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match="fold0"):  # the garbage is read when asked for
        pretrained_weights(run, src, fold=0)


def test_nnpipe_train_starts_from_the_pretrained_weights(tiny_study, tmp_path):
    """``nnpipe train`` with training.init_weights: the log names what was re-initialised and
    the first checkpoint is the pretrained network after its first (warmed-up) steps."""
    import subprocess
    import sys

    plan = tiny_study.plans[3]
    more = plan.with_scheme(LabelScheme.from_values({**plan.labels, 9: "extra"}))
    run = _study_model(tmp_path / "Pretrain", more, ["FLAIR", "T1w", "T1gd", "T2w"][
        :plan.num_channels], folds=(0,))
    cfg = {"training": {"epochs": 1, "steps_per_epoch": 2, "val_patches": 1,
                        "init_weights": str(run), "deep_supervision": False}}
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "nnpipe", "train", "--config-json", json.dumps(cfg),
         "--preprocessed", str(tiny_study.preprocessed[3]), "--splits", str(tiny_study.splits),
         "--fold", "0", "--precision", "fp32", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"fine-tuning from {run / 'fold0' / 'final.pt'}" in res.stderr
    assert "re-initialised output_block.conv.conv.weight: output channels (classes) differ" \
        in res.stderr
    trained = torch.load(out / "final.pt", weights_only=False)["model"]
    pretrained = torch.load(run / "fold0" / "final.pt", weights_only=True)["model"]
    # two small warmed-up steps move the carried weights only a little
    w = "input_block.conv1.conv.weight"
    assert not torch.equal(trained[w], pretrained[w])
    assert torch.allclose(trained[w], pretrained[w], atol=0.05)
