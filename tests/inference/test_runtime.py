"""The runtime switch (inference.runtime): the same labels as eager PyTorch for each runtime
this machine has, a clear error naming the pip extra for one it lacks, config and CLI."""

from __future__ import annotations

import importlib
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from nnpipe.config import study_config
from nnpipe.inference import ensemble as E
from nnpipe.inference import runtime as R
from nnpipe.model import build_unet


def _available(runtime: str) -> bool:
    try:
        R.require(runtime)
    except ImportError:
        return False
    return True


# torch.compile takes longer than a test may here (2 shared cores): opt in with the variable
COMPILE_REASON = "torch.compile is slow to build on CPUs; set NNPIPE_TEST_COMPILE=1"
RUNTIMES = [
    pytest.param("onnxruntime", marks=pytest.mark.skipif(
        not _available("onnxruntime"), reason="onnxruntime not installed (extra cpu-runtimes)")),
    pytest.param("openvino", marks=pytest.mark.skipif(
        not _available("openvino"), reason="openvino not installed (extra cpu-runtimes)")),
    pytest.param("compile", marks=pytest.mark.skipif(
        not os.environ.get("NNPIPE_TEST_COMPILE"), reason=COMPILE_REASON)),
]


def _fast_net(plan):
    torch.manual_seed(0)
    net = build_unet(plan, deep_supervision=False).eval()
    return E.cpu_fast_path(net, plan.dim)


@pytest.mark.parametrize("dim", [2, 3])
def test_eager_is_the_network_in_its_memory_format(tiny_study, dim):
    net, fmt = _fast_net(tiny_study.plans[dim])
    x = torch.randn(2, tiny_study.plans[dim].num_channels, *tiny_study.plans[dim].patch_size)
    with torch.inference_mode():
        torch.testing.assert_close(R.build_forward(net, "eager", fmt)(x),
                                   net(x.contiguous(memory_format=fmt)), atol=0, rtol=0)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("dim", [2, 3])
def test_a_runtime_computes_eagers_logits_at_any_batch(tiny_study, dim, runtime):
    plan = tiny_study.plans[dim]
    net, fmt = _fast_net(plan)
    forward = R.build_forward(net, runtime, fmt)
    eager = R.build_forward(net, "eager", fmt)
    torch.manual_seed(1)
    with torch.inference_mode():
        for batch in (3, 1):  # the graph is built from the first; the batch axis stays free
            x = torch.randn(batch, plan.num_channels, *plan.patch_size)
            torch.testing.assert_close(forward(x), eager(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("runtime", [*RUNTIMES, "eager"])
def test_prediction_with_tta_gives_eagers_labels(tiny_study, models, runtime):
    """The whole path: a loaded model, a preprocessed case, 8 flips, blended probabilities."""
    lm = E.load_model(models["3d"], torch.device("cpu"))
    patch = lm.plan.patch_size  # a corner a few tiles large: 8 tiles, 8 flips each
    data = np.load(tiny_study.preprocessed[3] / "BRATS_001.npy")[
        :, :patch[0] + 4, :patch[1] + 4, :patch[2] + 4]
    settings = study_config({"inference": {"tta": True, "batch_size": 2}}).inference
    eager = E.predict_logits(lm, data, settings)
    got = E.predict_logits(lm, data, replace(settings, runtime=runtime))
    assert set(lm.forwards) == {("eager", "fp32"), (runtime, "fp32")}  # built once, kept
    np.testing.assert_allclose(got, eager, atol=1e-5)
    assert (got.argmax(0) == eager.argmax(0)).mean() >= 0.9999


def test_a_missing_library_names_the_pip_extra(tiny_study, monkeypatch):
    real = importlib.import_module

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(R.importlib, "import_module", no_onnxruntime)
    net, fmt = _fast_net(tiny_study.plans[3])
    with pytest.raises(ImportError, match=r"'onnxruntime'.*nnpipe\[cpu-runtimes\]"):
        R.build_forward(net, "onnxruntime", fmt)
    R.build_forward(net, "eager", fmt)  # eager needs nothing more


@pytest.mark.parametrize(("runtime", "precision", "match"), [
    ("tensorrt", "fp32", "must be one of eager, compile, onnxruntime, openvino"),
    ("onnxruntime", "bf16", "float32 on the CPU only"),
    ("openvino", "bf16", "float32 on the CPU only"),
])
def test_bad_runtime_settings_are_refused_before_any_tile(tiny_study, runtime, precision, match):
    net, fmt = _fast_net(tiny_study.plans[3])
    with pytest.raises(ValueError, match=match):
        R.build_forward(net, runtime, fmt, precision)


def test_config_and_cli_take_the_runtime():
    from nnpipe.cli import RUNTIMES as CLI_RUNTIMES
    from nnpipe.cli import _parser

    assert study_config({}).inference.runtime == "eager"
    assert study_config({"inference": {"runtime": "openvino"}}).inference.runtime == "openvino"
    with pytest.raises(ValueError, match="tensorrt"):
        study_config({"inference": {"runtime": "tensorrt"}})
    assert tuple(r.value for r in R.Runtime) == CLI_RUNTIMES
    args = _parser().parse_args(["predict", "--model", "m", "--input", "i", "--out", "o",
                                 "--runtime", "onnxruntime"])
    assert args.runtime == "onnxruntime"
    with pytest.raises(SystemExit):
        _parser().parse_args(["predict", "--model", "m", "--out", "o", "--runtime", "x"])
