# One job per (dim, precision, gpus, fold). A killed job rerun by Snakemake resumes from
# last.pt in the run folder (last.pt is not an output, so Snakemake keeps it).


rule train:
    input:
        manifest=rules.preprocess.output.manifest,
        splits=rules.split.output.splits,
    output:
        model=f"{DS}/train/{RUN}/fold{{fold}}/final.pt",
        summary=f"{DS}/train/{RUN}/fold{{fold}}/train.json",
        metrics=f"{DS}/train/{RUN}/fold{{fold}}/metrics.csv",
    params:
        preprocessed=subpath(input.manifest, parent=True),
        out=subpath(output.model, parent=True),
        launch=get_launcher,
        settings=section_json("training"),
    threads: 1
    resources:
        gpu=get_gpus,
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"logs/{{dataset}}/train/{RUN}/fold{{fold}}.log",
    benchmark:
        f"benchmarks/{{dataset}}/train/{RUN}/fold{{fold}}.tsv"
    shell:
        "{params.launch} train --config-json {params.settings:q}"
        " --preprocessed {params.preprocessed} --splits {input.splits} --fold {wildcards.fold}"
        " --precision {wildcards.precision} --threads {threads} --out {params.out} > {log} 2>&1"
