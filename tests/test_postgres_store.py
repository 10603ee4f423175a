"""A store on PostgreSQL answers as the same store on SQLite does: the same documents, the same
dense, filtered, BM25 and hybrid hits (scores included), the same listings; and what one
process commits, another process's indexes catch up with."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_rag.errors import DatabaseUnavailable, StoreNotFound
from mlflow_rag.store.store import Store
from tests.conftest import make_record

pytestmark = pytest.mark.postgres

DIM = 8
COUNTRIES = ["UK", "Germany", "France", "Kenya"]


def _records(n: int = 40, *, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        texts = [f"document {i} about topic{(i + j) % 5} and legacy modernization {j}"
                 if i % 3 == 0 else f"notes {i} on cooking recipe number {j} and topic{j}"
                 for j in range(3)]
        records.append(make_record(
            f"doc{i:03d}", texts, vectors=rng.normal(size=(3, DIM)).astype(np.float32),
            metadata={"country": COUNTRIES[i % 4], "year": 2000 + i % 9, "score": i / 7,
                      "flag": i % 2 == 0, "tags": ["a", "b"] if i % 5 == 0 else "c"},
            chunk_type="bio" if i % 2 else "text",
        ))
    return records


@pytest.fixture(scope="module")
def pair(pg_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Store]]:
    """The same documents written to a SQLite store and to a PostgreSQL store."""
    location = pg_cluster.dsn(pg_cluster.new_database())
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_RAG_CACHE_DIR", str(cache))
        lite = Store.open(tmp_path_factory.mktemp("lite") / "s", create=True)
        pg = Store.open(location, create=True)
        for store in (lite, pg):
            store.ensure_model("m", DIM, embedder=None)
            store.write(_records())
        yield lite, pg
        lite.close()
        pg.close()


def _hits(hits: list) -> list[tuple[str, float]]:
    return [(h.chunk_id, round(float(h.score), 5)) for h in hits]


def test_the_postgresql_store_holds_what_was_written(pair: tuple[Store, Store]) -> None:
    lite, pg = pair
    assert pg.location.startswith("postgresql://") and ":" not in pg.location.split("@")[0][13:]
    for field in ("documents", "chunks", "embeddings", "generation"):
        assert getattr(pg.stats(), field) == getattr(lite.stats(), field)
    written = dataclasses.replace(lite.get_document("doc007"), imported_at="")
    assert dataclasses.replace(pg.get_document("doc007"), imported_at="") == written
    assert [c.id for c in pg.expand_context("doc007#1")] == \
        [c.id for c in lite.expand_context("doc007#1")]


def test_dense_and_lexical_hits_match_sqlite(pair: tuple[Store, Store]) -> None:
    lite, pg = pair
    rng = np.random.default_rng(1)
    for _ in range(5):
        query = rng.normal(size=DIM).astype(np.float32)
        assert _hits(pg.dense_search(query, k=7)) == _hits(lite.dense_search(query, k=7))
    for text in ("legacy modernization topic3", "cooking recipes", "document 12", "zzz nothing"):
        assert _hits(pg.lexical_search(text, k=10)) == _hits(lite.lexical_search(text, k=10))


SCALARS = st.one_of(st.sampled_from([*COUNTRIES, "UK ", "", "a", "c"]),
                    st.integers(1998, 2010), st.sampled_from([0.5, 1.0, 2.5]), st.booleans())
FIELDS = st.sampled_from(["country", "year", "score", "flag", "tags", "missing", "chunk_type",
                          "chunk_index", "document_id", "chunk.position", "source_type"])


@st.composite
def filters(draw: st.DrawFn) -> dict:
    field = draw(FIELDS)
    op = draw(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin",
                               "$exists"]))
    if op in ("$in", "$nin"):
        arg = draw(st.lists(SCALARS, min_size=1, max_size=4))
    elif op == "$exists":
        arg = draw(st.booleans())
    else:
        arg = draw(st.one_of(SCALARS, st.none())) if op in ("$eq", "$ne") else draw(SCALARS)
        if arg is None or (isinstance(arg, bool) and op not in ("$eq", "$ne")):
            arg = 2004
    condition = {field: {op: arg}}
    if draw(st.booleans()):
        return condition
    other = {draw(FIELDS): draw(SCALARS)}
    return {draw(st.sampled_from(["$and", "$or"])): [condition, other]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=filters())
def test_every_filter_selects_what_sqlite_selects(pair: tuple[Store, Store], spec: dict) -> None:
    lite, pg = pair
    expected = [d.id for d in lite.find_documents(spec, limit=100)]
    assert [d.id for d in pg.find_documents(spec, limit=100)] == expected, json.dumps(spec)
    query = np.ones(DIM, dtype=np.float32)
    assert _hits(pg.dense_search(query, k=5, filters=spec)) == \
        _hits(lite.dense_search(query, k=5, filters=spec)), json.dumps(spec)
    assert _hits(pg.lexical_search("topic1 notes legacy", k=5, filters=spec)) == \
        _hits(lite.lexical_search("topic1 notes legacy", k=5, filters=spec)), json.dumps(spec)


def test_a_second_process_sees_a_committed_document(pair: tuple[Store, Store], tmp_path: Path,
                                                    pg_cluster) -> None:
    """Another process (another host, as far as the store can tell: its own cache folder)
    writes; this process's index catches up before its next search."""
    _lite, pg = pair
    query = np.ones(DIM, dtype=np.float32)
    pg.dense_search(query, k=3)  # loads this process's index
    location = pg.backend.store_location.conninfo  # type: ignore[attr-defined]
    script = (
        "import numpy as np, sys\n"
        "from mlflow_rag.store.store import Store\n"
        "from tests.conftest import make_record\n"
        "with Store.open(sys.argv[1]) as s:\n"
        "    s.write([make_record('late', ['a late document'], vectors=np.ones((1, 8), 'f4'))])\n"
    )
    env = {"MLFLOW_RAG_CACHE_DIR": str(tmp_path / "other-host")}
    subprocess.run([sys.executable, "-c", script, location], check=True, cwd=Path(__file__).parent.parent,
                   env={**__import__("os").environ, **env})
    hits = pg.dense_search(query, k=1)
    assert hits[0].document_id == "late"
    with pg.backend.write_transaction():
        pg.backend.delete_document("late")
    assert pg.dense_search(query, k=1)[0].document_id != "late"


def test_missing_stores_and_unreachable_servers_are_one_line_errors(pg_cluster) -> None:
    database = pg_cluster.new_database()
    with pytest.raises(StoreNotFound, match="no store at postgresql://"):
        Store.open(pg_cluster.dsn(database) + "?schema=absent")
    with pytest.raises(DatabaseUnavailable) as caught:
        Store.open(pg_cluster.dsn(database, password="wrong-secret-123"))
    assert "wrong-secret-123" not in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(DatabaseUnavailable, match="cannot connect"):
        Store.open("postgresql://nobody@127.0.0.1:1/none")


def test_a_store_copied_to_postgresql_and_back_answers_alike(pair: tuple[Store, Store], tmp_path: Path,
                                                             pg_cluster) -> None:
    from mlflow_rag.store.copies import copy_store

    lite, _pg = pair
    grown = pg_cluster.dsn(pg_cluster.new_database()) + "?schema=grown"
    up = copy_store(lite.root, grown)
    assert up.rows["documents"] == 40 and up.rows["embeddings"] == 120
    back = copy_store(grown, tmp_path / "shipped")
    assert back.stats.documents == 40 and back.stats.generation == lite.stats().generation
    query = np.linspace(-1, 1, DIM).astype(np.float32)
    with Store.open(grown, read_only=True) as middle, Store.open(tmp_path / "shipped") as end:
        assert middle.store_id == end.store_id == lite.store_id
        for store in (middle, end):
            assert _hits(store.dense_search(query, k=6)) == _hits(lite.dense_search(query, k=6))
            assert _hits(store.lexical_search("legacy topic2", k=6, filters={"year": {"$gte": 2004}})) \
                == _hits(lite.lexical_search("legacy topic2", k=6, filters={"year": {"$gte": 2004}}))
    with pytest.raises(Exception, match="already holds documents"):
        copy_store(lite.root, grown)
