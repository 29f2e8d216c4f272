"""`vimpo-bench report`: parse the selection, call `report.build_report`, print where the files went."""

from __future__ import annotations

from typing import Literal

import typer

from vimpo_bench.cli import FORMATS, app, choice, fail, tracking_uri_option


@app.command("report")
def report_command(
    run_ids: list[str] = typer.Argument(None, metavar="[ID ...]", help="Run ids (with --runs); commas also separate."),  # noqa: B008
    study: str = typer.Option(None, "--study", help="Runs tagged vimpo.study=NAME, in any experiment."),
    experiment: str = typer.Option(None, "--experiment", help="Every active run of this MLflow experiment."),
    runs: bool = typer.Option(False, "--runs", help="Report the run ids given as arguments (and runs nested under them)."),
    out: str = typer.Option(None, "--out", help="Page to write (default reports/NAME.html, or .md); its tables (and "
                            "figures) go to a folder of the same name without the suffix."),
    tracking_uri: str = tracking_uri_option(),
    format: Literal[FORMATS] = typer.Option("html", "--format", parser=choice(FORMATS, "unknown format {value!r}: "
                                            "choose one of {valid}"), help="html (one self-contained page) or "
                                            "markdown (a results page with PNG figures that reads on a code host)."),
    threshold: float = typer.Option(None, "--threshold", help="Validation accuracy of the steps-to-threshold table "
                                    "(default: midway between the arms' start and the best arm's end)."),
    reading: str = typer.Option(None, "--reading", help="Markdown file put in the page's closing Reading section "
                                "(--format markdown)."),
    export: str = typer.Option(None, "--export", help="First write the selected runs as a committed export to this "
                               "folder (CSV, no machine path; e.g. reports/NAME/export), then build the page from it."),
    title: str = typer.Option(None, "--title", help="The page's title (default: the study or experiment name, else "
                              "runs-<first id>)."),
    from_export: str = typer.Option(None, "--from-export", help="Build the page from a committed export (a folder "
                                    "written by --export, or the page folder holding export/), without any store."),
) -> None:
    """A page comparing runs, with 95% intervals: self-contained HTML, or Markdown + PNG; tables as CSV."""
    from vimpo_bench.report import build_report

    ids = [i.strip() for arg in (run_ids or []) for i in arg.split(",") if i.strip()]
    if ids and not runs:
        fail("run ids given without --runs: use `vimpo-bench report --runs ID [ID ...]`")
    if runs and not ids:
        fail("--runs needs at least one run id")
    try:
        files = build_report(study=study, experiment=experiment, run_ids=ids or None, out=out,
                             tracking_uri=tracking_uri, format=format, threshold=threshold, reading=reading,
                             from_export=from_export, export_to=export, title=title)
    except ValueError as exc:
        fail(str(exc))
    if export:
        typer.echo(f"export: {export}/")
    typer.echo(f"report: {files.page}")
    typer.echo(f"tables: {files.folder}/ ({len(files.tables)} csv" + (f", {len(files.figures)} png)" if files.figures
                                                                       else ")"))
    for problem in files.failed_panels:
        typer.echo(f"warning: panel {problem}", err=True)
    if files.failed_panels:
        raise typer.Exit(3)
