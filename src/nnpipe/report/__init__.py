"""Report: ``results/tables.md`` in the reference's table families, from outputs only."""

from __future__ import annotations

from nnpipe.report.tables import RunKey, TableGrid, collect_and_render, render_tables

__all__ = ["RunKey", "TableGrid", "collect_and_render", "render_tables"]
