# What people read: results/<dataset>/tables.md and the PNG plots it links
# (results/<dataset>/plots/); results/tables.md is the configured study's copy (links
# rewritten), so a second study never finds the first one's tables done. Every plot is a
# report() output with a caption in report/, so
#   snakemake --cores 1 --report results/report.html
# collects them, with report/workflow.rst as the description of the workflow.


report: "../report/workflow.rst"


# Plots read a few small files: run them where Snakemake runs, not as cluster jobs.
localrules:
    plot_curves,
    plot_overlays,
    plot_dice,
    plot_throughput,


RAW_JSON = rules.download.output.dataset


rule plot_curves:
    input:
        metrics=get_fold_files(rules.train.output.metrics),
        plan=rules.plan.output.plan,  # its label scheme names the classes (regions or labels)
    output:
        png=report(
            FILE("curves_plot"),
            caption="../report/curves.rst",
            category="Training curves",
            labels={"run": RUN},
        ),
    params:
        folds=list(GRID.folds),
        run=RUN,
        legacy_regions=STUDY.training.regions,  # only for a plan without its label scheme
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/plots/curves-{RUN}.log",
    script:
        "../workflow/scripts/plot_curves.py"


rule plot_overlays:
    input:
        scores=get_fold_files(rules.evaluate.output.scores),
        predictions=get_fold_files(rules.predict.output.predictions),
        dataset=RAW_JSON,
    output:
        png=report(
            FILE("overlays_plot"),
            caption="../report/overlays.rst",
            category="Segmentations",
            labels={"run": RUN},
        ),
    params:
        folds=list(GRID.folds),
        run=RUN,
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/plots/overlays-{RUN}.log",
    script:
        "../workflow/scripts/plot_overlays.py"


rule plot_dice:
    input:
        scores=get_all_evaluations,
        plans=get_all_plans,  # their label scheme names the classes (regions or labels)
    output:
        png=report(
            FILE("dice_plot"),
            caption="../report/dice.rst",
            category="Accuracy",
            labels={"plot": "Dice per class"},
        ),
    params:
        folds=list(GRID.folds),
        runs=get_run_names,
        legacy_regions=STUDY.training.regions,  # only for plans without their label scheme
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/plots/dice-per-class.log",
    script:
        "../workflow/scripts/plot_dice.py"


rule plot_throughput:
    input:
        benchmarks=get_benchmarks,
    output:
        png=report(
            FILE("throughput_plot"),
            caption="../report/throughput.rst",
            category="Throughput",
            labels={"plot": "samples/s against batch size"},
        ),
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/plots/throughput.log",
    script:
        "../workflow/scripts/plot_throughput.py"


rule tables:
    input:
        unpack(get_table_inputs),
        plots=get_plot_files,
    output:
        tables=report(PATHS.tables, caption="../report/tables.rst", category="Tables"),
    params:
        left_out=get_left_out,
        cascade=get_cascade,
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{LOGS}/tables.log",
    script:
        "../workflow/scripts/tables.py"


# results/tables.md: the configured study's tables again, its plot links relative to
# results/, rendered from the files the tables rule declares (params.files, the same input
# functions). Its inputs are the configured dataset's tables.md and fingerprint (plain
# files: Snakemake does not expand checkpoint-dependent input functions of a job whose
# output exists), so another dataset, or a results/<dataset>/tables.md rerun by a config
# change, makes it again.
rule latest_tables:
    input:
        tables=STUDY_PATHS.tables,
        fingerprint=STUDY_PATHS.path("fingerprint"),  # the params read it
    output:
        tables=TABLES,
    params:
        files=get_table_files,
        left_out=get_left_out,
        cascade=get_cascade,
    conda:
        "../envs/nnpipe.yaml"
    log:
        f"{STUDY_PATHS.logs}/latest_tables.log",
    script:
        "../workflow/scripts/tables.py"
