"""``search``, ``list`` and ``show``: reading a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlflow_rag.cli.group import (
    TRACKING_URI_HELP,
    Names,
    echo_json,
    main,
    parse_principal,
    principal_options,
    store_option,
)


@main.command()
@click.argument("query")
@store_option
@click.option("-k", "k", default=5, show_default=True, type=int, help="Number of hits.")
@click.option("--mode", default="hybrid", show_default=True,
              type=Names("mlflow_rag.search.MODES"), help="Ranking.")
@click.option("--filter", "filter_json", default=None,
              help='JSON filter, e.g. \'{"country": {"$in": ["UK"]}}\'.')
@click.option("--embedder", default=None,
              help="Embedding model to search when the store holds several.")
@click.option("--json", "as_json", is_flag=True, help="Print hits as a JSON list.")
@click.option("--include-pii", is_flag=True, help="Include PII-tagged fields in the output.")
@click.option("--log-query", is_flag=True, help="Record the query and its hits in the store.")
@click.option("--per-document", is_flag=True,
              help="Group hits by document: -k documents, each with its matching chunks.")
@click.option("--experiment", default=None,
              help="Log this search as an MLflow run in this experiment (hits table, latency).")
@click.option("--tracking-uri", default=None,
              help=TRACKING_URI_HELP)
@principal_options
def search(
    query: str, store_path: Path | str, k: int, mode: str, filter_json: str | None,
    embedder: str | None, as_json: bool, include_pii: bool, log_query: bool,
    per_document: bool, experiment: str | None, tracking_uri: str | None,
    principal: str | None, principal_groups: str | None,
) -> None:
    """Search the store for QUERY."""
    import time

    from mlflow_rag.search import Searcher, SearchRequest, format_document_hits, format_hits
    from mlflow_rag.store.store import Store

    # parsed once (a bad filter, k or query fails before the store is opened) and handed down
    request = SearchRequest.parse(query, k=k, mode=mode, filters=filter_json,
                                  principal=parse_principal(principal, principal_groups))
    # A one-shot reader maps the index rather than copying it (a faster start, shared pages).
    with Store.open(store_path, read_only=not log_query, mmap=not log_query) as store:
        if embedder is not None and mode != "bm25":
            store.model(embedder)  # unknown model: a clear error listing the store's models
        started = time.perf_counter()
        searcher = Searcher(store, model=embedder)
        groups = None
        if per_document:
            groups = searcher.run_documents(request, include_pii=include_pii, log=log_query)
            hits = [hit for group in groups for hit in group.hits]
        else:
            hits = searcher.run(request, include_pii=include_pii, log=log_query)
        latency_ms = (time.perf_counter() - started) * 1000
        if request.principal is not None:  # who saw which documents (the query text is not kept)
            store.governance.audit("search", {
                "principal": request.principal.name, "groups": sorted(request.principal.groups),
                "mode": mode, "k": k, "documents": sorted({h.document_id for h in hits})})
        if experiment:  # mlflow is imported only when a run is asked for
            from mlflow_rag.tracking import log_search_run
            from mlflow_rag.tracking_session import TAG_GENERATION, TAG_STORE_ID, quiet_mlflow

            quiet_mlflow()

            models = store.models()
            run_id = log_search_run(
                [query], [hits], latencies_ms=[latency_ms],
                params={"mode": mode, "k": k, "filters": filter_json or "",
                        "embedder": embedder or (models[0].name if len(models) == 1 else ""),
                        "store": store.location, "include_pii": include_pii},
                tags={TAG_STORE_ID: store.store_id,
                      TAG_GENERATION: str(store.stats().generation)},
                experiment=experiment, tracking_uri=tracking_uri,
            )
            click.echo(f"logged search run {run_id}", err=True)
    if as_json:
        echo_json([g.to_dict() for g in groups] if groups is not None
                   else [h.to_dict() for h in hits])
        return
    if not hits:
        click.echo("no hits")
    lines = format_document_hits(groups) if groups is not None else format_hits(hits)
    if lines:
        click.echo("\n".join(lines))


@main.command("list")
@store_option
@click.option("--filter", "filter_json", default=None,
              help='JSON filter as in search, e.g. \'{"Country": "UK"}\' (docs/filters.md).')
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Show at most this many documents.")
@click.option("--json", "as_json", is_flag=True, help="Print the documents as a JSON list.")
@click.option("--include-pii", is_flag=True, help="Include PII-tagged fields (with --json).")
@principal_options
def list_documents(store_path: Path | str, filter_json: str | None, limit: int, as_json: bool,
                   include_pii: bool, principal: str | None, principal_groups: str | None) -> None:
    """List document ids (with type, title and source), optionally filtered.

    The ids are what `show`, `delete` and the `document_id` filter take.
    """
    from mlflow_rag.store.filters import as_plan
    from mlflow_rag.store.store import Store

    plan = as_plan(filter_json)  # compiled once: a bad filter fails before the store is opened
    reader = parse_principal(principal, principal_groups)
    with Store.open(store_path, read_only=True) as store:
        # one more than asked: says whether the listing was cut
        docs = store.find_documents(plan, limit=limit + 1, include_pii=include_pii,
                                    principal=reader)
    more = len(docs) > limit
    docs = docs[:limit]
    if as_json:
        echo_json([{"id": d.id, "source_type": d.source_type, "source_path": d.source_path,
                     "content_hash": d.content_hash, "imported_at": d.imported_at,
                     "updated_at": d.updated_at, "metadata": dict(d.metadata)} for d in docs])
    else:
        for doc in docs:
            title = doc.metadata.get("title")
            shown = f"  {title}" if isinstance(title, str) and title and title != doc.id else ""
            click.echo(f"{doc.id}  ({doc.source_type}){shown}  {doc.source_path}")
        if not docs:
            click.echo("no documents", err=True)
    if more:
        click.echo(f"showing the first {limit} documents; more match (raise --limit)", err=True)


@main.command()
@click.argument("doc_id", metavar="ID")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the document (or chunk) as JSON.")
@click.option("--include-pii", is_flag=True, help="Include PII-tagged fields.")
@click.option("--history", is_flag=True,
              help="Show the document's versions instead: content hash, when and by which "
                   "ingest run each was written and replaced (a deleted document's too).")
@principal_options
def show(doc_id: str, store_path: Path | str, as_json: bool, include_pii: bool, history: bool,
         principal: str | None, principal_groups: str | None) -> None:
    """Show a document and its chunks in order, or one chunk given its chunk id.

    Document ids are in `list` and `search` output; chunk ids in `search --json`.
    """
    from dataclasses import asdict

    from mlflow_rag.errors import DocumentNotFound
    from mlflow_rag.store.store import Store
    from mlflow_rag.types import ChunkView

    chunk: ChunkView | None = None
    reader = parse_principal(principal, principal_groups)
    if history:
        _show_history(doc_id, store_path, as_json=as_json, reader=reader)
        return
    with Store.open(store_path, read_only=True) as store:
        try:
            doc = store.get_document(doc_id, include_pii=include_pii, principal=reader)
        except DocumentNotFound:
            try:  # a document id wins: ids of web pages may hold a '#' too
                chunk = store.expand_context(doc_id, n=0, principal=reader)[0]
            except DocumentNotFound:
                # the same words whether it does not exist or the principal may not see it
                raise DocumentNotFound(
                    f"no document or chunk with id {doc_id!r} in {store.location}"
                ) from None
            parent = store.get_document(chunk.document_id, include_pii=include_pii,
                                        principal=reader)
    if chunk is not None:
        if as_json:
            echo_json(asdict(chunk))
            return
        click.echo(f"chunk {chunk.id}: #{chunk.chunk_index} of document {parent.id}  "
                   f"({parent.source_type})  {parent.source_path}")
        click.echo(f"[{chunk.chunk_type}] chars {chunk.start_char}-{chunk.end_char}, "
                   f"{chunk.token_count} tokens")
        for key, value in sorted(chunk.metadata.items()):
            click.echo(f"  {key}: {value}")
        click.echo(chunk.text)
        return
    if as_json:
        echo_json(asdict(doc))
        return
    click.echo(f"{doc.id}  ({doc.source_type})  {doc.source_path}")
    click.echo(f"imported {doc.imported_at}" + (f", updated {doc.updated_at}" if doc.updated_at else ""))
    for key, value in sorted(doc.metadata.items()):
        click.echo(f"  {key}: {value}")
    for part in doc.chunks:
        click.echo(f"--- chunk {part.chunk_index} ({part.id}) [{part.chunk_type}] "
                   f"chars {part.start_char}-{part.end_char}, {part.token_count} tokens")
        click.echo(part.text)


def _show_history(doc_id: str, store_path: Path | str, *, as_json: bool, reader: Any) -> None:
    from dataclasses import asdict

    from mlflow_rag.store.store import Store

    with Store.open(store_path, read_only=True) as store:
        versions = store.governance.document_history(doc_id, principal=reader)
    if as_json:
        echo_json({"id": doc_id, "versions": [asdict(v) for v in versions]})
        return
    click.echo(f"{doc_id}: {len(versions)} version(s) kept")
    for v in versions:
        written = f"written {v.written_at}" + (f" by ingest {v.written_by}" if v.written_by else "")
        ended = (f"; {v.ended_by} {v.replaced_at}" + (f" by ingest {v.replaced_by}" if v.replaced_by else "")
                 if v.replaced_at else "; current")
        click.echo(f"  v{v.version}  {v.content_hash}  {v.source_path}  {written}{ended}")
