"""Snakemake glue: Dice per class across cases and folds, one box per run."""

import sys

from nnpipe.report.plots import class_names, plot_dice_per_class

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    sys.stderr = log
    sm = snakemake  # noqa: F821
    folds, scores = list(sm.params.folds), list(sm.input.scores)
    # scores come run by run, folds in order (get_all_evaluations)
    runs = {run: dict(zip(folds, scores[i * len(folds):(i + 1) * len(folds)], strict=True))
            for i, run in enumerate(sm.params.runs)}
    # the classes of the plans' label scheme (one for the dataset: the first plan's)
    names = class_names(list(sm.input.plans)[0], sm.params.legacy_regions)
    plot_dice_per_class(runs, sm.output.png, class_names=names, dataset=sm.wildcards.dataset)
