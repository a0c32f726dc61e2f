# One job per fold: the fold model predicts the fold's validation cases (labels in original
# geometry; with 2D and 3D runs also their probabilities, for the best rule's ensembles). The test images are predicted by the ensemble of the fold models (ensemble.smk).
# A 3d_cascade fold takes the 3d_lowres prediction of the same fold's validation cases.


rule predict:
    input:
        model=rules.train.output.model,
        plan=rules.plan.output.plan,
        splits=rules.split.output.splits,
        dataset=rules.download.output.dataset,
        previous=get_predict_previous,
    output:
        predictions=directory(FILE("predictions")),
    params:
        raw=subpath(input.dataset, parent=True),
        settings=section_json("inference"),
        probabilities=SAVE_PROBABILITIES,
        previous=get_predict_previous_args,
    threads: 1
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/predict/{RUN}/{FOLD}.log",
    benchmark:
        f"{LOGS}/predict/{RUN}/{FOLD}.tsv"
    shell:
        "nnpipe predict --config-json {params.settings:q} --model {input.model}"
        " --plan {input.plan} --raw {params.raw} --splits {input.splits}"
        " --fold {wildcards.fold} {params.probabilities} {params.previous} --threads {threads}"
        " --out {output.predictions} > {log} 2>&1"
