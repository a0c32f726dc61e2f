"""Users' own datasets through Snakemake: each kind read right, or refused naming case and file.

One tiny study per kind of tests/workflow/user_datasets.py (``dataset.source: local``; 3D,
fold 0, one epoch of two steps; the fold ensemble predicts the test images). Refused kinds run
only the fingerprint, which must fail with a message naming the case, the file and the
problem. The selected studies run two at a time while the tests check them one by one: every
Snakemake job here is a short single-threaded process, so one study leaves a core idle.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from nnpipe.config import study_config
from nnpipe.report.tables import render_study

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "workflow" / "config.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
RUN3D = "3d-fp32-1gpu"
pytestmark = pytest.mark.workflow


def _generator(name: str = "user_datasets.py") -> ModuleType:
    """tests/workflow/<name> (tests are imported by path, not as a package)."""
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


UD = _generator()
UD3 = _generator("user_datasets_3.py")  # the third set (issue 20)


def snakemake(workdir: Path, *args: str, config: Path, timeout: int = 900):
    """Snakemake on this repository's Snakefile, as tests/workflow/test_workflow.py runs it."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


# ------------------------------------------------------------------ one study per kind


# Snakemake targets of a kind's study ({ds}: the dataset name). A study that succeeds stops
# at its test-set ensemble (which needs fold 0's model, its validation predictions and the
# postprocessing that reads their labels), not at tables.md, whose benchmark cells time
# themselves to steady state (tens of seconds each); a refused one at the fingerprint.
FINGERPRINT = ("results/{ds}/plans/fingerprint.json",)
ENSEMBLE_3D = (f"results/{{ds}}/ensemble/{RUN3D}",)
SCORED_3D = (*ENSEMBLE_3D, f"results/{{ds}}/evaluate/{RUN3D}/fold0.csv")
SCORED_2D = ("results/{ds}/ensemble/2d-fp32-1gpu", "results/{ds}/evaluate/2d-fp32-1gpu/fold0.csv")


@dataclass(frozen=True)
class Study:
    """A finished (or failed) Snakemake run on one kind's dataset."""

    work: Path  # Snakemake's working directory
    data: Path  # the dataset folder the config points to
    config: Path
    name: str  # dataset.name: results/<name>/
    returncode: int
    stderr: str

    @property
    def results(self) -> Path:
        return self.work / "results" / self.name

    def log(self, rel: str) -> str:
        return (self.work / "results" / self.name / "logs" / rel).read_text()

    def plan(self, dim: int = 3) -> dict:
        return json.loads((self.results / "plans" / f"{dim}d.json").read_text())

    def val_cases(self) -> list[str]:
        return json.loads((self.results / "splits.json").read_text())[0]["val"]


@dataclass(frozen=True)
class Kind:
    """One row of the table: a dataset kind, whether its study succeeds, and its checks."""

    name: str  # a key of user_datasets.KINDS
    ok: bool  # True: the study succeeds; False: the fingerprint job fails
    check: Callable[[Study], None]
    targets: tuple[str, ...] = ENSEMBLE_3D
    dims: tuple[int, ...] = (3,)
    training: dict = field(default_factory=dict)  # overrides of the tiny training section
    needs: str | None = None  # an optional module the kind needs (importorskip)

    @property
    def dataset(self) -> str:
        return self.name.replace("-", "_")


def write_config(kind: Kind, data: Path, path: Path) -> Path:
    """tests/workflow/config.yaml on ``data``: one fold, one epoch of two steps, ensemble on,
    no benchmark cells."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["dataset"] = {"name": kind.dataset, "source": "local", "path": str(data)}
    cfg["grid"] = {"dims": list(kind.dims), "precisions": ["fp32"], "gpus": [1], "folds": [0]}
    cfg["training"] = {"epochs": 1, "steps_per_epoch": 2, "val_patches": 2,
                       "learning_rate": 0.003, **kind.training}
    cfg["inference"]["ensemble"] = True
    cfg["benchmark"] = {"precisions": []}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def make_data(kind: Kind, root: Path) -> Path:
    """Write ``kind``'s dataset into the new folder ``root`` (the first or the third set)."""
    third = {k.name: k for k in UD3.KINDS}
    if kind.name not in third:
        return UD.make_dataset(kind.name, root)
    root.mkdir(parents=True)
    third[kind.name].build(root, third[kind.name])
    UD3.write_note(root, third[kind.name])
    return root


def run_study(kind: Kind, root: Path) -> Study:
    data = make_data(kind, root / "data")
    config = write_config(kind, data, root / "config.yaml")
    work = root / "work"
    work.mkdir()
    res = snakemake(work, *(t.format(ds=kind.dataset) for t in kind.targets), config=config)
    return Study(work, data, config, kind.dataset, res.returncode, res.stderr)


class Studies:
    """The studies of the selected kinds, run two at a time in the background."""

    def __init__(self, root: Path, kinds: list[Kind]) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.futures: dict[str, Future[Study]] = {}
        for kind in kinds:
            self.submit(kind)

    def submit(self, kind: Kind) -> Future[Study]:
        if kind.name not in self.futures:
            (self.root / kind.name).mkdir()
            self.futures[kind.name] = self.pool.submit(run_study, kind, self.root / kind.name)
        return self.futures[kind.name]

    def get(self, kind: Kind) -> Study:
        return self.submit(kind).result()


@pytest.fixture(scope="module")
def studies(request, tmp_path_factory):
    """Starts the study of every kind the session will test (``-k`` selects fewer)."""
    selected = [item.callspec.params["kind"] for item in request.session.items
                if hasattr(item, "callspec") and isinstance(item.callspec.params.get("kind"),
                                                             Kind)]
    runner = Studies(tmp_path_factory.mktemp("user-data"),
                     [k for k in selected if k.needs is None or _has(k.needs)])
    yield runner
    runner.pool.shutdown(cancel_futures=True)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------ helpers of the checks


def label_files(folder: Path) -> dict[str, Path]:
    """The label maps in a prediction folder, by file name (no hidden files there either)."""
    return {p.name: p for p in sorted(folder.iterdir()) if not p.name.startswith(".")
            and not p.name.endswith(".npz")}


def written_maps(study: Study, dim: int = 3) -> dict[str, Path]:
    """Every label map the study wrote, as ``predict/<file>`` (fold 0's validation cases) and
    ``ensemble/<file>`` (the test cases)."""
    run = f"{dim}d-fp32-1gpu"
    folders = {"predict": study.results / "predict" / run / "fold0",
               "ensemble": study.results / "ensemble" / run}
    return {f"{stage}/{n}": p for stage, folder in folders.items()
            for n, p in label_files(folder).items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def values(path: Path) -> set[int]:
    return set(np.unique(np.asarray(nib.load(path).dataobj)).tolist())


def source_image(study: Study, name: str) -> Path:
    """The raw image a prediction file ``name`` was made from (imagesTr or imagesTs)."""
    for folder in ("imagesTr", "imagesTs"):
        if (study.data / folder / name).is_file():
            return study.data / folder / name
    raise AssertionError(f"no source image for {name}")


def assert_same_nifti_grid(pred: Path, src: Path) -> None:
    """Shape, affine, qform, sform and their codes as the source has them."""
    p, s = nib.load(pred), nib.load(src)
    assert p.shape == s.shape[:3], (pred.name, p.shape, s.shape)
    np.testing.assert_allclose(p.affine, s.affine, atol=1e-6, err_msg=pred.name)
    for form in ("get_qform", "get_sform"):
        pa, pc = getattr(p.header, form)(coded=True)
        sa, sc = getattr(s.header, form)(coded=True)
        assert int(pc) == int(sc), (pred.name, form, pc, sc)
        if sa is not None:  # code 0: no form to compare
            np.testing.assert_allclose(pa, sa, atol=1e-6, err_msg=f"{pred.name} {form}")
    assert p.header.get_xyzt_units()[0] == s.header.get_xyzt_units()[0]


def fingerprint_refused(study: Study, *needles: str) -> None:
    """The fingerprint job failed, its log holds every needle, no fingerprint.json exists."""
    log = study.log("plans/fingerprint.log")
    for needle in needles:
        assert needle in log, (needle, log[-2000:])
    assert not (study.results / "plans" / "fingerprint.json").exists()


def assert_written(study: Study, folder: str, expected: set[str]) -> None:
    """The label maps in results/<ds>/<folder>/3d-fp32-1gpu are exactly ``expected``."""
    assert set(label_files(study.results / folder / RUN3D)) == expected


# ------------------------------------------------------------------ the checks, per kind


def check_nonconsecutive(study: Study) -> None:
    assert study.plan()["label_values"] == [0, 1, 4]
    segs = sorted((study.results / "preprocessed" / "3d").glob("*_seg.npy"))
    assert len(segs) == 6
    assert set().union(*(np.unique(np.load(p)).tolist() for p in segs)) == {0, 1, 2}
    maps = written_maps(study)
    assert len(maps) == len(study.val_cases()) + 2
    seen = set().union(*(values(p) for p in maps.values()))
    assert seen <= {0, 1, 4} and 4 in seen, seen
    scores = pd.read_csv(study.results / "evaluate" / RUN3D / "fold0.csv")
    assert {"dice_1", "dice_4"} <= set(scores.columns) and "dice_2" not in scores.columns
    assert (scores["n_pred_4"] > 0).all() and scores["dice_4"].mean() > 0.3, scores


def check_uint16_atlas(study: Study) -> None:
    assert study.plan()["label_values"] == [0, 205, 850]
    for name, path in written_maps(study).items():
        assert nib.load(path).get_data_dtype() == np.uint16, name
        assert values(path) <= {0, 205, 850}, (name, values(path))


def check_orientation(study: Study) -> None:
    log = study.log("plans/fingerprint.log")
    line = next(x for x in log.splitlines() if "orientation:" in x)
    for codes in ("RAS", "ASR", "RSA", "LPS"):
        assert codes in line, line
    fingerprint = json.loads((study.results / "plans" / "fingerprint.json").read_text())
    # the thick axis of every training case is canonical Z, whatever its voxel order
    assert [list(s) for s in fingerprint["spacings"]] == [[1.0, 1.0, 4.0]] * 6
    np.testing.assert_allclose(study.plan()["full_spacing"], [1.0, 1.0, 4.0])
    maps = written_maps(study)
    assert {"ensemble/or_007.nii.gz", "ensemble/or_008.nii.gz"} <= set(maps)
    for path in maps.values():
        assert_same_nifti_grid(path, source_image(study, path.name))
    # the sagittal test case: prediction and reference on the same grid overlap
    pred = np.asarray(nib.load(maps["ensemble/or_007.nii.gz"]).dataobj)
    ref = np.asarray(nib.load(study.data / "labelsTs_reference" / "or_007.nii.gz").dataobj)
    assert dice(pred == 1, ref == 1) > 0.5, dice(pred == 1, ref == 1)
    # the thick-first volume (4 mm along R), resampled for the network and back
    pred = np.asarray(nib.load(maps["ensemble/or_008.nii.gz"]).dataobj)
    ref = np.asarray(nib.load(study.data / "labelsTs_reference" / "or_008.nii.gz").dataobj)
    assert dice(pred == 1, ref == 1) > 0.3, dice(pred == 1, ref == 1)


def check_rgb_one_channel(study: Study) -> None:
    log = study.log("plans/fingerprint.log")
    case = re.search(r"case '(case_\d{3})'", log)
    assert case, log[-2000:]
    fingerprint_refused(study, f"imagesTr/{case[1]}.nii.gz", "RGB24 voxels (3 components each)",
                        "dataset.json lists 1")


def check_rgb_three_channels(study: Study) -> None:
    assert study.plan()["num_channels"] == 3
    assert_written(study, "ensemble", {"case_007.nii.gz", "case_008.nii.gz"})


def check_near_integer(study: Study) -> None:
    lines = [x for x in study.log("plans/fingerprint.log").splitlines() if "rounded" in x]
    assert len(lines) == 1, lines
    for case in UD.NEAR_INTEGER:
        assert case in lines[0], lines[0]
    assert "fl_006" not in lines[0]
    for name, path in written_maps(study).items():
        assert values(path) <= {0, 1, 2}, name


def check_interpolated(study: Study) -> None:
    fingerprint_refused(study, "case_003", "labelsTr/case_003.nii.gz", "fractional")


def check_labels_reversed(study: Study) -> None:
    assert study.plan()["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert_written(study, "ensemble", {"case_007.nii.gz", "case_008.nii.gz"})


def check_ids(study: Study) -> None:
    assert_written(study, "ensemble", {"scanA_0000.nii.gz", "scanB_0007.nii.gz", "scan_c.nii.gz"})
    assert set(study.val_cases()) <= {f"pat_{i:04d}" for i in range(1, 7)}
    assert set(label_files(study.results / "predict" / RUN3D / "fold0")) == {
        f"{c}.nii.gz" for c in study.val_cases()}


def check_appledouble(study: Study) -> None:
    assert_written(study, "ensemble", {"case_007.nii.gz", "case_008.nii.gz"})
    assert not list((study.results / "ensemble" / RUN3D).glob("._*"))
    for log in ("plans/fingerprint.log", f"ensemble/{RUN3D}.log"):
        assert "macOS '._' twins" in study.log(log), log


def check_nii(study: Study) -> None:
    assert_written(study, "ensemble", {"case_007.nii.gz", "case_008.nii", "case_009.nii"})
    for path in written_maps(study).values():
        assert_same_nifti_grid(path, source_image(study, path.name))
    fold0 = label_files(study.results / "predict" / RUN3D / "fold0")
    assert set(fold0) == {f"{c}{'.nii' if c in UD.NII_CASES else '.nii.gz'}"
                          for c in study.val_cases()}


def check_metres(study: Study) -> None:
    fingerprint = json.loads((study.results / "plans" / "fingerprint.json").read_text())
    np.testing.assert_allclose(fingerprint["spacings"], [[1.5] * 3] * 6, rtol=1e-4)
    np.testing.assert_allclose(study.plan()["full_spacing"], [1.5] * 3, rtol=1e-4)
    np.testing.assert_allclose(study.plan()["spacing"], [1.5] * 3, rtol=1e-4)
    pred = study.results / "ensemble" / RUN3D / "case_007.nii.gz"
    assert nib.load(pred).header.get_xyzt_units()[0] == "meter"
    for path in written_maps(study).values():
        assert_same_nifti_grid(path, source_image(study, path.name))


def check_class_never_labelled(study: Study) -> None:
    log = study.log("plans/fingerprint.log")
    assert re.search(r"warning: class\(es\) 3 \(metastasis\) listed .* present in no", log), log
    assert re.search(r"warning: class\(es\) 2 \(lesion, 1 case\) present in fewer than two",
                     log), log
    summary = json.loads((study.results / "evaluate" / RUN3D / "fold0.json").read_text())
    per_class = summary["per_class"]
    val = study.val_cases()
    assert {c: per_class[c]["n_cases_in_reference"] for c in ("1", "2", "3")} == {
        "1": len(val), "2": int("case_002" in val), "3": 0}
    # no reference holds class 3: a case scores it (Dice 0) only where the prediction has it,
    # and a class scored nowhere is null, never a perfect 1.0
    three = per_class["3"]
    assert three["dice"] == (None if three["n_cases_scored"] == 0 else 0.0), three
    # tables.md of this study, rendered from its outputs as the tables rule does (benchmark
    # cells of one precision, named as missing: the renderer needs one): the fold's Dice is
    # not lifted by the never-labelled class
    cfg = study_config({**yaml.safe_load(study.config.read_text()),
                        "results_dir": str(study.work / "results"),
                        "benchmark": {"precisions": ["fp32"]}})
    tables = render_study(cfg, study.work / "results" / "tables.md")
    assert re.search(r"^\| 3 \| 1 \| \d+ \| \d+\.\d+ \(1 fold\)", tables, flags=re.M), tables
    assert "100.00" not in tables, tables


def check_single_slice(study: Study) -> None:
    assert (study.results / "plans" / "2d.json").is_file()
    assert not (study.results / "plans" / "3d.json").exists()
    assert "2D dataset" in study.log("plans/fingerprint.log")
    maps = label_files(study.results / "ensemble" / "2d-fp32-1gpu")
    assert set(maps) == {"case_007.nii.gz", "case_008.nii.gz"}
    for path in maps.values():
        assert_same_nifti_grid(path, source_image(study, path.name))
    # the rest of the study (benchmark cells, plots, tables) holds no 3D job either
    dry = snakemake(study.work, "-n", "results/tables.md", config=study.config)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "tables" in dry.stdout and "2d-fp32-1gpu" in dry.stdout, dry.stdout
    assert re.search(r"\b3d\b", dry.stdout) is None, dry.stdout


def check_nrrd(study: Study) -> None:
    import SimpleITK as sitk

    assert_written(study, "ensemble", {"case_007.nrrd", "case_008.nrrd"})
    for name, path in written_maps(study).items():
        pred, src = sitk.ReadImage(str(path)), sitk.ReadImage(str(source_image(study, path.name)))
        assert pred.GetSize() == src.GetSize(), name
        for what in ("GetOrigin", "GetSpacing", "GetDirection"):
            np.testing.assert_allclose(getattr(pred, what)(), getattr(src, what)(), atol=1e-6,
                                       err_msg=f"{name} {what}")
        assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= {0, 1, 2}


# ------------------------------------------------------------------ the third set (issue 20)


def nifti_codes(path: Path) -> tuple[int, int]:
    h = nib.load(path).header
    return int(h["qform_code"]), int(h["sform_code"])


def check_no_orientation_codes(study: Study) -> None:
    """Codes 0 stay 0 (pixdim only), and SimpleITK puts prediction and image on one grid."""
    import SimpleITK as sitk

    maps = written_maps(study)
    assert {"ensemble/case_101.nii.gz", "ensemble/case_102.nii.gz"} <= set(maps)
    for name, path in maps.items():
        src = source_image(study, path.name)
        assert nifti_codes(path) == nifti_codes(src) == (0, 0), name
        np.testing.assert_allclose(nib.load(path).header.get_zooms()[:3], (1.2, 1.2, 2.5))
        assert_same_nifti_grid(path, src)
        pred, img = sitk.ReadImage(str(path)), sitk.ReadImage(str(src))
        for what in ("GetOrigin", "GetSpacing", "GetDirection"):
            np.testing.assert_allclose(getattr(pred, what)(), getattr(img, what)(), atol=1e-6,
                                       err_msg=f"{name} {what}")


def check_label_outside_nonzero(study: Study) -> None:
    """Every labelled voxel reaches the preprocessed data; the dataset line counts the cases
    (LOST_VOXELS.txt: cases 1, 3, 5, 7); predictions may reach beyond the nonzero box."""
    log = study.log("plans/fingerprint.log")
    line = next(x for x in log.splitlines() if "crop:" in x)
    assert "4 of 7 case(s) have labelled voxels where the image is 0" in line, line
    for entry in (study.data / "LOST_VOXELS.txt").read_text().splitlines():
        name, count = re.match(r"(case_\d+)\.nii\.gz: (\d+) labelled", entry).groups()
        if int(count):
            assert f"{name} ({count} voxel(s), {count} outside the nonzero box)" in line, line
        else:
            assert name not in line, line
    assert study.plan()["crop_to_nonzero"] is False
    pre = study.results / "preprocessed" / "3d"
    for seg in sorted(pre.glob("*_seg.npy")):  # no resampling here: counts are exact
        ref = np.asarray(nib.load(study.data / "labelsTr" / seg.name.replace(
            "_seg.npy", ".nii.gz")).dataobj)
        assert int((np.load(seg) > 0).sum()) == int((ref > 0).sum()), seg.name
    assert_written(study, "ensemble", {"case_101.nii.gz", "case_102.nii.gz"})


def check_ignore_label_runs(study: Study) -> None:
    """helper "labels" owns the ignore label; here: the study runs through, predictions are
    written on the images' grids."""
    for path in written_maps(study).values():
        assert_same_nifti_grid(path, source_image(study, path.name))


def check_normalization_names(study: Study) -> None:
    norms = study.plan()["channel_norms"]
    # nothing to crop (MR values > 0): T2 is z-scored over every voxel, nnU-Net's rule
    assert [(n["scheme"], n["channel"]) for n in norms] == [
        ("zscore", "T2"), ("none", "noNorm"), ("rescale_0_1", "rescale_to_0_1")]
    assert ("normalization by channel name: channel 0 'T2': z-score; channel 1 "
            "'noNorm': none; channel 2 'rescale_to_0_1': rescale_0_1") in study.log(
                "plans/fingerprint.log")
    for npy in sorted((study.results / "preprocessed" / "3d").glob("case_???.npy")):
        data = np.load(npy)
        raw = np.asarray(nib.load(study.data / "imagesTr" / npy.name.replace(
            ".npy", ".nii.gz")).dataobj)
        # MR images are > 0: no crop; same spacing: no resampling; so values are exact
        np.testing.assert_allclose(data[1], raw[..., 1], rtol=1e-6, err_msg=npy.name)
        assert data[2].min() == 0.0 and data[2].max() == pytest.approx(1.0), npy.name
    assert_written(study, "ensemble", {"case_101.nii.gz", "case_102.nii.gz"})


def check_backslash_paths(study: Study) -> None:
    log = study.log("plans/fingerprint.log")
    assert re.search(r"dataset.json: 16 file entries read as paths on this machine "
                     r"\(backslashes", log), log[-2000:]
    assert_written(study, "ensemble", {"case_101.nii.gz", "case_102.nii.gz"})


KINDS = [
    # 40 steps: enough for the tiny network to find the large organ (value 4, or 1), so the
    # checks can ask for it in the predictions (two steps learn nothing)
    Kind("labels-nonconsecutive", True, check_nonconsecutive, SCORED_3D,
         training={"steps_per_epoch": 40}),
    Kind("labels-uint16-atlas", True, check_uint16_atlas),
    Kind("orientation-mixed-axes", True, check_orientation, training={"steps_per_epoch": 40}),
    Kind("rgb24-one-channel", False, check_rgb_one_channel, FINGERPRINT),
    Kind("rgb24-three-channels", True, check_rgb_three_channels),
    Kind("labels-float-near-integer", True, check_near_integer),
    Kind("labels-float-interpolated", False, check_interpolated, FINGERPRINT),
    Kind("labels-reversed", True, check_labels_reversed),
    Kind("ids-ending-in-digits", True, check_ids),
    Kind("macos-appledouble", True, check_appledouble),
    Kind("nii-beside-niigz", True, check_nii),
    Kind("header-in-metres", True, check_metres),
    Kind("class-never-labelled", True, check_class_never_labelled, SCORED_3D),
    Kind("all-single-slice", True, check_single_slice, SCORED_2D, dims=(2, 3)),
    Kind("nrrd-images", True, check_nrrd, needs="SimpleITK"),
    Kind("k04_no_orientation_codes", True, check_no_orientation_codes, needs="SimpleITK"),
    Kind("k05_label_outside_nonzero", True, check_label_outside_nonzero, SCORED_3D),
    Kind("k08_ignore_label", True, check_ignore_label_runs),
    Kind("k09_normalization_channel_names", True, check_normalization_names),
    Kind("k11_backslash_paths", True, check_backslash_paths),
]


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_user_dataset(kind: Kind, studies: Studies):
    if kind.needs is not None:
        pytest.importorskip(kind.needs)
    study = studies.get(kind)
    if kind.ok:
        assert study.returncode == 0, study.stderr[-4000:]
    else:
        assert study.returncode != 0, "the fingerprint job should have failed"
    kind.check(study)
