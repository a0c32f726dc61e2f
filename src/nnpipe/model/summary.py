"""Size and cost of each ``planning.network`` preset: parameters and forward FLOPs per sample.

``nnpipe network`` (and ``python -m nnpipe.model.summary``) prints them for the MSD Task01
topology the reference benchmarks (4 channels in, 4 classes out; 3D 128^3 and 2D 192x160,
:func:`nnpipe.planning.task01.task01_plan`), with the residual presets' block counts
put on the same topology, and then for each preset's own automatic plan of a Task01-sized
dataset (484 cases of 240x240x155 at 1 mm), where M and L differ. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions and
transposed convolutions, no norms or activations) on the ``meta`` device: shapes only, so a
128^3 pass costs no arithmetic and no memory.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from nnpipe.model.registry import build_unet
from nnpipe.model.unet import count_parameters
from nnpipe.planning.network import NETWORKS, encoder_blocks
from nnpipe.planning.plan import Plan

TASK01_CASES = 484  # MSD Task01's training cases


@dataclass(frozen=True)
class NetworkCost:
    network: str
    dim: int
    patch_size: tuple[int, ...]
    parameters: int  # without deep-supervision heads (the network that predicts)
    gflops: float  # one forward pass of one sample, 1e9 FLOP
    batch_size: int = 0  # planned batch (0: not planned)
    vram_gb: float = 0.0  # estimated training-step memory at that batch


def with_network(plan: Plan, network: str) -> Plan:
    """``plan`` with its network replaced by preset ``network`` (same topology and patch)."""
    return dataclasses.replace(plan, network=network,
                               encoder_blocks=encoder_blocks(network, len(plan.strides)))


def forward_flops(plan: Plan) -> int:
    """FLOPs of one forward pass of one ``plan.patch_size`` sample (inference: no heads)."""
    with torch.device("meta"):
        net = build_unet(plan, deep_supervision=False, onednn=False).eval()
        x = torch.empty(1, plan.input_channels, *plan.patch_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return int(counter.get_total_flops())


def network_cost(plan: Plan) -> NetworkCost:
    with torch.device("meta"):
        params = count_parameters(build_unet(plan, deep_supervision=False, onednn=False))
    return NetworkCost(plan.network, plan.dim, plan.patch_size, params,
                       forward_flops(plan) / 1e9)


def task01_costs(networks: Sequence[str] = tuple(NETWORKS), dims: Sequence[int] = (3, 2)
                 ) -> list[NetworkCost]:
    """One row per dimension and network on the reference's Task01 topology."""
    from nnpipe.planning.task01 import task01_plan

    return [network_cost(with_network(task01_plan(dim), name))
            for dim in dims for name in networks]


def planned_task01_costs(networks: Sequence[str] = tuple(NETWORKS),
                         dims: Sequence[int] = (3, 2)) -> list[NetworkCost]:
    """One row per dimension and network for the network's own plan of a Task01-sized
    dataset (the schema's default ``planning`` settings, as a study without planning keys
    gets them): patch, batch, estimated memory, size and cost."""
    from nnpipe.config import load_config
    from nnpipe.planning import network as N
    from nnpipe.planning.planner import make_plan, settings_from_config
    from nnpipe.planning.task01 import task01_fingerprint

    one = task01_fingerprint()
    fp = dataclasses.replace(one, case_ids=tuple(f"case{i}" for i in range(TASK01_CASES)),
                             spacings=one.spacings * TASK01_CASES,
                             shapes=one.shapes * TASK01_CASES,
                             cropped_shapes=one.cropped_shapes * TASK01_CASES)
    defaults = settings_from_config(load_config(None).planning)
    rows = []
    for dim in dims:
        for name in networks:
            settings = dataclasses.replace(defaults, network=name)
            plan = make_plan(fp, dim, settings, "Task01-sized")
            convs = N.layers(plan.patch_size, plan.kernels, plan.strides, plan.filters,
                             plan.input_channels, plan.num_classes, plan.encoder_blocks,
                             N.deep_supervision_heads(len(plan.strides)))
            cost = network_cost(plan)
            rows.append(dataclasses.replace(cost, batch_size=plan.batch_size,
                                            vram_gb=N.estimate_vram_gb(convs, plan.batch_size)))
    return rows


def format_costs(rows: Sequence[NetworkCost]) -> str:
    planned = any(r.batch_size for r in rows)
    lines = ["| network | dim | patch | parameters | GFLOP / sample (forward) |"
             + (" batch | est. GB (amp step) |" if planned else ""),
             "|---|---|---|---:|---:|" + ("---:|---:|" if planned else "")]
    for r in rows:
        patch = "x".join(str(p) for p in r.patch_size)
        lines.append(f"| {r.network} | {r.dim}D | {patch} | {r.parameters:,} | "
                     f"{r.gflops:,.1f} |" + (f" {r.batch_size} | {r.vram_gb:.1f} |"
                                             if planned else ""))
    return "\n".join(lines)


def report(dims: Sequence[int] = (3, 2)) -> str:
    """Both tables: the reference's Task01 topology, then each preset's own Task01 plan."""
    return "\n".join([
        "MSD Task01 topology (4 channels, 4 classes; the reference's patches):",
        format_costs(task01_costs(dims=dims)), "",
        f"Each network's own plan of a Task01-sized dataset ({TASK01_CASES} cases, "
        "240x240x155 at 1 mm; the schema's default planning settings):",
        format_costs(planned_task01_costs(dims=dims))])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nnpipe.model.summary", description=__doc__)
    p.add_argument("--dim", type=int, choices=(2, 3), nargs="*", default=[3, 2])
    args = p.parse_args(argv)
    print(report(args.dim))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
