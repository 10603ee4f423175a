"""The SQL of the answer half (generations, citations, feedback) in PostgreSQL, mixed into
:class:`~mlflow_rag.store.postgres.backend.PostgresBackend`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlflow_rag.store.backend import FEEDBACK_COLUMNS, GENERATION_COLUMNS
from mlflow_rag.store.postgres import guard

_GENERATION = ", ".join(GENERATION_COLUMNS)
_FEEDBACK = ", ".join(FEEDBACK_COLUMNS)


@guard.guarded  # its methods fail as the backend's do: one line when the server is gone
class PostgresAnswers:
    """Backend methods of the answer tables; ``conn`` is the backend's psycopg connection."""

    @property
    def conn(self) -> Any:
        raise NotImplementedError

    def insert_generation(
        self, row: Sequence[Any], citations: Sequence[tuple[int, str, str]]
    ) -> None:
        marks = ", ".join(["%s"] * len(GENERATION_COLUMNS))
        self.conn.execute(f"INSERT INTO generations({_GENERATION}) VALUES ({marks})", tuple(row))
        if citations:
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO citations(generation_id, rank, chunk_id, document_id) "
                    "VALUES (%s, %s, %s, %s)",
                    [(row[0], rank, chunk_id, doc_id) for rank, chunk_id, doc_id in citations],
                )

    def generation_row(self, generation_id: str) -> tuple[Any, ...] | None:
        row = self.conn.execute(f"SELECT {_GENERATION} FROM generations WHERE id = %s",
                                (generation_id,)).fetchone()
        return tuple(row) if row is not None else None

    def citation_rows(self, generation_id: str) -> list[tuple[int, str, str]]:
        rows = self.conn.execute(
            "SELECT rank, chunk_id, document_id FROM citations WHERE generation_id = %s "
            "ORDER BY rank", (generation_id,)).fetchall()
        return [(int(r[0]), r[1], r[2]) for r in rows]

    def insert_feedback(self, row: Sequence[Any]) -> None:
        marks = ", ".join(["%s"] * len(FEEDBACK_COLUMNS))
        self.conn.execute(f"INSERT INTO feedback({_FEEDBACK}) VALUES ({marks})", tuple(row))

    def feedback_rows(self, generation_id: str) -> list[tuple[Any, ...]]:
        rows = self.conn.execute(
            f"SELECT {_FEEDBACK} FROM feedback WHERE generation_id = %s ORDER BY timestamp, id",
            (generation_id,)).fetchall()
        return [tuple(r) for r in rows]
