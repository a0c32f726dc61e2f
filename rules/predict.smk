rule predict:
    input:
        model=rules.train.output.model,
        splits=rules.split.output.splits,
        dataset=rules.download.output.dataset,
    output:
        predictions=directory(f"{DS}/predict/{RUN}/fold{{fold}}"),
    params:
        raw=subpath(input.dataset, parent=True),
        settings=section_json("inference"),
    threads: 1
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"logs/{{dataset}}/predict/{RUN}/fold{{fold}}.log",
    benchmark:
        f"benchmarks/{{dataset}}/predict/{RUN}/fold{{fold}}.tsv"
    shell:
        "nnpipe predict --config-json {params.settings:q} --model {input.model}"
        " --raw {params.raw} --splits {input.splits} --fold {wildcards.fold}"
        " --threads {threads} --out {output.predictions} > {log} 2>&1"
