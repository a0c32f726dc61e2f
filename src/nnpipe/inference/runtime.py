"""Runtimes for the prediction network's forward pass: eager PyTorch, or one made for CPUs.

A runtime turns a loaded prediction network into ``forward(tiles) -> logits``, tiles
``(B, C, *patch)`` float32 to logits ``(B, K, *patch)``, the contract the sliding window
calls (once per tile batch, and once per flip of it with TTA). It is built once per model:

* ``eager``: the network as loaded (on CPUs after :func:`~nnpipe.inference.ensemble.cpu_fast_path`);
* ``compile``: ``torch.compile`` (inductor; on CPUs it writes C++ kernels, so it needs a C++
  compiler, and its first batches are slow while it compiles);
* ``onnxruntime``: the network exported to ONNX (batch axis dynamic; kept in a cache folder
  in the system's temporary directory, :func:`cached_onnx`) and run by ONNX Runtime's CPU
  execution provider;
* ``openvino``: the same ONNX graph run by OpenVINO on the CPU, in float32 (OpenVINO would
  otherwise pick bf16 on CPUs that have it).

ONNX Runtime and OpenVINO are optional installs (the ``cpu-runtimes`` extra) and run float32
on the CPU only; asking for them elsewhere is an error naming the setting, not a fallback.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
import tempfile
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from nnpipe.model.onednn import use_onednn

Forward = Callable[[torch.Tensor], torch.Tensor]

EXTRA = "cpu-runtimes"  # the pip extra that installs ONNX Runtime and OpenVINO


class Runtime(str, Enum):
    """What runs the prediction network's forward passes."""

    EAGER = "eager"
    COMPILE = "compile"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


# the packages each runtime imports (pip names: onnx, onnxscript, onnxruntime, openvino)
_NEEDS: dict[Runtime, tuple[str, ...]] = {
    Runtime.EAGER: (), Runtime.COMPILE: (),
    Runtime.ONNXRUNTIME: ("onnx", "onnxscript", "onnxruntime"),
    Runtime.OPENVINO: ("onnx", "onnxscript", "openvino"),
}


def as_runtime(value: Runtime | str) -> Runtime:
    """``value`` as a :class:`Runtime`; ``ValueError`` naming the options otherwise."""
    try:
        return Runtime(value)
    except ValueError:
        options = ", ".join(r.value for r in Runtime)
        raise ValueError(f"inference.runtime must be one of {options}, got {value!r}") from None


def require(runtime: Runtime | str) -> None:
    """Import what ``runtime`` needs; ``ImportError`` naming the pip extra if it is missing."""
    runtime = as_runtime(runtime)
    for module in _NEEDS[runtime]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"inference.runtime {runtime.value!r} needs the Python package {module!r}, "
                f"which is not installed; install it with `pip install 'nnpipe[{EXTRA}]'` "
                "or predict with inference.runtime eager") from exc


def build_forward(net: torch.nn.Module, runtime: Runtime | str,
                  memory_format: torch.memory_format = torch.contiguous_format,
                  precision: str = "fp32") -> Forward:
    """``forward(tiles) -> logits`` running ``net`` (in eval mode) on ``runtime``.

    ``memory_format`` is the one the eager network wants its tiles in (channels-last 3D on
    CPUs). ``precision`` is the inference precision; ONNX Runtime and OpenVINO run float32
    only. Their graph is exported at the first call, from that call's tiles (their shape,
    the batch axis left free, fixes the graph); every check is made here, before any tile.

    Raises:
        ValueError: an unknown runtime, or onnxruntime/openvino off the CPU or not in fp32.
        ImportError: the runtime's package is missing (naming the pip extra).
    """
    runtime = as_runtime(runtime)
    if runtime is Runtime.EAGER:
        return _eager(net, memory_format)
    if runtime is Runtime.COMPILE:
        return _eager(torch.compile(net), memory_format)
    device = next(net.parameters()).device
    if device.type != "cpu" or precision != "fp32":
        raise ValueError(f"inference.runtime {runtime.value!r} runs float32 on the CPU only, "
                         f"got device {device.type!r} and precision {precision!r}; "
                         "use inference.runtime eager or compile there")
    require(runtime)
    return _Exported(net, runtime)


class _Exported:
    """The network exported to ONNX at the first call and run by ONNX Runtime or OpenVINO;
    the ONNX file lives in a temporary folder only while the runtime loads it."""

    def __init__(self, net: torch.nn.Module, runtime: Runtime) -> None:
        self.net: torch.nn.Module | None = net
        self.runtime = runtime
        self.run: Forward | None = None

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        if self.run is None:
            if self.net is None:
                raise RuntimeError("the network was released before its graph was built")
            load = _onnxruntime if self.runtime is Runtime.ONNXRUNTIME else _openvino
            self.run = load(cached_onnx(self.net, tiles))
            self.net = None  # the runtime holds its own copy of the weights
        return self.run(tiles)


def cached_onnx(net: torch.nn.Module, example: torch.Tensor,
                cache: Path | None = None) -> Path:
    """The ONNX file of ``net`` for tiles shaped like ``example`` (any batch), exported on
    the first request and then taken from ``cache`` (default: a folder in the system's
    temporary directory, private to the user, beside no file of theirs).

    The export costs seconds to tens of seconds on a small CPU, once per model, where a
    prediction command takes a minute; each ``nnpipe predict`` is a new process, so the
    file is kept under a key of everything the graph depends on: the weights, the network's
    modules, the tile shape without its batch, torch's and the exporter's versions.
    """
    if cache is None:  # per user and private: other users of /tmp cannot plant a graph
        cache = Path(tempfile.gettempdir()) / f"nnpipe-onnx-cache-{os.getuid()}"
    digest = hashlib.sha256()
    onnxscript = importlib.import_module("onnxscript")  # optional: typed as a plain module
    digest.update(f"{torch.__version__} {onnxscript.__version__} {tuple(example.shape[1:])} "
                  f"{example.dtype} {net!r}".encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = cache / f"{digest.hexdigest()[:32]}.onnx"
    if not path.is_file():
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        # exported beside the final name, then renamed: a file of that name is complete
        with tempfile.TemporaryDirectory(prefix=".export-", dir=cache) as tmp:
            export_onnx(net, example, Path(tmp) / "net.onnx").replace(path)
    return path


def _eager(net: Callable[[torch.Tensor], Any], memory_format: torch.memory_format) -> Forward:
    def forward(tiles: torch.Tensor) -> torch.Tensor:
        return net(tiles.contiguous(memory_format=memory_format))
    return forward


def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write ``net`` as ONNX to ``path``, input ``tiles`` with a free batch axis, output
    ``logits``; the graph (weights included) is one self-contained file.

    Exported from a copy with plain ``nn.Conv3d`` in contiguous memory: ``aten``'s direct
    oneDNN convolution (:class:`~nnpipe.model.onednn.OneDnnConv3d`) has no ONNX form, and
    the runtimes choose their own kernels and layouts anyway.
    """
    # out of inference mode (prediction runs in it): the exporter traces with tensors that
    # autograd may see; batch 2 so that it cannot take the batch axis for a constant 1
    with torch.inference_mode(False), torch.no_grad():
        plain = use_onednn(copy.deepcopy(net), enabled=False).eval()
        # the ignore: torch's stub of Module.to lacks memory_format, which it accepts at runtime
        plain = plain.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        batch = torch.cat([example[:1], example[:1]]).float().contiguous()
        torch.onnx.export(plain, (batch,), str(path), input_names=["tiles"],
                          output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},),
                          dynamo=True, external_data=False, optimize=True, verbose=False)
    return path


def _onnxruntime(path: Path) -> Forward:
    ort = importlib.import_module("onnxruntime")  # optional: typed as a plain module

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.detach().float().contiguous().numpy()
        return torch.from_numpy(session.run(["logits"], {"tiles": x})[0])
    return forward


def _openvino(path: Path) -> Forward:
    ov = importlib.import_module("openvino")

    core = ov.Core()
    core.set_property({"CACHE_DIR": str(path.parent / "openvino")})  # compiled graphs, by hash
    model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",  # else bf16 on CPUs with AMX/AVX512-BF16
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()

    def forward(tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.detach().float().contiguous().numpy()
        out = request.infer({0: x})
        return torch.from_numpy(out[compiled.output(0)].copy())
    return forward
