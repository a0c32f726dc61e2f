"""The networks of nnU-Net v2 models, with v2's parameter names, built from plans.

nnU-Net v2 builds ``PlainConvUNet`` and ``ResidualEncoderUNet`` from the
``dynamic_network_architectures`` package; their state dicts name every parameter by
module path. This module builds the same topology from the plans' ``arch_kwargs`` with
modules of nnpipe's own whose paths are v2's, so a v2 ``network_weights`` state dict loads
strictly once :func:`canonical_state_dict` has removed what v2 stores twice:

* ``...all_modules.<i>.`` (each conv block also registers its conv and norm in a
  ``Sequential``: index 0 is the conv, the next parametrised one the norm);
* ``decoder.encoder.`` (the decoder keeps a reference to the encoder);
* ``_orig_mod.`` / ``module.`` prefixes (``torch.compile`` / DDP wrappers).

Layout (``s`` a stage, ``i`` a conv, ``b`` a block)::

    PlainConvUNet        encoder.stages.s.0.convs.i.{conv,norm}
    ResidualEncoderUNet  encoder.stem.convs.0.{conv,norm}
                         encoder.stages.s.blocks.b.{conv1,conv2}.{conv,norm}
                         encoder.stages.s.blocks.b.skip.{0|1}.{conv,norm}  (1 after avg pool)
    both                 decoder.transpconvs.s, decoder.stages.s.convs.i.{conv,norm},
                         decoder.seg_layers.s (only the last is used: no deep supervision)

Operators are chosen from an explicit table by the names the plans give
(``torch.nn.modules.conv.Conv3d`` ...); anything else is refused naming the field, never
imported by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnpipe.model.upsample import up_concat
from nnpipe.v2.plans import PLAIN, RESENC, V2PlansError

CONV_OPS: dict[str, tuple[int, type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    # name: (dim, conv, transposed conv, avg pool)
    name: ops for dim, ops in (
        (2, (2, nn.Conv2d, nn.ConvTranspose2d, nn.AvgPool2d)),
        (3, (3, nn.Conv3d, nn.ConvTranspose3d, nn.AvgPool3d)))
    for name in (f"torch.nn.modules.conv.Conv{dim}d", f"torch.nn.Conv{dim}d")}
NORM_OPS: dict[str, type[nn.Module]] = {
    f"{prefix}{cls.__name__}": cls
    for cls in (nn.InstanceNorm2d, nn.InstanceNorm3d, nn.BatchNorm2d, nn.BatchNorm3d)
    for prefix in ("torch.nn.", f"{cls.__module__}.")}
NONLINS: dict[str, type[nn.Module]] = {
    f"{prefix}{cls.__name__}": cls for cls in (nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU)
    for prefix in ("torch.nn.", f"{cls.__module__}.")}
DROPOUTS = {f"{prefix}{cls.__name__}" for cls in (nn.Dropout, nn.Dropout2d, nn.Dropout3d)
            for prefix in ("torch.nn.", f"{cls.__module__}.")}
ARCH_FIELDS = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides",
               "n_conv_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder",
               "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs",
               "nonlin", "nonlin_kwargs", "nonlin_first", "deep_supervision", "block",
               "bottleneck_channels", "stem_channels"}


class ConvBlock(nn.Module):
    """conv -> norm -> nonlin (``nonlin_first``: conv -> nonlin -> norm); 'same' padding
    ``(k - 1) // 2``. Dropout, an identity at inference, is not built."""

    def __init__(self, ops: _Ops, cin: int, cout: int, kernel: Sequence[int],
                 stride: Sequence[int], bias: bool, nonlin: bool = True) -> None:
        super().__init__()
        self.conv = ops.conv(cin, cout, tuple(kernel), tuple(stride),
                             padding=[(k - 1) // 2 for k in kernel], bias=bias)
        self.norm = ops.norm(cout) if ops.norm is not None else None
        self.nonlin = ops.nonlin() if nonlin and ops.nonlin is not None else None
        self.nonlin_first = ops.nonlin_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.nonlin_first and self.nonlin is not None:
            x = self.nonlin(x)
            return self.norm(x) if self.norm is not None else x
        if self.norm is not None:
            x = self.norm(x)
        return self.nonlin(x) if self.nonlin is not None else x


class Stacked(nn.Module):
    """``convs``: ``n`` :class:`ConvBlock` s, the first with ``stride``."""

    def __init__(self, ops: _Ops, n: int, cin: int, cout: int, kernel: Sequence[int],
                 stride: Sequence[int], bias: bool) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[
            ConvBlock(ops, cin if i == 0 else cout, cout, kernel, stride if i == 0 else
                      [1] * len(kernel), bias) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class BasicBlock(nn.Module):
    """Residual block: ``conv2(conv1(x)) + skip(x)``, then the nonlinearity. The skip is
    the identity, an average pool (stride, same channels: the pool-only skip), a 1x1
    conv + norm (channels change), or both (pool at index 0, projection at 1)."""

    def __init__(self, ops: _Ops, cin: int, cout: int, kernel: Sequence[int],
                 stride: Sequence[int], bias: bool) -> None:
        super().__init__()
        self.conv1 = ConvBlock(ops, cin, cout, kernel, stride, bias)
        self.conv2 = ConvBlock(ops, cout, cout, kernel, [1] * len(kernel), bias, nonlin=False)
        self.nonlin2 = ops.nonlin() if ops.nonlin is not None else nn.Identity()
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            skip.append(ops.pool(tuple(stride), tuple(stride)))
        if cin != cout:
            skip.append(ConvBlock(ops, cin, cout, [1] * len(kernel), [1] * len(kernel), False,
                                  nonlin=False))
        self.skip = nn.Sequential(*skip)  # empty: the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out = out + self.skip(x)
        return self.nonlin2(out)


class ResidualStage(nn.Module):
    def __init__(self, ops: _Ops, n: int, cin: int, cout: int, kernel: Sequence[int],
                 stride: Sequence[int], bias: bool) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[
            BasicBlock(ops, cin if b == 0 else cout, cout, kernel,
                       stride if b == 0 else [1] * len(kernel), bias) for b in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Encoder(nn.Module):
    def __init__(self, stem: nn.Module | None, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        if stem is not None:
            self.stem = stem
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if hasattr(self, "stem"):
            x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    def __init__(self, ops: _Ops, features: Sequence[int], kernels: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], n_convs: Sequence[int], num_classes: int,
                 bias: bool) -> None:
        super().__init__()
        n = len(features)
        self.transpconvs = nn.ModuleList(
            ops.transp(features[-s], features[-(s + 1)], tuple(strides[-s]), tuple(strides[-s]),
                       bias=bias) for s in range(1, n))
        self.stages = nn.ModuleList(
            Stacked(ops, n_convs[s - 1], 2 * features[-(s + 1)], features[-(s + 1)],
                    kernels[-(s + 1)], [1] * len(kernels[0]), bias) for s in range(1, n))
        self.seg_layers = nn.ModuleList(
            ops.conv(features[-(s + 1)], num_classes, 1, 1, 0, bias=True) for s in range(1, n))

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for s, (up, stage) in enumerate(zip(self.transpconvs, self.stages, strict=True)):
            # torch.cat((up(x), skip), 1); on nnpipe's CPU prediction path one matrix product
            x = stage(up_concat(up, x, skips[-(s + 2)]))
        return self.seg_layers[-1](x)


class V2UNet(nn.Module):
    """A v2 U-Net for prediction: ``(B, C, *patch)`` -> logits ``(B, K, *patch)``."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class _Ops:
    """The operators of one network, from the plans' names (checked)."""

    def __init__(self, kw: Mapping[str, Any], where: str) -> None:
        def pick(table: Mapping[str, Any], field: str, optional: bool = False) -> Any:
            name = kw.get(field)
            if name is None and optional:
                return None
            if not isinstance(name, str) or name not in table:
                raise V2PlansError(f"{where}: field arch_kwargs.{field} is {name!r}; nnpipe "
                                   f"builds {', '.join(sorted(table))}")
            return table[name]

        self.dim, self.conv, self.transp, self.pool = pick(CONV_OPS, "conv_op")
        norm = pick(NORM_OPS, "norm_op", optional=True)
        norm_kw = dict(kw.get("norm_op_kwargs") or {})
        nonlin = pick(NONLINS, "nonlin", optional=True)
        nonlin_kw = {k: v for k, v in (kw.get("nonlin_kwargs") or {}).items() if k != "inplace"}
        if kw.get("dropout_op") is not None and kw["dropout_op"] not in DROPOUTS:
            raise V2PlansError(f"{where}: field arch_kwargs.dropout_op is "
                               f"{kw['dropout_op']!r}")
        if norm is not None and self._ndim(norm) != self.dim:
            raise V2PlansError(f"{where}: norm_op {kw['norm_op']!r} does not fit conv_op "
                               f"{kw['conv_op']!r}")
        self.norm: Callable[[int], nn.Module] | None = (
            (lambda c: norm(c, **norm_kw)) if norm is not None else None)
        self.nonlin: Callable[[], nn.Module] | None = (
            (lambda: nonlin(**nonlin_kw)) if nonlin is not None else None)
        self.nonlin_first = bool(kw.get("nonlin_first", False))

    @staticmethod
    def _ndim(cls: type[nn.Module]) -> int:
        return 2 if cls.__name__.endswith("2d") else 3


def _per_stage(value: Any, n: int, field: str, where: str) -> list[Any]:
    """An int given for every stage, or a list with one entry per stage."""
    out = [value] * n if isinstance(value, int) else list(value)
    if len(out) != n:
        raise V2PlansError(f"{where}: arch_kwargs.{field} has {len(out)} entries for "
                           f"{n} stage(s)")
    return out


def build_network(architecture: str, kw: Mapping[str, Any], input_channels: int,
                  num_outputs: int, where: str = "plans.json") -> V2UNet:
    """The prediction network of a v2 configuration (no deep supervision), v2 key layout.

    Raises:
        V2PlansError: a field nnpipe does not build (custom block, unknown operator, lists
            of the wrong length), naming ``where`` and the field.
    """
    unknown = set(kw) - ARCH_FIELDS
    if unknown:
        raise V2PlansError(f"{where}: arch_kwargs has field(s) nnpipe does not know: "
                           f"{sorted(unknown)}")
    if architecture == RESENC and kw.get("block") not in (None, "BasicBlockD",
                                                          "dynamic_network_architectures."
                                                          "building_blocks.residual.BasicBlockD"):
        raise V2PlansError(f"{where}: field arch_kwargs.block is {kw['block']!r}; nnpipe "
                           "builds BasicBlockD")
    ops = _Ops(kw, where)
    n = int(kw["n_stages"])
    features = [int(f) for f in _per_stage(kw["features_per_stage"], n, "features_per_stage",
                                           where)]
    kernels = [[int(k)] * ops.dim if isinstance(k, int) else [int(x) for x in k]
               for k in _per_stage(kw["kernel_sizes"], n, "kernel_sizes", where)]
    strides = [[int(s)] * ops.dim if isinstance(s, int) else [int(x) for x in s]
               for s in _per_stage(kw["strides"], n, "strides", where)]
    decoder_convs = _per_stage(kw["n_conv_per_stage_decoder"], n - 1,
                               "n_conv_per_stage_decoder", where)
    bias = bool(kw.get("conv_bias", False))
    stages: list[nn.Module] = []
    cin = input_channels
    stem: nn.Module | None = None
    if architecture == PLAIN:
        convs = _per_stage(kw["n_conv_per_stage"], n, "n_conv_per_stage", where)
        for s in range(n):
            stages.append(nn.Sequential(Stacked(ops, int(convs[s]), cin, features[s],
                                                kernels[s], strides[s], bias)))
            cin = features[s]
    elif architecture == RESENC:
        blocks = _per_stage(kw["n_blocks_per_stage"], n, "n_blocks_per_stage", where)
        stem_channels = int(kw.get("stem_channels") or features[0])
        stem = Stacked(ops, 1, cin, stem_channels, kernels[0], [1] * ops.dim, bias)
        cin = stem_channels
        for s in range(n):
            stages.append(ResidualStage(ops, int(blocks[s]), cin, features[s], kernels[s],
                                        strides[s], bias))
            cin = features[s]
    else:
        raise V2PlansError(f"{where}: architecture {architecture!r}")
    decoder = Decoder(ops, features, kernels, strides, [int(c) for c in decoder_convs],
                      num_outputs, bias)
    return V2UNet(Encoder(stem, stages), decoder)


# ---------------------------------------------------------------- key mapping

WRAPPER_PREFIXES = ("_orig_mod.", "module.")
ENCODER_ALIAS = "decoder.encoder."
_ALL_MODULES = ".all_modules."


def canonical_state_dict(weights: Mapping[str, torch.Tensor], source: Path | str
                         ) -> dict[str, torch.Tensor]:
    """``weights`` (a v2 ``network_weights``) without wrapper prefixes and aliases.

    An alias (``decoder.encoder.X`` of ``encoder.X``; ``...all_modules.0.P`` of
    ``...conv.P``, ``...all_modules.<i>.P`` of ``...norm.P``) is dropped when the named
    entry is there and holds the same values, and renamed to it when only the alias is
    there.

    Raises:
        ValueError: an alias whose values differ from the entry it names (the file is not
            what v2 writes), naming ``source`` and the key.
    """
    plain: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in plain:
            raise ValueError(f"checkpoint {str(source)!r}: {key!r} and another key name the "
                             f"same parameter {name!r}")
        plain[name] = value
    out: dict[str, torch.Tensor] = {}
    aliases: list[tuple[str, str]] = []
    for key, value in plain.items():
        target = key
        if target.startswith(ENCODER_ALIAS):
            target = target[len("decoder."):]
        if _ALL_MODULES in target:
            head, tail = target.split(_ALL_MODULES, 1)
            index, param = tail.split(".", 1)
            target = f"{head}.{'conv' if index == '0' else 'norm'}.{param}"
        if target == key:
            out[key] = value
        else:
            aliases.append((key, target))
    for key, target in aliases:
        if target not in out:
            out[target] = plain[key]
        elif not _same_tensor(out[target], plain[key]) and (
                out[target].shape != plain[key].shape or not torch.equal(out[target],
                                                                          plain[key])):
            raise ValueError(f"checkpoint {str(source)!r}: {key!r} should be an alias of "
                             f"{target!r} but holds other values")
    return out


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` view the same memory the same way (``torch.save`` keeps an
    alias's shared storage, so v2's aliases load as views of the entry they name: equal
    without comparing their values, which took 0.4 s a fold)."""
    return (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())


def load_weights(net: nn.Module, weights: Mapping[str, torch.Tensor], source: Path | str,
                 assign: bool = False) -> None:
    """Load a v2 state dict into ``net`` strictly (after :func:`canonical_state_dict`).
    ``assign``: the network takes the tensors themselves instead of copying them into its
    own (``load_state_dict(assign=True)``; for a network built on the meta device).

    Raises:
        ValueError: naming ``source`` and the missing, unexpected or mis-shaped keys.
    """
    kept = canonical_state_dict(weights, source)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    shapes = sorted(f"{k} {tuple(kept[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in set(kept) & set(expected) if kept[k].shape != expected[k].shape)
    problems = [f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected),
                                   ("shape (checkpoint vs plans)", shapes)) if keys]
    if problems:
        raise ValueError(f"checkpoint {str(source)!r} does not match the network its plans "
                         f"describe ({'; '.join(problems)})")
    net.load_state_dict(kept, strict=True, assign=assign)
