"""Strict weight loading at prediction: deep-supervision heads dropped by name, any other
mismatch an error naming the keys (no silent prediction with random weights)."""

from __future__ import annotations

import pytest
import torch

from nnpipe.inference.ensemble import load_model
from nnpipe.model import build_unet
from nnpipe.training.checkpoint import save_checkpoint

CPU = torch.device("cpu")


def _save(path, plan, weights) -> None:
    save_checkpoint(path, {"model": weights, "plan": plan.to_dict(), "settings": {}})


def test_a_training_checkpoint_loads_without_its_deep_supervision_heads(tiny_study, tmp_path):
    plan = tiny_study.plans[3]
    torch.manual_seed(0)
    trained = build_unet(plan, deep_supervision=True).state_dict()
    assert any(k.startswith("deep_supervision_heads.") for k in trained)
    _save(tmp_path / "final.pt", plan, trained)
    # the CPU fast path wraps modules (other key names), parameters keep their order
    loaded = list(load_model(tmp_path, CPU).model.parameters())
    names = [k for k, _ in build_unet(plan, deep_supervision=False).named_parameters()]
    assert len(loaded) == len(names)
    for key, value in zip(names, loaded, strict=True):
        assert torch.equal(value, trained[key]), key


@pytest.mark.parametrize(("change", "match"), [
    ("rename", r"missing: output_block\.conv\.conv\.weight; "
               r"unexpected: output_block\.conv\.conv\.weight_renamed"),
    ("drop", r"missing: bottleneck\.conv1\.conv\.weight"),
    ("extra", r"unexpected: extra_head\.weight"),
    ("shape", r"shape \(checkpoint vs plan\): output_block\.conv\.conv\.bias \(7,\) vs \(\d+,\)"),
])
def test_mismatched_weights_are_refused_with_their_keys(tiny_study, tmp_path, change, match):
    plan = tiny_study.plans[3]
    weights = build_unet(plan, deep_supervision=True).state_dict()
    if change == "rename":
        weights["output_block.conv.conv.weight_renamed"] = \
            weights.pop("output_block.conv.conv.weight")
    elif change == "drop":
        del weights["bottleneck.conv1.conv.weight"]
    elif change == "extra":
        weights["extra_head.weight"] = torch.zeros(1)
    else:
        weights["output_block.conv.conv.bias"] = torch.zeros(7)
    _save(tmp_path / "final.pt", plan, weights)
    with pytest.raises(ValueError, match=match) as err:
        load_model(tmp_path, CPU)
    assert "final.pt" in str(err.value)
