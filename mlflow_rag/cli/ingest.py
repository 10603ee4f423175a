"""``ingest`` and ``import-legacy``: sources (or a chatboti file) into a store, and the run
that records it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from mlflow_rag.cli.group import (
    HelpFrom,
    Names,
    check_tracking,
    echo_json,
    embedders_help_text,
    key_ints,
    main,
    split_commas,
    store_option,
    tracking_options,
)


def _log_ingest(report: Any, store: Any, experiment: str | None, tracking_uri: str | None) -> str:
    from mlflow_rag.tracking import log_ingest_run  # mlflow is imported only to log a run

    run_id = log_ingest_run(report, store=store, experiment=experiment, tracking_uri=tracking_uri)
    click.echo(f"logged ingest run {run_id}", err=True)
    return run_id


def _report_json(report: Any, run_id: str | None) -> dict[str, Any]:
    """An IngestReport as plain JSON values, with the run that logged it (None: untracked)."""
    from dataclasses import asdict

    out: dict[str, Any] = json.loads(json.dumps(asdict(report), default=str))
    out["total_seconds"] = report.total_seconds
    out["run_id"] = run_id
    return out


@main.command()
@click.argument("sources", nargs=-1, required=True)
@store_option
@click.option("--chunker", type=Names("mlflow_rag.chunk.registry.CHUNKERS"),
              default=None, help="Chunking [default: a stored document keeps its chunker; new ones: "
                                  "fields for CSV, markdown for .md/.html, recursive otherwise].")
@click.option("--chunk-size", type=int, default=None, help="Tokens per chunk [default: 256].")
@click.option("--chunk-overlap", type=int, default=None,
              help="Tokens shared by neighbours [default: chunk size / 8].")
@click.option("--embedder", default="minilm", show_default=True, cls=HelpFrom,
              help_from=embedders_help_text)
@click.option("--id-column", default=None, help="CSV/JSONL: the column holding document ids.")
@click.option("--text-columns", default=None, help="CSV/JSONL: comma-separated text columns.")
@click.option("--pii-columns", default=None,
              help="CSV/JSONL: comma-separated PII columns (stored, never embedded or shown) "
                   "[default: guessed from names like e-mail, phone, social; 'none' for none].")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Texts per embed call.")
@click.option("--index-type", type=Names("mlflow_rag.index.choose.INDEX_TYPES"), default=None,
              help="FAISS index [default: auto by vector count].")
@click.option("--index-param", "index_params", multiple=True, metavar="KEY=INT",
              help="Index setting, repeatable: M, ef_construction, ef_search (hnsw); "
                   "nlist, nprobe (ivf); nlist, nprobe, m, rerank (ivfpq).")
@click.option("--allow-private-urls", is_flag=True,
              help="Let web sources resolve to private or loopback addresses.")
@click.option("--id-prefix", default="",
              help="Put this before every document id, e.g. 'corpus2/': keeps documents of "
                   "another folder with the same file names apart (use it again when re-ingesting).")
@click.option("--overwrite", is_flag=True,
              help="Let documents replace stored ones with the same id from another file (the "
                   "files moved). Without it such an ingest is refused.")
@click.option("--rechunk", is_flag=True,
              help="Re-chunk documents already stored with this chunking (and this embedder's "
                   "tokenizer) even if unchanged; other models lose vectors of chunks whose "
                   "text changes. Without it such an ingest is refused, naming the loss.")
@click.option("--refit", type=Names("mlflow_rag.ingest.REFITS"), default="auto",
              show_default=True,
              help="tfidf: refit and re-embed when the corpus outgrew the fit (auto: more than "
                   "2x the texts or 10% new terms), always, or never (warn only).")
@click.option("--no-wait", is_flag=True,
              help="Fail at once if another process is writing to the store (default: wait).")
@click.option("--engine", type=Names("mlflow_rag.engines.ENGINES"), default="local",
              show_default=True,
              help="spark: chunk, embed and write in the partitions of the active Spark session "
                   "(a store in PostgreSQL only; loading stays on the driver).")
@click.option("--access-labels", default=None,
              help="Comma-separated access labels of documents whose record has no '_access' "
                   "field: only principals holding one may read them (docs/governance.md) "
                   "[default: none, visible to everyone].")
@click.option("--sync", is_flag=True,
              help="Also delete stored documents that came from these SOURCES (a file, a folder, "
                   "a glob) and are gone from them, in the transaction that writes the new and "
                   "updated ones; documents from other sources are never touched.")
@click.option("--dry-run", is_flag=True,
              help="List what would change (new, updated and, with --sync, deleted documents) "
                   "and write nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as a JSON object (with the run id) instead of text.")
@tracking_options
def ingest(
    sources: tuple[str, ...], store_path: Path | str, chunker: str | None, chunk_size: int | None,
    chunk_overlap: int | None, embedder: str, id_column: str | None, text_columns: str | None,
    pii_columns: str | None, batch_size: int, index_type: str | None,
    index_params: tuple[str, ...], allow_private_urls: bool, id_prefix: str, overwrite: bool,
    rechunk: bool, refit: str, no_wait: bool, engine: str, access_labels: str | None,
    sync: bool, dry_run: bool, as_json: bool, experiment: str | None, tracking_uri: str | None,
    no_track: bool,
) -> None:
    """Load, chunk, embed and store SOURCES (files, folders, globs, URLs).

    Unchanged documents are skipped and cached embeddings reused, so running the same
    ingest twice embeds nothing the second time. Adding another --embedder embeds the stored
    chunks and keeps every other model's vectors. Ingests into one store take turns.
    """
    from mlflow_rag.ingest import IngestOptions, format_report
    from mlflow_rag.ingest import ingest as run_ingest
    from mlflow_rag.store.access import parse_labels
    from mlflow_rag.store.store import Store

    loader_options: dict[str, Any] = {}
    if id_column:
        loader_options["id_column"] = id_column
    if text_columns:
        loader_options["text_columns"] = split_commas(text_columns)
    if pii_columns:  # "none" turns off the guess from column names (e-mail, phone, social...)
        loader_options["pii_columns"] = [] if pii_columns == "none" else split_commas(pii_columns)
    if allow_private_urls:
        loader_options["allow_private"] = True
    options = IngestOptions(
        chunker=chunker, chunk_size=chunk_size, chunk_overlap=chunk_overlap, embedder=embedder,
        batch_size=batch_size, index_type=index_type, loader_options=loader_options,
        index_params=key_ints(index_params) or None, id_prefix=id_prefix, overwrite=overwrite,
        rechunk=rechunk, refit=refit, wait=not no_wait,
        access_labels=tuple(parse_labels(access_labels)), sync=sync,
    )
    if dry_run:
        from dataclasses import asdict

        from mlflow_rag.ingest import preview_ingest

        with Store.open(store_path, read_only=True) as store:
            preview = preview_ingest(list(sources), store, options=options)
        if as_json:
            echo_json({**asdict(preview), "dry_run": True})
        else:
            click.echo("\n".join(preview.lines()))
        return
    if not no_track:
        check_tracking(tracking_uri)
    if engine == "spark":
        from mlflow_rag.ingest_spark import ingest_spark

        spark_report = ingest_spark(list(sources), store=str(store_path), options=options)
    with Store.open(store_path, create=True) as store:
        report = spark_report if engine == "spark" else run_ingest(
            list(sources), store, options=options,
            progress=sys.stderr.isatty() or bool(os.environ.get("MLFLOW_RAG_PROGRESS")),
            on_message=lambda message: click.echo(message, err=True))
        if not as_json:  # printed before the run is logged: the bundle copy may take a while
            click.echo(format_report(report))
        run_id = None if no_track else _log_ingest(report, store, experiment, tracking_uri)
    if as_json:
        echo_json(_report_json(report, run_id))


@main.command("import-legacy")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@store_option
@click.option("--model", default=None,
              help="Model name for the vectors [default: from the file name].")
@tracking_options
def import_legacy(
    file: Path, store_path: Path | str, model: str | None, experiment: str | None,
    tracking_uri: str | None, no_track: bool,
) -> None:
    """Import a legacy chatboti embeddings-<model>.json with its vectors (no re-embedding)."""
    from mlflow_rag.ingest import format_report
    from mlflow_rag.ingest import import_legacy as run_import
    from mlflow_rag.store.store import Store

    if not no_track:
        check_tracking(tracking_uri)
    with Store.open(store_path, create=True) as store:
        report = run_import(file, store, model_name=model)
        click.echo(format_report(report))
        if not no_track:
            _log_ingest(report, store, experiment, tracking_uri)
