"""Sharded prediction: disjoint shards, a killed part resumed, part records and the gather."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnpipe.cli import main
from nnpipe.config import InferenceSettings
from nnpipe.datasets.layout import Case
from nnpipe.inference.predict import predict_folder
from nnpipe.inference.shards import (
    PredictionSet,
    Shard,
    gather,
    prediction_sets,
    remove_partials,
    shard_ids,
)
from nnpipe.io import read_json, write_json

from .conftest import labels_of

SETTINGS = InferenceSettings(overlap=0.5, blend="gaussian", tta=False, batch_size=2)


def case_ids(n: int) -> list[str]:
    # unsorted, mixed widths: sorting is by code point ("c10" < "c2")
    return [f"c{i}" for i in range(n)][::-1]


@pytest.mark.parametrize("n_cases", [0, 1, 2, 5, 17])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7, 20])
def test_shards_cover_every_case_exactly_once(n_cases, parts):
    ids = case_ids(n_cases)
    shards = [shard_ids(ids, Shard(i, parts)) for i in range(parts)]
    together = [c for s in shards for c in s]
    assert sorted(together) == sorted(ids)  # every case, none twice
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced


def test_shards_are_sorted_ids_every_nth_as_in_nnunet_v2():
    ids = ["b", "c10", "a", "c2", "c1"]  # sorted: a b c1 c10 c2
    assert shard_ids(ids, Shard(0, 2)) == ["a", "c1", "c2"]
    assert shard_ids(ids, Shard(1, 2)) == ["b", "c10"]
    assert shard_ids(list(reversed(ids)), Shard(1, 2)) == ["b", "c10"]  # input order is no matter


@pytest.mark.parametrize(("part", "parts", "message"), [
    (0, 0, "--parts must be >= 1"), (3, 3, r"--part must be in 0\.\.2"),
    (-1, 2, r"--part must be in 0\.\.1")])
def test_bad_shard_is_refused(part, parts, message):
    with pytest.raises(ValueError, match=message):
        Shard(part, parts)


def test_a_case_id_twice_is_refused():
    with pytest.raises(ValueError, match="given twice: a"):
        shard_ids(["a", "b", "a"], Shard(0, 2))


def test_remove_partials_deletes_only_the_parts_own_leftovers(tmp_path):
    mine = [tmp_path / ".x1.nii.gz.ab12_cd3.part.nii.gz", tmp_path / ".x1.npz.zz99zz99.part.npz"]
    theirs = tmp_path / ".x2.nii.gz.ab12cd34.part.nii.gz"
    finished = tmp_path / "x1.nii.gz"
    for p in [*mine, theirs, finished]:
        p.write_bytes(b"")
    assert sorted(remove_partials(tmp_path, ["x1"])) == sorted(mine)
    assert theirs.is_file() and finished.is_file()


# ---------------------------------------------------------------- parts on real predictions


def five_images(tiny_study, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for path in sorted((tiny_study.raw / "imagesTr").glob("*.nii.gz"))[:5]:
        shutil.copy(path, dest / path.name)
    return dest


def test_killed_part_resumes_and_gather_equals_one_job(tiny_study, models, tmp_path):
    src = five_images(tiny_study, tmp_path / "in")
    parts_dir, records = tmp_path / "parts", [tmp_path / f"part{i}.json" for i in range(2)]
    written = predict_folder([models["3d"]], src, parts_dir, SETTINGS, shard=Shard(0, 2),
                             part_record=records[0])
    assert len(written) == 3  # cases 0, 2, 4 of 5 sorted ids
    # part 1 "killed": one case finished, a second one's label map half-written under its
    # temporary name; no record
    ids = sorted(p.name[:-len(".nii.gz")] for p in src.iterdir())
    predict_folder([models["3d"]], src, tmp_path / "scratch", SETTINGS, shard=Shard(1, 2))
    done, killed = ids[1], ids[3]
    shutil.copy(tmp_path / "scratch" / f"{done}.nii.gz", parts_dir / f"{done}.nii.gz")
    leftover = parts_dir / f".{killed}.nii.gz.k1ll3d00.part.nii.gz"
    leftover.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(ValueError, match="expected one record for each part"):
        gather(records[:1], parts_dir, tmp_path / "gathered")
    before = (parts_dir / f"{done}.nii.gz").stat().st_mtime_ns
    # the rerun of part 1 (--continue): leftover gone, the finished case skipped, the rest done
    predict_folder([models["3d"]], src, parts_dir, SETTINGS, shard=Shard(1, 2),
                   part_record=records[1], skip_existing=True)
    assert not leftover.exists()
    assert (parts_dir / f"{done}.nii.gz").stat().st_mtime_ns == before
    assert read_json(records[1])["files"] == {c: [f"{c}.nii.gz"] for c in (done, killed)}
    assert gather(records, parts_dir, tmp_path / "gathered") == 5
    one_job = predict_folder([models["3d"]], src, tmp_path / "one", SETTINGS)
    gathered = labels_of(tmp_path / "gathered")
    assert sorted(gathered) == sorted(p.name for p in one_job)
    for name, labels in labels_of(tmp_path / "one").items():
        np.testing.assert_array_equal(gathered[name], labels)
    assert sorted(os.listdir(tmp_path / "gathered")) == sorted(gathered)  # nothing else


def test_gather_refuses_overlapping_or_foreign_parts(tmp_path):
    base = {"format": "nnpipe-predict-part", "parts": 2, "input": "in", "total": 3,
            "listing_sha256": "x"}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(a, {**base, "part": 0, "files": {"c1": ["c1.nii.gz"], "c3": ["c3.nii.gz"]}})
    write_json(b, {**base, "part": 1, "files": {"c1": ["c1.nii.gz"]}})
    with pytest.raises(ValueError, match="case 'c1' is in part 0 and part 1"):
        gather([a, b], tmp_path, tmp_path / "out")
    write_json(b, {**base, "part": 1, "listing_sha256": "y", "files": {"c2": ["c2.nii.gz"]}})
    with pytest.raises(ValueError, match="listed different sets of cases"):
        gather([a, b], tmp_path, tmp_path / "out")
    write_json(b, {**base, "part": 1, "files": {"c2": ["c2.nii.gz"]}})
    with pytest.raises(ValueError, match="file named by its part record is missing"):
        gather([a, b], tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # all or nothing


def test_cli_parts_and_gather(tiny_study, models, tmp_path, capsys):
    src = five_images(tiny_study, tmp_path / "in")
    out = tmp_path / "parts"
    for i in range(3):
        assert main(["predict", "-m", str(models["3d"]), "-i", str(src), "-o", str(out),
                     "--part", str(i), "--parts", "3", "--part-record",
                     str(tmp_path / f"r{i}.json"), "--continue"]) == 0
    assert "part 2 of 3: 1 of 5 case(s)" in capsys.readouterr().err
    assert main(["gather", "--records", *(str(tmp_path / f"r{i}.json") for i in range(3)),
                 "--parts-dir", str(out), "--out", str(tmp_path / "all")]) == 0
    assert len(list((tmp_path / "all").glob("*.nii.gz"))) == 5
    assert main(["predict", "-m", str(models["3d"]), "-i", str(src), "-o", str(out),
                 "--part", "1"]) == 1
    assert "give --part and --parts together" in capsys.readouterr().err


def test_prediction_sets_from_config():
    sets = prediction_sets({"scans": {"input": "data/scans", "parts": 4},
                            "v2": {"input": "x", "model": "3d-fp32-1gpu", "layout": "nnunetv2"}})
    assert sets["scans"] == PredictionSet("scans", "data/scans", "best", 4, None)
    assert sets["v2"].model == "3d-fp32-1gpu" and sets["v2"].layout == "nnunetv2"
    assert sets["v2"].configuration is None
    assert prediction_sets({"s": {"input": "x", "model": "Dataset001_X", "configuration":
                                  "3d_fullres"}})["s"].configuration == "3d_fullres"
    for bad, message in [({"a b": {"input": "x"}}, "a set name is letters"),
                         ({"s": {"model": "best"}}, "`input`.*is required"),
                         ({"s": {"input": "x", "parts": 0}}, "predict/s/parts"),
                         ({"s": {"input": "x", "gpus": 2}}, r"unknown key\(s\) \['gpus'\]")]:
        with pytest.raises(ValueError, match=message):
            prediction_sets(bad)


def test_selection_keeps_case_objects():
    # the shard of Case objects is the shard of their ids
    from nnpipe.inference.shards import select_part

    cases = [Case(c, (Path(f"{c}.nii.gz"),)) for c in case_ids(5)]
    selection, _ = select_part(cases, Shard(1, 2), Path("/nonexistent"))
    assert [c.case_id for c in selection.cases] == shard_ids(case_ids(5), Shard(1, 2))
    assert selection.total == 5
