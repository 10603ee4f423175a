"""Where a document, chunk, logged query or answer came from and where it went (issue 15),
read from the store in one snapshot: source -> document versions (and the ingest runs that
wrote and replaced them) -> chunks -> embeddings (model, version) -> logged queries that
retrieved them -> answers that cited them (generator, prompt version, trace id).
The MLflow runs of those ingest runs are looked up by the layer above (it imports mlflow)."""

from __future__ import annotations

import json
from typing import Any

from mlflow_rag import codec
from mlflow_rag.errors import DocumentNotFound
from mlflow_rag.store.backend import Backend
from mlflow_rag.types import DocumentVersion


def history(backend: Backend, document_id: str) -> list[DocumentVersion]:
    """Every kept version of a document, oldest first (empty: none kept)."""
    return [DocumentVersion(*row) for row in backend.document_version_rows(document_id)]


def lineage(backend: Backend, item_id: str, *, location: str) -> dict[str, Any]:
    """The chain for a document, chunk, logged query or answer (output) id, tried in that
    order. Call inside a read transaction."""
    if backend.document_row(item_id) is not None or backend.document_version_rows(item_id):
        return {"id": item_id, "kind": "document", "documents": [_document(backend, item_id)],
                **_runs(backend, [item_id])}
    document_id = backend.chunk_document_id(item_id)
    if document_id is not None:
        doc = _document(backend, document_id, only_chunk=item_id)
        return {"id": item_id, "kind": "chunk", "documents": [doc],
                **_runs(backend, [document_id])}
    answer = backend.generation_row(item_id)
    if answer is not None:  # an answer: its query's chain, and which of its hits it cited
        chain = lineage(backend, str(answer[1]), location=location)
        return {**chain, "id": item_id, "kind": "answer",
                "answer": {"query_id": answer[1], "timestamp": answer[2], "generator": answer[5],
                           "prompt_name": answer[3], "prompt_version": answer[4],
                           "trace_id": answer[16],
                           "citations": [{"rank": rank, "chunk_id": chunk, "document_id": doc}
                                         for rank, chunk, doc in backend.citation_rows(item_id)]}}
    rows = backend.lineage_query_rows(item_id)
    if rows:
        timestamp, model, metadata = rows[0][:3]
        hits = [{"chunk_id": r[3], "document_id": r[4], "rank": r[5], "score": r[6]}
                for r in rows if r[3] is not None]
        ids = list(dict.fromkeys(h["document_id"] for h in hits if h["document_id"]))
        return {"id": item_id, "kind": "query",
                "query": {"timestamp": timestamp, "model": model,
                          "metadata": codec.loads_object(metadata), "hits": hits},
                "documents": [_document(backend, doc_id) for doc_id in ids],
                **_runs(backend, ids)}
    raise DocumentNotFound(f"no document, chunk, logged query or answer with id {item_id!r} in "
                           f"{location}")


def _document(backend: Backend, document_id: str, *, only_chunk: str | None = None) -> dict[str, Any]:
    row = backend.document_row(document_id)
    chunks: dict[str, dict[str, Any]] = {}
    for chunk_id, index, text_hash, model, version, vector_id, created in \
            backend.lineage_chunk_rows(document_id):
        if only_chunk is not None and chunk_id != only_chunk:
            continue
        entry = chunks.setdefault(chunk_id, {"id": chunk_id, "index": index,
                                             "text_hash": text_hash, "embeddings": []})
        if model is not None:
            entry["embeddings"].append({"model": model, "model_version": version,
                                        "vector_id": vector_id, "embedded_at": created})
    queries = [
        {"query_id": q, "timestamp": ts, "model": model, "chunk_id": chunk_id, "rank": rank,
         "score": score, "metadata": codec.loads_object(meta)}
        for q, ts, model, chunk_id, rank, score, meta in backend.lineage_retrieval_rows(document_id)
        if only_chunk is None or chunk_id == only_chunk
    ]
    answers = [
        {"answer_id": answer, "query_id": query, "timestamp": ts, "generator": generator,
         "prompt_name": prompt, "prompt_version": version, "trace_id": trace,
         "chunk_id": chunk_id, "citation_rank": rank}
        for answer, query, ts, generator, prompt, version, trace, chunk_id, rank
        in backend.lineage_answer_rows(document_id)
        if only_chunk is None or chunk_id == only_chunk
    ]
    return {
        "id": document_id, "exists": row is not None,
        "source_path": row[1] if row else None, "source_type": row[2] if row else None,
        "content_hash": row[3] if row else None,
        "versions": [vars(v) for v in history(backend, document_id)],
        "chunks": list(chunks.values()), "queries": queries, "answers": answers,
    }


def _runs(backend: Backend, document_ids: list[str]) -> dict[str, Any]:
    """The ingest runs that wrote or replaced any version of these documents."""
    ids: list[str] = []
    for document_id in document_ids:
        for v in history(backend, document_id):
            ids.extend(run for run in (v.written_by, v.replaced_by) if run)
    rows = backend.ingest_run_rows(list(dict.fromkeys(ids)))
    return {"ingest_runs": [
        {"id": r[0], "started_at": r[1], "sources": json.loads(r[2]),
         "source_digest": r[3], "embedder": r[4], "embedder_version": r[5]} for r in rows
    ]}
