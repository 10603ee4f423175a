"""Importing a chatboti ``embeddings-<model>.json``: its documents, chunks and vectors as they
are, with no re-embedding."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.chunk.registry import get_chunker
from mlflow_rag.embed.registry import OPENAI_PREFIX
from mlflow_rag.errors import LoaderError, RagError
from mlflow_rag.ingest_plan import chunk_records, document_metadata
from mlflow_rag.ingest_report import Stages, persist_index, printable
from mlflow_rag.ingest_sources import document_problem
from mlflow_rag.store.checks import clean_vectors, content_hash
from mlflow_rag.store.store import Store
from mlflow_rag.types import DocumentRecord, IngestReport, LoadFailure, VectorBatch


def import_legacy(
    path: str | Path, store: Store, *, model_name: str | None = None, progress: bool = True
) -> IngestReport:
    """Import a chatboti ``embeddings-<model>.json``: documents, their abstract and bio
    chunks, and the stored vectors under that model's name, with no re-embedding."""
    from mlflow_rag.load.legacy import read_legacy

    stages = Stages()
    started = time.perf_counter()
    legacy = read_legacy(path, model_name=model_name)
    stages.add("load", started)
    with store.writer_lock():  # one writer at a time, as for ingest
        return _import_legacy_locked(path, store, legacy, stages)


def _import_legacy_locked(path: str | Path, store: Store, legacy: Any, stages: Stages) -> IngestReport:
    started = time.perf_counter()
    chunker = get_chunker("fields")
    chunking = chunker.config()
    spec = legacy.model_name
    embedder_spec = f"{OPENAI_PREFIX}{spec}" if spec.startswith("text-embedding-") else None
    if spec.startswith(OPENAI_PREFIX):
        embedder_spec = spec
    ready = []
    failures = list(legacy.failures)
    for item in legacy.documents:
        problem = document_problem(item.document)
        if problem is not None:
            failures.append(LoadFailure(printable(item.document.source_path), problem))
            continue
        chunks = chunk_records(item.document, chunker)
        names = [c.chunk_type or "" for c in chunks]
        if any(name not in item.vectors for name in names):
            failures.append(LoadFailure(item.document.source_path,
                                        f"record {item.document.id!r} has text without its vector"))
            continue
        vectors = np.stack([item.vectors[n] for n in names])
        try:  # what the store would refuse fails this record here, not the whole write
            clean_vectors(vectors, legacy.dimension)
        except RagError as exc:
            failures.append(LoadFailure(item.document.source_path,
                                        f"record {item.document.id!r}: {exc}"))
            continue
        ready.append((item.document, chunks, vectors))
    stages.add("chunk", started)
    if not ready:  # before ensure_model: a file with nothing to import changes nothing
        raise LoaderError(printable(
            f"nothing to import: {len(failures)} record(s) failed"
            + (f"; first: {failures[0].reason}" if failures else "")
        ))
    info = store.ensure_model(legacy.model_name, legacy.dimension, embedder=embedder_spec,
                              model_version=legacy.model_name)
    records = [
        DocumentRecord(
            id=document.id, source_path=document.source_path,
            source_type=document.source_type, content_hash=content_hash(document.text),
            raw_text=document.text, chunks=chunks,
            metadata=document_metadata(document, chunking),
            vectors=(VectorBatch(info.name, vectors, model_version=legacy.model_name),),
        )
        for document, chunks, vectors in ready
    ]
    started = time.perf_counter()
    report = store.write(records)
    stages.add("write", started)
    index, stats = persist_index(store, info.name, stages)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return IngestReport(
        sources=(str(path),), source_digest=digest, loader="legacy", chunker=chunking,
        embedder=info.name, embedder_version=legacy.model_name, dimension=info.dimension,
        index=index,
        documents_new=report.new, documents_updated=report.updated,
        documents_unchanged=report.unchanged, documents_failed=len(failures),
        chunks=report.chunks, vectors_embedded=0, vectors_cached=report.vectors,
        seconds=dict(stages.seconds), failures=tuple(failures),
        store_generation=stats.generation, store_bytes=stats.bytes_on_disk,
    )


