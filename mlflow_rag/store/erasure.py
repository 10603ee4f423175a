"""``forget``: documents erased from every place a store keeps them.

A deleted document leaves its rows (documents, chunks, metadata fields, vectors), its terms in
the BM25 index, its vectors in the index files, and its bytes in free pages and the WAL; the
query and answer logs can hold it too: the questions that retrieved it, answers quoting it,
feedback on them, and citations naming it. :func:`forget_documents` redacts those logs and
deletes the documents in one transaction, then erases what the deletion left in the files
(:meth:`Store.erase_deleted`). An embedder fitted on the corpus (tfidf) still holds the
documents' terms until it is refitted: the CLI does that next, as ``delete`` does, then
:func:`drop_replaced_model_state` deletes the state of the versions the refit replaced (a
database keeps each version's files; a folder's are rewritten in place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlflow_rag.errors import DocumentNotFound, InvalidInput, RagError
from mlflow_rag.store import audit
from mlflow_rag.store.store import Store

ERASED = "[erased]"  # what a redacted question, answer or comment reads afterwards


@dataclass(frozen=True)
class ForgetReport:
    documents: tuple[str, ...]
    chunks: int
    vectors: int
    queries_redacted: int
    answers_redacted: int
    imported_at: str  # when the earliest of them was first imported (bundles since hold it)
    incomplete: str  # why the files still hold deleted bytes ("" when the erasure completed)


def forget_documents(store: Store, document_ids: Sequence[str]) -> ForgetReport:
    """Erase these documents (all of them, or none: an unknown id changes nothing)."""
    ids = tuple(dict.fromkeys(document_ids))
    if not ids:
        raise InvalidInput("name at least one document id to forget")
    if store.read_only:
        raise RagError(f"{store.location} is open read-only")
    backend = store.backend
    with store.writer_lock(), backend.write_transaction():
        known = backend.document_sources(list(ids))
        missing = [d for d in ids if d not in known]
        if missing:
            raise DocumentNotFound(f"no document with id {missing[0]!r} in {store.location}; "
                                   "nothing was erased")
        imported_at = min(str((backend.document_row(d) or ("",) * 5)[4]) for d in ids)
        chunks = sum(len(backend.chunk_rows(d)) for d in ids)
        vectors = len(backend.embeddings_of_documents(list(ids)))
        queries, answers = backend.redact_logs_of_documents(list(ids), placeholder=ERASED)
        for document_id in ids:
            backend.delete_document(document_id)
        # its kept versions hold its id, hash and source path: erased with it
        backend.forget_document_versions(list(ids))
        audit.record(backend, "forget", {"documents": len(ids), "id_sha256": audit.hashed_ids(ids),
                                         "chunks": chunks, "vectors": vectors})
    events = len(store.events)
    store.erase_deleted()
    incomplete = "; ".join(store.events[events:])
    return ForgetReport(documents=ids, chunks=chunks, vectors=vectors,
                        queries_redacted=queries, answers_redacted=answers,
                        imported_at=imported_at, incomplete=incomplete)


def forget_logs_of(store: Store, *, user_id: str | None, session_id: str | None) -> tuple[int, int]:
    """Delete a user's or a session's questions, answers and feedback, and erase their
    bytes from the database's free pages and WAL. Returns (queries, feedback rows)."""
    if user_id is None and session_id is None:
        raise InvalidInput("name a user id or a session id whose logs to forget")
    if store.read_only:
        raise RagError(f"{store.location} is open read-only")
    with store.writer_lock(), store.backend.write_transaction():
        deleted = store.backend.delete_logs_of(user_id=user_id, session_id=session_id)
        audit.record(store.backend, "forget-logs", {
            "user_id_sha256": audit.hashed_ids((user_id,))[0] if user_id else None,
            "session_id_sha256": audit.hashed_ids((session_id,))[0] if session_id else None,
            "queries": deleted[0], "feedback": deleted[1]})
    problem = store.backend.erase_free_space()
    if problem:
        store.events.append(f"erasure incomplete: {problem}")
    return deleted


def drop_replaced_model_state(store: Store) -> str:
    """Delete the saved state of every model version but the current one, and erase it.
    Returns why the erasure could not complete ("" if it did)."""
    backend = store.backend
    with store.writer_lock(), backend.immediate_transaction():
        for info in store.models():
            backend.drop_model_files_except(info.name, info.model_version)
    problem = backend.erase_free_space()
    return f"erasure incomplete: {problem}" if problem else ""
