"""Snakemake glue: samples/s against batch size from every benchmark JSON."""

import sys

from nnpipe.report.plots import plot_throughput

with open(snakemake.log[0], "w") as log:  # noqa: F821 (snakemake is injected)
    sys.stderr = log
    plot_throughput(list(snakemake.input.benchmarks), snakemake.output.png)  # noqa: F821
