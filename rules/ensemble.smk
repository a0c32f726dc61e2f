# Per run (dim, precision, gpus): decide largest-component postprocessing per class from the
# cross-validation predictions of all folds, then predict imagesTs with the fold models
# averaged and that postprocessing applied (3d_cascade: after its 3d_lowres fold models).


rule postprocess:
    input:
        predictions=get_fold_files(rules.predict.output.predictions),
        plan=rules.plan.output.plan,
        splits=rules.split.output.splits,
        dataset=rules.download.output.dataset,
    output:
        decision=FILE("decision"),
    params:
        raw=subpath(input.dataset, parent=True),
        folds=" ".join(str(f) for f in GRID.folds),
        settings=section_json("training"),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/postprocess/{RUN}.log",
    shell:
        "nnpipe postprocess --config-json {params.settings:q} --pred {input.predictions}"
        " --folds {params.folds} --raw {params.raw} --splits {input.splits}"
        " --plan {input.plan} --out {output.decision} > {log} 2>&1"


rule ensemble:
    input:
        models=get_fold_files(rules.train.output.model),
        previous=get_previous_models,
        plan=rules.plan.output.plan,
        decision=rules.postprocess.output.decision,
        dataset=rules.download.output.dataset,
    output:
        predictions=directory(FILE("ensemble")),
    params:
        raw=subpath(input.dataset, parent=True),
        settings=section_json("inference"),
    threads: 1
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/ensemble/{RUN}.log",
    benchmark:
        f"{LOGS}/ensemble/{RUN}.tsv"
    shell:
        "nnpipe predict --config-json {params.settings:q} --model {input.models}"
        " --plan {input.plan} --postprocess {input.decision} --raw {params.raw} --test"
        " --threads {threads} --out {output.predictions} > {log} 2>&1"
