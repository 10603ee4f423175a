"""What ``mlflow-rag report`` reads from a store: the logged queries, answers, feedback and
documents since a time, as iterators a pure report (``mlflow_rag.monitoring``) consumes in
one read snapshot, so a log of any size streams through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from mlflow_rag.store.backend import Backend

T = TypeVar("T")


@dataclass(frozen=True)
class MonitoringRows:
    """Rows as the backend's ``monitoring_*_rows`` give them (see :class:`Backend`)."""

    queries: Iterator[tuple[str, str, str, str, int]]
    generations: Iterator[tuple[Any, ...]]
    feedback: Iterator[tuple[str, str, str, float]]
    documents: Iterator[tuple[str, str, int]]


def read_monitoring(backend: Backend, since: str, consume: Callable[[MonitoringRows], T]) -> T:
    """``consume`` the rows logged at or after ``since`` ("" for all) in one snapshot."""
    with backend.read_transaction():
        return consume(MonitoringRows(
            queries=backend.monitoring_query_rows(since),
            generations=backend.monitoring_generation_rows(since),
            feedback=backend.monitoring_feedback_rows(since),
            documents=backend.monitoring_document_rows(since),
        ))
