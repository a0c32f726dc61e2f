"""Snakemake glue: render results/tables.md from the study's outputs."""

import sys
from pathlib import Path

from nnpipe.config import study_config
from nnpipe.report.tables import render_study

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    sys.stderr = log
    sm = snakemake  # noqa: F821
    # params.left_out: dims of the grid the dataset cannot have, with why (rules/common.smk)
    # params.cascade: whether the study runs the low-resolution cascade, and why (common.smk)
    render_study(study_config(sm.config), Path(sm.output.tables), left_out=sm.params.left_out,
                 cascade=sm.params.cascade["planned"], cascade_why=sm.params.cascade["why"])
