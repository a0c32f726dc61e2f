"""Starting a network from another model's weights (fine-tuning), as nnU-Net v2's
``-pretrained_weights`` does.

Every tensor whose name and shape are the same in both networks is carried over. Two kinds
of tensors may differ, and only those are left at their fresh initialisation:

* the **output heads** (full resolution and deep supervision): their output channels are
  the classes (or regions), which differ when the new dataset has other labels;
* the **first convolution**: its input channels are the image channels.

Anything else that differs means the two networks have different topologies; that is
refused (plan the new dataset like the pretrained model: ``planning.like``), because
carrying half a network over silently would train something nobody asked for.

The learning rate is warmed up linearly over the first steps of a fine-tuning run
(:func:`warmup_factor`), so the first large gradients of the re-initialised head do not
wreck the carried weights (nnU-Net v2's fine-tuning trainers warm up too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TransferReport:
    """Which tensors of the new network were carried over and which were re-initialised.

    ``reinitialised`` maps a tensor name to ``(pretrained shape, new shape)``;
    ``unused`` names the pretrained tensors the new network has no place for (e.g. deep
    supervision heads of a network trained with more of them).
    """

    source: str
    carried: tuple[str, ...]
    reinitialised: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
    unused: tuple[str, ...]

    def lines(self) -> list[str]:
        """Log lines naming what happened to every tensor that did not simply carry over."""
        out = [f"fine-tuning from {self.source}: {len(self.carried)} tensors carried over, "
               f"{len(self.reinitialised)} re-initialised"]
        for name, (old, new) in self.reinitialised.items():
            why = "output channels (classes)" if old[1:] == new[1:] else "input channels"
            out.append(f"  re-initialised {name}: {why} differ, pretrained {list(old)} vs "
                       f"new {list(new)}")
        if self.unused:
            out.append(f"  pretrained tensors not used: {', '.join(self.unused)}")
        return out


def _differs_only_in(old: torch.Size, new: torch.Size, axis: int) -> bool:
    if len(old) != len(new) or len(old) <= axis:
        return False
    return all(a == b for i, (a, b) in enumerate(zip(old, new, strict=True)) if i != axis)


def transfer_weights(model: torch.nn.Module, pretrained: Mapping[str, torch.Tensor],
                     source: str) -> TransferReport:
    """Copy ``pretrained`` tensors into ``model`` in place where name and shape agree.

    Args:
        model: the freshly initialised network (bare, without DDP or compile wrappers).
        pretrained: the pretrained network's state dict (tensors on any device).
        source: where the weights came from, for messages (a path).

    Returns:
        What was carried and what was re-initialised (:meth:`TransferReport.lines` to log).

    Raises:
        ValueError: naming the tensors, when a tensor other than an output head's (differing
            in output channels only) or an input convolution's (differing in input channels
            only) is missing or has another shape: the topologies differ.
    """
    own = model.state_dict()
    carried: list[str] = []
    reinit: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    wrong: list[str] = []
    for name, tensor in own.items():
        if name not in pretrained:
            wrong.append(f"{name} (missing in the pretrained model)")
            continue
        old = pretrained[name].shape
        if old == tensor.shape:
            carried.append(name)
        elif _differs_only_in(old, tensor.shape, 0) or _differs_only_in(old, tensor.shape, 1):
            reinit[name] = (tuple(old), tuple(tensor.shape))
        else:
            wrong.append(f"{name} (pretrained {list(old)}, new {list(tensor.shape)})")
    # output channels may differ only in the heads: a 1x1 convolution (or its bias) that no
    # other layer reads; input channels only in the first convolution. Anything else that
    # changed size is a different network.
    heads = [n for n, (old, new) in reinit.items() if old[1:] == new[1:]]
    inputs = [n for n in reinit if n not in heads]
    not_heads = [n for n in heads if any(k != 1 for k in own[n].shape[2:])]
    for n in not_heads + (inputs if len(inputs) > 1 else []):
        wrong.append(f"{n} (pretrained {list(reinit[n][0])}, new {list(reinit[n][1])})")
    if wrong:
        raise ValueError(
            f"pretrained weights {source!r} do not fit this network: "
            f"{'; '.join(wrong[:6])}{' ...' if len(wrong) > 6 else ''}. The topologies differ: "
            "plan the new dataset like the pretrained model (planning.like: the same model)")
    with torch.no_grad():
        for name in carried:
            own[name].copy_(pretrained[name].to(own[name].device, own[name].dtype))
    unused = tuple(sorted(set(pretrained) - set(own)))
    return TransferReport(source, tuple(carried), reinit, unused)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based): linear from
    ``1 / warmup_steps`` up to 1 over the first ``warmup_steps`` steps, then 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps
