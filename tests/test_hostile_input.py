"""Promise 5: bad input gets a clear error and loses nothing (docs/reliability.md).

Filters never execute the caller's SQL and never change the database; hostile vectors are
refused or normalised before FAISS sees them (FAISS itself accepts NaN, inf and zero vectors
silently); a batch of hostile source items is reported item by item while the rest lands
through ingest(), with peak memory bounded by the loaders' limits, not by the input.

Loader cases covered one loader at a time live in tests/test_loaders.py and
tests/test_web_loader.py (see docs/reliability.md); this file adds the ingest() level.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlflow_rag.errors import (
    ChunkNotFound,
    DimensionMismatch,
    FilterError,
    InvalidInput,
    InvalidVector,
    LoaderError,
    RagError,
    UnknownChoice,
)
from mlflow_rag.ingest import ingest
from mlflow_rag.load import web as web_module
from mlflow_rag.search import MAX_QUERY_CHARS, Searcher
from mlflow_rag.store.checks import MAX_K, clean_query, clean_vectors
from mlflow_rag.store.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_LIST
from mlflow_rag.store.sqlite.filter_sql import compile_filter
from mlflow_rag.store.store import Store
from tests.conftest import make_record
from tests.fault_child import OPTIONS, embedder, write_corpus
from tests.fixtures_loaders import Reply, encrypt_pdf, http_server, make_pdf

REPO = Path(__file__).resolve().parent.parent
FILTER_EXAMPLES = int(os.environ.get("MLFLOW_RAG_FILTER_EXAMPLES", "300"))

HOSTILE_KEYS = [
    "x'; DROP TABLE documents; --",
    'a"b',
    "it's",
    "$.a",
    "$[0]",
    "a.$.b",
    "/* comment */",
    "-- comment",
    "a;b",
    "; DELETE FROM chunks",
    "key) OR 1=1 OR (key",
    "ünïcödé ключ 键",
    "emoji 🔑",
    "a" * 256,
    "%",
    "_",
    "\\",
]


# =========================================================================== filters


@pytest.fixture
def hostile_store(tmp_path: Path) -> Iterator[Store]:
    """Documents whose metadata keys are the hostile keys themselves, plus ordinary ones."""
    store = Store.open(tmp_path / "s", create=True)
    store.ensure_model("m", 8)
    rng = np.random.default_rng(0)
    records = [
        make_record(f"h{i}", [f"hostile key document {i}"], vectors=rng.normal(size=(1, 8)),
                    metadata={key: f"value {i}", "n": i})
        for i, key in enumerate(HOSTILE_KEYS)
    ]
    records += [
        make_record(f"p{i}", [f"plain document {i} about retrieval"],
                    vectors=rng.normal(size=(1, 8)), metadata={"country": "UK", "n": 100 + i})
        for i in range(20)
    ]
    store.write(records)
    yield store
    store.close()


def database_fingerprint(store: Store) -> tuple[str, dict[str, int], list[tuple[Any, ...]]]:
    conn = store.backend.conn
    return (
        store.backend.schema_sql(),
        store.backend.counts(),
        conn.execute("SELECT id, content_hash, metadata FROM documents ORDER BY id").fetchall(),
    )


@pytest.mark.parametrize("index", range(len(HOSTILE_KEYS)))
def test_hostile_metadata_keys_are_data_never_sql(hostile_store: Store, index: int) -> None:
    key = HOSTILE_KEYS[index]
    field = f"metadata.{key}"  # a key starting with "$" is only reachable this way
    sql, params = compile_filter({field: f"value {index}"})
    # the SQL text does not depend on the key at all: the key is a bound parameter
    assert (sql, params) == (compile_filter({"metadata.k": f"value {index}"})[0],
                             [key, f"value {index}"])
    specs: list[Any] = [{field: f"value {index}"}, {field: {"$in": [f"value {index}"]}}]
    if key.startswith("$"):
        with pytest.raises(UnknownChoice, match="Unknown filter operator"):
            compile_filter({key: f"value {index}"})
    else:
        specs += [{key: f"value {index}"}, json.dumps({key: {"$eq": f"value {index}"}})]
    for spec in specs:
        assert [d.id for d in hostile_store.find_documents(spec)] == [f"h{index}"]
        hits = hostile_store.dense_search(np.ones(8), k=50, filters=spec)
        assert [h.document_id for h in hits] == [f"h{index}"]
        hits = hostile_store.lexical_search("hostile document", k=50, filters=spec)
        assert [h.document_id for h in hits] == [f"h{index}"]


BAD_FILTERS: list[tuple[Any, type[RagError], str]] = [
    ({"country": {"$regex": "U.*"}}, UnknownChoice, r"Unknown filter operator '\$regex'"),
    ({"$where": "1=1"}, UnknownChoice, r"Unknown filter operator '\$where'"),
    ({"country": {"$eq": "UK", "$like": "%"}}, UnknownChoice, r"\$like"),
    ({"n": {"$in": list(range(MAX_LIST + 1))}}, FilterError, f"at most {MAX_LIST}"),
    ({"n": {"$in": "UK"}}, FilterError, "takes a list"),
    ({"n": 2**64}, FilterError, "64 bits"),
    ({"n": {"$gt": -(2**70)}}, FilterError, "64 bits"),
    ({"n": {"$in": [2**63]}}, FilterError, "64 bits"),
    ({"country": "\ud800"}, FilterError, "lone surrogate"),
    ('{"country": "\\udfff"}', FilterError, "lone surrogate"),
    ({"\ud83d": 1}, FilterError, "bad filter key"),
    ({"a\x00b": 1}, FilterError, "printable"),
    ({"a" * 257: 1}, FilterError, "1-256 printable"),
    ({"": 1}, FilterError, "bad filter key"),
    ({"n": float("nan")}, FilterError, "NaN"),
    ({"n": {"$lt": float("inf")}}, FilterError, "infinity"),
    ({"n": {"$gt": [1]}}, FilterError, "takes a string, number"),
    ({"n": {"$gt": {"$gt": 1}}}, FilterError, "takes a string, number"),
    ({"$and": {"n": 1}}, FilterError, "non-empty list"),
    ({"$or": [1, 2]}, FilterError, "expected a filter object"),
    ("[" * 100_000, FilterError, "nested more than"),
    ('{"a":' * 50_000, FilterError, "nested more than"),
    ("{country: UK}", FilterError, "not valid JSON"),
    ("[1, 2]", FilterError, "must be a JSON object"),
    ("null", FilterError, "must be a JSON object"),
    ("\x00", FilterError, "not valid JSON"),
]


def _nested(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"n": 1}
    for _ in range(depth):
        spec = {"$and": [spec]}
    return spec


BAD_FILTERS += [
    (_nested(MAX_DEPTH + 1), FilterError, "nested more than"),
    ({"$or": [{"n": i} for i in range(MAX_CONDITIONS + 1)]}, FilterError,
     f"more than {MAX_CONDITIONS} conditions"),
    ({1: "x"}, FilterError, "keys must be strings"),
    # Empty objects match everything but still cost SQL: they count as conditions (16.3).
    ({"$or": [{}] * 1001}, FilterError, f"more than {MAX_CONDITIONS} conditions"),
    ({"$and": [{}] * (MAX_CONDITIONS + 1)}, FilterError, f"more than {MAX_CONDITIONS} conditions"),
    ({"$or": [{"$and": [{}] * 300}, {"$or": [{}] * 300}]}, FilterError, "more than"),
    ({"$or": [{"n": 1}] * 1_000_000}, FilterError, f"more than {MAX_CONDITIONS} conditions"),
    # Values are bounded across the whole filter, not per list (512 x 10,000 cost a minute).
    ({"$or": [{"n": {"$in": list(range(MAX_LIST))}}] * 2}, FilterError, "values in all"),
    ({"n": {"$in": list(range(6000)), "$nin": list(range(6000))}}, FilterError, "values in all"),
    ('{"n": "' + "x" * 1_000_001 + '"}', FilterError, "characters"),
    ({"n": {"$in": ["x" * 600_000, "y" * 600_000]}}, FilterError, "characters"),
]


@pytest.mark.parametrize(("spec", "error", "message"), BAD_FILTERS,
                         ids=[f"bad{i}" for i in range(len(BAD_FILTERS))])
def test_malformed_filters_get_clear_errors_from_every_entry_point(
    hostile_store: Store, spec: Any, error: type[RagError], message: str
) -> None:
    before = database_fingerprint(hostile_store)
    for call in (
        lambda: hostile_store.find_documents(spec),
        lambda: hostile_store.dense_search(np.ones(8), k=5, filters=spec),
        lambda: hostile_store.lexical_search("document", k=5, filters=spec),
    ):
        with pytest.raises(error, match=message):
            call()
    assert database_fingerprint(hostile_store) == before


def _hostile_ns(store: Store) -> list[int]:
    return [json.loads(m)["n"] for (m,) in store.backend.conn.execute("SELECT metadata FROM documents")]


@pytest.mark.parametrize("shape", ["or", "and", "keys", "nested", "values", "empty"])
def test_filters_at_the_documented_limits_run_on_every_entry_point(
    hostile_store: Store, shape: str
) -> None:
    """512 conditions used to overflow SQLite's expression depth (1,000) in find_documents."""
    ns = _hostile_ns(hostile_store)
    spec: dict[str, Any]
    if shape == "or":  # every document has one of these n
        spec = {"$or": [{"n": i} for i in range(MAX_CONDITIONS)]}
        expected = {n for n in ns if n < MAX_CONDITIONS}
    elif shape == "and":
        spec = {"$and": [{"n": {"$ne": 1000 + i}} for i in range(MAX_CONDITIONS)]}
        expected = set(ns)
    elif shape == "keys":  # one object of 512 keys: an AND
        spec = {**{f"k{i}": {"$exists": False} for i in range(MAX_CONDITIONS - 1)}, "n": 3}
        expected = {3} & set(ns)
    elif shape == "nested":  # 16 levels of $or, the rest of the budget at the bottom
        spec = {"$or": [{"n": i} for i in range(MAX_CONDITIONS - MAX_DEPTH)]}
        for level in range(MAX_DEPTH - 1):
            spec = {"$or": [spec, {"n": 10_000 + level}]}
        expected = {n for n in ns if n < MAX_CONDITIONS - MAX_DEPTH}
    elif shape == "values":  # the total of values spread over 512 conditions
        per = MAX_LIST // MAX_CONDITIONS
        spec = {"$or": [{"n": {"$in": list(range(i * per, (i + 1) * per))}}
                        for i in range(MAX_CONDITIONS)]}
        expected = {n for n in ns if n < per * MAX_CONDITIONS}
    else:  # 511 conditions and one empty object (matches everything)
        spec = {"$or": [{"n": -1 - i} for i in range(MAX_CONDITIONS - 1)] + [{}]}
        expected = set(ns)
    assert expected
    by_id = {d.id: d.metadata["n"] for d in hostile_store.find_documents({}, limit=1000)}
    found = hostile_store.find_documents(spec, limit=1000)
    assert {by_id[d.id] for d in found} == expected
    dense = hostile_store.dense_search(np.ones(8), k=100, filters=spec)
    assert {by_id[h.document_id] for h in dense} == expected
    lexical = hostile_store.lexical_search("document", k=100, filters=spec)
    assert {by_id[h.document_id] for h in lexical} == expected


def test_cli_refuses_a_filter_of_empty_objects_in_one_line_and_the_server_answers_400(
    hostile_store: Store, tmp_path: Path
) -> None:
    """{"$or": [{}, ...]} used to reach SQLite: a traceback from the CLI, HTTP 500 served."""
    from mlflow_rag.serving import parse_params

    hostile_store.close()
    root = hostile_store.root
    before = {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    spec = json.dumps({"$or": [{}] * 1001})
    for mode in ("bm25", "dense", "hybrid"):
        proc = subprocess.run(
            [sys.executable, "-m", "mlflow_rag.cli", "search", "document", "--store", str(root),
             "--mode", mode, "--filter", spec],
            capture_output=True, text=True, check=False, cwd=REPO,
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error: filter has more than 512 conditions"), proc.stderr
    after = {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k in before} == before
    # The server validates params before searching: a RagError there is an HTTP 400.
    with pytest.raises(FilterError, match="more than 512 conditions"):
        parse_params({"filters": spec})


scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=12)
    | st.sampled_from(["UK", "value 3", "' OR '1'='1", "\ud800", "%", "\x00", "2026-01-01"])
)
filter_keys = st.sampled_from([
    *HOSTILE_KEYS, "country", "n", "document_id", "chunk_index", "chunk.position", "source_path",
    "imported_at", "metadata.country", "chunk.", "$and", "$or", "$not", "$in", "$eq",
]) | st.text(max_size=10)
operators = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin",
                             "$exists", "$regex", "$where", "$", "in"])
conditions = scalars | st.lists(scalars, max_size=5) | st.dictionaries(
    operators, scalars | st.lists(scalars, max_size=5), max_size=3)
filters = st.recursive(
    st.dictionaries(filter_keys, conditions, max_size=4),
    lambda inner: st.dictionaries(st.sampled_from(["$and", "$or", "$nor"]),
                                  st.lists(inner, max_size=3), max_size=2)
    | st.dictionaries(filter_keys, conditions, max_size=3),
    max_leaves=10,
)
# Filters the language accepts, so that many random inputs reach SQLite rather than stopping
# at validation: hostile keys (no "$" prefix), valid operators, bindable values.
safe_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
comparable = (st.integers(min_value=-(2**63), max_value=2**63 - 1)
              | st.floats(allow_nan=False, allow_infinity=False) | safe_text)
valid_condition = (
    st.none() | st.booleans() | comparable
    | st.fixed_dictionaries({}, optional={
        "$eq": comparable, "$ne": comparable | st.none(), "$gt": comparable, "$lte": comparable})
    .filter(bool)
    | st.builds(lambda op, values: {op: values}, st.sampled_from(["$in", "$nin"]),
                st.lists(comparable, min_size=0, max_size=6))
    | st.builds(lambda flag: {"$exists": flag}, st.booleans())
)
valid_keys = st.sampled_from([k for k in HOSTILE_KEYS if not k.startswith("$")] + [
    "country", "n", "document_id", "chunk_index", "chunk.position", "source_path", "imported_at",
    "metadata.$.a", "metadata.country", "chunk_type", "token_count"]) | safe_text.filter(
    lambda k: k and not k.startswith("$") and all(ord(c) >= 32 for c in k))
valid_filters = st.recursive(
    st.dictionaries(valid_keys, valid_condition, max_size=3),
    lambda inner: st.builds(lambda op, items: {op: items}, st.sampled_from(["$and", "$or"]),
                            st.lists(inner, min_size=1, max_size=3)),
    max_leaves=8,
)
filter_inputs = (valid_filters | valid_filters.map(json.dumps) | filters
                 | filters.map(json.dumps) | st.text(max_size=40))
_tried = {"filters": 0, "refused": 0, "ran": 0}


def _run_random_filters(store: Store, spec: Any) -> None:
    _tried["filters"] += 1
    calls = (
        lambda: store.find_documents(spec, limit=50),
        lambda: store.dense_search(np.ones(8), k=5, filters=spec),
        lambda: store.lexical_search("document retrieval", k=5, filters=spec),
    )
    for call in calls:
        try:
            call()
            _tried["ran"] += 1
        except RagError:  # FilterError / UnknownChoice: anything else fails the test
            _tried["refused"] += 1


def check_random_filters(store: Store, examples: int) -> None:
    before = database_fingerprint(store)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(spec=filter_inputs)
    def run(spec: Any) -> None:
        _run_random_filters(store, spec)

    run()
    assert database_fingerprint(store) == before  # schema, row counts and rows unchanged
    assert store.backend.integrity_check() == "ok"


def test_random_filters_run_or_are_refused_and_never_change_the_database(
    hostile_store: Store,
) -> None:
    check_random_filters(hostile_store, FILTER_EXAMPLES)
    assert _tried["ran"] > 0 and _tried["refused"] > 0


@pytest.mark.slow
def test_thousands_of_random_filters_through_every_search(hostile_store: Store) -> None:
    start = dict(_tried)
    check_random_filters(hostile_store, max(FILTER_EXAMPLES, 5000))
    tried = {k: v - start[k] for k, v in _tried.items()}
    print(f"random filters: {tried['filters']} inputs x 3 entry points = "
          f"{tried['ran'] + tried['refused']} calls; {tried['ran']} ran, {tried['refused']} "
          "refused with FilterError/UnknownChoice; database unchanged")


# =========================================================================== vectors


@pytest.fixture
def vector_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "v", create=True)
    store.ensure_model("m", 8)
    store.write([make_record(f"d{i}", [f"doc {i}"], vectors=np.eye(8)[i:i + 1]) for i in range(8)])
    yield store
    store.close()


def test_raw_faiss_accepts_what_the_store_refuses() -> None:
    """The reason clean_vectors exists: FAISS takes NaN, inf and zero vectors without a word."""
    index = faiss.IndexFlatIP(4)
    index.add(np.array([[np.nan, 1, 0, 0], [np.inf, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    assert index.ntotal == 3
    scores, _ = index.search(np.ones((1, 4), np.float32), 3)
    assert not np.isfinite(scores).all()
    for bad in ([[np.nan, 1, 0, 0]], [[np.inf, 0, 0, 0]], [[0, 0, 0, 0]]):
        with pytest.raises(InvalidVector):
            clean_vectors(np.array(bad), 4)


BAD_VECTORS: list[tuple[str, Any, type[RagError], str]] = [
    ("nan", np.full((1, 8), np.nan), InvalidVector, "NaN or infinity"),
    ("inf", np.full((1, 8), np.inf), InvalidVector, "NaN or infinity"),
    ("-inf in one component", np.r_[np.ones(7), -np.inf].reshape(1, 8), InvalidVector, "NaN"),
    ("zero", np.zeros((1, 8)), InvalidVector, "zero length"),
    ("too short", np.ones((1, 7)), DimensionMismatch, "dimension 7 does not match"),
    ("too long", np.ones((1, 9)), DimensionMismatch, "dimension 9 does not match"),
    ("3-d", np.ones((1, 1, 8)), InvalidVector, "2-d array"),
    ("strings", np.array([["1"] * 8]), InvalidVector, "real numbers"),
    ("complex", np.ones((1, 8), dtype=complex), InvalidVector, "real numbers"),
    ("booleans", np.ones((1, 8), dtype=bool), InvalidVector, "real numbers"),
    ("objects", np.array([[None] * 8], dtype=object), InvalidVector, "real numbers"),
    ("ragged", [[1.0] * 8, [1.0] * 3], InvalidVector, "rectangular"),
]


@pytest.mark.parametrize(("name", "vectors", "error", "message"), BAD_VECTORS,
                         ids=[b[0] for b in BAD_VECTORS])
def test_bad_vectors_are_refused_by_write_add_vectors_and_search_and_nothing_is_stored(
    vector_store: Store, name: str, vectors: Any, error: type[RagError], message: str
) -> None:
    before = database_fingerprint(vector_store)
    index_before = vector_store.dense_search(np.ones(8), k=8)
    n = len(vectors) if isinstance(vectors, list) else np.shape(vectors)[0]
    texts = [f"new chunk {i}" for i in range(n)]
    with pytest.raises(error, match=message):
        vector_store.write([make_record("new", texts, vectors=vectors)])
    with pytest.raises(error, match=message):
        vector_store.add_vectors("m", [f"d{i}#0" for i in range(n)], vectors, replace=True)
    if name == "3-d":
        with pytest.raises(InvalidVector, match="one vector of shape"):
            vector_store.dense_search(vectors, k=3)
    elif name != "ragged":
        with pytest.raises(error, match=message):
            vector_store.dense_search(vectors[0], k=3)
    assert database_fingerprint(vector_store) == before
    assert vector_store.dense_search(np.ones(8), k=8) == index_before
    report = vector_store.verify()["models"]["m"]
    assert report["ids_equal"] and report["vectors"] == 8


ACCEPTED_VECTORS: list[tuple[str, Any]] = [
    ("float64", np.arange(1, 9, dtype=np.float64)),
    ("float16", np.arange(1, 9, dtype=np.float16)),
    ("int32", np.arange(1, 9, dtype=np.int32)),
    ("uint8", np.array([255, 1, 0, 0, 0, 0, 0, 3], dtype=np.uint8)),
    ("list of ints", [3, 4, 0, 0, 0, 0, 0, 0]),
    ("non-contiguous", np.arange(1, 17, dtype=np.float32)[::2]),
    ("fortran order", np.asfortranarray(np.arange(1, 9, dtype=np.float32).reshape(1, 8))),
    ("float32 above 1e19 (its squares overflow)", np.full(8, 3e37, dtype=np.float32)),
    ("float32 below 1e-19 (its squares underflow)",
     np.r_[1e-30, 2e-30, np.zeros(6)].astype(np.float32)),
    ("float64 beyond float32 range", np.r_[1e300, 1e300, np.zeros(6)]),
    ("negative", -np.arange(1, 9, dtype=np.float32)),
]


@pytest.mark.parametrize(("name", "vector"), ACCEPTED_VECTORS, ids=[a[0] for a in ACCEPTED_VECTORS])
def test_odd_but_valid_vectors_are_stored_as_unit_float32_and_find_themselves(
    vector_store: Store, name: str, vector: Any
) -> None:
    expected = np.asarray(vector, dtype=np.float64).reshape(-1)
    expected = expected / np.max(np.abs(expected))
    expected = expected / np.linalg.norm(expected)
    vector_store.write([make_record("odd", ["odd vector"], vectors=np.asarray(vector).reshape(1, -1))])
    stored = vector_store.catalog.vectors_for_chunks("m", ["odd#0"])["odd#0"]
    assert stored.dtype == np.float32 and np.isfinite(stored).all()
    assert np.allclose(stored, expected, atol=1e-6), (stored, expected)
    hit = vector_store.dense_search(vector, k=1)[0]
    assert hit.chunk_id == "odd#0" and hit.score == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=300, deadline=None)
@given(array=hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
))  # floats include NaN, infinities and subnormals
def test_clean_vectors_returns_unit_float32_rows_or_a_clear_error(array: np.ndarray) -> None:
    dimension = array.shape[-1] if array.ndim else 1
    try:
        cleaned = clean_vectors(array, dimension)
    except RagError:
        return
    assert cleaned.dtype == np.float32 and cleaned.flags.c_contiguous
    assert cleaned.ndim == 2 and cleaned.shape[1] == dimension
    assert np.isfinite(cleaned).all()
    if len(cleaned):
        assert np.allclose(np.linalg.norm(cleaned.astype(np.float64), axis=1), 1.0, atol=1e-5)
        source = np.asarray(array, dtype=np.float64).reshape(-1, dimension)
        # same direction as the input, whatever its scale
        cosine = np.sum(cleaned * (source / np.abs(source).max(axis=1, keepdims=True)), axis=1)
        assert (cosine > 0).all()


@settings(max_examples=300, deadline=None)
@given(array=hnp.arrays(dtype=np.float32, shape=st.sampled_from([(5,), (1, 5)]),
                        elements=st.floats(width=32)))  # NaN, infinities, subnormals, +-3e38
def test_a_float32_query_is_cleaned_as_clean_vectors_cleans_it_or_refused_alike(
    array: np.ndarray,
) -> None:
    """clean_query's one-dot-product path for float32 queries (issue 19) agrees with
    clean_vectors: the same unit vector, or the same error."""
    try:
        expected = clean_vectors(array, 5)[0]
    except RagError as exc:
        with pytest.raises(type(exc), match=re.escape(str(exc).replace("vector", "query vector", 1))):
            clean_query(array, 5)
        return
    cleaned = clean_query(array, 5)
    assert cleaned.dtype == np.float32 and cleaned.shape == (5,) and cleaned.flags.c_contiguous
    assert np.allclose(cleaned, expected, rtol=0, atol=1e-6)
    assert cleaned is not array and not np.shares_memory(cleaned, array)


def test_a_multi_row_query_is_refused_not_truncated(vector_store: Store) -> None:
    with pytest.raises(InvalidVector, match=r"one vector of shape \(8,\) or \(1, 8\), got shape \(2, 8\)"):
        vector_store.dense_search(np.eye(8)[:2], k=1)
    with pytest.raises(InvalidVector, match=r"got shape \(0, 8\)"):
        vector_store.dense_search(np.zeros((0, 8)), k=1)


def test_duplicate_ids_are_refused_and_nothing_lands(vector_store: Store) -> None:
    before = database_fingerprint(vector_store)
    twice = make_record("x", ["same id"], vectors=np.ones((1, 8)))
    with pytest.raises(InvalidInput, match="'x' appears twice in one write"):
        vector_store.write([twice, twice])
    with pytest.raises(InvalidInput, match="'d1#0' appears twice in one add_vectors call"):
        vector_store.add_vectors("m", ["d1#0", "d1#0"], np.ones((2, 8)), replace=True)
    with pytest.raises(InvalidInput, match="already have a 'm' vector"):
        vector_store.add_vectors("m", ["d1#0"], np.ones((1, 8)))
    with pytest.raises(ChunkNotFound):
        vector_store.add_vectors("m", ["ghost#0"], np.ones((1, 8)))
    record = make_record("y", ["a", "b"], vectors=np.ones((2, 8)))
    with pytest.raises(InvalidInput, match="duplicate chunk_index"):
        vector_store.write([replace(record, chunks=(record.chunks[0],) * 2)])
    assert database_fingerprint(vector_store) == before


def test_oversized_requests_get_clear_errors(vector_store: Store) -> None:
    searcher = Searcher(vector_store, embedder=None)
    with pytest.raises(InvalidInput, match=f"at most {MAX_QUERY_CHARS}"):
        searcher.search("x" * (MAX_QUERY_CHARS + 1), mode="bm25")
    with pytest.raises(InvalidInput, match=f"from 1 to {MAX_K}"):
        vector_store.dense_search(np.ones(8), k=MAX_K + 1)
    with pytest.raises(InvalidInput, match=f"from 1 to {MAX_K}"):
        vector_store.lexical_search("doc", k=10**12)
    assert len(vector_store.lexical_search("doc " * 10_000, k=3)) == 3  # terms are capped


# =========================================================================== loaders via ingest()


def broken_xref_pdf() -> bytes:
    """A real PDF whose xref table points at the wrong offsets (pypdf may rebuild it)."""
    data = bytearray(make_pdf(["Broken cross reference page."]))
    start = data.rfind(b"xref")
    table = data[start:data.rfind(b"trailer")]
    data[start:start + len(table)] = table.replace(b" 00000 n", b" 00000 f").replace(b"0", b"9")
    return bytes(data)


def test_a_hostile_batch_through_ingest_reports_each_bad_item_and_the_rest_lands(
    tmp_path: Path,
) -> None:
    from tests.fixtures_loaders import bomb_pdf

    folder = write_corpus(tmp_path / "docs", range(5), 1)
    (folder / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 20)
    (folder / "empty.md").write_text("   \n")
    (folder / "good.pdf").write_bytes(make_pdf(["A readable PDF page about vector search."]))
    (folder / "bomb.pdf").write_bytes(bomb_pdf(60_000_000))
    (folder / "encrypted.pdf").write_bytes(encrypt_pdf(make_pdf(["secret"]), user_password="pw"))
    (folder / "truncated.pdf").write_bytes(make_pdf(["cut short"])[:300])
    (folder / "xref.pdf").write_bytes(broken_xref_pdf())
    with open(folder / "huge.txt", "wb") as f:  # sparse: 60 MB on paper, nothing on disk
        f.truncate(60_000_000)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("must never be read")
    (folder / "leak.txt").symlink_to(outside / "secret.txt")
    (folder / "sub").mkdir()
    (folder / "sub" / "escape.md").symlink_to(outside / "secret.txt")
    os.mkfifo(folder / "pipe.txt")
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text(
        "id,title,body\n"
        "r1,ok,a fine row\n"
        "r2,too,many,fields,here\n"
        '3,"stray"quote,text\n'
        "r4,ok,another fine row that lands\n"
        "r1,dup,a duplicate id\n"
        '6,open,"never closed\n'
        "and more\n", encoding="utf-8")
    jsonl_path = tmp_path / "lines.jsonl"
    jsonl_path.write_text('{"_id": "j1", "text": "fine json line"}\n{not json}\n[1, 2]\n'
                          '{"_id": "j2", "text": ""}\n{"_id": "j3", "text": "also fine"}\n')
    sources = [str(folder), str(csv_path), str(jsonl_path), str(tmp_path / "nul\x00name.txt"),
               str(tmp_path / "docs" / "*" / ".." / ".." / "outside" / "*.txt")]
    with Store.open(tmp_path / "store", create=True) as store:
        report = ingest(sources, store, options=OPTIONS, embedder=embedder(), progress=False)
        landed = {d.id for d in store.find_documents(None, limit=1000)}
        assert store.verify()["models"]["hash-test"]["ids_equal"]
        texts = " ".join(c.text for doc in landed for c in store.get_document(doc).chunks)
    reasons = {Path(f.source_path.replace("\\x00", "")).name: f.reason for f in report.failures}
    good = {f"doc{i:05d}.txt" for i in range(5)} | {"good.pdf"}
    assert good <= landed
    assert {"r1", "r4", "j1", "j3"} <= landed
    assert "must never be read" not in texts
    for name, words in [
        ("binary.txt", "not a text file"), ("empty.md", "no text"), ("bomb.pdf", "decompression bomb"),
        ("encrypted.pdf", "encrypted PDF"), ("truncated.pdf", "unreadable PDF"),
        ("huge.txt", "max_bytes"), ("leak.txt", "outside the source folder"),
        ("escape.md", "outside the source folder"), ("pipe.txt", "not a regular file"),
        ("nulname.txt", "NUL byte"), ("secret.txt", "escapes the source root"),
    ]:
        assert words in reasons.get(name, ""), (name, reasons.get(name), reasons)
    csv_reasons = [f.reason for f in report.failures if f.source_path == str(csv_path)]
    assert len(csv_reasons) == 4, csv_reasons  # too many fields, stray quote, duplicate, open
    assert any("duplicate id 'r1'" in r for r in csv_reasons)
    jsonl_reasons = [f.reason for f in report.failures if f.source_path == str(jsonl_path)]
    assert len(jsonl_reasons) == 3  # bad JSON, not an object, no text
    # the broken-xref PDF is either recovered (pypdf rebuilds xref tables) or reported
    assert "xref.pdf" in landed or "xref.pdf" in reasons
    assert report.documents_new == len(landed)
    print(f"hostile batch: {len(report.failures)} bad items reported, {len(landed)} documents landed")


def test_urls_to_private_addresses_are_refused_at_ingest_and_the_rest_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test server is on loopback: treat exactly 127.0.0.1 as public so its redirect to the
    # cloud metadata address is judged by the real policy (as tests/test_web_loader.py does).
    real = web_module.address_refusal
    monkeypatch.setattr(web_module, "address_refusal",
                        lambda ip: None if str(ip) == "127.0.0.1" else real(ip))
    folder = write_corpus(tmp_path / "docs", range(3), 1)
    routes = {
        "/ok": Reply(200, {"Content-Type": "text/html"}, b"<p>a public page about search</p>"),
        "/metadata": Reply(302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/internal": Reply(302, {"Location": "http://10.1.2.3/admin"}, b""),
        "/huge": Reply(200, {"Content-Type": "text/html"},
                       lambda: (b"<p>" + b"x" * 65536 for _ in range(10_000))),
    }
    with http_server(routes) as base, Store.open(tmp_path / "s", create=True) as store:
        sources = [str(folder), f"{base}/ok", f"{base}/metadata", f"{base}/internal",
                   f"{base}/huge", "http://192.168.0.1/router", "http://[::1]:1/x"]
        report = ingest(sources, store, options=OPTIONS, embedder=embedder(), progress=False)
        assert report.documents_new == 4
    reasons = {f.source_path.rsplit("/", 1)[-1] or f.source_path: f.reason for f in report.failures}
    assert "link-local" in reasons["metadata"]
    assert "private" in reasons["internal"]
    assert "max_bytes" in reasons["huge"]
    assert "private" in reasons["router"] and "loopback" in reasons["x"]


def test_a_batch_where_every_item_is_bad_is_one_clear_error_and_the_store_is_unchanged(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_bytes(b"\x00\x01\x02" * 100)
    (bad / "b.pdf").write_bytes(b"%PDF-1.7 nothing")
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(write_corpus(tmp_path / "docs", range(3), 1))], store, options=OPTIONS,
               embedder=embedder(), progress=False)
        before = database_fingerprint(store)
        with pytest.raises(LoaderError, match="nothing to ingest: 2 item"):
            ingest([str(bad)], store, options=OPTIONS, embedder=embedder(), progress=False)
        assert database_fingerprint(store) == before


# =========================================================================== memory


def zlib_bomb(prefix: bytes, megabytes: int, suffix: bytes) -> bytes:
    """A zlib stream inflating to ``megabytes`` MiB of 'A' built in about a second: after a
    full flush the compressor starts afresh, so one compressed MiB can be repeated."""
    block = b"A" * (1 << 20)
    compressor = zlib.compressobj(9)
    head = compressor.compress(prefix + block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(suffix) + compressor.flush()
    checksum = zlib.adler32(prefix)
    for _ in range(megabytes):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(suffix, checksum)
    return head + repeat * (megabytes - 1) + tail[:-4] + checksum.to_bytes(4, "big")


def big_bomb_pdf(megabytes: int) -> bytes:
    import io

    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import EncodedStreamObject, NameObject

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["seed"]))))
    stream = EncodedStreamObject()
    stream._data = zlib_bomb(b"BT /F1 12 Tf 72 720 Td (", megabytes, b") Tj ET")
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    writer.pages[0][NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def peak_growth(tmp_path: Path, sources: list[str], **options: Any) -> dict[str, Any]:
    """Run ingest() in a child and return its peak RSS growth (KiB) and what landed."""
    if sys.platform != "linux":
        pytest.skip("ru_maxrss is KiB on Linux only (bytes on macOS)")
    args = {"work": str(tmp_path / "work"), "sources": sources, **options}
    proc = subprocess.run([sys.executable, "-m", "tests.fault_child", "rss", json.dumps(args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_endless_web_page_is_cut_at_max_bytes_with_memory_bounded(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "docs", range(2), 1)
    endless = Reply(200, {"Content-Type": "text/html"},
                    lambda: (b"<p>" + b"w" * 65536 for _ in range(100_000)))  # 6.5 GB offered
    with http_server({"/endless": endless}) as base:
        result = peak_growth(tmp_path, [str(folder), f"{base}/endless"],
                             loader_options={"allow_private": True})
    assert result["documents"] == 2 and result["failed"] == 1
    assert "max_bytes=5000000" in result["reasons"][0]
    assert result["growth_kib"] < 60 * 1024, result
    print(f"endless web page: cut at 5 MB, peak RSS growth {result['growth_kib'] / 1024:.0f} MiB")


ENORMOUS: dict[str, tuple[int, int]] = {  # case -> (input MiB, bound on peak growth in MiB)
    "csv field": (200, 80),  # skipped unread past 2 x max_field_chars = 20M characters
    "jsonl line": (300, 140),  # skipped unread past max_line_bytes = 50 MB
    "pdf bomb": (1024, 160),  # pypdf stops inflating at max_stream_bytes = 50 MB
    "txt file": (60_000, 20),  # sparse 60 GB file, refused by size before it is read
}


def enormous_source(case: str, folder: Path, mib: int) -> Path:
    if case == "csv field":
        path = folder / "big.csv"
        with open(path, "w", encoding="utf-8") as f:
            f.write('id,text\nr1,"' + "a good first row " * 10 + '"\nr2,"')
            block = "x" * (1 << 20)
            for _ in range(mib):
                f.write(block)
            f.write('"\nr3,"' + "a good last row " * 10 + '"\n')
    elif case == "jsonl line":
        path = folder / "big.jsonl"
        with open(path, "wb") as f:
            f.write(b'{"_id": "j1", "text": "fine first line"}\n{"_id": "j2", "text": "')
            block = b"y" * (1 << 20)
            for _ in range(mib):
                f.write(block)
            f.write(b'"}\n{"_id": "j3", "text": "fine last line"}\n')
    elif case == "pdf bomb":
        path = folder / "bomb.pdf"
        path.write_bytes(big_bomb_pdf(mib))
    else:
        path = folder / "huge.txt"
        with open(path, "wb") as f:
            f.truncate(mib << 20)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ENORMOUS))
def test_enormous_inputs_are_skipped_with_peak_memory_bounded_by_the_limits(
    tmp_path: Path, case: str
) -> None:
    mib, bound = ENORMOUS[case]
    good = write_corpus(tmp_path / "good", range(2), 1)
    source = enormous_source(case, tmp_path, mib)
    result = peak_growth(tmp_path, [str(good), str(source)])
    source.unlink()
    assert result["failed"] == 1, result
    # the two good files land, and the good rows around the enormous one
    assert result["documents"] == (4 if case in ("csv field", "jsonl line") else 2), result
    assert result["growth_kib"] < bound * 1024, result
    print(f"enormous {case}: {mib} MiB input, peak RSS growth "
          f"{result['growth_kib'] / 1024:.0f} MiB (bound {bound} MiB): {result['reasons'][0]}")
