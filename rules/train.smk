# One job per (config, precision, gpus, fold); 3d_cascade also reads its plan and the
# 3d_lowres cross-validation segmentations (rules/cascade.smk). A killed job rerun by Snakemake resumes from
# last.pt in the run folder (last.pt is not an output, so Snakemake keeps it). Under SLURM a
# warning signal before the time limit (profiles/slurm: slurm_extra --signal) makes training
# checkpoint and exit 143; the retry (profile: retries) resumes from that checkpoint.

# Seconds torchrun waits, after forwarding SIGTERM to its ranks, before it kills them (its
# own default is 30 s). Sized to fit between the trainer's budget for its SIGTERM checkpoint
# (nnpipe.training.trainer.SIGTERM_GRACE_S) and SLURM's warning before the time limit
# (profiles/slurm: --signal=TERM@<lead>); tests/training/test_trainer.py pins the order.
TORCHRUN_SHUTDOWN_S = 90


rule train:
    input:
        unpack(get_train_inputs),
        splits=rules.split.output.splits,
    output:
        model=FILE("model"),
        summary=FILE("train_json"),
        metrics=FILE("metrics"),
    params:
        preprocessed=subpath(input.manifest, parent=True),
        out=subpath(output.model, parent=True),
        launch=get_launcher,
        settings=section_json("training"),
        torchrun_shutdown_s=TORCHRUN_SHUTDOWN_S,
        cascade=get_train_cascade_args,
    threads: 1
    resources:
        gpu=get_gpus,  # GPUs of the whole job (sbatch --gpus)
        nodes=get_nodes,  # > 1 only when gpus > config gpus_per_node
        tasks=get_nodes,  # one torchrun agent per node (used by SLURM for multi-node runs)
        tasks_per_gpu=0,  # keeps the SLURM plugin from turning `tasks` into tasks per GPU
        mpi=get_multinode,  # multi-node: the plugin runs the shell in the batch step
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/train/{RUN}/{FOLD}.log",
    benchmark:
        f"{LOGS}/train/{RUN}/{FOLD}.tsv"
    shell:
        # exec: the trainer replaces the shell, so a SIGTERM from SLURM reaches it while
        # Snakemake (in the job) waits for its checkpoint instead of seeing the shell die first
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT={params.torchrun_shutdown_s}"
        " exec {params.launch} train --config-json {params.settings:q}"
        " --preprocessed {params.preprocessed} --splits {input.splits} --fold {wildcards.fold}"
        " --precision {wildcards.precision} {params.cascade} --threads {threads}"
        " --out {params.out} > {log} 2>&1"
