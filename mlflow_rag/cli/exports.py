"""``export`` and ``import``: a store as a folder of Parquet or JSON Lines files, and back."""

from __future__ import annotations

from pathlib import Path

import click

from mlflow_rag.cli.group import STORE_LOCATION, TRACKING_URI_HELP, echo_json, main, store_option


@main.command("export")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@store_option
@click.option("--format", "fmt", required=True,
              help="parquet (pyarrow) or jsonl (one JSON object a line; vectors as numbers).")
@click.option("--include-logs", is_flag=True,
              help="Also export the query log, retrievals, answers, citations and feedback.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows exported per table as JSON.")
def export_command(dest: Path, store_path: Path | str, fmt: str, include_logs: bool,
                   as_json: bool) -> None:
    """Export the store to DEST, a new folder: every table (documents, chunks, metadata
    fields, models, bookkeeping), the vectors in one file per embedding model, fitted
    embedder state, and manifest.json (format version, store id, rows per table, each
    model's name, version, dimension and index, the sha256 of every file). Query and answer
    logs only with --include-logs. The store is not changed."""
    from mlflow_rag.store.exports import export_store

    report = export_store(store_path, dest, fmt=fmt, include_logs=include_logs)
    if as_json:
        echo_json({"folder": report.folder, "format": report.format, "rows": report.rows,
                   "files": report.files, "bytes": report.bytes})
        return
    rows = report.rows
    click.echo(f"exported {rows.get('documents', 0)} documents, {rows.get('chunks', 0)} chunks "
               f"and {rows.get('embeddings', 0)} vectors to {report.folder} ({report.files} "
               f"files, {report.bytes:,} bytes)")


@main.command("import")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--store", "store_path", required=True, type=STORE_LOCATION,
              help="The new (or empty) store to import into: a folder, or "
                   "postgresql://[USER@]HOST[:PORT]/DB[?schema=NAME].")
@click.option("--json", "as_json", is_flag=True, help="Print the rows imported per table as JSON.")
def import_command(source: Path, store_path: Path | str, as_json: bool) -> None:
    """Import the export SOURCE (from `mlflow-rag export`) into an empty store: the same
    ids, vectors (bit for bit) and search results. Every file is checked against the
    export's manifest first; a damaged or incomplete export, or a store that already holds
    data, is refused and nothing is written."""
    from mlflow_rag.store.exports import import_store

    report = import_store(source, store_path)
    if as_json:
        echo_json({"source": report.source, "target": report.target, "rows": report.rows})
        return
    click.echo(f"imported {report.documents} documents, {report.chunks} chunks and "
               f"{report.embeddings} vectors from {report.source} into {report.target}")


@main.command("restore")
@click.argument("source")
@click.argument("dest", type=STORE_LOCATION)
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print what was restored as JSON.")
def restore_command(source: str, dest: Path | str, tracking_uri: str | None,
                    as_json: bool) -> None:
    """Make a writable store at DEST (a new or empty folder, or
    postgresql://[USER@]HOST[:PORT]/DB[?schema=NAME]) from a bundle logged to MLflow: an
    ingest run's (runs:/RUN_ID/store) or a logged retriever's (models:/NAME@ALIAS,
    models:/NAME/VERSION, runs:/RUN_ID/retriever). Every file of the bundle is checked
    against its manifest first: a damaged or tampered bundle is refused naming the file, and
    DEST is not created."""
    from mlflow_rag.tracking_restore import restore_store

    report = restore_store(source, dest, tracking_uri=tracking_uri)
    if as_json:
        echo_json({"source": report.source, "target": report.target,
                   "store_id": report.store_id, "generation": report.generation,
                   "files_verified": report.files_verified,
                   "documents": report.stats.documents, "chunks": report.stats.chunks,
                   "embeddings": report.stats.embeddings})
        return
    click.echo(f"restored {report.stats.documents} documents, {report.stats.chunks} chunks and "
               f"{report.stats.embeddings} vectors from {report.source} into {report.target} "
               f"({report.files_verified} files verified)")
