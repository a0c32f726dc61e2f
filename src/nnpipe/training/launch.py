"""The command line that starts ``nnpipe train`` or ``nnpipe benchmark`` on one or more GPUs.

rules/common.smk renders it into the rules' shells, and tests/training/test_two_nodes.py runs
the multi-node form with two agents on one machine: one function, so the test runs exactly
what a SLURM job runs.

- one GPU: ``nnpipe`` in the job's own process;
- several GPUs of one node: ``torchrun --standalone`` with one rank per GPU;
- several nodes: ``srun`` starts one torchrun *agent* per node; the agents meet at a c10d
  rendezvous hosted on the job's first node and number the nodes among themselves, so no
  ``--node-rank`` is needed (and none could be given: srun starts the same line everywhere).
"""

from __future__ import annotations

# c10d rendezvous port on the job's first node: one of RDZV_PORTS ports from RDZV_PORT_BASE,
# picked by the SLURM job id, so that multi-node jobs sharing a first node meet at different
# ports (29400 is torchrun's own default).
RDZV_PORT_BASE = 29400
RDZV_PORTS = 500


def nodes_for(gpus: int, gpus_per_node: int | None) -> int:
    """Nodes a ``gpus``-GPU run spans: one, unless it needs more GPUs than one node holds;
    then whole nodes (16 GPUs of 8-GPU nodes = 2). ``gpus_per_node`` 0/None: one node."""
    if gpus < 1:
        raise ValueError(f"a run needs at least one GPU (or CPU rank), got gpus={gpus}")
    if not gpus_per_node or gpus <= gpus_per_node:
        return 1
    if gpus % gpus_per_node:
        raise ValueError(f"a {gpus}-GPU run does not fill whole nodes of {gpus_per_node} GPUs "
                         "(gpus_per_node); use a multiple of it in grid.gpus")
    return gpus // gpus_per_node


def srun_prefix(nodes: int) -> str:
    """The ``srun`` that starts one agent per node of the job (a job step of ``nodes`` tasks)."""
    return f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1"


def agent_command(gpus: int, nodes: int) -> str:
    """What each node runs, up to the ``nnpipe`` subcommand; shell text.

    Across nodes the rendezvous endpoint and id are shell expressions: the batch step (on the
    job's first node) expands ``$(hostname)`` and ``$SLURM_JOB_ID`` before srun copies the
    line to every node, so all agents meet at the first node.
    """
    if gpus < 1 or nodes < 1 or gpus % nodes:
        raise ValueError(f"{gpus} GPU(s) cannot be split evenly over {nodes} node(s)")
    if gpus == 1:
        return "nnpipe"
    if nodes == 1:
        return f"torchrun --standalone --nproc-per-node {gpus} -m nnpipe"
    port = f"$(({RDZV_PORT_BASE} + SLURM_JOB_ID % {RDZV_PORTS}))"
    return (f"torchrun --nnodes {nodes} --nproc-per-node {gpus // nodes}"
            f" --rdzv-backend c10d --rdzv-endpoint $(hostname):{port}"
            " --rdzv-id $SLURM_JOB_ID -m nnpipe")


def launcher(gpus: int, nodes: int) -> str:
    """The whole launch prefix of a rule's shell: :func:`agent_command`, through
    :func:`srun_prefix` when the run spans nodes."""
    agent = agent_command(gpus, nodes)
    return f"{srun_prefix(nodes)} {agent}" if nodes > 1 else agent
