"""Text -> BM25 terms, cut by SQLite's own FTS5 tokenizer (``porter unicode61
remove_diacritics 2``, the SQLite backend's), run in an in-memory database: a store scores
BM25 alike on either backend, term for term, whatever the language of its text.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence

from mlflow_rag.store.schema import FTS_TOKENIZER

MAX_QUERY_TERMS = 64
_local = threading.local()


def _connection() -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:")
        conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize={FTS_TOKENIZER!r})")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        _local.conn = conn
    return conn


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    """Each text's terms in order (repeats kept)."""
    conn = _connection()
    with conn:
        conn.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", enumerate(texts, 1))
        found: list[list[str]] = [[] for _ in texts]
        for term, doc in conn.execute("SELECT term, doc FROM v ORDER BY doc, offset"):
            found[doc - 1].append(term)
        conn.execute("DELETE FROM t")
    return found


def term_counts(texts: Sequence[str]) -> list[tuple[Counter[str], int]]:
    """Per text: (term -> count, number of terms), as FTS5 indexes it."""
    return [(Counter(terms), len(terms)) for terms in _tokens(texts)]


def query_term_counts(text: str) -> Counter[str]:
    """The terms of a free-text query, each with the number of the query's distinct words
    (case-insensitive, the first ``MAX_QUERY_TERMS``) that it comes from; any term may match
    and no query syntax survives (the text is indexed, never parsed as a query).

    The SQLite backend sends FTS5 one quoted phrase per distinct word
    (``store/sqlite/filter_sql.fts_query``), and FTS5 sums BM25 over phrases: two words with
    one stem ("death", "deaths") count that term twice. Counting words, not stems, here keeps
    the scores equal."""
    words = list(dict.fromkeys(w.lower() for w in re.findall(r"\w+", text)))[:MAX_QUERY_TERMS]
    # A word the tokenizer cuts in two (snake_case) is a phrase to FTS5; here its terms count
    # separately: chunk_terms keeps no positions.
    return Counter(term for terms in (_tokens(words) if words else []) for term in terms)


def query_terms(text: str) -> list[str]:
    """The distinct terms of a free-text query (:func:`query_term_counts`), in order."""
    return list(query_term_counts(text))
