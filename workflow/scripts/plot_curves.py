"""Snakemake glue: training curves of one run (every fold's metrics.csv) as one PNG."""

import sys

from nnpipe.report.plots import class_names, plot_training_curves

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    sys.stderr = log
    sm = snakemake  # noqa: F821
    names = class_names(sm.input.plan, sm.params.legacy_regions)  # the plan's label scheme
    plot_training_curves(dict(zip(sm.params.folds, sm.input.metrics, strict=True)),
                         sm.output.png, title=f"{sm.wildcards.dataset} {sm.params.run}",
                         class_names=names)
