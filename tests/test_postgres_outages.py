"""A PostgreSQL store when the database goes away or refuses: one line naming what to fix,
nothing stored lost, and the same Store object working again once the server is back.

The stop/restart tests run their own cluster (stopping the session's would disturb other
tests); the refusals (wrong password, missing database, no server, no USAGE) use the
session's. Every message is checked to be one line, to name the host, port and database,
and never to hold the password.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.errors import DatabaseUnavailable
from mlflow_rag.store.store import Store
from tests.conftest import make_record
from tests.pg_cluster import PgCluster, free_port, running_cluster

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parent.parent
DIM = 8


def _doc(name: str) -> object:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return make_record(name, [f"{name} first part", f"{name} second part"],
                       vectors=rng.normal(size=(2, DIM)).astype(np.float32))


def _one_line(exc: BaseException, cluster: PgCluster, database: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    assert cluster.password not in text
    assert f"127.0.0.1:{cluster.port}/{database}" in text, text
    return text


@pytest.fixture(scope="module")
def stoppable_cluster() -> Iterator[PgCluster]:
    """A cluster the tests of this module may stop and start (the session's is shared)."""
    pytest.importorskip("psycopg")
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def own_cluster(stoppable_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> Iterator[PgCluster]:
    """The stoppable cluster, running at the start of each test and again after it."""
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    if not stoppable_cluster.running():
        stoppable_cluster.start()
    yield stoppable_cluster
    if not stoppable_cluster.running():
        stoppable_cluster.start()


def test_a_stopped_server_gives_one_line_and_the_same_store_recovers(own_cluster: PgCluster) -> None:
    cluster = own_cluster
    database = cluster.new_database()
    store = Store.open(cluster.dsn(database), create=True)
    store.ensure_model("m", DIM, embedder=None)
    store.write([_doc(f"before{i}") for i in range(5)])
    query = np.ones(DIM, dtype=np.float32)
    assert len(store.dense_search(query, k=3)) == 3

    cluster.stop("immediate")
    failures = []
    calls = {
        "dense_search": lambda: store.dense_search(query, k=3),
        "lexical_search": lambda: store.lexical_search("first part", k=3),
        "stats": store.stats,
        "get_document": lambda: store.get_document("before1"),
        "write": lambda: store.write([_doc("during")]),
        "delete": lambda: store.delete("before0"),
    }
    for name, call in calls.items():
        with pytest.raises(DatabaseUnavailable) as caught:
            call()
        failures.append(f"{name}: {_one_line(caught.value, cluster, database)}")
    print("\n".join(failures))

    cluster.start()
    # The same object: no reopen. The first call reconnects (nothing of it had run).
    assert store.stats().documents == 5
    assert sorted(d.id for d in store.find_documents(None, limit=10)) == \
        [f"before{i}" for i in range(5)]
    store.write([_doc("after")])
    hits = store.dense_search(np.asarray(_doc("after").vectors[0].vectors[0]), k=1)
    assert hits[0].document_id == "after"
    assert store.verify(sample=11)["models"]["m"]["ids_equal"]
    store.close()
    with Store.open(cluster.dsn(database), read_only=True) as again:
        assert again.stats().documents == 6 and again.stats().chunks == 12


def test_a_connection_terminated_mid_write_rolls_it_back_in_one_line(own_cluster: PgCluster) -> None:
    """``pg_terminate_backend`` while a write transaction is open: the write is gone, the
    error says so in one line, and the next call reconnects."""
    cluster = own_cluster
    database = cluster.new_database()
    store = Store.open(cluster.dsn(database), create=True)
    store.ensure_model("m", DIM, embedder=None)
    store.write([_doc("kept")])
    backend = store.backend
    with pytest.raises(DatabaseUnavailable) as caught, backend.write_transaction():
        backend.delete_document("kept")
        pid = backend.conn.info.backend_pid  # type: ignore[attr-defined]
        with cluster.connect(database) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        backend.delete_document("kept")
    text = _one_line(caught.value, cluster, database)
    assert "rolled back" in text
    assert store.get_document("kept").id == "kept"
    assert store.stats().documents == 1
    # a read-only store reconnects as read-only
    reader = Store.open(cluster.dsn(database), read_only=True)
    pid = reader.backend.conn.info.backend_pid  # type: ignore[attr-defined]
    with cluster.connect(database) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert reader.stats().documents == 1
    assert reader.backend.conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"  # type: ignore[attr-defined]
    reader.close()
    store.close()


def test_a_server_restarted_under_a_reader_process_is_invisible(own_cluster: PgCluster,
                                                                 tmp_path: Path) -> None:
    """A long-lived process (a server) searching before and after a restart: its calls
    while the server is down fail in one line each, then answer again without a reopen."""
    cluster = own_cluster
    database = cluster.new_database()
    location = cluster.dsn(database)
    with Store.open(location, create=True) as store:
        store.ensure_model("m", DIM, embedder=None)
        store.write([_doc(f"d{i}") for i in range(4)])
    script = (
        "import sys, numpy as np\n"
        "from mlflow_rag.store.store import Store\n"
        "from mlflow_rag.errors import RagError\n"
        "s = Store.open(sys.argv[1], read_only=True)\n"
        "for line in sys.stdin:\n"
        "    try:\n"
        "        print('ok', len(s.dense_search(np.ones(8, 'f4'), k=10)), flush=True)\n"
        "    except RagError as e:\n"
        "        print('error', str(e).replace(chr(10), '|'), flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, location], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.stdin is not None and proc.stdout is not None

    def ask() -> str:
        proc.stdin.write("q\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return proc.stdout.readline().strip()  # type: ignore[union-attr]

    try:
        assert ask() == "ok 8"
        cluster.stop("immediate")
        down = [ask() for _ in range(3)]
        assert all(a.startswith("error ") and "|" not in a for a in down), down
        assert all(f"127.0.0.1:{cluster.port}/{database}" in a for a in down)
        assert not any(cluster.password in a for a in down)
        cluster.start()
        assert ask() == "ok 8"
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


# ----------------------------------------------------------------- refusals (session cluster)


@pytest.fixture
def stored(pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The name of a database holding a store of two documents."""
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    database = pg_cluster.new_database()
    with Store.open(pg_cluster.dsn(database), create=True) as store:
        store.ensure_model("m", DIM, embedder=None)
        store.write([_doc("a"), _doc("b")])
    return database


def _kept(pg_cluster: PgCluster, database: str) -> None:
    with Store.open(pg_cluster.dsn(database), read_only=True) as store:
        assert store.stats().documents == 2


def test_a_wrong_password_a_missing_database_and_no_server_are_one_line(
        pg_cluster: PgCluster, stored: str) -> None:
    secret = "Sekr1t-pw-never-shown"
    cases = {
        "wrong password": (pg_cluster.dsn(stored, password=secret), stored, "password"),
        "missing database": (pg_cluster.dsn("no_such_db"), "no_such_db", "does not exist"),
    }
    for name, (location, database, expected) in cases.items():
        for create in (False, True):
            with pytest.raises(DatabaseUnavailable) as caught:
                Store.open(location, create=create)
            text = _one_line(caught.value, pg_cluster, database)
            assert secret not in text and expected in text, (name, text)
    port = free_port()
    with pytest.raises(DatabaseUnavailable) as caught:
        Store.open(f"postgresql://u:{secret}@127.0.0.1:{port}/db")
    text = str(caught.value)
    assert "\n" not in text and secret not in text and f"127.0.0.1:{port}/db" in text
    _kept(pg_cluster, stored)


def test_a_role_without_usage_on_the_schema_is_told_what_to_grant(pg_cluster: PgCluster,
                                                                  stored: str) -> None:
    role, password = f"outsider_{stored[-6:]}", "Outsider-pw-42"
    with pg_cluster.connect(stored) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    location = pg_cluster.dsn(stored, user=role, password=password)
    for kwargs in ({}, {"read_only": True}, {"create": True}):
        with pytest.raises(DatabaseUnavailable) as caught:
            Store.open(location, **kwargs)  # type: ignore[arg-type]
        text = _one_line(caught.value, pg_cluster, stored)
        assert password not in text and "USAGE" in text and "mlflow_rag" in text, text
    # USAGE and SELECT: reads work, a write is refused in one line, nothing lost
    with pg_cluster.connect(stored) as admin:
        admin.execute(f"GRANT USAGE ON SCHEMA mlflow_rag TO {role}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA mlflow_rag TO {role}")
    with Store.open(location, read_only=True) as reader:
        assert reader.stats().documents == 2
    writer = Store.open(location)
    with pytest.raises(DatabaseUnavailable) as caught:
        writer.write([_doc("c")])
    text = _one_line(caught.value, pg_cluster, stored)
    assert password not in text and "permission denied" in text, text
    writer.close()
    _kept(pg_cluster, stored)


class _AnswerLostAtCommit:
    """A connection whose next COMMIT reaches the server and commits, but whose answer is
    lost (the socket closed): the one case where a write's outcome is unknown."""

    def __init__(self, conn: object) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    def execute(self, sql: object, *args: object, **kwargs: object) -> object:
        import psycopg

        result = self._conn.execute(sql, *args, **kwargs)  # type: ignore[attr-defined]
        if sql == "COMMIT":
            self._conn.close()  # type: ignore[attr-defined]
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return result


def test_a_lost_commit_answer_says_the_outcome_is_unknown_and_is_not_retried(
        pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    database = pg_cluster.new_database()
    store = Store.open(pg_cluster.dsn(database), create=True)
    store.ensure_model("m", DIM, embedder=None)
    store.write([_doc("first")])
    before = store.stats().generation
    session = store.backend._session  # type: ignore[attr-defined]
    session._conn = _AnswerLostAtCommit(session._conn)
    with pytest.raises(DatabaseUnavailable) as caught:
        store.write([_doc("second")])
    text = _one_line(caught.value, pg_cluster, database)
    assert "may or may not have landed" in text, text
    # It had landed, once: the generation moved by one (no silent second attempt), and the
    # same Store reconnects and its index catches up with the write it saw fail.
    assert store.stats().generation == before + 1
    assert store.stats().documents == 2
    hits = store.dense_search(np.asarray(_doc("second").vectors[0].vectors[0]), k=1)  # type: ignore[attr-defined]
    assert hits[0].document_id == "second"
    assert store.verify(sample=4)["models"]["m"]["ids_equal"]
    store.close()


def test_the_roles_of_docs_scaling_can_do_what_it_says(pg_cluster: PgCluster, stored: str) -> None:
    """docs/scaling.md, "A store on PostgreSQL": the owner makes the store, a writer role
    ingests and deletes, a reader role searches; the reader cannot write."""
    suffix = stored[-6:]
    writer, reader = f"rag_writer_{suffix}", f"rag_reader_{suffix}"
    with pg_cluster.connect(stored) as admin:
        for role in (writer, reader):
            admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Role-pw-{suffix}'")
        admin.execute(f"GRANT USAGE ON SCHEMA mlflow_rag TO {writer}, {reader}")
        admin.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA mlflow_rag "
                      f"TO {writer}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA mlflow_rag TO {reader}")
    with Store.open(pg_cluster.dsn(stored, user=writer, password=f"Role-pw-{suffix}")) as store:
        store.write([_doc("c"), _doc("d")])
        store.delete("a")  # with its erasure (a VACUUM only the owner may run: skipped)
    with Store.open(pg_cluster.dsn(stored, user=reader, password=f"Role-pw-{suffix}"),
                    read_only=True) as store:
        assert sorted(d.id for d in store.find_documents(None)) == ["b", "c", "d"]
        hits = store.dense_search(np.asarray(_doc("c").vectors[0].vectors[0]), k=1)  # type: ignore[attr-defined]
        assert hits[0].document_id == "c"
        assert store.lexical_search("second part", k=3)
    denied = Store.open(pg_cluster.dsn(stored, user=reader, password=f"Role-pw-{suffix}"))
    with pytest.raises(DatabaseUnavailable) as caught:
        denied.write([_doc("e")])
    denied.close()
    assert "permission denied" in str(caught.value) and "\n" not in str(caught.value)


def test_a_location_without_host_or_credentials_takes_them_from_the_environment(
        pg_cluster: PgCluster, stored: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``postgresql:///DB`` (docs/scaling.md: credentials in the environment) with PGHOST,
    PGPORT, PGUSER and PGPASSWORD (before: the location became ``postgresql:/DB``, refused)."""
    for key, value in (("PGHOST", "127.0.0.1"), ("PGPORT", str(pg_cluster.port)),
                       ("PGUSER", pg_cluster.user), ("PGPASSWORD", pg_cluster.password)):
        monkeypatch.setenv(key, value)
    with Store.open(f"postgresql:///{stored}", read_only=True) as store:
        assert store.stats().documents == 2
        assert store.location == f"postgresql:///{stored}"
    monkeypatch.setenv("PGPASSWORD", "Env-Secret-wrong")
    with pytest.raises(DatabaseUnavailable) as caught:
        Store.open(f"postgresql:///{stored}")
    text = str(caught.value)
    assert "\n" not in text and "Env-Secret-wrong" not in text and pg_cluster.password not in text
    assert f'"127.0.0.1", port {pg_cluster.port}' in text and "password" in text, text
