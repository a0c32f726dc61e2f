"""Snakemake glue: render results/tables.md from the study's outputs."""

import sys
from pathlib import Path

from nnpipe.config import study_config
from nnpipe.report.tables import render_study

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    sys.stderr = log
    render_study(study_config(snakemake.config), Path(snakemake.output.tables))  # noqa: F821
