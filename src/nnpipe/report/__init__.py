"""Report: ``results/tables.md`` in the reference's table families, from outputs only."""

from __future__ import annotations

from nnpipe.report.tables import (
    PlotLink,
    RunKey,
    TableGrid,
    collect_and_render,
    render_tables,
    study_plots,
)

__all__ = ["PlotLink", "RunKey", "TableGrid", "collect_and_render", "render_tables", "study_plots"]
