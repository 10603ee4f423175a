"""``delete``, ``forget``, ``stats``, ``check``, ``refit`` and ``purge-queries``: looking after a store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mlflow_rag.cli.group import STORE_LOCATION, echo_json, main, store_option


@main.command()
@click.argument("doc_id")
@store_option
@click.option("--no-refit", is_flag=True,
              help="Keep the tfidf vocabulary as it is (the document's terms stay in it until "
                   "`mlflow-rag refit`).")
def delete(doc_id: str, store_path: Path | str, no_refit: bool) -> None:
    """Delete a document and erase its chunks, vectors and words from the store; a tfidf
    model is refitted without its terms."""
    from mlflow_rag.errors import InvalidInput
    from mlflow_rag.ingest import refit_corpus_models
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        store.delete(doc_id)
        click.echo(f"deleted {doc_id}")
        if not no_refit:
            try:
                refit_corpus_models(store, on_message=lambda message: click.echo(message, err=True))
            except InvalidInput as exc:  # too little text left to fit on
                click.echo(f"warning: tfidf not refitted: {exc}", err=True)


@main.command()
@click.argument("doc_ids", nargs=-1, metavar="[DOCUMENT_ID]...")
@store_option
@click.option("--user-id", default=None,
              help="Also forget this user's questions, answers and feedback.")
@click.option("--session-id", default=None,
              help="Also forget this session's questions and answers (with --user-id: the "
                   "user's in this session).")
@click.option("--no-refit", is_flag=True,
              help="Keep the tfidf vocabulary as it is (the documents' terms stay in it until "
                   "`mlflow-rag refit`).")
@click.option("--tracking-uri", default=None,
              help="Where to list the MLflow runs and model versions whose bundles of this "
                   "store may still hold the documents (default: MLFLOW_TRACKING_URI, else "
                   "./mlflow.db or ./mlruns if there is one).")
@click.option("--json", "as_json", is_flag=True, help="Print what was erased as JSON.")
def forget(doc_ids: tuple[str, ...], store_path: Path | str, user_id: str | None,
           session_id: str | None, no_refit: bool, tracking_uri: str | None,
           as_json: bool) -> None:
    """Erase documents from everywhere in the store: their rows, chunks, metadata fields,
    vectors, BM25 terms, index files, free pages and WAL; the logged questions that
    retrieved them, the answers citing them and feedback on those answers read "[erased]";
    a tfidf model is refitted without their terms. All the ids, or none if one is unknown.
    Bundles already logged to MLflow are immutable: the runs and model versions that may hold
    them are listed, to delete (docs/export.md). With --user-id/--session-id, a user's or a
    session's questions, answers and feedback are deleted and erased the same way."""
    from mlflow_rag.errors import InvalidInput
    from mlflow_rag.ingest import refit_corpus_models
    from mlflow_rag.store.erasure import (
        drop_replaced_model_state,
        forget_documents,
        forget_logs_of,
    )
    from mlflow_rag.store.store import Store

    if not doc_ids and user_id is None and session_id is None:
        raise InvalidInput("name the documents to forget, or --user-id or --session-id")
    output: dict[str, Any] = {}
    with Store.open(store_path) as store:
        if user_id is not None or session_id is not None:
            queries, feedback = forget_logs_of(store, user_id=user_id, session_id=session_id)
            output.update(logs_deleted={"queries": queries, "feedback": feedback})
            if not as_json:
                click.echo(f"forgot {queries} logged questions with their answers, and "
                           f"{feedback} feedback rows given by the user")
        if doc_ids:
            report = forget_documents(store, doc_ids)
            if not no_refit:
                try:
                    refit_corpus_models(store, on_message=lambda m: click.echo(m, err=True))
                except InvalidInput as exc:  # too little text left to fit on
                    click.echo(f"warning: tfidf not refitted: {exc}", err=True)
                problem = drop_replaced_model_state(store)
                if problem:
                    click.echo(f"warning: {problem}", err=True)
            runs, versions = _runs_holding(store.store_id, report.imported_at, tracking_uri)
            output.update(documents=list(report.documents), chunks=report.chunks,
                          vectors=report.vectors, queries_redacted=report.queries_redacted,
                          answers_redacted=report.answers_redacted, mlflow_runs=runs,
                          model_versions=versions)
            if not as_json:
                _echo_forgotten(report.documents, report.chunks, report.vectors,
                                report.queries_redacted, report.answers_redacted, runs, versions)
        for event in store.events:
            if event.startswith("erasure incomplete"):
                click.echo(f"warning: {event}", err=True)
        output["incomplete"] = "; ".join(e for e in store.events
                                         if e.startswith("erasure incomplete"))
    if as_json:
        echo_json(output)


def _echo_forgotten(
    documents: tuple[str, ...], chunks: int, vectors: int, queries: int, answers: int,
    runs: list[dict[str, str]] | None, versions: list[dict[str, str]],
) -> None:
    click.echo(f"forgot {len(documents)} documents ({chunks} chunks, {vectors} vectors); "
               f"redacted {queries} logged queries and {answers} answers")
    if runs is None:
        click.echo("MLflow: no tracking store here; bundles of this store logged elsewhere "
                   "still hold the documents (pass --tracking-uri to list them)")
        return
    click.echo(f"MLflow artifacts are immutable: {len(runs)} run(s) and {len(versions)} model "
               "version(s) logged bundles of this store that may hold them; delete these:")
    for run in runs:
        click.echo(f"  run {run['run_id']} ({run['run_type'] or 'run'} {run['run_name']}, "
                   f"experiment {run['experiment_id']})")
    for version in versions:
        click.echo(f"  model version models:/{version['name']}/{version['version']} "
                   f"(run {version['run_id']})")


def _runs_holding(
    store_id: str, since: str, tracking_uri: str | None
) -> tuple[list[dict[str, str]] | None, list[dict[str, str]]]:
    """The runs and model versions whose bundles may hold what was erased; (None, []) when
    no tracking store is named and none is in the working directory (none is created)."""
    import os

    from mlflow_rag.tracking_session import resolve_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        uri = resolve_tracking_uri(None)
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            return None, []
    from mlflow_rag.tracking_bundles import runs_holding_store

    return runs_holding_store(store_id, since, tracking_uri=uri)


@main.command()
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def stats(store_path: Path | str, as_json: bool) -> None:
    """Counts, embedding models and their indexes, bytes on disk."""
    from mlflow_rag.store.store import Store

    with Store.open(store_path, read_only=True) as store:
        report = store.stats().to_dict()
    if as_json:
        echo_json(report)
        return
    click.echo(f"documents {report['documents']}, chunks {report['chunks']}, "
               f"embeddings {report['embeddings']}, queries {report['queries']}")
    click.echo(f"generation {report['generation']}, schema {report['schema_version']}, "
               f"{report['bytes_on_disk']:,} bytes")
    for name, model in report["models"].items():
        click.echo(f"model {name}: {model['vector_count']} vectors, dim {model['dimension']}, "
                   f"index {model['index_type']} {model['index_params']}")


@main.command()
@store_option
@click.option("--no-embed-check", is_flag=True,
              help="Skip re-embedding a sample of chunks with each model's recorded embedder.")
def check(store_path: Path | str, no_embed_check: bool) -> None:
    """Verify the store: SQLite integrity, FTS, index ids == SQLite ids, self-retrieval, and
    that sampled vectors are what each model's recorded embedder gives for their text (local
    embedders: tfidf, minilm, e5-small; openai models are not re-embedded)."""
    from mlflow_rag.ingest import recorded_embedders
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        report = store.verify(embedders=None if no_embed_check else recorded_embedders(store))
    echo_json(report)
    bad = report["integrity_check"] != "ok" or any(
        not m["ids_equal"] or m["self_found"] < m["sampled"] or m.get("embed_mismatches", 0)
        or m.get("side_rows_differing", 0)
        for m in report["models"].values()
    )
    sys.exit(1 if bad else 0)


@main.command()
@store_option
@click.option("--embedder", "model", default="tfidf", show_default=True,
              help="The model fitted on the corpus to refit.")
@click.option("--no-wait", is_flag=True,
              help="Fail at once if another process is writing to the store (default: wait).")
def refit(store_path: Path | str, model: str, no_wait: bool) -> None:
    """Refit a tfidf model on the chunks that hold its vectors and re-embed them all (also
    drops deleted documents' terms from its vocabulary)."""
    from mlflow_rag.ingest import refit_model
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        result = refit_model(store, model, wait=not no_wait,
                             on_message=lambda message: click.echo(message, err=True))
    before, after = result["before"], result["after"]
    click.echo(f"{model}: {after['vectors']} vectors re-embedded; dimension {before['dimension']} "
               f"-> {after['dimension']}, vocabulary {before['n_features']} -> "
               f"{after['n_features']} terms")


@main.command("purge-queries")
@store_option
@click.option("--older-than-days", type=float, required=True, help="Delete logs older than this.")
@click.option("--audit", "audit_too", is_flag=True,
              help="Also delete audit-log entries older than this (kept otherwise: an audit "
                   "usually outlives the logs it audits).")
def purge_queries(store_path: Path | str, older_than_days: float, audit_too: bool) -> None:
    """Delete logged queries (with their retrievals, answers, citations and feedback) older
    than N days; reclaim the space. With --audit, the audit log's old entries too."""
    from mlflow_rag.store import audit
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        deleted = store.logs.delete_queries_older_than(older_than_days)
        entries = audit.purge(store.backend, older_than_days) if audit_too else None
    click.echo(f"deleted {deleted} queries"
               + (f" and {entries} audit entries" if entries is not None else ""))


@main.command("copy")
@click.argument("source", type=STORE_LOCATION)
@click.argument("target", type=STORE_LOCATION)
@click.option("--json", "as_json", is_flag=True, help="Print the rows copied per table as JSON.")
def copy_command(source: Path | str, target: Path | str, as_json: bool) -> None:
    """Copy the store SOURCE into a new store TARGET, on either backend: a folder to
    postgresql://HOST/DB?schema=NAME to grow past one machine, or back to a folder to ship
    it. Every row, id and fitted embedder is copied in one transaction; TARGET's indexes are
    built from its rows. SOURCE is not changed."""
    from mlflow_rag.store.copies import copy_store

    report = copy_store(source, target)
    if as_json:
        echo_json({"source": report.source, "target": report.target, "rows": report.rows})
        return
    click.echo(f"copied {report.stats.documents} documents, {report.stats.chunks} chunks and "
               f"{report.stats.embeddings} vectors from {report.source} to {report.target}")
