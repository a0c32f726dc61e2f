"""The launch prefix of the train and benchmark rules, per GPU count and node size."""

from __future__ import annotations

import pytest

from nnpipe.training.launch import agent_command, launcher, nodes_for


@pytest.mark.parametrize(("gpus", "per_node", "nodes"), [
    (1, 8, 1), (8, 8, 1), (16, 8, 2), (32, 8, 4), (2, 1, 2), (4, None, 1), (4, 0, 1)])
def test_nodes_for(gpus, per_node, nodes):
    assert nodes_for(gpus, per_node) == nodes


@pytest.mark.parametrize(("gpus", "per_node", "message"), [
    (12, 8, "a 12-GPU run does not fill whole nodes of 8 GPUs"), (0, 8, "gpus=0")])
def test_nodes_for_rejects(gpus, per_node, message):
    with pytest.raises(ValueError, match=message):
        nodes_for(gpus, per_node)


@pytest.mark.parametrize(("gpus", "nodes", "line"), [
    (1, 1, "nnpipe"),
    (4, 1, "torchrun --standalone --nproc-per-node 4 -m nnpipe"),
    # the batch step expands $(hostname) and $SLURM_JOB_ID on the first node, before srun
    (16, 2, "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 torchrun --nnodes 2"
            " --nproc-per-node 8 --rdzv-backend c10d"
            " --rdzv-endpoint $(hostname):$((29400 + SLURM_JOB_ID % 500))"
            " --rdzv-id $SLURM_JOB_ID -m nnpipe"),
])
def test_launcher(gpus, nodes, line):
    assert launcher(gpus, nodes) == line


def test_uneven_split_is_refused():
    with pytest.raises(ValueError, match="3 GPU"):
        agent_command(3, 2)
