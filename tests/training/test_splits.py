from __future__ import annotations

import pytest

from nnpipe.training.splits import load_fold, make_splits, save_splits


def test_every_case_validated_exactly_once():
    ids = [f"case_{i:02d}" for i in range(12)]
    splits = make_splits(ids)
    assert len(splits) == 5
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == ids
    assert [len(s["val"]) for s in splits] == [3, 3, 2, 2, 2]
    for s in splits:
        assert set(s["train"]).isdisjoint(s["val"])
        assert len(s["train"]) + len(s["val"]) == 12


def test_split_is_independent_of_input_order():
    ids = [f"c{i}" for i in range(7)]
    assert make_splits(ids) == make_splits(list(reversed(ids)))


def test_too_few_cases():
    with pytest.raises(ValueError, match="cannot make 5 folds"):
        make_splits(["a", "b"])


def test_round_trip(tmp_path):
    splits = make_splits([f"c{i}" for i in range(5)])
    save_splits(tmp_path / "splits.json", splits)
    assert load_fold(tmp_path / "splits.json", 3) == splits[3]
    with pytest.raises(ValueError, match="fold 7"):
        load_fold(tmp_path / "splits.json", 7)
