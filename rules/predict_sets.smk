# New images at scale: config `predict: {NAME: {input: DIR, model: best | RUN | PATH, parts: N}}`.
# `snakemake results/<dataset>/predictions/<NAME>` runs N predict_part jobs, each on a
# disjoint shard of the cases (nnpipe.inference.shards: case ids sorted, every N-th), each
# asking one GPU, writing into predictions/<NAME>.parts/ (not an output: a killed job's
# finished cases stay there, and its rerun, with --continue, predicts only the missing ones)
# and a part record when done; gather_predictions then checks the records and links every
# case once into predictions/<NAME>/. `snakemake predictions` makes every set.
# Its wiring (the sets, input functions) is rules/predict_sets_inputs.smk.


include: "predict_sets_inputs.smk"


localrules:
    gather_predictions,
    predictions,


rule predict_part:
    input:
        unpack(get_predict_set_model),
        images=get_predict_set_input,
    output:
        record=f"{PREDICTIONS}.parts/part{{part}}-of-{{parts}}.json",
    params:
        out=subpath(output.record, parent=True),
        settings=section_json("inference"),
        extra=get_predict_set_args,
    wildcard_constraints:
        name=SET_NAMES,
        part=r"\d+",
        parts=r"\d+",
    threads: 1
    resources:
        gpu=1,  # one GPU per part (sbatch --gpus=1); on one machine, --resources gpu=N caps it
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/predictions/{{name}}/part{{part}}-of-{{parts}}.log",
    benchmark:
        f"{LOGS}/predictions/{{name}}/part{{part}}-of-{{parts}}.tsv"
    shell:
        "nnpipe predict --config-json {params.settings:q} --model {input.model}"
        " --input {input.images} --out {params.out} --part {wildcards.part}"
        " --parts {wildcards.parts} --part-record {output.record} --continue {params.extra}"
        " --threads {threads} > {log} 2>&1"


rule gather_predictions:
    input:
        records=get_predict_set_records,
    output:
        predictions=directory(PREDICTIONS),
    params:
        parts=get_predict_set_parts_dir,
    wildcard_constraints:
        name=SET_NAMES,
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/predictions/{{name}}/gather.log",
    shell:
        "nnpipe gather --records {input.records} --parts-dir {params.parts}"
        " --out {output.predictions} > {log} 2>&1"


rule predictions:
    input:
        get_predict_set_targets,
