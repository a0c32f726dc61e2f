"""End to end: ``nnpipe predict`` on nnU-Net v2 model folders built by the test."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnpipe.cli import main
from nnpipe.inference.sliding_window import tile_starts
from nnpipe.v2.model import is_v2_model, load_v2_model
from nnpipe.v2.network import build_network, load_weights
from nnpipe.v2.predict import predict_v2_folder
from tests.v2.conftest import (
    PLAIN_KWARGS,
    V2Folder,
    plans_json,
    v2_aliases,
    write_checkpoint,
    write_image,
)


def _predict(args: list[str]) -> None:
    assert main(["predict", "--device", "cpu", *args]) == 0


def test_predict_v2_folder_writes_v2_geometry_and_crop(v2_folder: V2Folder,
                                                        tmp_path: Path) -> None:
    model = v2_folder(bias=[0.0, 5.0, 0.0], transpose=(2, 0, 1))
    image = np.zeros((10, 20, 18), np.float32)  # (z, y, x) as SimpleITK reads it
    rng = np.random.default_rng(0)
    image[2:9, 3:17, 1:15] = rng.uniform(-100, 300, (7, 14, 14))
    write_image(tmp_path / "in" / "case_a_0000.nii.gz", image)
    _predict(["--model", str(model), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    written = sitk.ReadImage(str(tmp_path / "out" / "case_a.nii.gz"))
    seg = sitk.GetArrayFromImage(written)
    assert seg.dtype == np.uint8 and seg.shape == image.shape
    source = sitk.ReadImage(str(tmp_path / "in" / "case_a_0000.nii.gz"))
    assert written.GetSpacing() == pytest.approx(source.GetSpacing())
    assert written.GetOrigin() == pytest.approx(source.GetOrigin())
    assert written.GetDirection() == pytest.approx(source.GetDirection())
    expected = np.zeros(image.shape, np.uint8)
    expected[2:9, 3:17, 1:15] = 1  # the crop box predicts label 1; outside it background
    np.testing.assert_array_equal(seg, expected)


@pytest.mark.parametrize("tta", [False, True])
def test_single_tile_prediction_is_the_networks_argmax(v2_folder: V2Folder, tmp_path: Path,
                                                       tta: bool) -> None:
    """One tile, no crop, no resampling: v2's result is argmax of the fold-averaged
    (and flip-averaged) logits of the CT-normalised image, computed here directly."""
    folder = v2_folder(folds=(0, 1))
    rng = np.random.default_rng(1)
    image = rng.uniform(-150, 300, (8, 16, 16)).astype(np.float32)  # z spacing 2 = target
    write_image(tmp_path / "in" / "c_0000.nii.gz", image, spacing=(1.0, 1.0, 2.0))
    model = load_v2_model(folder)
    predict_v2_folder(model, tmp_path / "in", tmp_path / "out", device=torch.device("cpu"),
                      tta=tta)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "c.nii.gz")))
    x = torch.from_numpy(((np.clip(image, -80, 200) - 40) / 50).astype(np.float32))[None, None]
    total = torch.zeros((1, 3, 8, 16, 16))
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if tta else [()]
    for fold in (0, 1):
        net = build_network("PlainConvUNet", PLAIN_KWARGS, 1, 3).eval()
        ckpt = torch.load(folder / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)
        load_weights(net, ckpt["network_weights"], "test")
        with torch.no_grad():
            for axes in flips:
                total += net(x.flip(axes)).flip(axes) if axes else net(x)
    expected = total[0].argmax(0).numpy()
    assert len(np.unique(expected)) > 1  # a test that can fail: the network is not constant
    agree = (seg == expected).mean()
    assert agree > 0.999, agree


def test_zip_and_dataset_folder_and_folds(v2_folder: V2Folder, tmp_path: Path) -> None:
    folder = v2_folder(bias=[0.0, 0.0, 5.0], folds=(0, 2))
    image = np.full((6, 12, 12), 50.0, np.float32)
    write_image(tmp_path / "in" / "k_0000.nii.gz", image)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(folder.parent.parent))
    for model, extra in ((archive, []), (folder.parent, ["--configuration", "3d_fullres"]),
                         (folder, ["--folds", "2"])):
        out = tmp_path / f"out_{len(extra)}_{model.suffix}"
        _predict(["--model", str(model), *extra, "-i", str(tmp_path / "in"), "-o", str(out)])
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "k.nii.gz")))
        assert (seg == 2).all()
    assert [f.fold for f in load_v2_model(folder).folds] == ["0", "2"]
    with pytest.raises(FileNotFoundError, match="has no fold 1"):
        load_v2_model(folder, folds=[1])
    with pytest.raises(FileNotFoundError, match="checkpoint_best.pth"):
        load_v2_model(folder, checkpoint="best")
    with pytest.raises(ValueError, match="no configuration '2d'"):
        load_v2_model(folder.parent, configuration="2d")


def test_resenc_and_old_plans_format(v2_folder: V2Folder, tmp_path: Path) -> None:
    folder = v2_folder(architecture="ResidualEncoderUNet", folds=(0,))
    model = load_v2_model(folder)
    keys = model.folds[0].network.state_dict()
    # the stride-2 block keeping 8 channels has a pool-only skip: no parameters of its own
    assert not any(k.startswith("encoder.stages.2.blocks.0.skip") for k in keys)
    assert "encoder.stages.1.blocks.0.skip.1.conv.weight" in keys  # pool, then projection
    assert "encoder.stem.convs.0.conv.weight" in keys

    plain = v2_folder(folds=(0,))
    plans = json.loads((plain / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    kw = config.pop("architecture")["arch_kwargs"]
    config.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=4,
                  unet_max_num_features=8, n_conv_per_stage_encoder=kw["n_conv_per_stage"],
                  n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
                  conv_kernel_sizes=kw["kernel_sizes"], pool_op_kernel_sizes=kw["strides"],
                  num_pool_per_axis=[1, 2, 2])
    (plain / "plans.json").write_text(json.dumps(plans))
    old = load_v2_model(plain)
    assert old.configuration.arch_kwargs["features_per_stage"] == [4, 8, 8]


def test_refuses_unknown_architecture_and_scheme(v2_folder: V2Folder) -> None:
    folder = v2_folder(folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "my_package.MyUNet"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError, match="plans.json.*network_class_name is 'my_package.MyUNet'"):
        load_v2_model(folder)
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["MyNormalization"]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError, match=r"normalization_schemes\[0\] is 'MyNormalization'"):
        load_v2_model(folder)


def test_tile_grid_used_for_a_long_axis() -> None:
    # the grid the predictor uses along a 109-voxel axis with patch 64 is v2's
    assert tile_starts(109, 64, 0.5) == [0, 22, 45]


KWARGS_2D = {**PLAIN_KWARGS, "conv_op": "torch.nn.modules.conv.Conv2d",
             "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
             "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]]}


def _folder_2d(root: Path, labels: dict, bias: list[float],
               regions_class_order: list[int] | None = None) -> Path:
    """A 2D configuration (transpose (0, 2, 1): slices along the file's z) whose output
    layer predicts ``bias`` everywhere."""
    folder = root / "Dataset902_R" / "nnUNetTrainer__nnUNetPlans__2d"
    folder.mkdir(parents=True)
    plans = plans_json(KWARGS_2D, "PlainConvUNet", [16, 16], [1.0, 1.0], [0, 2, 1],
                       ["CTNormalization"], [False])
    plans["configurations"] = {"2d": plans["configurations"]["3d_fullres"]}
    (folder / "plans.json").write_text(json.dumps(plans))
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "file_ending": ".nii.gz"}
    if regions_class_order:
        dataset["regions_class_order"] = regions_class_order
    (folder / "dataset.json").write_text(json.dumps(dataset))
    net = build_network("PlainConvUNet", KWARGS_2D, 1, len(bias))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["decoder.seg_layers.1.weight"].zero_()
    state["decoder.seg_layers.1.bias"].copy_(torch.tensor(bias))
    write_checkpoint(folder / "fold_0" / "checkpoint_final.pth", v2_aliases(state), "2d",
                     mirror=(0, 1))
    return folder


@pytest.mark.parametrize(("bias", "inside"), [([5.0, -5.0], 1), ([5.0, 5.0], 2),
                                              ([-5.0, 5.0], 2)])
def test_2d_regions_written_in_regions_class_order(tmp_path: Path, bias: list[float],
                                                   inside: int) -> None:
    folder = _folder_2d(tmp_path, {"background": 0, "whole": [1, 2], "core": 2}, bias,
                        regions_class_order=[1, 2])
    model = load_v2_model(folder)
    assert model.configuration.semantics.regions == ((1, 2), (2,))
    image = np.zeros((5, 20, 17), np.float32)
    image[1:4, 2:19, 3:15] = 100.0
    write_image(tmp_path / "in" / "r_0000.nii.gz", image)
    predict_v2_folder(model, tmp_path / "in", tmp_path / "out", device=torch.device("cpu"),
                      tta=True)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "r.nii.gz")))
    expected = np.zeros(image.shape, np.uint8)
    expected[1:4, 2:19, 3:15] = inside
    np.testing.assert_array_equal(seg, expected)


def test_ignore_label_is_never_an_output(tmp_path: Path) -> None:
    folder = _folder_2d(tmp_path, {"background": 0, "organ": 1, "ignore": 2}, [0.0, 5.0])
    model = load_v2_model(folder)
    sem = model.configuration.semantics
    assert sem.labels == (0, 1) and sem.ignore_label == 2 and sem.num_outputs == 2
    write_image(tmp_path / "in" / "i_0000.nii.gz", np.full((3, 16, 16), 7.0, np.float32))
    _predict(["--model", str(folder), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")])
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "i.nii.gz")))
    assert (seg == 1).all()


def test_flags_of_nnpipe_models_refused_for_v2(v2_folder: V2Folder, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    folder = v2_folder(folds=(0,))
    assert main(["predict", "--model", str(folder), "-i", str(tmp_path), "-o",
                 str(tmp_path / "o"), "--postprocess", str(tmp_path / "p.json")]) != 0
    assert "--postprocess: not available for nnU-Net v2" in capsys.readouterr().err


def test_save_probabilities_of_a_v2_model(v2_folder: V2Folder, tmp_path: Path) -> None:
    """``--save-probabilities`` with a v2 model: ``<case>.npz`` as nnpipe writes its own
    (float16 ``(K, i, j, k)`` in the file's voxel order, its affine, names), holding v2's
    numbers: softmax of the restored logits, background 1 outside the crop box; the labels
    are their argmax."""
    model = v2_folder(bias=[0.0, 5.0, 0.0], transpose=(2, 0, 1))
    image = np.zeros((10, 20, 18), np.float32)  # (z, y, x) as SimpleITK reads it
    rng = np.random.default_rng(0)
    image[2:9, 3:17, 1:15] = rng.uniform(-100, 300, (7, 14, 14))
    write_image(tmp_path / "in" / "case_a_0000.nii.gz", image)
    _predict(["--model", str(model), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
              "--save-probabilities"])
    nifti = nib.load(tmp_path / "out" / "case_a.nii.gz")
    labels = np.asarray(nifti.dataobj)  # (i, j, k): the file's voxel order
    with np.load(tmp_path / "out" / "case_a.npz") as z:
        probs, affine, names = z["probabilities"], z["affine"], list(z["names"])
    assert probs.dtype == np.float16 and probs.shape == (3, *labels.shape) == (3, 18, 20, 10)
    assert names == ["0", "1", "2"]
    np.testing.assert_allclose(affine, nifti.affine, atol=1e-5)
    box = np.zeros(labels.shape, bool)
    box[1:15, 3:17, 2:9] = True  # the crop box, in (i, j, k)
    softmax = np.exp([0.0, 5.0, 0.0]) / np.exp([0.0, 5.0, 0.0]).sum()
    np.testing.assert_allclose(probs[:, box].astype(np.float32).T, np.tile(softmax, (box.sum(), 1)),
                               atol=1e-3)
    assert (probs[0][~box] == 1).all() and (probs[1:, ~box] == 0).all()
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_export_refuses_a_v2_model_and_nnpipe_zip_is_not_v2(v2_folder: V2Folder,
                                                            tmp_path: Path,
                                                            capsys: pytest.CaptureFixture
                                                            ) -> None:
    folder = v2_folder(folds=(0,))
    assert main(["export", "--model", str(folder), "--out", str(tmp_path / "m.zip")]) != 0
    assert "is an nnU-Net v2 model" in capsys.readouterr().err
    archive = tmp_path / "nnpipe.zip"  # nnpipe's own archive layout: plan.json, no fold_N
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("members/3d/plan.json", "{}")
        zf.writestr("members/3d/fold0.safetensors", "")
    assert not is_v2_model(archive) and is_v2_model(folder) and is_v2_model(folder.parent)


@pytest.mark.parametrize("reader", ["NibabelIO", "NibabelIOWithReorient"])
def test_nibabel_readers_write_back_in_the_inputs_voxel_order(v2_folder: V2Folder,
                                                              tmp_path: Path,
                                                              reader: str) -> None:
    folder = v2_folder(bias=[0.0, 5.0, 0.0], folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    plans["image_reader_writer"] = reader
    (folder / "plans.json").write_text(json.dumps(plans))
    affine = np.array([[0, 0, -2.0, 10], [-0.8, 0, 0, 5], [0, 0.9, 0, -3], [0, 0, 0, 1]])
    image = np.zeros((18, 20, 9), np.float32)  # nibabel's (i, j, k)
    image[2:15, 3:17, 1:8] = 100.0
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "in" / "n_0000.nii.gz"))
    _predict(["--model", str(folder), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")])
    out = nib.load(str(tmp_path / "o" / "n.nii.gz"))
    np.testing.assert_allclose(out.affine, affine)
    assert out.get_data_dtype() == np.uint8
    expected = np.zeros(image.shape, np.uint8)
    expected[2:15, 3:17, 1:8] = 1
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)


def test_fold_all_only_when_asked(v2_folder: V2Folder) -> None:
    folder = v2_folder(folds=(0,))
    (folder / "fold_0").rename(folder / "fold_all")
    with pytest.raises(FileNotFoundError, match="no fold_N/checkpoint_final.pth"):
        load_v2_model(folder)
    assert [f.fold for f in load_v2_model(folder, folds=["all"]).folds] == ["all"]


def test_preprocessing_on_a_torch_device_is_the_hosts(v2_folder: V2Folder, tmp_path: Path
                                                      ) -> None:
    """A GPU preprocesses a v2 case on the device (``predict_v2_image``): the same case
    transform there gives the host's numbers and crop (checked with the CPU as the device)."""
    from nnpipe.v2.imageio import read_v2_image
    from nnpipe.v2.predict import preprocess

    model = load_v2_model(v2_folder(channels=2, transpose=(2, 0, 1)))
    sem = model.configuration.semantics
    rng = np.random.default_rng(1)
    for c in range(2):
        image = np.zeros((10, 20, 18), np.float32)
        image[2:9, 3:17, 1:15] = rng.uniform(-100, 300, (7, 14, 14))
        write_image(tmp_path / f"case_{c:04d}.nii.gz", image)
    case = read_v2_image(sorted(tmp_path.glob("case_*.nii.gz")), sem.reader, "case")
    host = preprocess(case, sem)
    device = preprocess(case, sem, torch.device("cpu"))
    assert device.bbox == host.bbox and device.cropped_shape == host.cropped_shape
    np.testing.assert_allclose(device.data, host.data, rtol=1e-5, atol=1e-5)
