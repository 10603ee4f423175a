"""The throwaway PostgreSQL cluster the PostgreSQL tests stand on (tests/pg_cluster.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import postgres_unavailable
from tests.pg_cluster import PgCluster, PostgresUnavailable, find_bindir, is_server_of, reap_orphans

pytestmark = pytest.mark.postgres


def test_databases_of_one_cluster_are_isolated_and_tcp_takes_the_password(
        pg_cluster: PgCluster) -> None:
    import psycopg

    print(f"\ncluster {pg_cluster.root} on port {pg_cluster.port}: "
          f"initdb + start took {pg_cluster.start_seconds:.2f} s")
    first, second = pg_cluster.new_database(), pg_cluster.new_database()
    assert first != second
    with psycopg.connect(pg_cluster.dsn(first), autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id text PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO docs VALUES (%s, %s), (%s, %s)", ("a", "one", "b", "two"))
        assert conn.execute("SELECT count(*) FROM docs").fetchone() == (2,)
        auth = conn.execute("SELECT inet_server_addr()::text, current_user").fetchone()
        assert auth == ("127.0.0.1/32", pg_cluster.user)
    # The same table name in the second database is another table, and starts absent.
    with psycopg.connect(pg_cluster.socket_dsn(second), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('docs')").fetchone() == (None,)
        conn.execute("CREATE TABLE docs (id text PRIMARY KEY)")
        assert conn.execute("SELECT count(*) FROM docs").fetchone() == (0,)
    with pg_cluster.connect(first) as conn:
        assert conn.execute("SELECT count(*) FROM docs").fetchone() == (2,)


def test_tcp_refuses_a_wrong_or_missing_password(pg_cluster: PgCluster) -> None:
    import psycopg

    for password in ("wrong-" + pg_cluster.password, ""):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(pg_cluster.dsn(password=password), connect_timeout=10).close()
        message = str(info.value)
        assert "password" in message and pg_cluster.password not in message


def test_the_server_runs_as_its_own_user_in_a_private_folder(pg_cluster: PgCluster) -> None:
    assert len(str(pg_cluster.socket_dir / f".s.PGSQL.{pg_cluster.port}")) < 108
    mode = stat.S_IMODE(pg_cluster.data_dir.stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)  # PostgreSQL refuses a data folder others can read
    owner = pg_cluster.data_dir.stat().st_uid
    with pg_cluster.connect() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    backend_uid = Path(f"/proc/{pid}").stat().st_uid
    assert backend_uid == owner
    assert (owner != 0) if os.geteuid() == 0 else (owner == os.geteuid())


def test_the_server_binaries_are_found_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian puts initdb and pg_ctl in /usr/lib/postgresql/N/bin, never on PATH."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("not a Debian-style PostgreSQL installation")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("MLFLOW_RAG_PG_BINDIR", raising=False)
    bindir = find_bindir()
    assert bindir.parent.parent == Path("/usr/lib/postgresql")
    monkeypatch.setenv("MLFLOW_RAG_PG_BINDIR", "/nonexistent")  # a bad override falls through
    assert find_bindir() == bindir


def test_no_postgresql_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = str(PostgresUnavailable("no PostgreSQL server binaries"))
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("MLFLOW_RAG_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception):
        postgres_unavailable(reason)
    for name, value in (("CI", "true"), ("MLFLOW_RAG_REQUIRE_POSTGRES", "1")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(pytest.fail.Exception, match="CI: no PostgreSQL server binaries"):
                postgres_unavailable(reason)
    ci_script = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "export MLFLOW_RAG_REQUIRE_POSTGRES=1" in ci_script


def test_a_cluster_whose_session_was_killed_is_stopped_and_removed_by_the_next() -> None:
    """A pytest killed with -9 never runs its teardown; its server must not run for ever."""
    code = ("import sys, time\nfrom tests.pg_cluster import running_cluster\n"
            "with running_cluster() as c:\n"
            "    print(c.root, c.data_dir.joinpath('postmaster.pid').read_text().split()[0],"
            " flush=True)\n"
            "    time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
    try:
        assert owner.stdout is not None
        root_text, server_text = owner.stdout.readline().split()
    finally:
        owner.kill()
        owner.wait()
    root, server = Path(root_text), int(server_text)
    assert root.is_dir() and is_server_of(server, root)
    assert root in reap_orphans()
    assert not root.exists() and not is_server_of(server, root)
