"""The PostgreSQL statements of governance (issue 15): ingest runs, document versions, the
documents of a source (sync) and the rows a lineage is read from. A mixin of
:class:`~mlflow_rag.store.postgres.backend.PostgresBackend` (it uses its ``conn``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_VERSION_COLUMNS = ("version, content_hash, source_path, written_at, written_by, replaced_at, "
                    "replaced_by, ended_by")
# The next version of a document: one past its last, or 1.
_NEXT = "1 + coalesce((SELECT max(version) FROM document_versions WHERE document_id = %s), 0)"


class PostgresGovernance:
    conn: Any

    def append_audit(self, row: tuple[str, str, str, str, str]) -> None:
        self.conn.execute("INSERT INTO audit_log(id, at, actor, action, detail) "
                          "VALUES (%s, %s, %s, %s, %s)", row)

    def audit_rows(self, since: str) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(
            "SELECT id, at, actor, action, detail FROM audit_log WHERE at >= %s "
            "ORDER BY at, id", (since,)).fetchall())

    def delete_audit_before(self, cutoff: str) -> int:
        cursor = self.conn.execute("DELETE FROM audit_log WHERE at < %s", (cutoff,))
        return int(cursor.rowcount)

    def document_paths(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT id, source_path FROM documents ORDER BY id").fetchall()]

    def record_ingest_run(self, row: tuple[Any, ...]) -> None:
        self.conn.execute(
            "INSERT INTO ingest_runs(id, started_at, sources, source_digest, embedder, "
            "embedder_version) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING", row)

    def ingest_run_rows(self, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        marks = ",".join(["%s"] * len(ids))
        return list(self.conn.execute(
            "SELECT id, started_at, sources, source_digest, embedder, embedder_version "
            f"FROM ingest_runs WHERE id IN ({marks}) ORDER BY started_at", list(ids)).fetchall()
        ) if ids else []

    def close_document_versions(
        self, ids: Sequence[str], *, at: str, run: str | None, ended_by: str
    ) -> None:
        for doc_id in ids:
            cursor = self.conn.execute(
                "UPDATE document_versions SET replaced_at = %s, replaced_by = %s, ended_by = %s "
                "WHERE document_id = %s AND replaced_at IS NULL", (at, run, ended_by, doc_id))
            if cursor.rowcount == 0:  # written before versions were kept: its stored state
                self.conn.execute(
                    "INSERT INTO document_versions(document_id, version, content_hash, "
                    "source_path, written_at, written_by, replaced_at, replaced_by, ended_by) "
                    f"SELECT id, {_NEXT}, content_hash, source_path, "
                    "coalesce(updated_at, imported_at), NULL, %s, %s, %s FROM documents WHERE id = %s",
                    (doc_id, at, run, ended_by, doc_id))

    def open_document_versions(
        self, rows: Sequence[tuple[str, str | None, str]], *, at: str, run: str | None
    ) -> None:
        if not rows:
            return
        # One pipelined statement for the batch: a round trip per document cost more than
        # its rows.
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO document_versions(document_id, version, content_hash, source_path, "
                f"written_at, written_by) VALUES (%s, {_NEXT}, %s, %s, %s, %s)",
                [(doc_id, doc_id, content_hash, source_path, at, run)
                 for doc_id, content_hash, source_path in rows])

    def forget_document_versions(self, document_ids: Sequence[str]) -> None:
        self.conn.execute("DELETE FROM document_versions WHERE document_id = ANY(%s)",
                          (list(document_ids),))

    def document_version_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(
            f"SELECT {_VERSION_COLUMNS} FROM document_versions WHERE document_id = %s "
            "ORDER BY version", (document_id,)).fetchall())

    def lineage_chunk_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        """(chunk id, index, text hash, model, model version, vector id, embedded at) per
        vector of the document's chunks (model None for a chunk without vectors)."""
        return list(self.conn.execute(
            "SELECT c.id, c.chunk_index, c.text_hash, e.model_name, e.model_version, "
            "e.vector_id, e.created_at FROM chunks c LEFT JOIN embeddings e ON e.chunk_id = c.id "
            "WHERE c.document_id = %s ORDER BY c.chunk_index, e.model_name",
            (document_id,)).fetchall())

    def lineage_retrieval_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        """(query id, timestamp, model, chunk id, rank, score, query metadata) of every logged
        query that retrieved a chunk of the document."""
        return list(self.conn.execute(
            "SELECT q.id, q.timestamp, q.model_name, r.chunk_id, r.rank, r.score, q.metadata "
            "FROM retrievals r JOIN chunks c ON c.id = r.chunk_id JOIN queries q ON q.id = r.query_id "
            "WHERE c.document_id = %s ORDER BY q.timestamp, r.rank", (document_id,)).fetchall())

    def lineage_answer_rows(self, document_id: str) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(
            "SELECT g.id, g.query_id, g.timestamp, g.generator, g.prompt_name, g.prompt_version, "
            "g.trace_id, c.chunk_id, c.rank FROM citations c JOIN generations g "
            "ON g.id = c.generation_id WHERE c.document_id = %s ORDER BY g.timestamp, c.rank",
            (document_id,)).fetchall())

    def lineage_query_rows(self, query_id: str) -> list[tuple[Any, ...]]:
        """(timestamp, model, query metadata, chunk id, document id, rank, score) per hit of a
        logged query (one row with chunk None for a query that retrieved nothing)."""
        return list(self.conn.execute(
            "SELECT q.timestamp, q.model_name, q.metadata, r.chunk_id, c.document_id, r.rank, "
            "r.score FROM queries q LEFT JOIN retrievals r ON r.query_id = q.id "
            "LEFT JOIN chunks c ON c.id = r.chunk_id WHERE q.id = %s ORDER BY r.rank",
            (query_id,)).fetchall())

    def chunk_document_id(self, chunk_id: str) -> str | None:
        row = self.conn.execute("SELECT document_id FROM chunks WHERE id = %s", (chunk_id,)).fetchone()
        return None if row is None else str(row[0])
