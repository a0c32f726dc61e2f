from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from benchmarks.predict_compare import split_channels
from nnpipe.cli import main
from nnpipe.config import InferenceSettings
from nnpipe.errors import DataError
from nnpipe.inference import ensemble as E
from nnpipe.inference.predict import (
    PredictionFailed,
    find_cases,
    predict_dataset,
    predict_folder,
)

SETTINGS = InferenceSettings(overlap=0.5, blend="gaussian", tta=False, batch_size=2,
                             save_probabilities=False)
WITH_PROBS = InferenceSettings(overlap=0.5, blend="gaussian", tta=False, batch_size=2,
                               save_probabilities=True)


def msd_folder(tiny_study, dest: Path, n: int = 2) -> Path:
    """``n`` training images of the tiny study, as an MSD-layout input folder (4D files)."""
    dest.mkdir(parents=True)
    for path in sorted((tiny_study.raw / "imagesTr").glob("*.nii.gz"))[:n]:
        shutil.copy(path, dest / path.name)
    return dest




def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- folder input, geometry


def test_folder_prediction_keeps_source_geometry_and_codes(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "in")
    # give one image distinct qform/sform codes (aligned = 2), which the labels must keep
    first = sorted(src.glob("*.nii.gz"))[0]
    img = nib.load(first)
    img.set_qform(img.affine, code=2)
    img.set_sform(img.affine, code=2)
    nib.save(img, first)
    out = tmp_path / "out"
    written = predict_folder([models["3d"]], src, out, SETTINGS)
    assert [p.name for p in written] == listing(src) == listing(out)
    for path in written:
        pred, ref = nib.load(path), nib.load(src / path.name)
        assert pred.shape == ref.shape[:3]
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-6)
        assert pred.get_data_dtype() == np.uint8
        assert int(pred.header["intent_code"]) == 1002  # NIFTI_INTENT_LABEL
        labels = np.asarray(pred.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        want = 2 if path == out / first.name else 1
        assert int(pred.header["qform_code"]) == int(ref.header["qform_code"]) == want
        assert int(pred.header["sform_code"]) == int(ref.header["sform_code"]) == want


def test_per_channel_layout_gives_the_same_labels(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "msd")
    per_channel = tmp_path / "v2"
    split_channels(src, per_channel)
    cases, errors = find_cases(per_channel, layout="nnunetv2", num_channels=4)
    assert [c.case_id for c in cases] == [n[: -len(".nii.gz")] for n in listing(src)]
    assert errors == [] and all(len(c.images) == 4 for c in cases)
    a = predict_folder([models["3d"]], src, tmp_path / "a", SETTINGS)
    b = predict_folder([models["3d"]], per_channel, tmp_path / "b", SETTINGS, layout="nnunetv2")
    for pa, pb in zip(a, b, strict=True):
        assert pa.name == pb.name
        np.testing.assert_array_equal(np.asarray(nib.load(pa).dataobj),
                                      np.asarray(nib.load(pb).dataobj))


def test_probability_maps_are_float16_and_match_the_labels(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    out = tmp_path / "out"
    (label_path,) = predict_folder([models["3d"]], src, out, WITH_PROBS)
    with np.load(out / label_path.name.replace(".nii.gz", ".npz")) as z:
        probs, affine, names = z["probabilities"], z["affine"], list(z["names"])
    labels = np.asarray(nib.load(label_path).dataobj)
    assert probs.dtype == np.float16 and probs.shape == (4, *labels.shape)
    assert names == ["background", "edema", "non-enhancing tumor", "enhancing tumour"]
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    np.testing.assert_allclose(affine, nib.load(label_path).affine, atol=1e-6)
    # argmax of the stored maps gives the labels wherever the top class is not a near tie
    top2 = np.sort(probs.astype(np.float32), axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 2e-3
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(probs.argmax(0)[clear], labels[clear])


def test_2d_model_predicts_slice_by_slice_in_source_geometry(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    (path,) = predict_folder([models["2d"]], src, tmp_path / "out", SETTINGS)
    ref = nib.load(src / path.name)
    assert nib.load(path).shape == ref.shape[:3]


# ---------------------------------------------------------------- bad input, --continue


def test_bad_cases_are_named_and_the_others_still_predicted(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "in", n=2)
    good = listing(src)
    img = nib.load(src / good[0])
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(data[..., :3], img.affine), src / "THREE_CHANNELS.nii.gz")
    singular = img.affine.copy()
    singular[:3, 2] = 0.0  # a zero voxel axis: the affine has no inverse
    bad = nib.Nifti1Image(data, None)
    bad.set_sform(singular, code=1)  # a qform cannot even hold it
    nib.save(bad, src / "SINGULAR.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(PredictionFailed) as info:
        predict_folder([models["3d"]], src, out, SETTINGS)
    message = str(info.value)
    assert "2 case(s) failed" in message
    assert "'THREE_CHANNELS'" in message and "has 3 channel(s) but dataset.json lists 4" in message
    assert "'SINGULAR'" in message and "not invertible" in message
    assert listing(out) == good  # the good cases, and nothing half-written


def test_incomplete_channel_files_are_named(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    per_channel = tmp_path / "v2"
    split_channels(src, per_channel)
    for extra in sorted(per_channel.iterdir())[1:]:  # keep _0000 only
        extra.unlink()
    with pytest.raises(PredictionFailed, match=r"has channel files \[0\]; expected _0000 to "
                                               r"_0003"):
        predict_folder([models["3d"]], per_channel, tmp_path / "out", SETTINGS,
                       layout="nnunetv2")


def test_any_exception_in_one_case_is_named_and_the_others_predicted(tiny_study, models,
                                                                     tmp_path, monkeypatch):
    from nnpipe.inference import predict as P

    src = msd_folder(tiny_study, tmp_path / "in", n=2)
    first = listing(src)[0].removesuffix(".nii.gz")
    real = P.predict_image

    def flaky(models_, image, affine, settings, case_id, **kw):
        if case_id == first:
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(models_, image, affine, settings, case_id, **kw)

    monkeypatch.setattr(P, "predict_image", flaky)
    with pytest.raises(PredictionFailed, match=rf"(?s)1 case\(s\) failed.*case '{first}', "
                                               r"file '.*': RuntimeError: CUDA error"):
        predict_folder([models["3d"]], src, tmp_path / "out", SETTINGS)
    assert listing(tmp_path / "out") == listing(src)[1:]


def test_a_case_over_the_memory_limit_is_refused_before_reading(tiny_study, models, tmp_path,
                                                                monkeypatch):
    import dataclasses

    from nnpipe.inference import memory as M
    from nnpipe.inference import predict as P

    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    small = listing(src)[0]
    img = nib.load(src / small)  # the same case on a 2x finer grid: 8x the voxels
    fine = img.affine.copy()
    fine[:3, :3] /= 2
    data = np.asarray(img.dataobj)
    for axis in range(3):
        data = np.repeat(data, 2, axis=axis)
    nib.save(nib.Nifti1Image(data, fine), src / "FINE.nii.gz")
    plan = models_plan(models)
    need = {n: M.estimate_peak_bytes(P.Case(n, (src / n,)), plan, 4) / M.GiB
            for n in listing(src)}
    assert need["FINE.nii.gz"] > 4 * need[small]
    # a cascade stage also holds the previous stage's input: its labels as an int64 lookup
    # index (8n), resampled to uint8 (m), K - 1 = 3 one-hot float32 channels (4 * 3m) and the
    # concatenated network input of the image's C channels and those 3 (4 * (C + 3)m)
    cascade = dataclasses.replace(plan, previous_stage="3d_lowres")
    case = P.Case(small, (src / small,))
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    target = M.case_target_spacing(plan, spacing)
    n = int(np.prod(img.shape[:3]))
    m = int(np.prod([max(1, round(o / t * s))
                     for s, o, t in zip(img.shape[:3], spacing, target, strict=True)]))
    extra = M.estimate_peak_bytes(case, cascade, 4) - M.estimate_peak_bytes(case, plan, 4)
    c = img.shape[3] if img.ndim == 4 else 1
    assert extra == 8 * n + m + 4 * 3 * m + 4 * (c + 3) * m
    limit = dataclasses.replace(SETTINGS, memory_gb=(need["FINE.nii.gz"] + need[small]) / 2)
    monkeypatch.setattr(P, "read_case_image", _refuse_to_read(P.read_case_image, "FINE.nii.gz"))
    with pytest.raises(PredictionFailed, match=r"case 'FINE', file '.*FINE.nii.gz': needs about "
                                               r".* GiB .* over the .* GiB allowed "
                                               r"\(inference.memory_gb\); not read"):
        P.predict_folder([models["3d"]], src, tmp_path / "out", limit)
    assert listing(tmp_path / "out") == [small]


def models_plan(models):
    return E.load_model(models["3d"], torch.device("cpu")).plan


def _refuse_to_read(real, name):
    def read(case, *args, **kw):
        assert case.images[0].name != name, "read the voxels of a case over the memory limit"
        return real(case, *args, **kw)

    return read


def test_continue_skips_cases_already_written(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "in", n=2)
    out = tmp_path / "out"
    first, second = predict_folder([models["3d"]], src, out, SETTINGS)
    second.unlink()
    before = first.stat().st_mtime_ns
    predict_folder([models["3d"]], src, out, SETTINGS, skip_existing=True)
    assert first.stat().st_mtime_ns == before  # skipped
    assert second.is_file()  # redone


def test_cli_predict_folder_and_error_exit(tiny_study, models, tmp_path, capsys):
    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(models["3d"]), "--input", str(src),
                 "--output", str(out)]) == 0
    assert listing(out) == listing(src)
    assert "predict [" in capsys.readouterr().err  # the progress line
    assert main(["predict", "--model", str(models["3d"]), "--input", str(tmp_path / "nope"),
                 "--output", str(out)]) == 1
    assert "input folder does not exist" in capsys.readouterr().err
    assert main(["predict", "--model", str(models["3d"]), "--output", str(out)]) == 2


def test_empty_input_is_an_error_unless_allowed(models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no images \(\.nii\.gz, \.nii, \.nrrd"):
        predict_folder([models["3d"]], tmp_path / "empty", tmp_path / "o", SETTINGS)
    assert predict_folder([models["3d"]], tmp_path / "missing", tmp_path / "o", SETTINGS,
                          allow_empty=True) == []


# ---------------------------------------------------------------- plans and ensembles


def test_model_of_a_different_plan_is_refused(tiny_study, models, tmp_path):
    plan3 = tiny_study.preprocessed[3].parent / "plan3.json"
    tiny_study.plans[3].save(plan3)
    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    with pytest.raises(ValueError, match=r"2d-fold0.*different plan.*plan3\.json.*dim"):
        predict_folder([models["2d"]], src, tmp_path / "out", SETTINGS, plan=plan3)
    with pytest.raises(ValueError, match=r"2d-fold0.*different plan than model"):
        predict_folder([models["3d"], models["2d"]], src, tmp_path / "out", SETTINGS)
    assert not (tmp_path / "out").exists()


def test_dataset_mode_refuses_a_model_of_another_dataset(tiny_study, models, tmp_path):
    import json

    other = tmp_path / "raw"
    shutil.copytree(tiny_study.raw, other)
    meta = json.loads((other / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "tumour"}
    (other / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit dataset"):
        predict_dataset([models["3d"]], other, ["BRATS_001"], tmp_path / "out", SETTINGS)


def test_fold_models_average_logits_then_one_softmax(tiny_study, models, tmp_path):
    """Fold models of one plan: the logits are averaged (flips, tiles, folds) and resampled
    back, one softmax at the end (issue 19 rows 4, 11): the ensemble's probabilities are
    softmax(mean(log p)) of the single models' (a constant per voxel drops out), not the
    mean of their probabilities."""
    from nnpipe.datasets.layout import load_dataset, read_image
    from nnpipe.inference.predict import predict_image

    ds = load_dataset(tiny_study.raw)
    ci = read_image(ds, ds.training[0])
    probs = {}
    for name, ms in {"a": ["3d"], "b": ["3d-b"], "ab": ["3d", "3d-b"]}.items():
        lms = E.load_models([models[m] for m in ms], torch.device("cpu"))
        result = predict_image(lms, ci.image, ci.affine, SETTINGS, "c", with_probabilities=True)
        probs[name] = result.probabilities
    assert not np.allclose(probs["a"], probs["b"], atol=1e-2)  # the two models differ
    with np.errstate(divide="ignore"):  # outside the crop box: log 0 = -inf, softmax 0
        mean_log = (np.log(probs["a"]) + np.log(probs["b"])) / 2
    expected = torch.softmax(torch.from_numpy(mean_log), 0).numpy()
    np.testing.assert_allclose(probs["ab"], expected, atol=1e-5)
    assert np.abs(probs["ab"] - (probs["a"] + probs["b"]) / 2).max() > 1e-3


def test_saved_probabilities_average_the_models(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    probs = {}
    for name, ms in {"a": [models["3d"]], "ab": [models["3d"], models["3d-b"]]}.items():
        (path,) = predict_folder(ms, src, tmp_path / name, WITH_PROBS)
        with np.load(path.with_name(path.name.replace(".nii.gz", ".npz"))) as z:
            probs[name] = z["probabilities"].astype(np.float32)
        labels = np.asarray(nib.load(path).dataobj)
        np.testing.assert_allclose(probs[name].sum(0), 1.0, atol=2e-3)
        clear = np.diff(np.sort(probs[name], 0)[-2:], axis=0)[0] > 2e-3
        np.testing.assert_array_equal(labels[clear], probs[name].argmax(0)[clear])
    assert not np.allclose(probs["a"], probs["ab"], atol=1e-2)


def test_region_model_exports_labels_and_region_maps(tiny_study, models, tmp_path):
    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    (path,) = predict_folder([models["3d-regions"]], src, tmp_path / "out", WITH_PROBS)
    labels = np.asarray(nib.load(path).dataobj)
    with np.load(path.with_name(path.name.replace(".nii.gz", ".npz"))) as z:
        probs, names = z["probabilities"].astype(np.float32), list(z["names"])
    assert names == ["WT", "TC", "ET"] and probs.shape == (3, *labels.shape)
    # labels follow from the thresholded regions, innermost last
    expected = np.zeros(labels.shape, np.uint8)
    for value, region in enumerate(probs, start=1):
        expected[region > 0.5] = value
    near = np.abs(probs - 0.5).min(0) < 2e-3  # float16 storage may flip exact ties
    np.testing.assert_array_equal(labels[~near], expected[~near])


def test_device_out_of_memory_falls_back_to_host_stitching(tiny_study, models, monkeypatch):
    lm = E.load_model(models["3d"], torch.device("cpu"))
    data = np.load(tiny_study.preprocessed[3] / "BRATS_001.npy")
    calls = []
    real = E._predict

    def fake_predict(lm_, data_, settings_, acc):
        calls.append(acc.type)
        if acc.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(lm_, data_, settings_, acc)

    monkeypatch.setattr(E, "_accumulation_device", lambda *_: torch.device("meta"))
    monkeypatch.setattr(E, "_predict", fake_predict)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    logits = E.predict_logits(lm, data, SETTINGS)
    assert calls == ["meta", "cpu"]
    assert logits.shape == (4, *data.shape[1:])
    np.testing.assert_array_equal(logits, real(lm, data, SETTINGS, torch.device("cpu")))


def test_model_folder_without_checkpoint_is_named(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"run.*holds no final\.pt or last\.pt"):
        E.checkpoint_path(tmp_path / "run")


def test_bf16_forward_passes_stay_close_to_fp32(tiny_study, models):
    from dataclasses import replace

    lm = E.load_model(models["3d"], torch.device("cpu"))
    data = np.load(tiny_study.preprocessed[3] / "BRATS_001.npy")
    fp32 = torch.softmax(torch.from_numpy(E.predict_logits(lm, data, SETTINGS)), 0).numpy()
    bf16 = E.predict_logits(lm, data, replace(SETTINGS, precision="bf16"))
    assert bf16.dtype == np.float32  # sums stay in float32
    bf16 = torch.softmax(torch.from_numpy(bf16), 0).numpy()
    assert np.abs(bf16 - fp32).max() < 0.05
    assert (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.97


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("batch", [1, 2])  # batch 1: the tiles PyTorch would not give oneDNN
def test_cpu_fast_path_computes_the_same_function(tiny_study, dim, batch):
    from nnpipe.model import build_unet

    plan = tiny_study.plans[dim]
    torch.manual_seed(0)
    net = build_unet(plan, deep_supervision=False).eval()
    for m in net.modules():  # non-trivial affine parameters in every norm
        if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(batch, plan.num_channels, *plan.patch_size)
    with torch.inference_mode():
        expected = net(x)
        fast, fmt = E.cpu_fast_path(net, dim)
        got = fast(x.contiguous(memory_format=fmt))
    assert not any(isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)
                   for m in fast.modules())
    if dim == 3 and torch.backends.mkldnn.is_available():
        assert not any(type(m) is torch.nn.Conv3d and not isinstance(parent, E.OneDnnConv3d)
                       for parent in fast.modules() for m in parent.children())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_written_labels_are_the_dataset_values_not_class_indices(tiny_study, models, tmp_path):
    """A dataset labelled 0, 2, 5, 300: the network's class k is written as values[k], in a
    dtype that holds 300 (uint16), never as the index."""
    import dataclasses

    from nnpipe.labels import LabelScheme

    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    (indices_path,) = predict_folder([models["3d"]], src, tmp_path / "a", SETTINGS)
    model = E.load_model(models["3d"], torch.device("cpu"))
    names = dict(zip((0, 2, 5, 300), model.plan.labels.values(), strict=True))
    plan = model.plan.with_scheme(LabelScheme.from_values(names))
    from nnpipe.datasets.layout import Case
    from nnpipe.inference.predict import predict_cases

    (values_path,) = predict_cases([dataclasses.replace(model, plan=plan)],
                                   [Case("BRATS", (src / indices_path.name,))],
                                   tmp_path / "b", SETTINGS)
    indices = np.asarray(nib.load(indices_path).dataobj)
    values = nib.load(values_path)
    assert values.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(values.dataobj),
                                  np.asarray([0, 2, 5, 300])[indices])
    assert set(np.unique(indices)) > {0}  # the mapping was exercised


def test_cpu_models_keep_freed_memory(models, monkeypatch):
    """Loading a model for the CPU sets the allocator once (nnpipe.allocator)."""
    calls = []
    monkeypatch.setattr(E, "keep_freed_memory", lambda trim: calls.append(trim) or True)
    E.load_model(models["3d"], torch.device("cpu"))
    assert calls == [256 * 2**20]


def test_images_without_0000_point_at_layout_msd(tiny_study, models, tmp_path):
    """nnU-Net v2 habit: one file per case without `_0000` under the v2 layout's rule."""
    src = msd_folder(tiny_study, tmp_path / "in", n=1)
    with pytest.raises(DataError, match=r"1 image file\(s\) without that suffix, e\.g\. "
                                        r"\S+\.nii\.gz: for one file per case, give "
                                        r"--layout msd"):
        predict_folder([models["3d"]], src, tmp_path / "o", SETTINGS, layout="nnunetv2")


def test_cli_tta_is_on_by_default_and_ctrl_c_is_one_line(models, tmp_path, monkeypatch, capsys):
    import nnpipe.inference.predict as P

    seen = []

    def fake(spec, input_dir, out, settings, **kw):
        seen.append(settings.tta)

    monkeypatch.setattr(P, "predict_folder", fake)
    args = ["predict", "--model", str(models["3d"]), "--input", str(tmp_path), "-o", "x"]
    assert main(args) == 0 and main([*args, "--no-tta"]) == 0
    assert seen == [True, False]  # nnU-Net v2's default: mirroring on

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "predict_folder", interrupted)
    capsys.readouterr()
    assert main(args) == 130
    err = capsys.readouterr().err.strip()
    assert err == "nnpipe predict: interrupted; run the same command again to resume"
