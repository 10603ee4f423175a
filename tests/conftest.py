"""Shared fixtures: where ../shared/data is, and small real stores built through the API."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.store.checks import content_hash
from mlflow_rag.store.store import Store
from mlflow_rag.types import ChunkRecord, DocumentRecord, VectorBatch
from tests.pg_cluster import PgCluster, PostgresUnavailable, running_cluster

REPO = Path(__file__).resolve().parent.parent


def clustered_unit_vectors(
    n: int, dim: int, *, clusters: int, spread: float, seed: int = 0
) -> np.ndarray:
    """``n`` unit float32 vectors around ``clusters`` random centres, ``spread`` the noise's
    scale: the clustered data IVF and PQ are built for, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    points = centers[rng.integers(clusters, size=n)] + rng.normal(size=(n, dim)) * spread
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def shared_data_dir() -> Path:
    return Path(os.environ.get("MLFLOW_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set MLFLOW_RAG_SHARED_DATA)")
    return path


def make_record(
    doc_id: str, texts: Sequence[str], *, vectors: np.ndarray | None = None, model: str = "m",
    metadata: dict | None = None, source_type: str = "text", chunk_type: str = "text",
) -> DocumentRecord:
    raw = "\n\n".join(texts)
    chunks = []
    start = 0
    for i, text in enumerate(texts):
        chunks.append(
            ChunkRecord(
                id=f"{doc_id}#{i}", chunk_index=i, chunk_type=chunk_type, text=text,
                start_char=start, end_char=start + len(text), token_count=len(text.split()),
                text_hash=content_hash(text), metadata={"position": i},
            )
        )
        start += len(text) + 2
    batches = (VectorBatch(model, vectors),) if vectors is not None else ()
    return DocumentRecord(
        id=doc_id, source_path=f"/data/{doc_id}.txt", source_type=source_type,
        content_hash=content_hash(raw), raw_text=raw, chunks=tuple(chunks), vectors=batches,
        metadata=metadata or {},
    )


@pytest.fixture
def random_store(tmp_path: Path) -> Callable[..., tuple[Store, np.ndarray]]:
    """A store with ``n_docs`` documents of ``per_doc`` chunks and random unit vectors."""

    def build(
        n_docs: int = 50, per_doc: int = 3, dim: int = 16, *, index_type: str | None = None,
        index_params: dict | None = None, seed: int = 0,
    ) -> tuple[Store, np.ndarray]:
        rng = np.random.default_rng(seed)
        store = Store.open(tmp_path / "store", create=True)
        store.ensure_model("m", dim, embedder=None, index_type=index_type,
                           index_params=index_params)
        vectors = rng.normal(size=(n_docs, per_doc, dim)).astype(np.float32)
        records = [
            make_record(
                f"doc{i}", [f"document {i} chunk {j} topic{(i * per_doc + j) % 7}"
                            for j in range(per_doc)],
                vectors=vectors[i],
                metadata={"country": ["UK", "Germany", "France"][i % 3], "year": 2000 + i % 25,
                          "tags": "even" if i % 2 == 0 else "odd"},
            )
            for i in range(n_docs)
        ]
        store.write(records)
        return store, vectors.reshape(n_docs * per_doc, dim)

    return build


# --------------------------------------------------------------------------- PostgreSQL


def postgres_unavailable(reason: str) -> None:
    """Skip, except under CI (``CI=true``, or ``MLFLOW_RAG_REQUIRE_POSTGRES=1`` as .ci/run
    sets), where a missing PostgreSQL must fail: CI never skips the PostgreSQL tests silently."""
    required = os.environ.get("MLFLOW_RAG_REQUIRE_POSTGRES", "") not in ("", "0")
    if required or os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster per session (tests/pg_cluster.py); a test that wants
    isolation takes a database of its own: ``pg_cluster.new_database()`` or ``pg_database``."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        postgres_unavailable("psycopg is not installed: pip install -e '.[postgres]'")
    try:
        with running_cluster() as cluster:
            yield cluster
    except PostgresUnavailable as exc:
        postgres_unavailable(str(exc))


@pytest.fixture
def pg_database(pg_cluster: PgCluster) -> str:
    """The password DSN of a fresh, empty database in the session's cluster."""
    return pg_cluster.dsn(pg_cluster.new_database())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh, empty store goes, once per backend: a SQLite folder, then a database in
    the session's PostgreSQL cluster. Tests of store behaviour take this, so both backends
    keep the same promises."""
    if request.param == "sqlite":
        return str(tmp_path / "store")
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.dsn(cluster.new_database())
