"""Weight transfer for fine-tuning: what carries over, what is re-initialised, what is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nnpipe.config import study_config
from nnpipe.model import build_unet
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.training.step import make_optimizer, warmup_steps
from nnpipe.training.transfer import transfer_weights, warmup_factor

PLAN = Plan(dataset="a", dim=3, spacing=(1.0, 1.0, 1.0), full_spacing=(1.0, 1.0, 1.0),
            patch_size=(16, 16, 16), kernels=((3, 3, 3),) * 3,
            strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), filters=(4, 8, 16), batch_size=2,
            num_channels=1, num_classes=3, labels={0: "background", 1: "a", 2: "b"},
            channel_norms=(ChannelNorm("zscore_nonzero"),))


def _net(plan: Plan, seed: int, classes: int | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unet(plan, deep_supervision=True, out_channels=classes or plan.num_classes)


def test_same_network_carries_every_tensor():
    src, new = _net(PLAN, 0), _net(PLAN, 1)
    report = transfer_weights(new, src.state_dict(), "src.pt")
    assert not report.reinitialised and not report.unused
    assert set(report.carried) == set(new.state_dict())
    for k, v in new.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_other_classes_reinitialise_only_the_heads():
    src = _net(PLAN, 0)
    new = _net(PLAN, 1, classes=5)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    report = transfer_weights(new, src.state_dict(), "src.pt")
    heads = {k for k in new.state_dict() if "output_block" in k or "deep_supervision" in k}
    assert heads and set(report.reinitialised) == heads
    for k, v in new.state_dict().items():
        expected = fresh[k] if k in heads else src.state_dict()[k]
        assert torch.equal(v, expected), k
    text = "\n".join(report.lines())
    assert "re-initialised output_block.conv.conv.weight: output channels (classes) differ" in text
    assert "[3, 4, 1, 1, 1] vs new [5, 4, 1, 1, 1]" in text


def test_other_channels_reinitialise_only_the_first_convolution():
    src = _net(PLAN, 0)
    new = _net(replace(PLAN, num_channels=2,
                       channel_norms=(ChannelNorm("zscore_nonzero"),) * 2), 1)
    report = transfer_weights(new, src.state_dict(), "src.pt")
    assert list(report.reinitialised) == ["input_block.conv1.conv.weight"]
    assert "input channels differ" in report.lines()[1]


def test_another_topology_is_refused_naming_tensors():
    src = _net(PLAN, 0)
    new = _net(replace(PLAN, filters=(8, 16, 32)), 1)
    with pytest.raises(ValueError, match=r"do not fit this network: .*input_block.*planning.like"):
        transfer_weights(new, src.state_dict(), "src.pt")
    deeper = _net(replace(PLAN, kernels=((3, 3, 3),) * 4,
                          strides=PLAN.strides + ((2, 2, 2),), filters=(4, 8, 16, 16)), 1)
    with pytest.raises(ValueError, match="missing in the pretrained model"):
        transfer_weights(deeper, src.state_dict(), "src.pt")


def test_warmup_factor_is_linear_then_one():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_fine_tuning_warms_the_learning_rate_up():
    s = study_config({"training": {"optimizer": "sgd", "learning_rate": 0.01,
                                   "init_weights": "m.pt"}}).training
    assert warmup_steps(s, 200) == 10  # 5 % of the run by default
    assert warmup_steps(replace(s, init_weights=""), 200) == 0
    assert warmup_steps(replace(s, warmup_steps=3), 200) == 3
    opt, sched = make_optimizer(torch.nn.Linear(2, 2), s, total_steps=200,
                                device=torch.device("cpu"))
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01 * 0.1 * (1 - 0 / 200) ** 0.9)
    assert lrs[4] == pytest.approx(0.01 * 0.5 * (1 - 4 / 200) ** 0.9)
    assert lrs[11] == pytest.approx(0.01 * (1 - 11 / 200) ** 0.9)
