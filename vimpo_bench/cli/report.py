"""`vimpo-bench report`: parse the selection, call `report.build_report`, print where the files went."""

from __future__ import annotations

import typer

from vimpo_bench.cli import app, fail


@app.command("report")
def report_command(
    run_ids: list[str] = typer.Argument(None, metavar="[ID ...]", help="Run ids (with --runs); commas also separate."),  # noqa: B008
    study: str = typer.Option(None, "--study", help="Runs tagged vimpo.study=NAME, in any experiment."),
    experiment: str = typer.Option(None, "--experiment", help="Every active run of this MLflow experiment."),
    runs: bool = typer.Option(False, "--runs", help="Report the run ids given as arguments (and runs nested under them)."),
    out: str = typer.Option(None, "--out", help="HTML file to write (default reports/NAME.html); its tables go to "
                            "a folder of the same name without .html."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, "
                                     "else ./mlflow.db)."),
) -> None:
    """One self-contained HTML page comparing runs, with 95% intervals, and its tables as CSV."""
    from vimpo_bench.report import build_report

    ids = [i.strip() for arg in (run_ids or []) for i in arg.split(",") if i.strip()]
    if ids and not runs:
        fail("run ids given without --runs: use `vimpo-bench report --runs ID [ID ...]`")
    if runs and not ids:
        fail("--runs needs at least one run id")
    try:
        files = build_report(study=study, experiment=experiment, run_ids=ids or None, out=out,
                             tracking_uri=tracking_uri)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"report: {files.html}")
    typer.echo(f"tables: {files.html.with_suffix('')}/ ({len(files.tables)} csv)")
    for problem in files.failed_panels:
        typer.echo(f"warning: panel {problem}", err=True)
    if files.failed_panels:
        raise typer.Exit(3)
