# Scores in original space: Dice, IoU, HD95, surface Dice per class per case (CSV) and the
# fold's summary (JSON). What is scored (labels or regions, the ignore value of sparse
# annotations) is the plan's label concept.


rule evaluate:
    input:
        predictions=rules.predict.output.predictions,
        plan=rules.plan.output.plan,
        splits=rules.split.output.splits,
        dataset=rules.download.output.dataset,
    output:
        scores=FILE("scores"),
        summary=FILE("summary"),
    params:
        raw=subpath(input.dataset, parent=True),
        settings=section_json("evaluation", "training"),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/evaluate/{RUN}/{FOLD}.log",
    shell:
        "nnpipe evaluate --config-json {params.settings:q} --pred {input.predictions}"
        " --raw {params.raw} --splits {input.splits} --fold {wildcards.fold}"
        " --plan {input.plan} --out {output.scores} --summary {output.summary} > {log} 2>&1"
