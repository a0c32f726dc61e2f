"""Host-side collectives go over the CPU (gloo) group, never over NCCL."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from nnpipe.training import distributed as D


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[str, str, object]]:
    calls: list[tuple[str, str, object]] = []

    def all_reduce(t, op=None, group=None):
        calls.append(("all_reduce", t.device.type, group))

    def broadcast_object_list(objs, src=0, group=None):
        calls.append(("broadcast", "cpu", group))

    def all_gather_object(out, obj, group=None):
        out[:] = [obj] * len(out)
        calls.append(("all_gather", "cpu", group))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast_object_list)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    monkeypatch.setattr(dist, "barrier", lambda group=None: calls.append(("barrier", "", group)))
    return calls


def test_host_collectives_use_the_cpu_group_and_cpu_tensors(recorded):
    info = D.DistInfo(1, 2, 1, torch.device("meta"), cpu_group="gloo")
    D.all_reduce_mean(1.0, info)
    D.any_rank(True, info)
    D.broadcast_from_main("x", info)
    assert D.gather_objects("x", info) == ["x", "x"]
    D.all_reduce_sum(torch.zeros(3, dtype=torch.float64), info)
    D.barrier(info)
    assert [c[2] for c in recorded] == ["gloo"] * 6
    assert {c[1] for c in recorded if c[0] == "all_reduce"} == {"cpu"}


def test_a_single_process_calls_no_collective(recorded):
    info = D.DistInfo(0, 1, 0, torch.device("cpu"))
    assert D.all_reduce_mean(2.5, info) == 2.5 and D.any_rank(True, info)
    assert D.broadcast_from_main(3, info) == 3 and D.gather_objects(3, info) == [3]
    D.barrier(info)
    assert recorded == []


@pytest.mark.parametrize(("device", "gpus"), [("cpu", 0), ("cuda", 4)])
def test_gpus_of_a_run(device, gpus):
    assert D.DistInfo(0, 4, 0, torch.device(device)).gpus == gpus


@pytest.mark.parametrize(("local_rank", "local_world", "cpus", "mine"), [
    (0, 2, [0, 1, 2, 3], [0, 1]),
    (1, 2, [0, 1, 2, 3], [2, 3]),
    (2, 3, [4, 5, 6, 7, 8, 9, 10], [8, 9]),  # 7 CPUs for 3 ranks: 2 each, one left idle
    (0, 1, [0, 1], [0, 1]),
])
def test_bind_gives_each_rank_its_own_share(monkeypatch, local_rank, local_world, cpus, mine):
    pinned = {}
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, c: pinned.update(cpus=list(c)))
    assert D.bind_cpus(None) == len(mine)
    assert pinned["cpus"] == mine
    assert D.bind_cpus(7) == 7  # --threads wins over the share's size


def test_bind_needs_a_cpu_per_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(ValueError, match="a CPU per rank"):
        D.bind_cpus(None)
