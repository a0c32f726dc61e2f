"""The label concept (nnpipe.labels.LabelScheme): dataset.json forms -> plan JSON -> object,
older plans, and the one function from network outputs to label values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnpipe.errors import DataError
from nnpipe.labels import LabelScheme, ScoredClass, outputs_to_labels
from nnpipe.planning.plan import Plan

MSD_SPARSE = {"0": "background", "1": "edema", "2": "core", "3": "ignore"}
V2_SPARSE = {"background": 0, "edema": 1, "core": 2, "ignore": 3}


@pytest.fixture()
def tiny_plan(tiny_study) -> Plan:
    return tiny_study.plans[3]


V2_REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
              "enhancing tumor": 3, "ignore": 4}


def test_msd_and_v2_forms_give_one_scheme():
    msd = LabelScheme.from_dataset_json(MSD_SPARSE, layout="msd")
    v2 = LabelScheme.from_dataset_json(V2_SPARSE, layout="nnunetv2")
    assert msd == v2
    assert msd.names == {0: "background", 1: "edema", 2: "core"} and msd.ignore == 3
    assert msd.num_classes == msd.output_channels == 3 and not msd.region_mode
    assert msd.scored_classes == (ScoredClass("1", (1,)), ScoredClass("2", (2,)))
    # the ignore value becomes the class index one past the last class
    assert msd.table.to_indices(np.array([0, 1, 2, 3])).tolist() == [0, 1, 2, 3]
    assert msd.table.ignore_index == 3


def test_v2_regions_with_ignore():
    s = LabelScheme.from_dataset_json(V2_REGIONS, regions_class_order=[1, 2, 3])
    assert s.values == (0, 1, 2, 3) and s.ignore == 4 and s.region_mode
    assert s.regions == (ScoredClass("whole tumor", (1, 2, 3)), ScoredClass("tumor core", (2, 3)),
                         ScoredClass("enhancing tumor", (3,)))
    assert s.output_channels == 3 and s.regions_class_order == (1, 2, 3)
    assert s.names[1] == "whole tumor" and s.names[2] == "tumor core"
    # regions name class indices for training; an uneven value table maps them
    odd = LabelScheme.from_dataset_json({"background": 0, "a": [5, 9], "b": 9},
                                        regions_class_order=[5, 9])
    assert odd.index_regions == ((1, 2), (2,))


def test_nested_regions_over_plain_labels():
    s = LabelScheme.from_dataset_json(MSD_SPARSE, layout="msd", nested=True)
    assert [r.name for r in s.regions] == ["ge1", "ge2"] and s.regions_class_order == (1, 2)
    assert s.ignore == 3


@pytest.mark.parametrize("labels, words", [
    ({"background": 0, "ignore": 1, "a": 2}, "highest"),
    ({"background": 0, "ignore": 3, "Ignore": 4}, "one ignore value"),
    ({"background": 0, "a": [1, 2], "b": [2, 1]}, "regions_class_order"),
    ({"background": 0, "a": [], "b": 1}, "non-empty list"),
])
def test_bad_schemes_are_refused_naming_the_problem(labels, words):
    with pytest.raises(DataError, match=words):
        LabelScheme.from_dataset_json(labels, path="ds/dataset.json")


@pytest.mark.parametrize("scheme", [
    LabelScheme.from_dataset_json(MSD_SPARSE, layout="msd"),
    LabelScheme.from_dataset_json(V2_REGIONS, regions_class_order=[1, 2, 3]),
    LabelScheme.from_values({0: "background", 205: "a", 420: "b"}),
])
def test_plan_json_round_trip(scheme, tiny_plan):
    plan = tiny_plan.with_scheme(scheme)
    assert plan.num_classes == scheme.num_classes and plan.labels == scheme.names
    back = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and back.scheme() == scheme and back.label_scheme == scheme
    assert back.label_table == scheme.table


def test_older_plan_derives_the_scheme_the_old_way(tiny_plan):
    d = tiny_plan.to_dict()
    d.pop("label_scheme")
    old = Plan.from_dict(d)
    assert old.label_scheme is None
    assert old.scheme() == LabelScheme.from_values(tiny_plan.labels)
    assert old.scheme(legacy_regions=True).region_mode  # config/checkpoint said regions
    # a recorded scheme is the plan's: a legacy flag does not change it
    assert not tiny_plan.scheme(legacy_regions=True).region_mode


def test_outputs_to_labels_softmax_and_regions_numpy_and_torch():
    softmax = LabelScheme.from_values({0: "bg", 205: "a", 420: "b"})
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7]]).T  # (C=3, S=3)
    out = outputs_to_labels(probs, softmax)
    assert out.tolist() == [0, 205, 420] and out.dtype == np.uint16
    assert outputs_to_labels(torch.from_numpy(probs), softmax).tolist() == [0, 205, 420]
    regions = LabelScheme.from_dataset_json(V2_REGIONS, regions_class_order=[1, 2, 3])
    sig = np.array([[0.9, 0.9, 0.9, 0.2], [0.1, 0.8, 0.9, 0.1], [0.1, 0.1, 0.7, 0.9]])
    # later regions over earlier ones; never the ignore value 4
    assert outputs_to_labels(sig, regions).tolist() == [1, 2, 3, 3]
    logits = torch.logit(torch.from_numpy(sig))
    assert outputs_to_labels(logits, regions, logits=True).tolist() == [1, 2, 3, 3]
    with pytest.raises(ValueError, match="output channels"):
        outputs_to_labels(sig[:2], regions)
