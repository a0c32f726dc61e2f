"""Portable models (nnpipe.inference.archive) and the one resolution of ``--model``
(nnpipe.inference.model_spec): export, predict elsewhere with no results folder, refusals."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpipe.cli import main
from nnpipe.datasets.layout import load_dataset
from nnpipe.inference.archive import ArchiveError, export_model, load_archive
from nnpipe.inference.resolve import resolve_model
from nnpipe.io import write_json

from .conftest import labels_of, two_images

RUN = "3d-fp32-1gpu"


@pytest.fixture()
def results(tiny_study, models, tmp_path) -> Path:
    """A results folder of one 3D run with two folds (the fixture models), the raw dataset
    and a postprocessing decision that keeps the largest component of label 1."""
    ds = tmp_path / "results" / "tiny"
    shutil.copytree(tiny_study.raw, ds / "raw")
    for fold, name in enumerate(("3d", "3d-b")):
        dest = ds / "train" / RUN / f"fold{fold}"
        dest.mkdir(parents=True)
        shutil.copy(models[name] / "final.pt", dest / "final.pt")
    write_json(ds / "postprocess" / f"{RUN}.json", {"classes": {
        "1": {"labels": [1], "apply": True}, "2": {"labels": [2], "apply": False}}})
    return tmp_path / "results"




def test_every_spelling_of_a_run_resolves_to_one_description(results) -> None:
    run = results / "tiny" / "train" / RUN
    spec = resolve_model([run])
    assert [m.name for m in spec.members] == [RUN]
    assert [f.fold for f in spec.members[0].folds] == [0, 1]
    assert [c.name for c in spec.postprocess_classes()] == ["1"]
    assert spec.channel_names == load_dataset(results / "tiny" / "raw").channels
    folds = resolve_model([run / "fold0", run / "fold1" / "final.pt"])
    assert folds.members[0].plan == spec.members[0].plan and folds.postprocess is None
    zipped = load_archive(_export(spec, results.parent / "m.zip"))
    assert zipped.members[0].plan == spec.members[0].plan
    assert zipped.postprocess == spec.postprocess and zipped.labels == spec.labels
    assert zipped.channel_names == spec.channel_names
    for a, b in zip(zipped.members[0].folds, spec.members[0].folds, strict=True):
        assert a.fold == b.fold and a.weights.keys() == b.weights.keys()
        assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def _export(spec, out: Path) -> Path:
    export_model(spec, out)
    return out


def test_export_then_predict_on_a_fresh_folder_without_results(tiny_study, results,
                                                               tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = two_images(tiny_study, tmp_path / "in")
    model = "results/tiny/train/" + RUN
    assert main(["predict", "--model", model, "--input", str(src), "--output", "before",
                 "--device", "cpu"]) == 0
    assert main(["export", "--model", model, "--out", "model.zip"]) == 0
    before = labels_of(tmp_path / "before")
    shutil.rmtree(tmp_path / "results")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(tmp_path / "model.zip", elsewhere / "model.zip")
    monkeypatch.chdir(elsewhere)
    assert main(["predict", "--model", "model.zip", "--input", str(src), "--output", "after",
                 "--device", "cpu"]) == 0
    after = labels_of(elsewhere / "after")
    assert before.keys() == after.keys() and len(after) == 2
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    with zipfile.ZipFile(elsewhere / "model.zip") as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert sorted(zf.namelist()) == sorted(["manifest.json", *manifest["files"]])
        assert json.loads(zf.read("dataset.json"))["channel_names"]["0"] == "FLAIR"
    assert manifest["format_version"] == 1 and manifest["nnpipe_version"]
    assert [len(m["folds"]) for m in manifest["members"]] == [2]


def test_export_of_fold_checkpoints_with_a_decision(results, tmp_path) -> None:
    run = results / "tiny" / "train" / RUN
    decision = results / "tiny" / "postprocess" / f"{RUN}.json"
    assert main(["export", "--model", str(run / "fold0" / "final.pt"), "--postprocess",
                 str(decision), "--out", str(tmp_path / "f.zip")]) == 0
    spec = load_archive(tmp_path / "f.zip")
    assert len(spec.members[0].folds) == 1 and spec.members[0].folds[0].fold == 0
    assert [c.name for c in spec.postprocess_classes()] == ["1"]


# ---------------------------------------------------------------- refusals


def rewrite(src: Path, dest: Path, change) -> Path:
    """A copy of the archive ``src`` with ``change(members: dict[name, bytes])`` applied."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    change(members)
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


def _manifest(members: dict[str, bytes], **changes) -> None:
    manifest = json.loads(members["manifest.json"])
    manifest.update(changes)
    members["manifest.json"] = json.dumps(manifest).encode()


def _rehash(members: dict[str, bytes], name: str) -> None:
    manifest = json.loads(members["manifest.json"])
    manifest["files"][name] = hashlib.sha256(members[name]).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _pickled_object(members: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    torch.save({"weight": Evil()}, buf)
    members["members/3d-fp32-1gpu/fold0.pt"] = buf.getvalue()
    _rehash(members, "members/3d-fp32-1gpu/fold0.pt")  # a tamperer fixes the hash too


def _flip_byte(members: dict[str, bytes]) -> None:
    data = bytearray(members["members/3d-fp32-1gpu/fold1.pt"])
    data[len(data) // 2] ^= 0xFF
    members["members/3d-fp32-1gpu/fold1.pt"] = bytes(data)


TAMPERED = {
    "hash": (_flip_byte, r"fold1\.pt.*does not match its SHA-256"),
    "missing": (lambda m: m.pop("postprocess.json"), r"postprocess\.json.*missing"),
    "unlisted": (lambda m: m.update({"extra.py": b"print(1)"}), r"extra\.py.*not listed"),
    "traversal": (lambda m: m.update({"../evil.pt": b"x"}), r"\.\./evil\.pt.*path traversal"),
    "absolute": (lambda m: m.update({"/etc/evil": b"x"}), r"/etc/evil.*path traversal"),
    "version": (lambda m: _manifest(m, format_version=99),
                r"format_version 99.*reads format_version 1"),
    "format": (lambda m: _manifest(m, format="other"), r"not an nnpipe model archive"),
    "no manifest": (lambda m: m.pop("manifest.json"), r"has no manifest\.json"),
    "pickled object": (_pickled_object, r"fold0\.pt.*cannot be loaded as plain tensors"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_or_incompatible_archives_are_refused(results, tmp_path, case, capsys) -> None:
    good = _export(resolve_model([results / "tiny" / "train" / RUN]), tmp_path / "good.zip")
    change, message = TAMPERED[case]
    bad = rewrite(good, tmp_path / "bad.zip", change)
    with pytest.raises(ValueError, match=message) as info:
        load_archive(bad)
    assert "bad.zip" in str(info.value)
    assert main(["predict", "--model", str(bad), "--input", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 1
    assert "bad.zip" in capsys.readouterr().err


def test_not_a_zip_is_named(tmp_path) -> None:
    fake = tmp_path / "model.zip"
    fake.write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match=r"model\.zip.*not a zip file"):
        load_archive(fake)


def test_the_study_inference_settings_travel_with_the_model(results, tmp_path,
                                                            monkeypatch) -> None:
    """best.json keeps the study's inference section; the archive exported from it too; and
    `nnpipe predict` without --config predicts with them (a study with TTA keeps TTA)."""
    from dataclasses import replace

    from nnpipe import cli

    spec = resolve_model([results / "tiny" / "train" / RUN])
    assert spec.inference is None
    assert load_archive(_export(spec, tmp_path / "a.zip")).inference is None
    study = {"overlap": 0.25, "blend": "constant", "tta": True, "batch_size": 3}
    zipped = load_archive(_export(replace(spec, inference=study), tmp_path / "b.zip"))
    assert zipped.inference == study
    assert resolve_model([tmp_path / "b.zip"]).inference == study
    seen = []
    monkeypatch.setattr("nnpipe.inference.predict.predict_folder",
                        lambda models, src, out, settings, **kw: seen.append(settings))
    args = ["predict", "--model", str(tmp_path / "b.zip"), "-i", "in", "-o", "out"]
    assert cli.main(args) == 0
    assert (seen[0].tta, seen[0].overlap, seen[0].blend, seen[0].batch_size) == (
        True, 0.25, "constant", 3)
    assert cli.main([*args, "--config-json", '{"inference": {"tta": false}}']) == 0
    assert seen[1].tta is False and seen[1].overlap == 0.5  # --config wins, schema defaults
    assert cli.main(["predict", "--model", str(tmp_path / "a.zip"), "-i", "in", "-o", "o"]) == 0
    assert seen[2].tta is True  # nothing stored: the schema's defaults (TTA on, as nnU-Net)
