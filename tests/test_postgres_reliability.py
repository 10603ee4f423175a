"""A PostgreSQL store under SIGKILL and under concurrent writers (docs/reliability.md,
"The PostgreSQL backend").

Kills: each round starts a writer process (tests/pg_writer.py: new batches, replacements,
deletions, one transaction a step, flushes of its cached index between) on the same store,
waits for a random number of acknowledged steps, kills it with SIGKILL at a random moment,
then checks the database against the writer's plan replayed: the documents are exactly the
state after the last acknowledged step or after the step in flight (nothing half-written:
every document has both chunks of one version and one vector each, the vector its content's),
no vector id ever names two things (across rounds, and none in the deletion log is alive),
the index cached by the killed writers, a fresh cache and a long-lived reader all agree with
the database (``verify``) and find the round's documents (a fresh cache every document each
10th round, a fresh process every document at the end). ``MLFLOW_RAG_PG_KILL_ROUNDS`` (30)
rounds.

Concurrency: 4 writer processes on one store at once, each its own cache folder (as separate
hosts): every step of every writer lands, counts exact, vector ids unique and never reused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlflow_rag.store.store import Store
from tests import pg_writer
from tests.pg_cluster import PgCluster

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
KILL_ROUNDS = int(os.environ.get("MLFLOW_RAG_PG_KILL_ROUNDS", "30"))
CONCURRENT_WRITERS = 4
STEPS_EACH = 25


def start_writer(location: str, seed: int, steps: int, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_RAG_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "tests.pg_writer", location, str(seed),
                             str(steps)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def acknowledge(proc: subprocess.Popen[str], wanted: int) -> int:
    """Read acks until step ``wanted`` is committed; returns the last acknowledged step."""
    assert proc.stdout is not None
    last = 0
    while last < wanted:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise AssertionError(f"writer died early ({proc.returncode}): "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if line.startswith("ack "):
            last = int(line.split()[1])
    return last


class Database:
    """What the store's tables hold, read straight from PostgreSQL (the test's own eyes,
    not the code under test), and what the test has seen of vector ids so far."""

    def __init__(self, cluster: PgCluster, database: str) -> None:
        self.cluster = cluster
        self.database = database
        self.seen: dict[int, tuple[str, int]] = {}  # vector id -> (chunk id, version)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.cluster.connect(self.database) as conn:
            conn.execute("SET search_path TO mlflow_rag")
            return list(conn.execute(sql).fetchall())

    def documents(self) -> dict[str, int]:
        """Every document's version, after checking it is whole: two chunks of one version,
        one vector each, each vector its chunk's; and the vector ids."""
        chunks = self.rows(
            "SELECT d.id, c.chunk_index, c.text, e.vector_id, e.vector FROM documents d "
            "LEFT JOIN chunks c ON c.document_id = d.id LEFT JOIN embeddings e "
            "ON e.chunk_id = c.id ORDER BY d.id, c.chunk_index")
        found: dict[str, list[tuple[Any, ...]]] = {}
        for doc, index, text, vector_id, vector in chunks:
            found.setdefault(doc, []).append((index, text, vector_id, vector))
        versions = {}
        for doc, parts in found.items():
            assert [p[0] for p in parts] == [0, 1], f"{doc} has chunks {[p[0] for p in parts]}"
            version = int(parts[0][1].rsplit(" ", 1)[1])
            assert [p[1] for p in parts] == pg_writer.texts(doc, version), doc
            expected = pg_writer.vectors(doc, version)
            for (index, _text, vector_id, vector), want in zip(parts, expected, strict=True):
                assert vector_id is not None, f"{doc}#{index} has no vector"
                # the store normalises again in float32: equal to the last bit or two
                assert np.allclose(np.frombuffer(bytes(vector), "<f4"), want, atol=1e-6), \
                    f"{doc}#{index} holds another vector"
                owner = (f"{doc}#{index}", version)
                assert self.seen.setdefault(int(vector_id), owner) == owner, \
                    f"vector id {vector_id} reused: {self.seen[int(vector_id)]} then {owner}"
            versions[doc] = version
        live = {int(r[0]) for r in self.rows("SELECT vector_id FROM embeddings")}
        deleted = {int(r[0]) for r in self.rows("SELECT vector_id FROM vector_deletions")}
        assert not live & deleted, f"deleted vector ids alive again: {sorted(live & deleted)[:5]}"
        next_id = int(self.rows("SELECT value FROM store_meta WHERE key = 'next_id'")[0][0])
        assert next_id > max(live | deleted | {0})
        return versions


def check_store(store: Store, docs: dict[str, int], *, what: str) -> None:
    """``store``'s index agrees with the database and each document's first chunk finds
    itself first."""
    report = store.verify(sample=20, seed=len(docs))
    model = report["models"][pg_writer.MODEL]
    assert report["integrity_check"] == "ok", (what, report)
    assert model["ids_equal"] and model["self_found"] == model["sampled"], (what, model)
    for doc, version in docs.items():
        hits = store.dense_search(pg_writer.vectors(doc, version)[0], k=1)
        assert hits and hits[0].chunk_id == f"{doc}#0", (what, doc, hits[:1])


@pytest.fixture
def location(pg_cluster: PgCluster, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A store made before the writers start (the model included): (location, database)."""
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "test-cache"))
    database = pg_cluster.new_database()
    where = pg_cluster.dsn(database)
    with Store.open(where, create=True) as store:
        store.ensure_model(pg_writer.MODEL, pg_writer.DIM, embedder=None, index_type="flat")
    yield where, database


def test_sigkill_of_postgresql_writers_never_half_writes_or_reuses_a_vector_id(
        pg_cluster: PgCluster, location: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    where, database = location
    db = Database(pg_cluster, database)
    rng = np.random.default_rng(2026)
    writers_cache = tmp_path / "writers-cache"  # every writer's: each reloads the killed one's
    reader = Store.open(where, read_only=True)  # long-lived: catches up by replay
    expected: dict[str, int] = {}
    in_flight = in_flight_landed = checked = 0
    started = time.perf_counter()
    for seed in range(KILL_ROUNDS):
        proc = start_writer(where, seed, 1000, writers_cache)
        acked = acknowledge(proc, int(rng.integers(1, 5)))
        time.sleep(float(rng.uniform(0, 0.08)))  # mid-write, mid-flush or between steps
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()  # what it printed before the kill, not read yet
        assert proc.returncode == -signal.SIGKILL
        lines = rest.split("\n")[:-1]  # the last line may be cut short
        acked = max([acked, *(int(line.split()[1]) for line in lines if line.startswith("ack "))])
        begun = f"begin {acked + 1}" in lines
        states = pg_writer.states(seed, acked + 1)
        stored = db.documents()
        mine = {d: v for d, v in stored.items() if d.startswith(f"w{seed}-")}
        assert mine in (states[acked], states[acked + 1]), (seed, acked, mine)
        if begun:  # killed inside a step: its transaction committed or vanished whole
            in_flight += 1
            in_flight_landed += mine != states[acked]  # every step changes the state
        expected = {**{d: v for d, v in expected.items() if not d.startswith(f"w{seed}-")},
                    **mine}
        assert stored == expected  # earlier writers' documents untouched

        monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(writers_cache))
        with Store.open(where) as shared:  # the cache the killed writers left
            check_store(shared, mine, what="writers' cache")
        monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / f"fresh-{seed}"))
        with Store.open(where, read_only=True) as fresh:
            # every document in a few rounds, else this round's and a sample of the others
            everything = seed % 10 == 9 or seed == KILL_ROUNDS - 1
            sample = sorted(expected) if everything else \
                [*mine, *rng.choice(sorted(expected), size=min(20, len(expected)), replace=False)]
            check_store(fresh, {d: expected[d] for d in sample}, what="fresh cache")
        check_store(reader, mine, what="long-lived reader")
        checked += len(set(sample))
    reader.close()

    # a fresh process, its own empty cache, finds every committed document
    script = (
        "import sys, json\n"
        "from mlflow_rag.store.store import Store\n"
        "from tests import pg_writer\n"
        "docs = json.loads(sys.stdin.read())\n"
        "with Store.open(sys.argv[1], read_only=True) as s:\n"
        "    found = sum(s.dense_search(pg_writer.vectors(d, v)[0], k=1)[0].chunk_id == d + '#0'\n"
        "                for d, v in docs.items())\n"
        "    print(found, s.stats().documents)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, where], input=json.dumps(expected),
                         cwd=REPO, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO),
                              "MLFLOW_RAG_CACHE_DIR": str(tmp_path / "last-process")})
    assert out.stdout.split() == [str(len(expected))] * 2, out.stdout + out.stderr
    print(f"\n{KILL_ROUNDS} kills survived in {time.perf_counter() - started:.0f} s: "
          f"{len(expected)} documents at the end, {checked} searched in fresh caches, "
          f"{len(db.seen)} vector ids seen (none reused); {in_flight} kills inside a step "
          f"(its commit had landed in {in_flight_landed}); a fresh process found all "
          f"{len(expected)}")


def test_four_postgresql_writers_at_once_lose_nothing(
        pg_cluster: PgCluster, location: tuple[str, str], tmp_path: Path) -> None:
    where, database = location
    started = time.perf_counter()
    procs = [start_writer(where, 100 + w, STEPS_EACH, tmp_path / f"host-{w}")
             for w in range(CONCURRENT_WRITERS)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert out.split()[-1] == str(STEPS_EACH)
    elapsed = time.perf_counter() - started
    expected: dict[str, int] = {}
    for w in range(CONCURRENT_WRITERS):
        expected.update(pg_writer.states(100 + w, STEPS_EACH)[-1])
    db = Database(pg_cluster, database)
    assert db.documents() == expected
    with Store.open(where, read_only=True) as store:
        stats = store.stats()
        assert (stats.documents, stats.chunks, stats.embeddings) == \
            (len(expected), 2 * len(expected), 2 * len(expected))
        assert stats.generation >= CONCURRENT_WRITERS * STEPS_EACH
        check_store(store, expected, what="after 4 writers")
    ids = [r[0] for r in db.rows("SELECT vector_id FROM embeddings")]
    assert len(ids) == len(set(ids))
    print(f"\n{CONCURRENT_WRITERS} writers x {STEPS_EACH} steps in {elapsed:.1f} s: "
          f"{len(expected)} documents, {len(ids)} vectors, ids unique, "
          f"{len(db.seen)} vector ids checked, generation {stats.generation}")
