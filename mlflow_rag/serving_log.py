"""The served model's opt-in query log: each query and its hits (and a served answer's
generation and citations) in a SQLite file of its own (a bundle is never written) or a
PostgreSQL store, written by a background thread off the request path; a full queue or a
busy file drops entries (counted, warned about at most every ``DROP_LOG_INTERVAL_S``) rather
than blocking or failing a search. Feedback on a logged answer is written at once: its
client waits for the verdict."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_rag import codec
from mlflow_rag.errors import DocumentNotFound, InvalidInput
from mlflow_rag.search import redact_emails
from mlflow_rag.store.answer_log import (
    Feedback,
    GenerationStats,
    citation_rows,
    generation_row,
    read_answer,
    write_feedback,
)
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.opening import is_database_location
from mlflow_rag.store.postgres.location import redacted
from mlflow_rag.store.tables import new_id, utc_now
from mlflow_rag.types import Hit

log = logging.getLogger("mlflow_rag.serving")

DROP_LOG_INTERVAL_S = 10.0  # at most one "queries dropped" warning per interval
# Feedback on an output id not (yet) in the log looks again for this long, every poll.
FEEDBACK_FIND_S = 1.0
FEEDBACK_POLL_S = 0.1


# The logs whose writer runs in this process, for close_open_logs.
_OPEN_LOGS: weakref.WeakSet[QueryLog] = weakref.WeakSet()


def close_open_logs() -> None:
    """Write and close every query log of this process: a scoring server's shutdown hook.

    ``atexit`` does not do it there: uvicorn, after its graceful shutdown, raises the
    ``SIGTERM`` it caught again with the default handler, which ends the process without
    running ``atexit`` (measured: traces and queued rows lost on every stop).
    """
    for query_log in list(_OPEN_LOGS):
        query_log.close()


@dataclass(frozen=True)
class ServedAnswer:
    """A served answer to log with its query: its ``generations`` row and citations, as
    ``ask`` records them (store/answer_log.py); the answer text only when kept (opt-in)."""

    output_id: str
    stats: GenerationStats
    citations: tuple[tuple[str, str], ...]  # (chunk id, document id)
    trace_id: str | None = None
    answer_text: str | None = None
    session_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class _Entry:
    """One query to log, as queued: the raw text (redacted when written), its hits and the
    answer it got, if any (text redacted when written too)."""

    text: str
    retrievals: tuple[tuple[str, int, float], ...]  # (chunk id, rank, score)
    model_name: str | None
    metadata: str
    timestamp: str
    answer: ServedAnswer | None = None


class QueryLog:
    """Opt-in query log in its own SQLite file (a bundle is never written) or in a PostgreSQL
    store (``postgresql://...``: every replica on every host logs into it), written off the
    request path.

    Logging must never block or fail a search: a retention ``VACUUM`` (or any other writer)
    holds the file's write lock for as long as it runs, and a request that waited for it
    would wait up to the busy timeout (30 s) and then lose its row. So :meth:`write` only
    queues the query; one background thread per process writes the queue in batches, one
    ``BEGIN IMMEDIATE`` transaction each, and retries a locked or failing file with back-off
    until it can write. Nothing is lost while the queue has room; when it is full (at
    ``max_queued`` queries), new queries are dropped and counted: :attr:`dropped`, a warning
    in the server log at most every :data:`DROP_LOG_INTERVAL_S` seconds, and the trace
    attribute ``mlflow_rag.query_log_dropped``. :meth:`flush` waits for the queue to be
    written; :meth:`close` (and the process's exit) flushes with a time limit and counts
    what is still queued then as dropped.

    Several server workers (processes) append to one file: WAL, a busy timeout and one
    transaction per batch make them take turns. Each process has its own connection, queue
    and thread, made lazily (none of them may cross a fork).
    """

    MAX_BATCH = 500
    RETRY_MAX_S = 2.0
    WRITER_BUSY_TIMEOUT_MS = 1_000  # short: the writer retries itself and can stop between tries

    def __init__(self, path: str | Path, *, redact: Callable[[str], str] | None = redact_emails,
                 forbidden_root: Path | None = None, max_queued: int = 10_000,
                 close_timeout_s: float = 10.0) -> None:
        # A PostgreSQL store's query log: every replica writes into the one database.
        self.database = str(path) if is_database_location(path) else None
        self.path: Path | str
        if self.database is not None:
            self.path = redacted(self.database)  # for messages
        else:
            self.path = Path(path).expanduser().resolve()
            if forbidden_root is not None and self.path.is_relative_to(forbidden_root.resolve()):
                raise InvalidInput(
                    f"the query log {self.path} is inside the bundle {forbidden_root}; bundles "
                    "are read-only, point the query log at a file elsewhere"
                )
            if not self.path.parent.is_dir():
                raise InvalidInput(f"the directory of the query log {self.path} does not exist")
        self.redact = redact
        self.max_queued = max_queued
        self.close_timeout_s = close_timeout_s
        self.written = 0
        self.dropped = 0
        self.retries = 0
        self._lock = threading.Lock()
        self._pid = -1
        self._queue: queue.Queue[_Entry | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._backend: Backend | None = None
        self._last_drop_log = 0.0
        self._closed = False

    # ----------------------------------------------------------------------- request path

    def write(self, text: str, hits: Sequence[Hit], *, model_name: str | None,
              metadata: Mapping[str, Any], answer: ServedAnswer | None = None) -> None:
        """Queue one query (and the answer it got) for the log; never blocks on the file."""
        entry = _Entry(
            text=text, retrievals=tuple((h.chunk_id, h.rank, float(h.score)) for h in hits),
            model_name=model_name, metadata=codec.metadata_json({**metadata, "pid": os.getpid()}),
            timestamp=utc_now(), answer=answer,
        )
        with self._lock:
            if self._closed and self._pid == os.getpid():
                self.dropped += 1
                self._log_drop("the log is closed")
                return
            self._start()
            if self._queue.unfinished_tasks >= self.max_queued:  # waiting + being written
                self.dropped += 1
                self._log_drop(f"the queue of {self.max_queued} queries is full")
                return
            self._queue.put(entry)

    def feedback(self, output_id: str, *, kind: str, value: float, comment: str | None,
                 user_id: str | None, wait_s: float = 5.0) -> tuple[Feedback, str | None]:
        """Record feedback on a logged answer, now (the client waits for the verdict), and
        return it with the answer's trace id. This process's queue is written first (at most
        ``wait_s``), so feedback on an answer served a moment ago finds it. An unknown output
        id or a bad value is an error and stores nothing."""
        give_up = time.monotonic() + min(wait_s, FEEDBACK_FIND_S)
        self.flush(wait_s)
        backend = self._open_backend(busy_timeout_ms=int(wait_s * 1000))
        try:
            while True:
                try:
                    stored = write_feedback(backend, output_id, kind=kind, value=value,
                                            comment=comment, user_id=user_id,
                                            redact=self.redact)
                    return stored, read_answer(backend, output_id).trace_id
                except DocumentNotFound:
                    # Another worker (process) of the server may have given the answer and
                    # still hold it in its queue, written within milliseconds as a rule.
                    if time.monotonic() + FEEDBACK_POLL_S > give_up:
                        raise
                    time.sleep(FEEDBACK_POLL_S)
        finally:
            backend.close()

    def stats(self) -> dict[str, int]:
        return {"queued": self._queue.qsize(), "written": self.written, "dropped": self.dropped,
                "retries": self.retries}

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued query is written (or ``timeout`` seconds); True if all were."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)  # polling: Queue.join() has no timeout
        return True

    def close(self) -> None:
        """Write what is queued (at most ``close_timeout_s``), then stop the writer."""
        with self._lock:
            thread, mine = self._thread, self._pid == os.getpid()
            if self._closed or thread is None or not mine:
                self._closed = True
                return
            self._closed = True
        if not self.flush(self.close_timeout_s):
            left = self._queue.unfinished_tasks
            self.dropped += left
            log.warning("query log %s: %d queries not written within %.0f s of closing; "
                        "%d dropped in all", self.path, left, self.close_timeout_s, self.dropped)
        self._queue.put(None)  # the writer stops at this marker
        thread.join(timeout=self.WRITER_BUSY_TIMEOUT_MS / 1000 + 1)
        if self.dropped:
            log.warning("query log %s closed: %d queries written, %d dropped", self.path,
                        self.written, self.dropped)

    # ----------------------------------------------------------------------- writer thread

    def _start(self) -> None:
        """The writer of this process (a fork gets a queue and thread of its own)."""
        if self._pid == os.getpid() and self._thread is not None:
            return
        self._pid = os.getpid()
        self._closed = False
        self._queue = queue.Queue()
        self._backend = None
        self._thread = threading.Thread(target=self._run, name="mlflow-rag-query-log",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.close)
        _OPEN_LOGS.add(self)

    def _run(self) -> None:
        delay = 0.05
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                break
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # keep the stop marker for after this batch
                    self._queue.task_done()
                    self._queue.put(None)
                    break
                batch.append(more)
            while True:
                try:
                    self._write_batch(batch)
                    self.written += len(batch)
                    delay = 0.05
                    break
                except Exception as exc:
                    # locked by another writer (a VACUUM, a purge) or failing: the queries
                    # stay queued; new ones are dropped and counted once the queue is full
                    self.retries += 1
                    if self.retries == 1 or self.retries % 100 == 0:
                        log.warning("query log %s: write failed (%s); retrying, %d queries "
                                    "waiting", self.path, exc,
                                    len(batch) + self._queue.qsize())
                    self._reset_connection()
                    time.sleep(delay)
                    delay = min(delay * 2, self.RETRY_MAX_S)
            for _ in batch:
                self._queue.task_done()
        self._reset_connection()

    def _write_batch(self, batch: Sequence[_Entry]) -> None:
        backend = self._connection()
        with backend.immediate_transaction():
            for entry in batch:
                stored = self.redact(entry.text) if self.redact else entry.text
                query_id = new_id()
                backend.insert_query(
                    query_id=query_id, text=stored, embedding=None,
                    model_name=entry.model_name, timestamp=entry.timestamp,
                    metadata=entry.metadata,
                    retrievals=[(new_id(), chunk_id, rank, score, "{}")
                                for chunk_id, rank, score in entry.retrievals],
                )
                if entry.answer is not None:
                    self._insert_answer(backend, entry.answer, query_id, entry.timestamp)

    def _insert_answer(self, backend: Backend, answer: ServedAnswer, query_id: str,
                       timestamp: str) -> None:
        row = generation_row(output_id=answer.output_id, query_id=query_id,
                             timestamp=timestamp, stats=answer.stats,
                             answer_text=answer.answer_text, session_id=answer.session_id,
                             user_id=answer.user_id, trace_id=answer.trace_id,
                             redact=self.redact)
        backend.insert_generation(row, citation_rows(answer.citations))

    def _connection(self) -> Backend:
        if self._backend is None:
            self._backend = self._open_backend(busy_timeout_ms=self.WRITER_BUSY_TIMEOUT_MS)
        return self._backend

    def _open_backend(self, *, busy_timeout_ms: int) -> Backend:
        if self.database is not None:
            from mlflow_rag.store.postgres.backend import PostgresBackend

            return PostgresBackend.open(self.database, create=False, read_only=False)
        from mlflow_rag.store.sqlite.backend import SqliteBackend

        assert isinstance(self.path, Path)
        return SqliteBackend.open_query_log(self.path, busy_timeout_ms=busy_timeout_ms)

    def _reset_connection(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def _log_drop(self, why: str) -> None:
        now = time.monotonic()
        if self.dropped == 1 or now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning("query log %s: %d queries dropped so far (%s)", self.path, self.dropped,
                        why)


def feedback_in_file(path: Path, output_id: str, *, kind: str, value: float,
                     comment: str | None, user_id: str | None,
                     redact: Callable[[str], str] | None = redact_emails,
                     ) -> tuple[Feedback, str | None]:
    """Feedback on an answer a served model logged into its own query-log file
    (``mlflow-rag feedback --query-log FILE``): stored in the file's ``feedback`` table, as
    the server stores it; returns it with the answer's trace id. A missing file, one that is
    not a query log, or an output id it does not hold is a one-line error; nothing stored."""
    from mlflow_rag.store.sqlite.query_log_file import check_query_log_file

    if "generations" not in check_query_log_file(path):
        raise DocumentNotFound(f"no answer with output id {output_id!r} in {path} (the query "
                               "log holds no answers: only a RAG model's are)")
    return QueryLog(path, redact=redact).feedback(output_id, kind=kind, value=value,
                                                  comment=comment, user_id=user_id, wait_s=5.0)
