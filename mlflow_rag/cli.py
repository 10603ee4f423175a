"""The ``mlflow-rag`` command line: argument parsing only; the work happens in the layers below.

Heavy modules (mlflow, torch) are imported inside the commands that need them, so that
``search --mode bm25``, ``stats`` or ``show`` start fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable
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


class _Names(click.Choice):
    """The names a registry owns (``"package.module.ATTRIBUTE"``), read when the option is
    used or its help shown: never a second copy in the CLI, and ``mlflow-rag --help`` still
    imports none of the layers below (numpy, FAISS)."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._names: tuple[str, ...] | None = None
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        if self._names is None:
            module, _, attribute = self._source.rpartition(".")
            self._names = tuple(getattr(importlib.import_module(module), attribute))
        return self._names

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:  # click.Choice.__init__ sets ()
        self._names = tuple(value) or None


class _HelpFrom(click.Option):
    """An option whose help a registry writes (``help_from``) when help is shown."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._help_from = help_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self._help_from()
        return super().get_help_record(ctx)


def _embedders_help() -> str:
    from mlflow_rag.embed.registry import embedders_help

    return f"{embedders_help()}."


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


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _key_ints(pairs: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key or not value.strip().isdigit():
            raise click.BadParameter(f"expected KEY=INTEGER, got {pair!r}", param_hint="--index-param")
        out[key.strip()] = int(value)
    return out


TRACKING_URI_HELP = ("MLflow tracking URI [default: MLFLOW_TRACKING_URI, else MLflow's own "
                     "default (sqlite:///mlflow.db in the working directory), which `mlflow ui` "
                     "reads].")
EXPERIMENT_HELP = "MLflow experiment [default: MLFLOW_EXPERIMENT_NAME, else mlflow-rag]."


def _tracking_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)(func)
    func = click.option("--no-track", is_flag=True, help="Do not log an MLflow run.")(func)
    return click.option("--experiment", default=None, help=EXPERIMENT_HELP)(func)


def _check_tracking(tracking_uri: str | None) -> None:
    """An unreachable tracking server fails before the work, not after a long ingest."""
    from mlflow_rag.tracking_session import (  # no mlflow import
        check_tracking_uri,
        legacy_tracking_note,
        quiet_mlflow,
        resolve_tracking_uri,
    )

    check_tracking_uri(resolve_tracking_uri(tracking_uri))
    quiet_mlflow()
    note = legacy_tracking_note(tracking_uri)
    if note:
        click.echo(note, err=True)


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
@_store_option
@click.option("--chunker", type=_Names("mlflow_rag.chunk.registry.CHUNKERS"),
              default=None, help="Chunking [default: a stored document keeps its chunker; new ones: "
                                  "fields for CSV, markdown for .md/.html, recursive otherwise].")
@click.option("--chunk-size", type=int, default=None, help="Tokens per chunk [default: 256].")
@click.option("--chunk-overlap", type=int, default=None,
              help="Tokens shared by neighbours [default: chunk size / 8].")
@click.option("--embedder", default="minilm", show_default=True, cls=_HelpFrom,
              help_from=_embedders_help)
@click.option("--id-column", default=None, help="CSV/JSONL: the column holding document ids.")
@click.option("--text-columns", default=None, help="CSV/JSONL: comma-separated text columns.")
@click.option("--pii-columns", default=None,
              help="CSV/JSONL: comma-separated PII columns (stored, never embedded or shown) "
                   "[default: guessed from names like e-mail, phone, social; 'none' for none].")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Texts per embed call.")
@click.option("--index-type", type=_Names("mlflow_rag.index.choose.INDEX_TYPES"), default=None,
              help="FAISS index [default: auto by vector count].")
@click.option("--index-param", "index_params", multiple=True, metavar="KEY=INT",
              help="Index setting, repeatable: M, ef_construction, ef_search (hnsw); "
                   "nlist, nprobe (ivf).")
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
@click.option("--refit", type=_Names("mlflow_rag.ingest.REFITS"), default="auto",
              show_default=True,
              help="tfidf: refit and re-embed when the corpus outgrew the fit (auto: more than "
                   "2x the texts or 10% new terms), always, or never (warn only).")
@click.option("--no-wait", is_flag=True,
              help="Fail at once if another process is writing to the store (default: wait).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as a JSON object (with the run id) instead of text.")
@_tracking_options
def ingest(
    sources: tuple[str, ...], store_path: Path, chunker: str | None, chunk_size: int | None,
    chunk_overlap: int | None, embedder: str, id_column: str | None, text_columns: str | None,
    pii_columns: str | None, batch_size: int, index_type: str | None,
    index_params: tuple[str, ...], allow_private_urls: bool, id_prefix: str, overwrite: bool,
    rechunk: bool, refit: str, no_wait: bool, as_json: bool, experiment: str | None,
    tracking_uri: str | None, no_track: bool,
) -> None:
    """Load, chunk, embed and store SOURCES (files, folders, globs, URLs).

    Unchanged documents are skipped and cached embeddings reused, so running the same
    ingest twice embeds nothing the second time. Adding another --embedder embeds the stored
    chunks and keeps every other model's vectors. Ingests into one store take turns.
    """
    from mlflow_rag.ingest import IngestOptions, format_report
    from mlflow_rag.ingest import ingest as run_ingest
    from mlflow_rag.store.store import Store

    loader_options: dict[str, Any] = {}
    if id_column:
        loader_options["id_column"] = id_column
    if text_columns:
        loader_options["text_columns"] = _split(text_columns)
    if pii_columns:  # "none" turns off the guess from column names (e-mail, phone, social...)
        loader_options["pii_columns"] = [] if pii_columns == "none" else _split(pii_columns)
    if allow_private_urls:
        loader_options["allow_private"] = True
    options = IngestOptions(
        chunker=chunker, chunk_size=chunk_size, chunk_overlap=chunk_overlap, embedder=embedder,
        batch_size=batch_size, index_type=index_type, loader_options=loader_options,
        index_params=_key_ints(index_params) or None, id_prefix=id_prefix, overwrite=overwrite,
        rechunk=rechunk, refit=refit, wait=not no_wait,
    )
    if not no_track:
        _check_tracking(tracking_uri)
    with Store.open(store_path, create=True) as store:
        report = run_ingest(list(sources), store, options=options,
                            progress=sys.stderr.isatty() or bool(os.environ.get("MLFLOW_RAG_PROGRESS")),
                            on_message=lambda message: click.echo(message, err=True))
        if not as_json:  # printed before the run is logged: the bundle copy may take a while
            click.echo(format_report(report))
        run_id = None if no_track else _log_ingest(report, store, experiment, tracking_uri)
    if as_json:
        _echo_json(_report_json(report, run_id))


@main.command("import-legacy")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_store_option
@click.option("--model", default=None,
              help="Model name for the vectors [default: from the file name].")
@_tracking_options
def import_legacy(
    file: Path, store_path: Path, model: str | None, experiment: str | None,
    tracking_uri: str | None, no_track: bool,
) -> None:
    """Import a legacy chatboti embeddings-<model>.json with its vectors (no re-embedding)."""
    from mlflow_rag.ingest import format_report
    from mlflow_rag.ingest import import_legacy as run_import
    from mlflow_rag.store.store import Store

    if not no_track:
        _check_tracking(tracking_uri)
    with Store.open(store_path, create=True) as store:
        report = run_import(file, store, model_name=model)
        click.echo(format_report(report))
        if not no_track:
            _log_ingest(report, store, experiment, tracking_uri)


@main.command()
@click.argument("query")
@_store_option
@click.option("-k", "k", default=5, show_default=True, type=int, help="Number of hits.")
@click.option("--mode", default="hybrid", show_default=True,
              type=_Names("mlflow_rag.search.MODES"), help="Ranking.")
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
def search(
    query: str, store_path: Path, k: int, mode: str, filter_json: str | None,
    embedder: str | None, as_json: bool, include_pii: bool, log_query: bool,
    per_document: bool, experiment: str | None, tracking_uri: str | None,
) -> None:
    """Search the store for QUERY."""
    import time

    from mlflow_rag.search import Searcher, SearchRequest, format_document_hits, format_hits
    from mlflow_rag.store.store import Store

    # parsed once (a bad filter, k or query fails before the store is opened) and handed down
    request = SearchRequest.parse(query, k=k, mode=mode, filters=filter_json)
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
        if experiment:  # mlflow is imported only when a run is asked for
            from mlflow_rag.tracking import log_search_run
            from mlflow_rag.tracking_session import TAG_GENERATION, TAG_STORE_ID, quiet_mlflow

            quiet_mlflow()

            models = store.models()
            run_id = log_search_run(
                [query], [hits], latencies_ms=[latency_ms],
                params={"mode": mode, "k": k, "filters": filter_json or "",
                        "embedder": embedder or (models[0].name if len(models) == 1 else ""),
                        "store": str(store_path), "include_pii": include_pii},
                tags={TAG_STORE_ID: store.store_id,
                      TAG_GENERATION: str(store.stats().generation)},
                experiment=experiment, tracking_uri=tracking_uri,
            )
            click.echo(f"logged search run {run_id}", err=True)
    if as_json:
        _echo_json([g.to_dict() for g in groups] if groups is not None
                   else [h.to_dict() for h in hits])
        return
    if not hits:
        click.echo("no hits")
    lines = format_document_hits(groups) if groups is not None else format_hits(hits)
    if lines:
        click.echo("\n".join(lines))


@main.command("list")
@_store_option
@click.option("--filter", "filter_json", default=None,
              help='JSON filter as in search, e.g. \'{"Country": "UK"}\' (docs/filters.md).')
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Show at most this many documents.")
@click.option("--json", "as_json", is_flag=True, help="Print the documents as a JSON list.")
@click.option("--include-pii", is_flag=True, help="Include PII-tagged fields (with --json).")
def list_documents(store_path: Path, filter_json: str | None, limit: int, as_json: bool,
                   include_pii: bool) -> None:
    """List document ids (with type, title and source), optionally filtered.

    The ids are what `show`, `delete` and the `document_id` filter take.
    """
    from mlflow_rag.store.filters import as_plan
    from mlflow_rag.store.store import Store

    plan = as_plan(filter_json)  # compiled once: a bad filter fails before the store is opened
    with Store.open(store_path, read_only=True) as store:
        # one more than asked: says whether the listing was cut
        docs = store.find_documents(plan, limit=limit + 1, include_pii=include_pii)
    more = len(docs) > limit
    docs = docs[:limit]
    if as_json:
        _echo_json([{"id": d.id, "source_type": d.source_type, "source_path": d.source_path,
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
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the document (or chunk) as JSON.")
@click.option("--include-pii", is_flag=True, help="Include PII-tagged fields.")
def show(doc_id: str, store_path: Path, as_json: bool, include_pii: bool) -> None:
    """Show a document and its chunks in order, or one chunk given its chunk id.

    Document ids are in `list` and `search` output; chunk ids in `search --json`.
    """
    from dataclasses import asdict

    from mlflow_rag.errors import DocumentNotFound
    from mlflow_rag.store.store import Store
    from mlflow_rag.types import ChunkView

    chunk: ChunkView | None = None
    with Store.open(store_path, read_only=True) as store:
        try:
            doc = store.get_document(doc_id, include_pii=include_pii)
        except DocumentNotFound:
            try:  # a document id wins: ids of web pages may hold a '#' too
                chunk = store.expand_context(doc_id, n=0)[0]
            except DocumentNotFound:
                raise DocumentNotFound(
                    f"no document or chunk with id {doc_id!r} in {store_path}"
                ) from None
            parent = store.get_document(chunk.document_id, include_pii=include_pii)
    if chunk is not None:
        if as_json:
            _echo_json(asdict(chunk))
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
        _echo_json(asdict(doc))
        return
    click.echo(f"{doc.id}  ({doc.source_type})  {doc.source_path}")
    click.echo(f"imported {doc.imported_at}" + (f", updated {doc.updated_at}" if doc.updated_at else ""))
    for key, value in sorted(doc.metadata.items()):
        click.echo(f"  {key}: {value}")
    for part in doc.chunks:
        click.echo(f"--- chunk {part.chunk_index} ({part.id}) [{part.chunk_type}] "
                   f"chars {part.start_char}-{part.end_char}, {part.token_count} tokens")
        click.echo(part.text)


@main.command()
@click.argument("doc_id")
@_store_option
@click.option("--no-refit", is_flag=True,
              help="Keep the tfidf vocabulary as it is (the document's terms stay in it until "
                   "`mlflow-rag refit`).")
def delete(doc_id: str, store_path: Path, no_refit: bool) -> None:
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
@click.option("--no-embed-check", is_flag=True,
              help="Skip re-embedding a sample of chunks with each model's recorded embedder.")
def check(store_path: Path, no_embed_check: bool) -> None:
    """Verify the store: SQLite integrity, FTS, index ids == SQLite ids, self-retrieval, and
    that sampled vectors are what each model's recorded embedder gives for their text (local
    embedders: tfidf, minilm; openai models are not re-embedded)."""
    from mlflow_rag.ingest import recorded_embedders
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        report = store.verify(embedders=None if no_embed_check else recorded_embedders(store))
    _echo_json(report)
    bad = report["integrity_check"] != "ok" or any(
        not m["ids_equal"] or m["self_found"] < m["sampled"] or m.get("embed_mismatches", 0)
        for m in report["models"].values()
    )
    sys.exit(1 if bad else 0)


@main.command()
@_store_option
@click.option("--embedder", "model", default="tfidf", show_default=True,
              help="The model fitted on the corpus to refit.")
@click.option("--no-wait", is_flag=True,
              help="Fail at once if another process is writing to the store (default: wait).")
def refit(store_path: Path, model: str, no_wait: bool) -> None:
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
@_store_option
@click.option("--older-than-days", type=float, required=True, help="Delete logs older than this.")
def purge_queries(store_path: Path, older_than_days: float) -> None:
    """Delete logged queries (and their retrievals) older than N days; reclaim the space."""
    from mlflow_rag.store.store import Store

    with Store.open(store_path) as store:
        deleted = store.delete_queries_older_than(older_than_days)
    click.echo(f"deleted {deleted} queries")


@main.command("log-model")
@_store_option
@click.option("--name", default="retriever", show_default=True,
              help="Name of the model in the run (MLflow 3 logged model name).")
@click.option("--register", default=None, help="Add a version to this registered model.")
@click.option("--alias", default=None, help="Point this alias (e.g. champion) at the new version.")
@click.option("--experiment", default=None, help=EXPERIMENT_HELP)
@click.option("--tracking-uri", default=None,
              help=TRACKING_URI_HELP)
@click.option("--include-pii", is_flag=True,
              help="Serve PII-tagged metadata fields (model_config include_pii).")
def log_model_command(
    store_path: Path, name: str, register: str | None, alias: str | None,
    experiment: str | None, tracking_uri: str | None, include_pii: bool,
) -> None:
    """Log the store as a pyfunc retriever model (a consistent bundle + models-from-code).

    Serve it with `mlflow models serve -m models:/NAME@ALIAS --env-manager local`.
    """
    from mlflow_rag.tracking_model import log_model

    _check_tracking(tracking_uri)
    info = log_model(
        store_path, name=name, register=register, alias=alias, experiment=experiment,
        tracking_uri=tracking_uri, model_config={"include_pii": True} if include_pii else None,
    )
    click.echo(info.model_uri)
    if register:
        click.echo(f"models:/{register}/{info.registered_model_version}")
        if alias:
            click.echo(f"models:/{register}@{alias}")


@main.command()
@click.argument("dataset_arg", metavar="[DATASET]", required=False)
@click.option("--dataset", "dataset_opt", default=None,
              help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/), a .csv/.jsonl questions "
                   "file (with --corpus) or beir:NAME.")
@click.option("--variants", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Variant grid (YAML/JSON), e.g. evaluations/scifact.yaml "
                   "[default: bm25, dense and hybrid with minilm].")
@click.option("--experiment", default=None, help=EXPERIMENT_HELP)
@click.option("--split", default=None, help="qrels split [default: the grid's, else test].")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="Evaluate the first N judged queries only.")
@click.option("--tracking-uri", default=None,
              help=TRACKING_URI_HELP)
@click.option("--work-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Keep the stores here; a re-run reuses them [default: MLFLOW_RAG_CACHE_DIR/"
                   "eval (~/.cache/mlflow-rag/eval), which the child runs name; with "
                   "--no-track a temporary directory].")
@click.option("--register", default=None,
              help="Log the best variant's store as a model registered under this name.")
@click.option("--alias", default="champion", show_default=True, help="Alias for --register.")
@click.option("--metric", default=None, help="Metric that picks the best variant [default: the "
                                             "grid's, else ndcg_at_10].")
@click.option("--corpus", multiple=True,
              help="Documents of a questions-file dataset (files, folders); repeatable.")
@click.option("--id-column", default=None,
              help="CSV/JSONL corpus: the column holding the ids the questions file names.")
@click.option("--text-columns", default=None,
              help="CSV/JSONL corpus: comma-separated text columns (as ingest takes them).")
@click.option("--no-track", is_flag=True, help="Print the comparison only; log no MLflow runs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the outcome as a JSON object (variants best first, runs, champion).")
def evaluate(
    dataset_arg: str | None, dataset_opt: str | None, variants: Path | None,
    experiment: str | None, split: str | None, max_queries: int | None,
    tracking_uri: str | None, work_dir: Path | None, register: str | None, alias: str,
    metric: str | None, corpus: tuple[str, ...], id_column: str | None,
    text_columns: str | None, no_track: bool, as_json: bool,
) -> None:
    """Evaluate a grid of retrieval variants on a dataset: one MLflow child run per variant.

    Prints a comparison table (best first) and, with --register, the champion model's URI.
    """
    from mlflow_rag.eval_tracking import evaluate as run_evaluation
    from mlflow_rag.eval_tracking import format_comparison

    if dataset_arg and dataset_opt and dataset_arg != dataset_opt:
        raise click.UsageError("give the dataset once: as an argument or with --dataset")
    dataset = dataset_opt or dataset_arg
    if not dataset:
        raise click.UsageError("name a dataset: --dataset PATH (a BEIR folder, a questions file "
                               "or beir:NAME)")
    if not no_track:
        _check_tracking(tracking_uri)
    outcome = run_evaluation(
        dataset, variants=variants, experiment=experiment, split=split, max_queries=max_queries,
        tracking_uri=tracking_uri, work_dir=work_dir, register=register, alias=alias,
        metric=metric, corpus=corpus, track=not no_track,
        progress=sys.stderr.isatty() or bool(os.environ.get("MLFLOW_RAG_PROGRESS")),
        loader_options={**({"id_column": id_column} if id_column else {}),
                        **({"text_columns": _split(text_columns)} if text_columns else {})},
    )
    if not as_json:  # every variant's scores are capped by these: say so first
        from mlflow_rag.eval_tracking import corpus_problem_lines

        for line in corpus_problem_lines(outcome.result):
            click.echo(f"warning: {line}", err=True)
    if as_json:
        from mlflow_rag.eval_tracking import outcome_json

        _echo_json(outcome_json(outcome, register=register, alias=alias))
        return
    result = outcome.result
    click.echo(f"dataset {result.dataset.name} ({len(result.dataset.queries)} queries, "
               f"split {result.dataset.split or '-'}), grid {result.grid.name}: "
               f"{len(result.results)} variants in {result.seconds:.1f}s")
    click.echo(format_comparison(result, metric=outcome.metric))
    click.echo(f"best by {outcome.metric}: {outcome.best.variant.label} "
               f"({outcome.best.metrics[outcome.metric]:.4f})")
    if outcome.parent_run_id:
        click.echo(f"evaluation run {outcome.parent_run_id}")
    if outcome.model_uri:
        click.echo(f"champion: models:/{register}@{alias} (version {outcome.registered_version})")


if __name__ == "__main__":
    main()
