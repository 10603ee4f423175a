"""Distributed ingestion on Spark (``ingest --engine spark``, :func:`ingest_spark`): the
documents are spread over Spark partitions; each partition chunks and embeds its documents
(the embedder loaded once per executor process), then writes them to a store in PostgreSQL
in its own transactions, through the same ingest as a single process (dedup by content
hash, the embedding cache, the writer lock). A retried task re-plans against what the failed
attempt committed: nothing twice, nothing lost.

Embedders fitted on the corpus (tfidf) cannot be fitted per partition: a Spark ingest embeds
with the fit the store holds, and refuses when it holds none (ingest a sample first without
Spark). pyspark is imported only here, inside the functions."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlflow_rag.embed.base import Embedder, TokenizedEmbedder, is_fitted_embedder
from mlflow_rag.engines import spark_session
from mlflow_rag.errors import InvalidInput
from mlflow_rag.ingest import IngestOptions, embed_ahead, ingest_documents
from mlflow_rag.ingest_embed import EmbeddedAhead, make_embedder
from mlflow_rag.ingest_plan import source_digest
from mlflow_rag.ingest_sources import load_sources
from mlflow_rag.store.opening import is_database_location
from mlflow_rag.store.store import Store
from mlflow_rag.types import IngestReport, SourceDocument

# Test hook (docs/configuration.md): a folder; each partition fails once, after its writes
# committed, so the tests see Spark's retry re-run a task whose documents are stored.
FAIL_ONCE_ENV = "MLFLOW_RAG_SPARK_FAIL_ONCE"
# What each partition reports back to the driver: its ingest report's counts, as JSON.
RESULT_SCHEMA = "partition int, attempt int, report string"
# The columns of a Spark DataFrame of documents (the API's input): id and text are required.
DOCUMENT_COLUMNS = ("id", "text", "source_path", "source_type", "metadata")
_COUNTS = ("documents_new", "documents_updated", "documents_unchanged", "documents_failed",
           "chunks", "vectors_embedded", "vectors_cached", "tokens", "cost_usd")

_embedders: dict[tuple[str, str, str], Embedder] = {}  # per executor process


def ingest_spark(
    sources: Sequence[str] | Any, *, store: str, options: IngestOptions | None = None,
    spark: Any = None, partitions: int | None = None,
) -> IngestReport:
    """Ingest ``sources`` (paths, as for :func:`mlflow_rag.ingest.ingest`, loaded on the
    driver; or a Spark DataFrame of documents with ``id`` and ``text`` columns and optional
    ``source_path``, ``source_type``, ``metadata`` (a JSON object)) into the PostgreSQL
    ``store`` from Spark partitions. Returns the partitions' reports added up."""
    if not is_database_location(store):
        raise InvalidInput(f"--engine spark writes from many processes and hosts: it needs a "
                           f"store in PostgreSQL (postgresql://...), not the folder {store}")
    options = options or IngestOptions()
    if options.sync:  # a partition sees only its own documents: it would delete the others'
        raise InvalidInput("--sync needs the whole source in one ingest; run it without "
                           "--engine spark")
    started = time.perf_counter()
    with Store.open(store, create=True) as opened:
        model = make_embedder(options.embedder, opened)
        if is_fitted_embedder(model) and not model.fitted:
            raise InvalidInput(
                f"{options.embedder} is fitted on the whole corpus, which no Spark partition "
                f"sees: ingest a sample without --engine spark first (it fits {options.embedder} "
                "on it), then --engine spark embeds with that fit")
    # A fit is the store's: partitions never refit (each would fit on its own slice).
    options = dataclasses.replace(options, refit="never") if is_fitted_embedder(model) else options
    session = spark or spark_session("mlflow-rag ingest")
    if _is_spark_frame(sources):
        spark_frame: Any = sources
        frame = spark_frame.select(*[c for c in DOCUMENT_COLUMNS if c in spark_frame.columns])
        loaded: list[SourceDocument] = []
        failures: list = []
        names: tuple[str, ...] = ("spark-dataframe",)
    else:
        loaded, failures, _ = load_sources(list(sources), loader_options=options.loader_options,
                                           progress=False, id_prefix=options.id_prefix)
        if not loaded:
            raise InvalidInput(f"nothing to ingest in {list(sources)}: "
                               + "; ".join(f"{f.source_path}: {f.reason}" for f in failures[:3]))
        frame = session.createDataFrame(pd.DataFrame({
            "id": [d.id for d in loaded], "payload": [pickle.dumps(d) for d in loaded]}))
        names = tuple(sources)
    count = partitions or session.sparkContext.defaultParallelism
    fail_once = os.environ.get(FAIL_ONCE_ENV) or ""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return _ingest_partition(batches, store=store, options=options, fail_once=fail_once)

    rows = (frame.repartition(count, "id").mapInPandas(run, schema=RESULT_SCHEMA)
            .toPandas())
    reports = [json.loads(text) for text in rows["report"]]
    loaded_seconds = time.perf_counter() - started
    return _added_up(reports, sources=names, loaded=loaded, failures=failures,
                     store=store, seconds=loaded_seconds)


def _ingest_partition(batches: Iterator[pd.DataFrame], *, store: str, options: IngestOptions,
                      fail_once: str) -> Iterator[pd.DataFrame]:
    from pyspark import TaskContext

    documents = [document for batch in batches for document in _documents(batch)]
    context = TaskContext.get()
    partition = context.partitionId() if context else 0
    attempt = context.attemptNumber() if context else 0
    if not documents:
        return
    with Store.open(store) as opened:
        model = _embedder(store, options.embedder, opened)
        ahead = embed_ahead(documents, opened, model=model, options=options)
        report = ingest_documents(documents, opened, sources=(f"spark partition {partition}",),
                                  options=options, embedder=EmbeddedAhead(model, ahead),
                                  # the model's own tokenizer, as embed_ahead chunked with it
                                  chunk_tokenizer=(model.token_spans
                                                   if isinstance(model, TokenizedEmbedder)
                                                   else None),
                                  progress=False)
    if fail_once:
        marker = Path(fail_once) / f"partition-{partition}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"{FAIL_ONCE_ENV}: partition {partition} fails once, after writing")
    summary = {name: getattr(report, name) for name in _COUNTS}
    summary.update(chunker=dict(report.chunker), index=dict(report.index),
                   embedder=report.embedder, embedder_version=report.embedder_version,
                   dimension=report.dimension, loader=report.loader,
                   seconds=dict(report.seconds), store_generation=report.store_generation)
    yield pd.DataFrame({"partition": [partition], "attempt": [attempt],
                        "report": [json.dumps(summary, default=str)]})


def _embedder(store: str, spec: str, opened: Store) -> Embedder:
    """One embedder per executor process, per store and model version (a refit elsewhere
    makes a new one)."""
    info = {m.name: m for m in opened.models()}.get(spec)
    key = (store, spec, info.model_version if info and info.model_version else "")
    if key not in _embedders:
        _embedders[key] = make_embedder(spec, opened)
    return _embedders[key]


def _documents(batch: pd.DataFrame) -> list[SourceDocument]:
    if "payload" in batch.columns:
        return [pickle.loads(payload) for payload in batch["payload"]]
    documents = []
    for row in batch.to_dict("records"):
        metadata = row.get("metadata")
        documents.append(SourceDocument(
            id=str(row["id"]), text=str(row["text"]),
            source_path=str(row.get("source_path") or f"spark:{row['id']}"),
            source_type=str(row.get("source_type") or "text"),
            metadata=json.loads(metadata) if isinstance(metadata, str) and metadata else {}))
    return documents


def _added_up(reports: list[dict[str, Any]], *, sources: tuple[str, ...],
              loaded: list[SourceDocument], failures: list, store: str,
              seconds: float) -> IngestReport:
    first = reports[0] if reports else {}
    stages: dict[str, float] = {}
    for report in reports:
        for stage, value in report["seconds"].items():
            stages[stage] = stages.get(stage, 0.0) + value  # summed over partitions
    with Store.open(store, read_only=True) as opened:
        stats = opened.stats()
    return IngestReport(
        sources=sources, source_digest=source_digest(loaded) if loaded else "",
        loader=first.get("loader", ""), chunker=first.get("chunker", {}),
        embedder=first.get("embedder", ""), embedder_version=first.get("embedder_version"),
        dimension=int(first.get("dimension", 0)), index=first.get("index", {}),
        **{name: sum(r[name] for r in reports) for name in _COUNTS if name != "documents_failed"},
        documents_failed=len(failures) + sum(r["documents_failed"] for r in reports),
        seconds={"spark": seconds}, failures=tuple(failures),
        store_generation=stats.generation, store_bytes=stats.bytes_on_disk,
    )


def _is_spark_frame(value: Any) -> bool:
    return hasattr(value, "mapInPandas") and hasattr(value, "columns")

