"""`vimpo-bench report`: MLflow runs -> pandas (collect) -> one self-contained HTML page, or a Markdown
results page with PNG figures, plus the tables as CSV (render, markdown).

    from vimpo_bench.report import build_report
    files = build_report(study="vimpo_vs_grpo")        # reports/vimpo_vs_grpo.html, reports/vimpo_vs_grpo/*.csv
    files = build_report(study="vimpo_vs_grpo", format="markdown")   # reports/vimpo_vs_grpo.md, .../*.png, *.csv

See docs/report.md for the panels, the statistics and the files written.
"""

from __future__ import annotations

import os
import re
import shlex
from datetime import datetime, timezone
from pathlib import Path

from vimpo_bench.report.collect import ReportData, collect
from vimpo_bench.report.export import export_folder, placeholder_uri, read_export, shown_path, write_export
from vimpo_bench.report.render import ReportFiles, render, write_report

__all__ = ["FORMATS", "ReportData", "ReportFiles", "build_report", "collect", "render", "write_report"]

FORMATS = {"html": ".html", "markdown": ".md"}


def default_out(title: str, format: str = "html") -> Path:
    """reports/<title>.html (or .md), the title made file-name safe."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", title).strip("_") or "report"
    return Path("reports") / f"{name}{FORMATS[format]}"


def declared_endpoint(study: str) -> dict | None:
    """The `study.endpoint` section of the study file of that name (packaged or in ./studies), if it has one."""
    from vimpo_bench.experiments.study import load_study  # the study layer: only when a report names a study

    try:
        return load_study(study).endpoint or None
    except Exception:  # noqa: BLE001 - a study known only from its runs (renamed, removed) has no declared endpoint
        return None


def beside_export(folder: Path, format: str = "markdown") -> Path:
    """reports/NAME.md for the export reports/NAME/export (the page folder's name and parent)."""
    page_folder = folder.parent if folder.name == "export" else folder
    return page_folder.parent / f"{page_folder.name}{FORMATS[format]}"


def selection_args(study=None, experiment=None, run_ids=None) -> list[str]:
    """The `vimpo-bench report` flags that select these runs."""
    if study:
        return ["--study", study]
    if experiment:
        return ["--experiment", experiment]
    return ["--runs", *run_ids]


def regenerate_command(study=None, experiment=None, run_ids=None, tracking_uri=None, out=None,
                       threshold=None, reading=None, from_export=None) -> str:
    """The `vimpo-bench report ... --format markdown` command line that writes the same page again."""
    if from_export is not None:  # an export carries its threshold: the command names the export only
        args = ["--from-export", str(from_export), "--format", "markdown"]
        threshold = None
    else:  # the default store is named as the user would type it, not as this machine's absolute path
        args = [*selection_args(study, experiment, run_ids), "--format", "markdown", "--tracking-uri",
                tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"]
    for flag, value in (("--out", out), ("--threshold", threshold), ("--reading", reading)):
        if value is not None:
            args += [flag, str(value)]
    return "vimpo-bench report " + shlex.join(args)


def build_report(
    study: str | None = None,
    experiment: str | None = None,
    run_ids: list[str] | None = None,
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    format: str = "html",
    threshold: float | None = None,
    reading: str | Path | None = None,
    from_export: str | Path | None = None,
    export_to: str | Path | None = None,
    title: str | None = None,
) -> ReportFiles:
    """Collect the selected runs (exactly one of study, experiment, run_ids) and write the report: an HTML
    page (format "html") or a Markdown page with PNG figures (format "markdown", whose closing "Reading"
    section is the Markdown file `reading` when given). `threshold`: the validation accuracy of the
    steps-to-threshold table (default: midway between the arms' start and the best arm's end).
    `title`: the page's title (default: the study or experiment name, else runs-<first id>).
    `export_to`: first write the selected runs as a committed export there (report/export.py), then build
    the page from that export, so the page is exactly what the export rebuilds. `from_export`: build the
    page from such an export instead of a store (no selection then; the page goes beside the export's page
    folder unless `out` says otherwise, and the threshold is the export's).
    Returns the files written. Raises ValueError (one line) for a bad format, a missing reading file, an
    ambiguous selection or one that matches no run."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    if reading is not None and format != "markdown":
        raise ValueError("a reading file goes into Markdown pages only: add --format markdown")
    if reading is not None and not Path(reading).is_file():
        raise ValueError(f"reading file not found: {reading}")
    if from_export is not None:
        if study or experiment or run_ids or tracking_uri or export_to:
            raise ValueError("--from-export reads a committed export: give no --study, --experiment, --runs, "
                             "--tracking-uri or --export with it")
        data, manifest = read_export(from_export)
        threshold = manifest.get("threshold") if threshold is None else threshold
        if out is None:
            out = beside_export(export_folder(from_export), format)
    else:
        data = collect(study=study, experiment=experiment, run_ids=run_ids, tracking_uri=tracking_uri)
        if title:  # a page of runs picked by id reads better under a name than under "runs-<first id>"
            data.title = title
        if study:
            data.endpoint = declared_endpoint(study)
        if export_to is not None:
            uri = placeholder_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
            args = shlex.join([*selection_args(study, experiment, run_ids), *(["--title", title] if title else []),
                               "--export", shown_path(export_to)])
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            write_export(data, export_to, f"an MLflow store ({uri})", stamp, threshold, args)
            data, _ = read_export(export_to)  # the page is built from the export, byte for byte as a clone rebuilds it
            from_export = export_to
    page = Path(out) if out else default_out(data.title, format)
    if format == "html":
        return write_report(data, page, threshold)
    from vimpo_bench.report.markdown import write_markdown  # matplotlib: imported only when drawing PNGs

    if from_export is not None:
        command = regenerate_command(out=page, reading=reading, from_export=export_folder(from_export))
    else:
        command = regenerate_command(study, experiment, run_ids, tracking_uri, out, threshold, reading)
    text = Path(reading).read_text(encoding="utf-8") if reading is not None else None
    return write_markdown(data, page, command, text, threshold)
