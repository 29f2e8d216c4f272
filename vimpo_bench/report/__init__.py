"""`vimpo-bench report`: MLflow runs -> pandas (collect) -> one self-contained HTML page + CSV (render).

    from vimpo_bench.report import build_report
    files = build_report(study="vimpo_vs_grpo")        # reports/vimpo_vs_grpo.html, reports/vimpo_vs_grpo/*.csv

See docs/report.md for the panels, the statistics and the files written.
"""

from __future__ import annotations

import re
from pathlib import Path

from vimpo_bench.report.collect import ReportData, collect
from vimpo_bench.report.render import ReportFiles, render, write_report

__all__ = ["ReportData", "ReportFiles", "build_report", "collect", "render", "write_report"]


def default_out(title: str) -> Path:
    """reports/<title>.html, the title made file-name safe."""
    return Path("reports") / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', title).strip('_') or 'report'}.html"


def build_report(
    study: str | None = None,
    experiment: str | None = None,
    run_ids: list[str] | None = None,
    out: str | Path | None = None,
    tracking_uri: str | None = None,
) -> ReportFiles:
    """Collect the selected runs (exactly one of study, experiment, run_ids) and write the report.
    Raises ValueError (one line) when the selection is ambiguous or matches no run."""
    data = collect(study=study, experiment=experiment, run_ids=run_ids, tracking_uri=tracking_uri)
    return write_report(data, out or default_out(data.title))
