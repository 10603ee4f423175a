"""One store's connection over time: its transactions, and a new connection when the server
dropped the old one while none of our transactions was open.

A server that restarts, or terminates our backend, breaks the connection; the call that
meets it fails in one line (:mod:`mlflow_rag.store.postgres.guard`). The next call that
starts outside a transaction connects again, so a long-lived Store (a server's) answers as
soon as the database is back. Inside a transaction it never does: the transaction is gone
with the old connection, and carrying on with a new one would commit half of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow_rag.errors import DatabaseUnavailable, RagError
from mlflow_rag.store.postgres import connection, guard
from mlflow_rag.store.postgres.location import Location


class Session:
    """The connection of one backend, and the depth of its open transactions."""

    def __init__(self, conn: Any, location: Location, *, read_only: bool) -> None:
        self._conn: Any = conn
        self._location = location
        self._read_only = read_only
        self._depth = 0  # open transactions of ours: never reconnect inside one
        self._writing = 0

    @property
    def conn(self) -> Any:
        """The connection; a new one if the server dropped the old one while no transaction
        of ours was open (inside one, the transaction is lost: that is the caller's error)."""
        if self._conn is None:
            raise RagError("the store is closed")
        if self._conn.broken or self._conn.closed:
            if self._depth:
                raise DatabaseUnavailable(f"lost the connection to {self._location.shown}; "
                                          f"{self.outcome()}")
            self._reconnect()
        return self._conn

    def outcome(self) -> str:
        """What a failure now did to the write: for messages."""
        return guard.IN_WRITE if self._writing else guard.OUTSIDE

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        conn = connection.connect(self._location)
        if self._read_only:
            connection.set_read_only(conn)
        self._conn = conn

    def _begin(self, statement: str) -> None:
        """Start a transaction; a connection found dead on the way (the server restarted
        since our last call) is replaced once: nothing of the transaction had run yet."""
        try:
            self.conn.execute(statement)
        except Exception as exc:
            if self._depth or not guard.is_connection_failure(exc):
                raise
            self._reconnect()
            self._conn.execute(statement)

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        """READ COMMITTED under the store's write lock (nested: the outer one's)."""
        if self._writing:
            yield
            return
        self._begin("BEGIN ISOLATION LEVEL READ COMMITTED")
        self._depth += 1
        self._writing += 1
        try:
            with connection.write_lock_transaction(self._conn, self._location, begun=True):
                yield
        finally:
            self._depth -= 1
            self._writing -= 1

    @contextmanager
    def read_transaction(self) -> Iterator[None]:
        """One REPEATABLE READ snapshot (nested: the outer transaction's)."""
        import psycopg

        if self._depth or self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            yield
            return
        self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self._depth += 1
        try:
            yield
        except BaseException:
            if not (self._conn.broken or self._conn.closed):
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("ROLLBACK")
            raise
        else:
            try:
                self._conn.execute("COMMIT")
            except psycopg.Error as exc:
                if not guard.is_connection_failure(exc):
                    raise
                raise guard.unavailable(exc, self._location, outcome=guard.OUTSIDE) from exc
        finally:
            self._depth -= 1
