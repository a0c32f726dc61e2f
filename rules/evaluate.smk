rule evaluate:
    input:
        predictions=rules.predict.output.predictions,
        splits=rules.split.output.splits,
        dataset=rules.download.output.dataset,
    output:
        scores=f"{DS}/evaluate/{RUN}/fold{{fold}}.csv",
    params:
        raw=subpath(input.dataset, parent=True),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"logs/{{dataset}}/evaluate/{RUN}/fold{{fold}}.log",
    shell:
        "nnpipe evaluate --pred {input.predictions} --raw {params.raw} --splits {input.splits}"
        " --fold {wildcards.fold} --out {output.scores} > {log} 2>&1"
