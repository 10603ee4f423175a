"""``report``: what a store's query log and answer tables say about its use."""

from __future__ import annotations

from pathlib import Path

import click

from mlflow_rag.cli.group import (
    check_tracking,
    echo_json,
    main,
    query_log_option,
    store_option,
    tracking_options,
)


@main.command()
@store_option
@click.option("--since", default=None, metavar="ISO-DATE",
              help="Only what was logged at or after this UTC date or date-time "
                   "(2026-12-01, 2026-12-01T08:00:00+00:00) [default: everything].")
@click.option("--days", type=float, default=None,
              help="Only what was logged in the last N days (instead of --since).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
              help="Rows of the ranked lists (most retrieved documents, failing queries).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@query_log_option
@tracking_options
def report(
    store_path: Path | str, since: str | None, days: float | None, top: int, as_json: bool,
    query_log: Path | None, tracking_uri: str | None, no_track: bool, experiment: str | None,
) -> None:
    """Report on the store's use from its query log and answers: query volume per day,
    latency percentiles per stage, tokens and cost, zero-hit rate, most and never retrieved
    documents, feedback per day, top failing queries (as stored: redacted).

    Logged as an MLflow run (metrics, report.json, plots) unless --no-track or nothing was
    logged.
    """
    from functools import partial

    from mlflow_rag.monitoring import is_empty, render_text, since_timestamp, summarize
    from mlflow_rag.store.store import Store

    bound = since_timestamp(since=since, days=days)
    if not no_track:
        check_tracking(tracking_uri)
    with Store.open(store_path, read_only=True) as store:
        if query_log is not None:
            store.logs.read_from_file(query_log)
        result = store.logs.read_monitoring(bound, partial(summarize, since=bound, top=top))
        store_id = store.store_id
    run_id = None
    if not no_track and not is_empty(result):
        from mlflow_rag.tracking_report import log_report

        run_id = log_report(result, location=str(store_path), store_id=store_id,
                            tracking_uri=tracking_uri, experiment=experiment)
    if as_json:
        echo_json({**result, "run_id": run_id})
        return
    click.echo(render_text(result, location=str(query_log or store_path)))
    if run_id:
        click.echo(f"report run {run_id}")
