"""Fine-tuning from nnU-Net v2 models (nnpipe.v2.transfer, through nnpipe.finetune): the plan
mapped with v2's axes, the weights in nnpipe's U-Net computing v2's function, refusals
naming the field, one fold read."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nnpipe.finetune import plan_like, pretrained_weights
from nnpipe.model import build_unet
from nnpipe.planning.cascade import plan_configuration
from nnpipe.planning.plan import Plan
from nnpipe.planning.planner import PlannerSettings
from nnpipe.training.transfer import transfer_weights
from nnpipe.v2.network import build_network
from nnpipe.v2.transfer import axis_map, open_v2
from tests.planning.conftest import fingerprint
from tests.v2.conftest import (
    PLAIN_KWARGS,
    RESENC_KWARGS,
    plans_json,
    v2_aliases,
    write_checkpoint,
)

SETTINGS = PlannerSettings(max_patch_voxels_3d=16**3, max_patch_voxels_2d=16 * 16,
                           base_filters=4, max_batch_size=4)
# v2's default planner's network: two convolutions per stage on both paths
KWARGS: dict[str, Any] = {**PLAIN_KWARGS, "n_conv_per_stage": [2, 2, 2],
                          "n_conv_per_stage_decoder": [2, 2]}
# the same with one kernel size everywhere: nnpipe's decoder can then take its weights
ISO: dict[str, Any] = {**KWARGS, "kernel_sizes": [[3, 3, 3]] * 3}
LABELS = {0: "background", 1: "liver", 2: "tumour"}


def v2_model(root: Path, kwargs: dict[str, Any] = KWARGS, architecture: str = "PlainConvUNet",
             folds: tuple[int, ...] = (0, 1), channels: tuple[str, ...] = ("CT",),
             transpose: tuple[int, ...] = (2, 0, 1), classes: int = 3) -> Path:
    """A v2 trained-model folder: patch [8, 16, 24] and spacing [3, 1, 1.5] in v2's
    transposed axes, random weights with non-zero conv biases."""
    folder = root / "Dataset901_Test" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    schemes = ["CTNormalization" if c == "CT" else "ZScoreNormalization" for c in channels]
    plans = plans_json(kwargs, architecture, [8, 16, 24], [3.0, 1.0, 1.5], list(transpose),
                       schemes, [False] * len(channels))
    (folder / "plans.json").write_text(json.dumps(plans))
    labels = {"background": 0, "liver": 1, "tumour": 2, "vessel": 3}
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": dict(list(labels.items())[:classes]), "numTraining": 2,
        "file_ending": ".nii.gz"}))
    for fold in folds:
        torch.manual_seed(fold)
        net = build_network(architecture, kwargs, len(channels), classes)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        for k, v in state.items():
            if k.endswith(".bias"):
                v.uniform_(-0.5, 0.5)
        write_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", v2_aliases(state),
                         "3d_fullres")
    return folder


def own_plan(dim: int = 3, is_ct: tuple[bool, ...] = (True,)) -> Plan:
    fp = fingerprint([(2.0, 2.0, 3.0)] * 2, [(30, 30, 20)] * 2, is_ct, LABELS)
    return plan_configuration(fp, f"{dim}d", SETTINGS, "Target")


def test_plan_like_maps_v2s_axes_network_and_batch(tmp_path: Path) -> None:
    folder = v2_model(tmp_path)
    own = own_plan()
    liked = plan_like(own, folder, ("ct",))
    # v2 axis a is nnpipe's voxel axis 2 - transpose_forward[a]: (2, 0, 1) -> X, Z, Y
    assert liked.patch_size == (8, 24, 16)
    assert liked.spacing == liked.full_spacing == (3.0, 1.5, 1.0)
    assert liked.kernels == ((1, 3, 3), (3, 3, 3), (3, 3, 3))
    assert liked.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2))
    assert liked.filters == (4, 8, 8) and liked.batch_size == 2 and liked.network == "plain"
    assert liked.labels == own.labels and liked.channel_norms == own.channel_norms
    assert liked.notes[0].startswith(f"planned like nnU-Net v2 model {folder}")
    # the dataset folder and a zip give the same plan
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.rglob("*"):
            zf.write(f, f.relative_to(folder.parent.parent))
    for other in (folder.parent, archive):
        assert plan_like(own, other, ("CT",)).patch_size == liked.patch_size


@pytest.mark.parametrize("kwargs", [ISO, KWARGS], ids=["isotropic", "1x3x3-on-top"])
def test_v2_weights_in_nnpipes_unet_compute_v2s_function(tmp_path: Path,
                                                        kwargs: dict[str, Any]) -> None:
    """With the transposed convolutions' biases zero, nnpipe's U-Net holding the mapped
    weights gives v2's logits on the same (axis-permuted) patch; the conv biases it drops
    are cancelled by the instance norm, and a [1, 3, 3] decoder kernel embedded in nnpipe's
    [3, 3, 3] computes the same. With those biases, the outputs part."""
    folder = v2_model(tmp_path, kwargs, folds=(0,))
    plan = plan_like(own_plan(), folder, ("CT",))
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    with open_v2(folder, 3) as src:
        perm, _ = axis_map(src.configuration)
    v2_net = build_network("PlainConvUNet", kwargs, 1, 3).eval()
    state = torch.load(ckpt, weights_only=False)
    weights = state["network_weights"]
    x = torch.randn(1, 1, 8, 16, 24)
    x_nn = x.permute(0, 1, *[2 + p for p in perm])
    back = [perm.index(k) for k in range(3)]
    outputs = []
    for zero_transposed_bias in (True, False):
        w = {k: (torch.zeros_like(v) if zero_transposed_bias and "transpconvs" in k
                 and k.endswith("bias") else v) for k, v in weights.items()}
        torch.save({**state, "network_weights": w}, ckpt)
        mapped, where = pretrained_weights(folder, plan, fold=0)
        assert where == str(ckpt)
        net = build_unet(plan, deep_supervision=True)
        report = transfer_weights(net, mapped, where)
        assert not report.reinitialised
        # every bias without a place, and the seg layer above the heads, listed as unused
        assert all(u.endswith(".bias") for u in report.unused if "seg_layers" not in u)
        assert "encoder.stages.0.0.convs.0.conv.bias" in report.unused
        assert "decoder.transpconvs.0.bias" in report.unused
        from nnpipe.v2.network import load_weights

        load_weights(v2_net, w, "test")
        net.eval()
        with torch.no_grad():
            expected = v2_net(x)
            got = net(x_nn).permute(0, 1, *[2 + b for b in back])
        outputs.append((expected, got))
    expected, got = outputs[0]
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    expected, got = outputs[1]
    assert (got - expected).abs().max() > 1e-3  # the dropped transposed-conv biases


def test_classes_differ_the_heads_are_reinitialised(tmp_path: Path) -> None:
    folder = v2_model(tmp_path, ISO, classes=4, folds=(0,))
    plan = plan_like(own_plan(), folder, ("CT",))  # 3 classes
    mapped, where = pretrained_weights(folder, plan, fold=0)
    report = transfer_weights(build_unet(plan, deep_supervision=True), mapped, where)
    assert set(report.reinitialised) == {
        "output_block.conv.conv.weight", "output_block.conv.conv.bias",
        "deep_supervision_heads.0.conv.conv.weight", "deep_supervision_heads.0.conv.conv.bias"}
    assert "input_block.conv1.conv.weight" in report.carried


def test_only_the_fold_taken_is_read(tmp_path: Path) -> None:
    folder = v2_model(tmp_path, ISO, folds=(0, 1))
    plan = plan_like(own_plan(), folder, ("CT",))
    expected = torch.load(folder / "fold_1" / "checkpoint_final.pth", weights_only=False)
    _, where = pretrained_weights(folder, plan, fold=7)  # no fold 7: the first there
    assert where.endswith("fold_0/checkpoint_final.pth")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.rglob("*"):
            zf.write(f, f.relative_to(folder.parent.parent))
    for model in (folder, folder.parent, archive):
        mapped, where = pretrained_weights(model, plan, fold=1)
        assert where.endswith("fold_1/checkpoint_final.pth"), model
        assert torch.equal(mapped["bottleneck.norm2.weight"],
                           expected["network_weights"]["encoder.stages.2.0.convs.1.norm.weight"])
    with pytest.raises(ValueError, match="fold_0"):  # the garbage is read when asked for
        pretrained_weights(folder, plan, fold=0)


@pytest.mark.parametrize(("kwargs", "architecture", "channels", "message"), [
    (RESENC_KWARGS, "ResidualEncoderUNet", ("CT",),
     "field architecture.network_class_name is 'ResidualEncoderUNet'"),
    (PLAIN_KWARGS, "PlainConvUNet", ("CT",), r"arch_kwargs.n_conv_per_stage is \[1, 2, 2\]"),
    ({**KWARGS, "nonlin": "torch.nn.ReLU"}, "PlainConvUNet", ("CT",),
     "arch_kwargs.nonlin is 'torch.nn.ReLU'"),
    (KWARGS, "PlainConvUNet", ("MR",), r"trained on channels \['MR'\].*has \['CT'\]"),
    (KWARGS, "PlainConvUNet", ("CT", "MR"), r"takes 2 channel\(s\)"),
])
def test_refused_naming_the_field(tmp_path: Path, kwargs: dict[str, Any], architecture: str,
                                  channels: tuple[str, ...], message: str) -> None:
    folder = v2_model(tmp_path, kwargs, architecture, folds=(0,), channels=channels)
    with pytest.raises(ValueError, match=message):
        plan_like(own_plan(), folder, ("CT",))
    if len(channels) == 1 and channels != ("MR",):
        with pytest.raises(ValueError, match=message):
            pretrained_weights(folder, own_plan(), fold=0)


def test_a_decoder_kernel_larger_than_the_deeper_levels_refused(tmp_path: Path) -> None:
    kwargs = {**KWARGS, "kernel_sizes": [[3, 3, 3], [1, 3, 3], [1, 3, 3]]}
    folder = v2_model(tmp_path, kwargs, folds=(0,))
    plan = plan_like(own_plan(), folder, ("CT",))  # planning alone maps
    assert plan.kernels[0] == (3, 3, 3)
    with pytest.raises(ValueError, match=r"kernel_sizes\[0\] \[3, 3, 3\] is larger than "
                                         r"kernel_sizes\[1\] \[1, 3, 3\]"):
        pretrained_weights(folder, plan, fold=0)


def test_ct_on_one_side_and_another_dimensionality_refused(tmp_path: Path) -> None:
    folder = v2_model(tmp_path, folds=(0,), channels=("T1",))
    with pytest.raises(ValueError, match=r"normalization_schemes\[0\] gives 'zscore'.*'ct'"):
        plan_like(own_plan(is_ct=(True,)), folder, ("T1",))
    liked = plan_like(own_plan(is_ct=(False,)), folder, ("t1",))
    assert [n.scheme for n in liked.channel_norms] == ["zscore"]  # the model's (no mask)
    with pytest.raises(ValueError, match="is a 3D configuration"):
        plan_like(own_plan(dim=2, is_ct=(False,)), folder, ("T1",))
    assert np.isclose(liked.full_spacing[0], 3.0)


def test_nnpipe_train_starts_from_a_v2_model(tiny_study, tmp_path: Path) -> None:
    """``nnpipe train`` with training.init_weights: <v2 folder> whose network is the tiny
    study's plan (v2 planned it alike): the log names the re-initialised heads (one class
    more in the v2 model) and the biases without a place; the first checkpoint is the v2
    network after two small warmed-up steps."""
    import subprocess
    import sys

    plan = tiny_study.plans[3]
    kwargs = {**KWARGS, "features_per_stage": list(plan.filters),
              "kernel_sizes": [list(k) for k in plan.kernels],
              "strides": [list(s) for s in plan.strides]}
    folder = tmp_path / "v2" / "Dataset902_Brain" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    plans = plans_json(kwargs, "PlainConvUNet", list(plan.patch_size), list(plan.spacing),
                       [2, 1, 0], ["ZScoreNormalization"] * 4, [True] * 4)  # v2 axis a = X..Z
    (folder / "plans.json").write_text(json.dumps(plans))
    names = ["FLAIR", "T1w", "t1gd", "T2w"]
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": dict(enumerate(names)), "numTraining": 2, "file_ending": ".nii.gz",
        "labels": {"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3,
                   "extra": 4}}))
    torch.manual_seed(0)
    state = build_network("PlainConvUNet", kwargs, 4, 5).state_dict()
    write_checkpoint(folder / "fold_0" / "checkpoint_final.pth", v2_aliases(dict(state)),
                     "3d_fullres")
    liked = plan_like(plan, folder, tuple(names))
    for key in ("spacing", "patch_size", "kernels", "strides", "filters", "channel_norms"):
        assert getattr(liked, key) == getattr(plan, key), key

    cfg = {"training": {"epochs": 1, "steps_per_epoch": 2, "val_patches": 1,
                        "init_weights": str(folder.parent)}}
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "nnpipe", "train", "--config-json", json.dumps(cfg),
         "--preprocessed", str(tiny_study.preprocessed[3]), "--splits", str(tiny_study.splits),
         "--fold", "0", "--precision", "fp32", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    assert f"fine-tuning from nnU-Net v2 weights {ckpt}" in res.stderr
    for head in ("output_block.conv.conv.weight", "deep_supervision_heads.0.conv.conv.weight"):
        assert f"re-initialised {head}: output channels (classes) differ" in res.stderr
    assert "pretrained tensors not used: decoder.stages.0.convs.0.conv.bias" in res.stderr
    trained = torch.load(out / "final.pt", weights_only=False)["model"]
    v2 = state["encoder.stages.0.0.convs.0.conv.weight"]
    w = "input_block.conv1.conv.weight"
    assert not torch.equal(trained[w], v2)
    assert torch.allclose(trained[w], v2, atol=0.05)


def test_a_2d_configuration_slices_along_v2s_first_axis(tmp_path: Path) -> None:
    """v2's 2d configuration slices along its first transposed axis: with the identity
    transpose that is the file's last axis (Z); the in-plane patch and spacing come in
    nnpipe's (X, Y) order, the slice axis keeps the dataset's own target spacing."""
    kwargs = {**ISO, "conv_op": "torch.nn.modules.conv.Conv2d",
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
              "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]]}
    folder = tmp_path / "Dataset901_Test" / "nnUNetTrainer__nnUNetPlans__2d"
    folder.mkdir(parents=True)
    plans = plans_json(kwargs, "PlainConvUNet", [16, 24], [1.0, 1.5], [0, 1, 2],
                       ["CTNormalization"], [False])
    plans["configurations"] = {"2d": plans["configurations"]["3d_fullres"]}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    torch.manual_seed(0)
    state = build_network("PlainConvUNet", kwargs, 1, 3).state_dict()
    write_checkpoint(folder / "fold_0" / "checkpoint_final.pth", v2_aliases(dict(state)), "2d")
    own = own_plan(dim=2)
    liked = plan_like(own, folder.parent, ("CT",))  # the dataset folder: its 2d model
    assert liked.slice_axis == 2 and liked.patch_size == (24, 16)
    assert liked.spacing == (1.5, 1.0)
    assert liked.full_spacing == (1.5, 1.0, own.full_spacing[2])
    mapped, where = pretrained_weights(folder.parent, liked, fold=0)
    report = transfer_weights(build_unet(liked, deep_supervision=True), mapped, where)
    assert not report.reinitialised and len(report.carried) > 20
    with pytest.raises(ValueError, match="is a 2D configuration"):
        plan_like(own_plan(), folder, ("CT",))
