"""Migration numbers are handed out ahead of merging: a PostgreSQL store that already holds a
higher migration (4) still gets a lower one it lacks (2, the answer tables) when opened."""

from __future__ import annotations

import pytest

from mlflow_rag.store.postgres.schema import MIGRATIONS
from mlflow_rag.store.store import Store


@pytest.mark.postgres
def test_a_store_at_4_without_2_gets_2_on_open(pg_database: str) -> None:
    with Store.open(pg_database, create=True) as store:
        conn = store.backend.conn  # type: ignore[attr-defined]
        with store.backend.immediate_transaction():
            conn.execute("DROP TABLE feedback, citations, generations")
            conn.execute("DELETE FROM schema_migrations WHERE version = 2")
    with Store.open(pg_database) as store:
        conn = store.backend.conn  # type: ignore[attr-defined]
        applied = [r[0] for r in conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version").fetchall()]
        assert applied == [m.version for m in MIGRATIONS]
        assert store.backend.generation_row("missing") is None  # the table is back
        assert store.backend.schema_version() == MIGRATIONS[-1].version
