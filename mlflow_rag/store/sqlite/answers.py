"""The SQL of the answer half (generations, citations, feedback; their erasure) in SQLite, mixed into
:class:`~mlflow_rag.store.sqlite.backend.SqliteBackend`."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from mlflow_rag.store.tables import FEEDBACK_COLUMNS, GENERATION_COLUMNS

_GENERATION = ", ".join(GENERATION_COLUMNS)
_FEEDBACK = ", ".join(FEEDBACK_COLUMNS)


class SqliteAnswers:
    """Backend methods of the answer tables; ``conn`` is the backend's connection."""

    @property
    def conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def insert_generation(
        self, row: Sequence[Any], citations: Sequence[tuple[int, str, str]]
    ) -> None:
        marks = ", ".join("?" * len(GENERATION_COLUMNS))
        self.conn.execute(f"INSERT INTO generations({_GENERATION}) VALUES ({marks})", tuple(row))
        self.conn.executemany(
            "INSERT INTO citations(generation_id, rank, chunk_id, document_id) VALUES (?, ?, ?, ?)",
            [(row[0], rank, chunk_id, doc_id) for rank, chunk_id, doc_id in citations],
        )

    def generation_row(self, generation_id: str) -> tuple[Any, ...] | None:
        row = self.conn.execute(f"SELECT {_GENERATION} FROM generations WHERE id = ?",
                                (generation_id,)).fetchone()
        return tuple(row) if row is not None else None

    def citation_rows(self, generation_id: str) -> list[tuple[int, str, str]]:
        return [tuple(r) for r in self.conn.execute(
            "SELECT rank, chunk_id, document_id FROM citations WHERE generation_id = ? "
            "ORDER BY rank", (generation_id,))]

    def insert_feedback(self, row: Sequence[Any]) -> None:
        marks = ", ".join("?" * len(FEEDBACK_COLUMNS))
        self.conn.execute(f"INSERT INTO feedback({_FEEDBACK}) VALUES ({marks})", tuple(row))

    def feedback_rows(self, generation_id: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(
            f"SELECT {_FEEDBACK} FROM feedback WHERE generation_id = ? ORDER BY timestamp, id",
            (generation_id,))]

    def redact_logs_of_documents(
        self, document_ids: Sequence[str], *, placeholder: str
    ) -> tuple[int, int]:
        # The logged queries that retrieved these documents' chunks, the answers citing them,
        # and each one's answer or question: all may quote or name the documents.
        docs = list(document_ids)
        queries = self._ids("SELECT r.query_id FROM retrievals r JOIN chunks c ON "
                            "c.id = r.chunk_id WHERE c.document_id IN ({})", docs)
        answers = self._ids("SELECT generation_id FROM citations WHERE document_id IN ({})", docs)
        answers |= self._ids("SELECT id FROM generations WHERE query_id IN ({})", sorted(queries))
        queries |= self._ids("SELECT query_id FROM generations WHERE id IN ({})", sorted(answers))
        self._each("UPDATE queries SET query_text = ?, query_embedding = NULL WHERE id IN ({})",
                   sorted(queries), placeholder)
        self._each("UPDATE generations SET answer_text = ? WHERE answer_text IS NOT NULL AND "
                   "id IN ({})", sorted(answers), placeholder)
        self._each("UPDATE feedback SET comment = ? WHERE comment IS NOT NULL AND "
                   "generation_id IN ({})", sorted(answers), placeholder)
        self._each("DELETE FROM citations WHERE document_id IN ({})", docs)
        return len(queries), len(answers)

    def delete_logs_of(self, *, user_id: str | None, session_id: str | None) -> tuple[int, int]:
        conditions = [(column, value) for column, value in
                      (("user_id", user_id), ("session_id", session_id)) if value is not None]
        where = " AND ".join(f"{column} = ?" for column, _ in conditions)
        rows = self.conn.execute(f"SELECT DISTINCT query_id FROM generations WHERE {where}",
                                 tuple(value for _, value in conditions)).fetchall()
        queries = sorted(r[0] for r in rows)
        # Their retrievals, answers, citations and feedback go with them (ON DELETE CASCADE).
        self._each("DELETE FROM queries WHERE id IN ({})", queries)
        feedback = 0
        if user_id is not None:  # the feedback the user gave, on anyone's answer
            feedback = self.conn.execute("DELETE FROM feedback WHERE user_id = ?",
                                         (user_id,)).rowcount
        return len(queries), int(feedback)

    def _ids(self, sql: str, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            found.update(r[0] for r in self.conn.execute(
                sql.format(", ".join(["?"] * len(part))), tuple(part)).fetchall())
        return found

    def _each(self, sql: str, keys: Sequence[str], *first: Any) -> None:
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            self.conn.execute(sql.format(", ".join(["?"] * len(part))), (*first, *part))
