from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nnpipe.config import load_config, study_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_fill_every_section():
    cfg = study_config({})
    assert cfg.dataset.name == "embedded"
    assert cfg.grid.folds == (0, 1, 2, 3, 4)
    assert cfg.training.learning_rate == pytest.approx(8e-4)
    assert cfg.benchmark.train_batch_sizes(3) == (1, 2, 4)


def test_repository_config_is_valid():
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert cfg.grid.dims == (2, 3)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"grid": {"dims": [4]}}, "grid/dims/0"),
        ({"training": {"epochz": 3}}, "epochz"),
        ({"nonsense": 1}, "nonsense"),
        ({"grid": {"precisions": ["fp8"]}}, "fp8"),
    ],
)
def test_bad_keys_are_rejected_with_their_path(raw, message):
    with pytest.raises(ValueError, match=message):
        study_config(raw)


def test_schema_documents_every_key():
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            required = key in node.get("required", ())
            assert "default" in sub or required, f"{path}{key} has no default"
            if sub.get("type") == "object":
                entry = sub.get("additionalProperties")
                if isinstance(entry, dict):  # a mapping NAME -> entry (predict)
                    assert entry.get("additionalProperties") is False, f"{path}{key} entries"
                    walk(entry, f"{path}{key}.<NAME>.")
                    continue
                assert entry is False, f"{path}{key} allows unknown keys"
                walk(sub, f"{path}{key}.")

    assert schema["additionalProperties"] is False
    walk(schema, "")


@pytest.mark.parametrize(
    ("raw", "unknown", "near"),
    [
        ({"trainng": {"epochs": 2}}, "trainng", "training"),
        ({"training": {"epoch": 3}}, "epoch", "epochs"),
        ({"benchmark": {"enable": False}}, "enable", "enabled"),
    ],
)
def test_a_near_miss_key_gets_did_you_mean_in_one_paragraph(raw, unknown, near):
    with pytest.raises(ValueError) as info:
        study_config(raw)
    text = str(info.value)
    assert f"unknown key `{unknown}` (did you mean `{near}`?)" in text
    assert "\n" not in text and len(text) < 600  # one paragraph, not the schema


def test_a_key_far_from_every_name_lists_the_keys_without_a_guess():
    with pytest.raises(ValueError, match=r"unknown key `zzz`; the keys here are: ") as info:
        study_config({"zzz": 1})
    assert "did you mean" not in str(info.value)


def test_small_template_is_a_cpu_study_without_benchmarks():
    cfg = load_config(ROOT / "config" / "small.yaml")
    assert cfg.benchmark.enabled is False and cfg.benchmark.cells_precisions() == ()
    assert set(cfg.grid.precisions) <= {"fp32", "bf16"} and cfg.grid.gpus == (1,)
    assert cfg.dataset.source == "local"


def test_benchmarks_left_out_by_enabled_false():
    assert study_config({}).benchmark.cells_precisions() == ("fp32", "bf16")
    off = study_config({"benchmark": {"enabled": False}})
    assert off.benchmark.cells_precisions() == ()
