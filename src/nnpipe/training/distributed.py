"""torchrun/DDP wiring: one process per GPU (NCCL) or per CPU rank (gloo).

Host-side agreements (whether to stop for SIGTERM, whether to resume, the loader states of a
checkpoint) travel over a CPU (gloo) group, never over NCCL: a collective on a CUDA tensor
must be read back with ``.item()``, which waits for every kernel queued before it, so a
per-step vote over NCCL would drain the GPU pipeline every few steps.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nnpipe.progress import log


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # the gloo group for host-side collectives (None: the default group, already gloo, or a
    # single process)
    cpu_group: Any = None
    # the node's rank among the run's nodes (torchrun's GROUP_RANK; with a c10d rendezvous
    # the agents number the nodes themselves, so it is known only once the ranks start)
    node: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def gpus(self) -> int:
        """GPUs of the whole run: one per rank on CUDA, none on the CPU."""
        return self.world_size if self.device.type == "cuda" else 0


def init_distributed(force_cpu: bool = False) -> DistInfo:
    """Read torchrun's environment; start a process group when there is more than one rank.

    Without torchrun (no ``WORLD_SIZE``) this is a single process on ``cuda:0`` or the CPU.
    On CUDA a second, gloo group is made for host-side collectives (see the module doc).
    With several ranks each one logs where it runs, once its group is up: in a multi-node
    job's log this is the proof that every node's ranks joined.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    node = int(os.environ.get("GROUP_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not force_cpu
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    cpu_group = None
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            cpu_group = dist.new_group(backend="gloo")
        log(f"rank {rank} of {world} on node {node} (local rank {local}): "
            f"host {_host()}, {device}, {dist.get_backend()}")
    return DistInfo(rank, world, local, device, cpu_group, node)


def bind_cpus(threads: int | None) -> int:
    """Pin this rank to its share of the allowed CPUs; returns the threads to use (``threads``
    if given, else the share's size).

    Raises:
        ValueError: if there are fewer CPUs than ranks on this node.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < local_world:
        raise ValueError(f"--bind needs a CPU per rank: {local_world} ranks on this node, "
                         f"{len(cpus)} CPUs allowed ({cpus})")
    share = len(cpus) // local_world
    mine = cpus[local_rank * share:(local_rank + 1) * share]
    os.sched_setaffinity(0, mine)
    return threads or len(mine)


def _host() -> str:
    """This machine's name, and its SLURM node name where that differs (several slurmd on
    one host, as in tests/slurm)."""
    host, node = socket.gethostname(), os.environ.get("SLURMD_NODENAME")
    return f"{host} (SLURM node {node})" if node and node != host else host


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a scalar over ranks (identity in a single process); host-side (gloo)."""
    if info.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=info.cpu_group)
    return float(t.item()) / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is set on any rank, agreed by all; host-side (gloo), so it never
    waits for the GPU."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.cpu_group)
    return bool(t.item())


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (picklable; identity in a single process)."""
    if info.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=info.cpu_group)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if info.world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj, group=info.cpu_group)
    return gathered


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of a small CPU tensor over ranks, in place and returned (identity alone)."""
    if info.world_size > 1:
        dist.all_reduce(t, group=info.cpu_group)
    return t


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier(group=info.cpu_group)


def shutdown(info: DistInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
