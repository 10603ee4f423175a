"""The answer log: each answer with its query, retrievals and citations in one transaction,
and the feedback given on it. Retention is the query log's: deleting a query deletes its
answers, their citations and their feedback (foreign keys, ``ON DELETE CASCADE``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_rag import codec
from mlflow_rag.errors import DocumentNotFound, InvalidInput
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.tables import new_id, utc_now
from mlflow_rag.types import Hit

FEEDBACK_KINDS = ("score", "thumbs")
MAX_COMMENT_CHARS = 4000


@dataclass(frozen=True)
class GenerationStats:
    """What one answer cost and how it was made (one row of ``generations`` less its ids)."""

    generator: str
    params: Mapping[str, Any]
    prompt_name: str | None
    prompt_version: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    embed_ms: float
    retrieve_ms: float
    generate_ms: float
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Feedback:
    id: str
    output_id: str
    timestamp: str
    kind: str
    value: float
    comment: str | None
    user_id: str | None


@dataclass(frozen=True)
class StoredAnswer:
    """An answer as the store holds it (``answer_text`` None unless it was kept)."""

    output_id: str
    query_id: str
    timestamp: str
    stats: GenerationStats
    answer_text: str | None
    session_id: str | None
    user_id: str | None
    trace_id: str | None
    citations: tuple[tuple[int, str, str], ...]
    feedback: tuple[Feedback, ...]


def write_answer(
    backend: Backend, *, output_id: str, query_id: str, question: str, hits: Sequence[Hit],
    model_name: str | None, embedding: np.ndarray | None, query_metadata: Mapping[str, Any],
    stats: GenerationStats, answer_text: str | None, citations: Sequence[tuple[str, str]],
    session_id: str | None, user_id: str | None, trace_id: str | None,
    redact: Callable[[str], str] | None,
) -> None:
    """Insert the query, its retrievals, the answer and its citations (chunk_id, document_id)
    in one transaction under the ids given (the trace already names them). ``redact`` runs
    on the question and on the answer text (kept only when given) before anything is
    stored; a redacted question keeps no embedding (query_log.write_query_log says why)."""
    stored_question = redact(question) if redact else question
    if stored_question != question:
        embedding = None
    now = utc_now()
    row = generation_row(output_id=output_id, query_id=query_id, timestamp=now, stats=stats,
                         answer_text=answer_text, session_id=session_id, user_id=user_id,
                         trace_id=trace_id, redact=redact)
    with backend.immediate_transaction():
        backend.insert_query(
            query_id=query_id, text=stored_question,
            embedding=codec.vector_to_blob(embedding) if embedding is not None else None,
            model_name=model_name, timestamp=now, metadata=codec.metadata_json(query_metadata),
            retrievals=[(new_id(), h.chunk_id, h.rank, h.score, "{}") for h in hits],
        )
        backend.insert_generation(row, citation_rows(citations))


def generation_row(
    *, output_id: str, query_id: str, timestamp: str, stats: GenerationStats,
    answer_text: str | None, session_id: str | None, user_id: str | None,
    trace_id: str | None, redact: Callable[[str], str] | None,
) -> tuple[Any, ...]:
    """One ``generations`` row (``GENERATION_COLUMNS``' order); the answer text, kept only
    when given, redacted like the question. ``ask`` and the served model's query log
    (serving_log.QueryLog) both write it."""
    stored_answer = (redact(answer_text) if redact else answer_text) if answer_text else None
    return (output_id, query_id, timestamp, stats.prompt_name, stats.prompt_version,
            stats.generator, codec.metadata_json(stats.params), stats.input_tokens,
            stats.output_tokens, stats.cost_usd, stats.embed_ms, stats.retrieve_ms,
            stats.generate_ms, stored_answer, session_id, user_id, trace_id,
            codec.metadata_json(stats.metadata))


def citation_rows(citations: Sequence[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """``(rank, chunk_id, document_id)`` of cited ``(chunk_id, document_id)``s, from rank 1."""
    return [(rank, chunk_id, doc_id) for rank, (chunk_id, doc_id) in enumerate(citations, 1)]


def check_feedback(kind: str, value: Any, comment: str | None) -> float:
    """A feedback's value as a number; one error naming what is wrong."""
    if kind not in FEEDBACK_KINDS:
        from mlflow_rag.errors import UnknownChoice

        raise UnknownChoice("feedback kind", kind, FEEDBACK_KINDS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"feedback value must be a finite number, got {value!r}")
    if kind == "thumbs" and value not in (0, 1):
        raise InvalidInput(f"thumbs feedback is 1 (up) or 0 (down), got {value!r}")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise InvalidInput(f"comment is {len(comment)} characters long; at most {MAX_COMMENT_CHARS}")
    return float(value)


def write_feedback(
    backend: Backend, output_id: str, *, kind: str, value: float, comment: str | None,
    user_id: str | None, redact: Callable[[str], str] | None,
) -> Feedback:
    """Record feedback on an answer; an unknown output id is an error (nothing stored)."""
    number = check_feedback(kind, value, comment)
    stored_comment = (redact(comment) if redact else comment) if comment else None
    feedback = Feedback(id=new_id(), output_id=output_id, timestamp=utc_now(), kind=kind,
                        value=number, comment=stored_comment, user_id=user_id)
    with backend.immediate_transaction():
        if backend.generation_row(output_id) is None:
            raise DocumentNotFound(f"no answer with output id {output_id!r} in {backend.location}")
        backend.insert_feedback((feedback.id, output_id, feedback.timestamp, kind, number,
                                 stored_comment, user_id, "{}"))
    return feedback


def read_answer(backend: Backend, output_id: str) -> StoredAnswer:
    with backend.read_transaction():
        row = backend.generation_row(output_id)
        if row is None:
            raise DocumentNotFound(f"no answer with output id {output_id!r} in {backend.location}")
        citations = tuple(backend.citation_rows(output_id))
        feedback = tuple(
            Feedback(id=f[0], output_id=f[1], timestamp=f[2], kind=f[3], value=float(f[4]),
                     comment=f[5], user_id=f[6]) for f in backend.feedback_rows(output_id))
    (gid, query_id, timestamp, prompt_name, prompt_version, generator, params, tokens_in,
     tokens_out, cost, embed_ms, retrieve_ms, generate_ms, text, session_id, user_id,
     trace_id, metadata) = row
    stats = GenerationStats(
        generator=generator, params=codec.loads_object(params), prompt_name=prompt_name,
        prompt_version=prompt_version, input_tokens=tokens_in, output_tokens=tokens_out,
        cost_usd=cost, embed_ms=embed_ms, retrieve_ms=retrieve_ms, generate_ms=generate_ms,
        metadata=codec.loads_object(metadata))
    return StoredAnswer(output_id=gid, query_id=query_id, timestamp=timestamp, stats=stats,
                        answer_text=text, session_id=session_id, user_id=user_id,
                        trace_id=trace_id, citations=citations, feedback=feedback)
