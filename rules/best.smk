# The best configuration (nnU-Net's find_best_configuration): after every run's folds are
# predicted and its postprocessing decided, compare the cross-validation Dice (after
# postprocessing) of every run and, when the grid has 2D and 3D runs, of every 2D + 3D
# ensemble of their saved validation probabilities; write best.json for
# `nnpipe predict --model best.json` / `nnpipe export`, and the ensembles' cross-validation
# predictions under crossval/.


rule best:
    input:
        unpack(get_best_inputs),
        splits=rules.split.output.splits,
        dataset=rules.download.output.dataset,
    output:
        best=FILE("best"),
        crossval=directory(FILE("crossval")),
    params:
        study=subpath(input.splits, parent=True),
        runs=get_run_names,
        folds=" ".join(str(f) for f in GRID.folds),
        settings=section_json("training", "inference"),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/best.log",
    benchmark:
        f"{LOGS}/best.tsv"
    shell:
        "nnpipe best --config-json {params.settings:q} --study {params.study}"
        " --runs {params.runs} --folds {params.folds} --out {output.best} > {log} 2>&1"
