"""Snakemake glue: image, reference and prediction of a run's worst, median and best case."""

import sys
from pathlib import Path

from nnpipe.report.plots import plot_overlays

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    sys.stderr = log
    sm = snakemake  # noqa: F821
    folds = sm.params.folds
    plot_overlays(Path(sm.input.dataset).parent, dict(zip(folds, sm.input.scores, strict=True)),
                  dict(zip(folds, sm.input.predictions, strict=True)), sm.output.png,
                  title=f"{sm.wildcards.dataset} {sm.params.run}")
