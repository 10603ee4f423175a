"""The ``mlflow-rag`` command line: argument parsing only; the work happens in the layers below.

Heavy modules (mlflow, torch) are imported inside the commands that need them, so that
``search --mode bm25``, ``stats`` or ``show`` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlflow_rag import __version__
from mlflow_rag.errors import RagError


class _Group(click.Group):
    """Turns our named errors into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RagError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _store_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store", "store_path", required=True, type=click.Path(path_type=Path),
        help="Store directory (metadata.db, index/, manifest.json).",
    )(func)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlflow-rag")
def main() -> None:
    """mlflow-rag: the metadata store, search and evaluation harness for RAG, on MLflow."""


@main.command()
@click.argument("query")
@_store_option
@click.option("-k", "k", default=5, show_default=True, type=int, help="Number of hits.")
@click.option("--mode", default="hybrid", show_default=True,
              type=click.Choice(["dense", "bm25", "hybrid"]), help="Ranking.")
@click.option("--filter", "filter_json", default=None,
              help='JSON filter, e.g. \'{"country": {"$in": ["UK"]}}\'.')
@click.option("--embedder", default=None,
              help="Embedding model to search when the store holds several.")
@click.option("--json", "as_json", is_flag=True, help="Print hits as a JSON list.")
@click.option("--include-pii", is_flag=True, help="Include PII-tagged fields in the output.")
@click.option("--log-query", is_flag=True, help="Record the query and its hits in the store.")
def search(
    query: str, store_path: Path, k: int, mode: str, filter_json: str | None,
    embedder: str | None, as_json: bool, include_pii: bool, log_query: bool,
) -> None:
    """Search the store for QUERY."""
    from mlflow_rag.search import Searcher
    from mlflow_rag.store.filters import parse_filter
    from mlflow_rag.store.store import Store

    filters = parse_filter(filter_json)  # bad JSON fails before the store is opened
    with Store.open(store_path, read_only=not log_query) as store:
        if embedder is not None and mode != "bm25":
            store.model(embedder)  # unknown model: a clear error listing the store's models
        hits = Searcher(store, model=embedder).search(
            query, k=k, mode=mode, filters=filters, include_pii=include_pii, log=log_query
        )
    if as_json:
        _echo_json([h.to_dict() for h in hits])
        return
    if not hits:
        click.echo("no hits")
    for hit in hits:
        title = hit.document_metadata.get("title") or hit.document_id
        click.echo(f"{hit.rank:>3}. {hit.score:.4f}  {title}  [{hit.chunk_type}]  {hit.source_path}")
        text = " ".join(hit.text.split())
        click.echo(f"     {text[:200]}{'...' if len(text) > 200 else ''}")


@main.command()
@click.argument("doc_id")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the document as JSON.")
@click.option("--include-pii", is_flag=True, help="Include PII-tagged fields.")
def show(doc_id: str, store_path: Path, as_json: bool, include_pii: bool) -> None:
    """Show a document and its chunks in order."""
    from dataclasses import asdict

    from mlflow_rag.store.store import Store

    with Store.open(store_path, read_only=True) as store:
        doc = store.get_document(doc_id, include_pii=include_pii)
    if as_json:
        _echo_json(asdict(doc))
        return
    click.echo(f"{doc.id}  ({doc.source_type})  {doc.source_path}")
    click.echo(f"imported {doc.imported_at}" + (f", updated {doc.updated_at}" if doc.updated_at else ""))
    for key, value in sorted(doc.metadata.items()):
        click.echo(f"  {key}: {value}")
    for chunk in doc.chunks:
        click.echo(f"--- chunk {chunk.chunk_index} [{chunk.chunk_type}] "
                   f"chars {chunk.start_char}-{chunk.end_char}, {chunk.token_count} tokens")
        click.echo(chunk.text)


@main.command()
@click.argument("doc_id")
@_store_option
def delete(doc_id: str, store_path: Path) -> None:
    """Delete a document; its chunks and vectors go with it."""
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        store.delete(doc_id)
    click.echo(f"deleted {doc_id}")


@main.command()
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def stats(store_path: Path, as_json: bool) -> None:
    """Counts, embedding models and their indexes, bytes on disk."""
    from mlflow_rag.store.store import Store

    with Store.open(store_path, read_only=True) as store:
        report = store.stats().to_dict()
    if as_json:
        _echo_json(report)
        return
    click.echo(f"documents {report['documents']}, chunks {report['chunks']}, "
               f"embeddings {report['embeddings']}, queries {report['queries']}")
    click.echo(f"generation {report['generation']}, schema {report['schema_version']}, "
               f"{report['bytes_on_disk']:,} bytes")
    for name, model in report["models"].items():
        click.echo(f"model {name}: {model['vector_count']} vectors, dim {model['dimension']}, "
                   f"index {model['index_type']} {model['index_params']}")


@main.command()
@_store_option
def check(store_path: Path) -> None:
    """Verify the store: SQLite integrity, FTS, index ids == SQLite ids, self-retrieval."""
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        report = store.verify()
    _echo_json(report)
    bad = report["integrity_check"] != "ok" or any(
        not m["ids_equal"] or m["self_found"] < m["sampled"] for m in report["models"].values()
    )
    sys.exit(1 if bad else 0)


@main.command("purge-queries")
@_store_option
@click.option("--older-than-days", type=float, required=True, help="Delete logs older than this.")
def purge_queries(store_path: Path, older_than_days: float) -> None:
    """Delete logged queries (and their retrievals) older than N days; reclaim the space."""
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        deleted = store.delete_queries_older_than(older_than_days)
    click.echo(f"deleted {deleted} queries")


if __name__ == "__main__":
    main()
