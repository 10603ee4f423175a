"""``store.logs``: the query log, the answers recorded with it, their feedback, retention, and
the monitoring read over all of them (``mlflow-rag report``). The SQL is the backend's
(:mod:`~mlflow_rag.store.query_log`, :mod:`~mlflow_rag.store.answer_log`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mlflow_rag.store import answer_log
from mlflow_rag.store.core import StoreCore
from mlflow_rag.store.monitoring_rows import MonitoringRows, read_monitoring
from mlflow_rag.store.query_log import purge_query_log, write_query_log
from mlflow_rag.types import Hit

_T = TypeVar("_T")


class StoreLogs:
    """The logs of one open store (``store.logs``)."""

    def __init__(self, core: StoreCore) -> None:
        self._core = core

    def log_query(
        self, text: str, hits: Sequence[Hit], *, model_name: str | None = None,
        embedding: np.ndarray | None = None, metadata: Mapping[str, Any] | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> str:
        """Record a query and what it retrieved (queries + retrievals). Returns the query id."""
        self._core.require_writable()
        with self._core.lock:
            return write_query_log(
                self._core.backend, text, hits, model_name=model_name, embedding=embedding,
                metadata=metadata, redact=redact,
            )

    def delete_queries_older_than(self, days: float) -> int:
        """Retention: delete query logs (and their answers) older than ``days`` and reclaim
        the space."""
        self._core.require_writable()
        with self._core.lock:
            return purge_query_log(self._core.backend, days)

    def log_answer(
        self, *, output_id: str, query_id: str, question: str, hits: Sequence[Hit],
        model_name: str | None, embedding: np.ndarray | None,
        query_metadata: Mapping[str, Any], stats: answer_log.GenerationStats,
        answer_text: str | None, citations: Sequence[tuple[str, str]],
        session_id: str | None = None, user_id: str | None = None, trace_id: str | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        """Record an answer (``output_id``) with its query (``query_id``) and retrievals in
        one transaction."""
        self._core.require_writable()
        with self._core.lock:
            answer_log.write_answer(
                self._core.backend, output_id=output_id, query_id=query_id, question=question,
                hits=hits, model_name=model_name, embedding=embedding,
                query_metadata=query_metadata, stats=stats, answer_text=answer_text,
                citations=citations, session_id=session_id, user_id=user_id,
                trace_id=trace_id, redact=redact)

    def answer_record(self, output_id: str) -> answer_log.StoredAnswer:
        """An answer as recorded, with its citations and feedback."""
        with self._core.lock:
            return answer_log.read_answer(self._core.backend, output_id)

    def add_feedback(
        self, output_id: str, *, kind: str, value: float, comment: str | None = None,
        user_id: str | None = None, redact: Callable[[str], str] | None = None,
    ) -> answer_log.Feedback:
        """Record feedback on an answer (``kind`` "score" or "thumbs")."""
        self._core.require_writable()
        with self._core.lock:
            return answer_log.write_feedback(self._core.backend, output_id, kind=kind,
                                             value=value, comment=comment, user_id=user_id,
                                             redact=redact)

    def read_from_file(self, path: Path) -> None:
        """Read the query log, answers and feedback from a served model's query-log file
        (``MLFLOW_RAG_QUERY_LOG``) instead of the store's own tables, for the rest of this
        opening (a SQLite store opened read-only)."""
        from mlflow_rag.store.sqlite.query_log_file import read_log_from

        with self._core.lock:
            read_log_from(self._core.backend, path, read_only=self._core.read_only,
                          location=self._core.location)

    def read_monitoring(self, since: str, consume: Callable[[MonitoringRows], _T]) -> _T:
        """``consume`` the query log, answers, feedback and per-document retrieval counts
        logged at or after ``since`` ("" for all) in one snapshot."""
        with self._core.lock:
            return read_monitoring(self._core.backend, since, consume)
