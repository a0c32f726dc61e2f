"""Snakemake glue: render tables.md from the files the rule declares as its inputs."""

import sys
from pathlib import Path

from nnpipe.config import study_config
from nnpipe.report.tables import TableInputs, render_study

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    sys.stderr = log
    sm = snakemake  # noqa: F821
    # params.left_out: dims of the grid the dataset cannot have, with why (rules/common.smk)
    # params.cascade: whether the study runs the low-resolution cascade, and why (common.smk)
    render_study(study_config(sm.config), Path(sm.output.tables), left_out=sm.params.left_out,
                 cascade=sm.params.cascade["planned"], cascade_why=sm.params.cascade["why"],
                 # the tables rule's declared inputs; latest_tables: the same, as params
                 inputs=TableInputs.from_rule(getattr(sm.params, "files", None) or sm.input))
