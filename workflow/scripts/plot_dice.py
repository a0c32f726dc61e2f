"""Snakemake glue: Dice per class across cases and folds, one box per run."""

import sys
from pathlib import Path

from nnpipe.report.plots import class_names, plot_dice_per_class

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    sys.stderr = log
    sm = snakemake  # noqa: F821
    folds, scores = list(sm.params.folds), list(sm.input.scores)
    # scores come run by run, folds in order (get_all_evaluations)
    runs = {run: dict(zip(folds, scores[i * len(folds):(i + 1) * len(folds)], strict=True))
            for i, run in enumerate(sm.params.runs)}
    plot_dice_per_class(runs, sm.output.png,
                        class_names=class_names(Path(sm.input.dataset).parent, sm.params.regions),
                        dataset=sm.wildcards.dataset)
