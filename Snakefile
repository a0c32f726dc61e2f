# nnpipe: nnU-Net for PyTorch as a Snakemake pipeline.
#   snakemake --cores all results/tables.md                 whole study on this machine
#   snakemake --profile profiles/slurm results/tables.md    one SLURM job per rule
# Everything of a study (outputs, logs, timings, tables, plots) is under results/<dataset>/;
# results/tables.md is the configured study's tables (nnpipe.study says every path).
# Stages, one rule file each: download -> plan -> preprocess -> train -> predict -> evaluate,
# benchmark, and tables. All logic lives in the `nnpipe` package (src/nnpipe); rules only wire.

import sys

from snakemake.utils import min_version

min_version("9.17")


# The embedded demo study (config/config.yaml) only when no --configfile is given: a study
# file is read over the schema's defaults (rules/common.smk validates with set_default),
# not over the demo's small CPU settings. `--config KEY=VALUE` applies on top of either.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/plan.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/cascade.smk"
include: "rules/evaluate.smk"
include: "rules/ensemble.smk"
include: "rules/best.smk"
include: "rules/predict_sets.smk"
include: "rules/benchmark.smk"
include: "rules/tables.smk"


localrules:
    all,
    split,
    tables,
    latest_tables,


rule all:
    input:
        TABLES,
    default_target: True


# Ctrl-C or a failed job (its log is printed above it, profiles/default: show-failed-logs):
# one line on how to go on.
onerror:
    print("nnpipe: the study stopped (Ctrl-C, or the failed job whose log is above); run the "
          "same command again to resume: finished jobs are kept, training resumes from its "
          "last.pt.", file=sys.stderr)
