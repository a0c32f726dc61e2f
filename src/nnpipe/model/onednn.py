"""3D convolutions that stay in oneDNN on CPUs, in training too, whatever the batch size.

PyTorch picks a CPU convolution kernel per call (``use_mkldnn`` in ATen's ConvUtils): a
float32 convolution of a *single* sample whose first four axes hold at most 20480 elements
(``1 * C * D * H``; e.g. 4 channels at 32^3, 16 channels at 16^3) goes to its reference
kernel (``slow_conv3d``), and so does the backward pass of such a convolution. With the
demo's 32^3 network every convolution at batch 1 qualifies, which is why 3D fp32 training at
batch 1 ran at 4.4 samples/s against 18.9 at batch 2 (issue 12).

:class:`OneDnnConv3d` is an ``nn.Conv3d`` (same parameters, same state-dict keys, same
initialisation) whose float32 CPU forward calls ``aten.mkldnn_convolution`` directly:

* without autograd (prediction, validation) on the input as it is;
* with autograd at batch 1, on the sample cut into two overlapping halves along its longest
  output axis and stacked as a batch of 2. Autograd differentiates ``mkldnn_convolution``
  with ``convolution_backward``, which chooses its kernel by the same rule; at batch 2 that
  is oneDNN. Each half carries the ``dilation * (kernel - 1)`` input rows the other half's
  border outputs need (a halo), so the outputs are the convolution's, and the gradients of
  the halves add up (autograd of ``narrow`` and ``cat``) to the convolution's gradients
  (equal up to float rounding, ``tests/model/test_onednn.py``); for a stride-1 3^3 kernel
  the halo costs ``4 / n`` extra work for ``n`` outputs along the cut axis (1/8 at 32).
  Batches of 2 and more need no cut: they go to oneDNN either way.

GPUs, other dtypes, autocast (bf16 on CPUs already runs in oneDNN) and ``torch.compile``
take ``nn.Conv3d``'s own path.

Measured with torch 2.13 on 2 shared (busy) cores, the demo's 3D network (32^3, filters
8-64, deep supervision), fp32 training steps of the four setups interleaved, median of 20:
plain ``nn.Conv3d`` 937 ms at batch 1 and 239 ms at batch 2 (batch 1 at 0.13 of batch 2's
samples/s); with this module 128 ms and 245 ms (0.95).
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

_C = TypeVar("_C", bound=nn.Conv3d)
_M = TypeVar("_M", bound=nn.Module)


class OneDnnConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose float32 CPU convolutions, forward and backward, run in oneDNN.

    Input ``(B, C_in, D, H, W)``, output ``(B, C_out, D', H', W')`` as ``nn.Conv3d``.
    """

    @staticmethod
    def supports(conv: nn.Conv3d) -> bool:
        """Whether ``conv``'s arguments are ones ``mkldnn_convolution`` takes (zero padding
        given as numbers) and this torch has oneDNN."""
        return (torch.backends.mkldnn.is_available() and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str))

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> OneDnnConv3d:
        """A :class:`OneDnnConv3d` sharing ``conv``'s parameters (no copy, no random draws)."""
        return _sharing(cls, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.compile: mkldnn_convolution has no fake-tensor kernel, and inductor chooses
        # CPU convolution kernels itself
        if x.device.type != "cpu" or x.dtype != torch.float32 or \
                torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or \
                not self.supports(self):
            return super().forward(x)
        if x.shape[0] == 1 and torch.is_grad_enabled() and \
                (x.requires_grad or self.weight.requires_grad):
            return self._halves(x)
        return self._onednn(x, list(self._int_padding()))

    def _int_padding(self) -> tuple[int, ...]:
        """Padding in voxels per axis; a string padding ("same") never gets here (forward
        falls back to Conv3d when :meth:`supports` is False)."""
        if isinstance(self.padding, str):
            raise ValueError(f"OneDnnConv3d needs padding in voxels, got {self.padding!r}")
        return self.padding

    def _onednn(self, x: torch.Tensor, padding: list[int]) -> torch.Tensor:
        return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, padding,
                                                 self.stride, self.dilation, self.groups)

    def _halves(self, x: torch.Tensor) -> torch.Tensor:
        """One sample ``(1, C, *S)`` as two overlapping halves in one batch of 2 (see the
        module docstring); the same output, computed where the backward runs in oneDNN."""
        pads = self._int_padding()
        sizes = [_out_size(x.shape[2 + a], self.kernel_size[a], self.stride[a],
                           pads[a], self.dilation[a]) for a in range(3)]
        axis = max(range(3), key=lambda a: sizes[a])
        n = sizes[axis]
        if n < 2:  # a single output voxel per axis: nothing to cut, and cheap anyway
            return super().forward(x)
        half = (n + 1) // 2  # outputs per half; the halves overlap by one row if n is odd
        s, p = self.stride[axis], pads[axis]
        span = (half - 1) * s + self.dilation[axis] * (self.kernel_size[axis] - 1) + 1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = p  # F.pad lists the last axis first
        xp = F.pad(x, pad)
        second = n - half
        pair = torch.cat([xp.narrow(2 + axis, 0, span), xp.narrow(2 + axis, second * s, span)])
        padding = list(pads)
        padding[axis] = 0  # padded above, so that the cut borders see data, not zeros
        y = self._onednn(pair, padding)
        overlap = 2 * half - n
        return torch.cat([y[:1], y[1:].narrow(2 + axis, overlap, half - overlap)],
                         dim=2 + axis)


def _out_size(n: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def use_onednn(net: _M, enabled: bool = True) -> _M:
    """Swap ``net``'s 3D convolutions in place: plain ``nn.Conv3d`` to
    :class:`OneDnnConv3d` (``enabled``), or back to plain ``nn.Conv3d``; parameters are
    shared, state-dict keys unchanged. Convolutions oneDNN cannot take stay as they are.
    Returns ``net``."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if enabled and type(child) is nn.Conv3d and OneDnnConv3d.supports(child):
                setattr(module, name, OneDnnConv3d.from_conv(child))
            elif not enabled and type(child) is OneDnnConv3d:
                setattr(module, name, _sharing(nn.Conv3d, child))
    return net


def _sharing(cls: type[_C], conv: nn.Conv3d) -> _C:
    """A ``cls`` with ``conv``'s arguments and its very parameters. The new module is made
    on the meta device (no memory, no random draws) and then takes ``conv``'s parameters;
    ``torch.nn.utils.skip_init`` would do the same but its ``to_empty`` imports sympy and
    torch.fx's symbolic shapes, 0.6 s of ``nnpipe predict``'s start-up (issue 19 item 4)."""
    # conv's own arguments (Any: Conv3d stores tuples of any length, takes 3-tuples)
    same: dict[str, Any] = {name: getattr(conv, name) for name in (
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
        "groups", "padding_mode")}
    new = cls(**same, bias=conv.bias is not None, device="meta", dtype=conv.weight.dtype)
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new
