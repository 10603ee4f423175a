"""Promise 6 and PII: query logs are opt-in, redacted before they are stored, purged for good,
PII-tagged fields stay out of every output unless asked for, and no error message carries the
query text (docs/reliability.md, promise 6).

"Never stored" is checked on the bytes of every file in the store folder (metadata.db, its
-wal and -shm, index files, manifest), not only through SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_rag.cli import main
from mlflow_rag.errors import RagError
from mlflow_rag.ingest import IngestOptions, ingest
from mlflow_rag.search import MAX_QUERY_CHARS, Searcher, redact_emails
from mlflow_rag.store.store import Store
from tests.hash_embedder import HashEmbedder

EMAIL = "jane.doe+rag@example.org"
PHONE = "+44 20 7946 0958"
QUERY_EMAIL = "cfo.private@merger-target.example"  # in queries only, never in the corpus
SECRET = f"is {QUERY_EMAIL} on the shortlist for the merger"
OPTIONS = IngestOptions(embedder="hash-test")


def store_bytes(root: Path) -> bytes:
    """Every byte the store holds on disk right now (WAL and shared memory included)."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def on_disk(root: Path, text: str) -> bool:
    data = store_bytes(root)
    return any(text.encode(enc) in data for enc in ("utf-8", "utf-16-le", "utf-16-be"))


@pytest.fixture
def speakers(tmp_path: Path) -> Path:
    """A CSV whose e-mail and phone columns are PII by name; the bio is the text."""
    path = tmp_path / "speakers.csv"
    path.write_text(
        "id,name,email,phone,country,bio\n"
        f'ann,Ann Example,{EMAIL},{PHONE},UK,"Ann builds retrieval systems with vector search '
        'and talks about evaluation of rankers at scale, with many words in her biography."\n'
        'bob,Bob Example,bob@example.net,+49 30 1234567,Germany,"Bob modernises legacy code '
        'bases and writes about mainframes, migration and testing of old systems for years."\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def store(tmp_path: Path, speakers: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store", create=True)
    ingest([str(speakers)], s, options=OPTIONS, embedder=HashEmbedder(), progress=False)
    s.flush()
    yield s
    s.close()


def searcher(store: Store, **kwargs: Any) -> Searcher:
    return Searcher(store, embedder=HashEmbedder(), **kwargs)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


# =========================================================================== query logs


def test_searches_log_nothing_unless_asked(store: Store) -> None:
    for mode in ("dense", "bm25", "hybrid"):
        assert searcher(store).search(SECRET, mode=mode, k=2)
    assert store.stats().queries == 0 and store.stats().retrievals == 0
    assert not on_disk(store.root, "shortlist for the merger")


def test_cli_search_without_log_query_opens_read_only_and_writes_no_byte(store: Store) -> None:
    root = store.root
    store.close()
    before = {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    code, out = cli("search", SECRET, "--store", str(root), "--mode", "bm25", "--json")
    assert code == 0, out
    after = {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # a WAL reader may create an empty -wal and the -shm index; no data file changes
    assert after.pop("metadata.db-wal", b"") == b""
    after.pop("metadata.db-shm", None)
    assert after == before
    assert not on_disk(root, "merger")


def test_cli_log_query_stores_the_redacted_text_only(store: Store) -> None:
    root = store.root
    store.close()
    code, out = cli("search", SECRET, "--store", str(root), "--mode", "bm25", "--log-query")
    assert code == 0, out
    with Store.open(root) as again:
        rows = again.backend.conn.execute("SELECT query_text FROM queries").fetchall()
        assert rows == [("is <email> on the shortlist for the merger",)]
        assert not on_disk(root, QUERY_EMAIL)  # store open: metadata.db and its -wal
    assert not on_disk(root, QUERY_EMAIL)  # closed: checkpointed into metadata.db


def test_redaction_hook_runs_before_anything_reaches_the_files(store: Store) -> None:
    seen: list[str] = []

    def redact(text: str) -> str:
        seen.append(text)
        return redact_emails(text).replace("merger", "[topic]")

    hits = searcher(store, redact=redact).search(SECRET, mode="hybrid", k=2, log=True)
    assert seen == [SECRET] and hits
    text, embedding = store.backend.conn.execute(
        "SELECT query_text, query_embedding FROM queries").fetchone()
    assert text == "is <email> on the shortlist for the [topic]"
    assert embedding is None  # the raw text's embedding could be inverted back into it
    assert not on_disk(store.root, QUERY_EMAIL) and not on_disk(store.root, "merger")
    # a query the hook leaves alone keeps its embedding (useful for query analytics)
    searcher(store, redact=redact).search("vector search talks", mode="dense", k=1, log=True)
    kept = store.backend.conn.execute(
        "SELECT query_embedding FROM queries WHERE query_text = 'vector search talks'").fetchone()
    assert kept[0] is not None and len(kept[0]) == 4 * 64


def test_without_a_hook_the_text_is_stored_as_given(store: Store) -> None:
    searcher(store, redact=None).search(SECRET, mode="bm25", k=1, log=True)
    assert on_disk(store.root, QUERY_EMAIL)  # proves on_disk would see a leak


def test_retention_purges_old_queries_from_every_file_and_shrinks_the_database(
    store: Store,
) -> None:
    plain = searcher(store, redact=None)
    for i in range(300):
        plain.search(f"confidential question number {i} about the merger", mode="bm25", k=2,
                     log=True)
    recent = plain.search("a recent question on retrieval", mode="bm25", k=2, log=True)
    store.backend.conn.execute("UPDATE queries SET timestamp = '2001-01-01T00:00:00+00:00' "
                       "WHERE query_text LIKE 'confidential%'")
    store.flush()
    size_before = sum(len(p.read_bytes()) for p in store.root.glob("metadata.db*"))
    assert on_disk(store.root, "confidential question number 17")
    assert store.logs.delete_queries_older_than(30) == 300
    assert store.stats().queries == 1 and store.stats().retrievals == len(recent) > 0
    size_after = sum(len(p.read_bytes()) for p in store.root.glob("metadata.db*"))
    assert size_after < size_before
    # gone from metadata.db and its WAL while the store is still open (VACUUM + checkpoint)
    assert not on_disk(store.root, "confidential question number")
    assert (store.root / "metadata.db-wal").stat().st_size == 0


def test_cli_purge_queries_deletes_old_logs(store: Store) -> None:
    searcher(store, redact=None).search("old question", mode="bm25", k=1, log=True)
    store.backend.conn.execute("UPDATE queries SET timestamp = '2001-01-01T00:00:00+00:00'")
    root = store.root
    store.close()
    assert cli("purge-queries", "--store", str(root), "--older-than-days", "7") == (
        0, "deleted 1 queries\n")
    assert not on_disk(root, "old question")
    code, out = cli("purge-queries", "--store", str(root), "--older-than-days", "nan")
    assert code == 1 and out.startswith("error: days must be a non-negative number")


# =========================================================================== PII


def test_pii_fields_never_appear_in_search_results_unless_asked(store: Store) -> None:
    for mode in ("dense", "bm25", "hybrid"):
        for hit in searcher(store).search("retrieval systems Ann", mode=mode, k=5):
            shown = json.dumps(hit.to_dict())
            assert EMAIL not in shown and PHONE not in shown and '"_pii"' not in shown
            assert hit.document_metadata["pii_fields"] == ["email", "phone"]  # names only
    revealed = searcher(store).search("retrieval systems", mode="bm25", k=1, include_pii=True)
    assert revealed[0].document_metadata["_pii"] == {"email": EMAIL, "phone": PHONE}


def test_pii_is_never_embedded_indexed_or_searchable(store: Store) -> None:
    assert store.lexical_search(EMAIL, k=5) == []  # not in any chunk text
    assert store.lexical_search("7946", k=5) == []
    for spec in ({"email": EMAIL}, {"_pii.email": EMAIL}, {"metadata._pii.email": EMAIL},
                 {"_pii.email": {"$exists": True}}):
        # filters cannot be used as an oracle to test guesses of a PII value
        assert store.find_documents(spec) == []
    assert [d.id for d in store.find_documents({"country": "UK"})] == ["ann"]


def test_pii_never_appears_in_show_or_stats_output_unless_asked(store: Store) -> None:
    root = store.root
    store.close()
    for args in (["show", "ann"], ["show", "ann", "--json"], ["stats"], ["stats", "--json"],
                 ["search", "Ann retrieval", "--mode", "bm25"],
                 ["search", "Ann retrieval", "--mode", "bm25", "--json"]):
        code, out = cli(*args, "--store", str(root))
        assert code == 0, out
        assert EMAIL not in out and PHONE not in out, args
        assert '"_pii"' not in out and "_pii:" not in out and "'_pii'" not in out, args
    code, out = cli("show", "ann", "--json", "--include-pii", "--store", str(root))
    assert EMAIL in out and PHONE in out
    code, out = cli("search", "Ann retrieval", "--mode", "bm25", "--json", "--include-pii",
                    "--store", str(root))
    assert EMAIL in out


# =========================================================================== error messages


def _messages(exc: BaseException) -> str:
    """The message of an error and of every error it was raised from or during."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


BAD_CALLS = {
    "k = 0": {"k": 0},
    "k too large": {"k": 10**9},
    "k not an integer": {"k": "5"},
    "unknown mode": {"mode": "semantic"},
    "unknown fusion": {"fusion": "borda"},
    "filter not JSON": {"filters": "{country"},
    "unknown operator": {"filters": {"country": {"$regex": ".*"}}},
    "bad filter value": {"filters": {"country": {"$in": "UK"}}},
    "candidates too large": {"candidates": 10**6},
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_error_messages_never_contain_the_query_text(store: Store, case: str) -> None:
    with pytest.raises(RagError) as info:
        searcher(store).search(SECRET, log=True, **BAD_CALLS[case])
    assert "merger" not in _messages(info.value) and QUERY_EMAIL not in _messages(info.value)
    assert store.stats().queries == 0


def test_other_failures_do_not_echo_the_query_either(store: Store, tmp_path: Path) -> None:
    failures = [
        lambda: searcher(store).search(SECRET * (MAX_QUERY_CHARS // len(SECRET) + 1)),
        lambda: Searcher(store, model="no-such-model", embedder=HashEmbedder()).search(SECRET),
        lambda: Searcher(store).search(SECRET, mode="dense"),  # embedder not in the registry
    ]
    reader = Store.open(store.root, read_only=True)
    failures.append(lambda: searcher(reader).search(SECRET, mode="bm25", log=True))
    for failure in failures:
        with pytest.raises(RagError) as info:
            failure()
        assert "merger" not in _messages(info.value)
    reader.close()


def test_cli_errors_never_print_the_query(store: Store) -> None:
    root = store.root
    store.close()
    for extra in (["-k", "0"], ["--filter", "{bad"], ["--filter", '{"a": {"$nope": 1}}'],
                  ["--embedder", "ghost"]):
        code, out = cli("search", SECRET, "--store", str(root), *extra)
        assert code != 0 and "merger" not in out and QUERY_EMAIL not in out, (extra, out)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    from tests.conftest import make_record

    s = Store.open(tmp_path_factory.mktemp("privacy") / "s", create=True)
    s.ensure_model("hash-test", 64)
    s.write([make_record("a", ["retrieval systems"], vectors=np.ones((1, 64)), model="hash-test")])
    yield s
    s.close()


MARK = "qx7Zk"  # any echo of the query would carry these marks with it


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60), case=st.sampled_from(sorted(BAD_CALLS)))
def test_no_bad_parameter_echoes_an_arbitrary_query(small_store: Store, text: str, case: str) -> None:
    query = f"{MARK}{text}{MARK}"
    with pytest.raises(RagError) as info:
        Searcher(small_store, embedder=HashEmbedder()).search(query, **BAD_CALLS[case])
    assert MARK not in _messages(info.value)
