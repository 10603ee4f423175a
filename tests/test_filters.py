"""The filter language: compiled to parameterised SQL, never executing the caller's SQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_rag.errors import FilterError, RagError, UnknownChoice
from mlflow_rag.store.filters import MAX_DEPTH, MAX_LIST, parse_filter
from mlflow_rag.store.sqlite.filter_sql import compile_filter
from mlflow_rag.store.store import Store


def test_scalar_means_equality_and_keys_are_anded() -> None:
    sql, params = compile_filter({"country": "UK", "chunk_type": "bio"})
    assert sql == (
        "((d.id IN (SELECT document_id FROM document_fields WHERE key = ? AND value = ?)) "
        "AND (c.chunk_type = ?))"
    )
    assert params == ["country", "UK", "bio"]


def test_every_operator_compiles_with_its_values_bound() -> None:
    spec = {
        "year": {"$gte": 2020, "$lt": 2026},
        "country": {"$in": ["UK", "Germany"]},
        "tags": {"$nin": ["x"]},
        "chunk.page": {"$exists": True},
        "source_type": {"$ne": "pdf"},
        "$or": [{"chunk_index": 0}, {"token_count": {"$lte": 10}}],
        "updated_at": {"$eq": None},
        "imported_at": {"$gt": "2026-01-01"},
    }
    sql, params = compile_filter(spec)
    assert "?" in sql and "UK" not in sql and "2026" not in sql
    assert json.dumps(["UK", "Germany"]) in params
    assert sql.count("?") == len(params)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"country": {"$regex": "U"}}, r"Unknown filter operator '\$regex'; choose from"),
        ({"$not": [{"a": 1}]}, r"Unknown filter operator '\$not'"),
        ({"$or": []}, "non-empty list"),
        ({"year": {"$gt": True}}, "not a boolean"),
        ({"year": {"$gt": None}}, "not null"),
        ({"country": {"$in": "UK"}}, "takes a list"),
        ({"country": {"$in": [None]}}, "may not contain null"),
        ({"country": {"$exists": "yes"}}, "true or false"),
        ({"country": {}}, "empty operator object"),
        ({"country": [1, 2]}, "takes a string, number"),
        ({"bad\nkey": 1}, "printable characters"),
        ({"chunk.": 1}, "metadata keys are"),
        ({"x": float("nan")}, "NaN"),
    ],
)
def test_bad_filters_get_clear_errors(spec: dict, message: str) -> None:
    with pytest.raises((FilterError, UnknownChoice), match=message):
        compile_filter(spec)


def test_huge_in_lists_and_deep_nesting_are_refused() -> None:
    with pytest.raises(FilterError, match=f"at most {MAX_LIST}"):
        compile_filter({"x": {"$in": list(range(MAX_LIST + 1))}})
    deep: dict = {"x": 1}
    for _ in range(MAX_DEPTH + 2):
        deep = {"$and": [deep]}
    with pytest.raises(FilterError, match="nested more than"):
        compile_filter(deep)


def test_parse_filter_accepts_json_text_and_refuses_non_objects() -> None:
    assert parse_filter('{"a": 1}') == {"a": 1}
    assert parse_filter("") == {} and parse_filter(None) == {}
    with pytest.raises(FilterError, match="must be a JSON object"):
        parse_filter("[1, 2]")
    with pytest.raises(FilterError, match="not valid JSON"):
        parse_filter("{'a': 1}")


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    path: Path = tmp_path_factory.mktemp("filters") / "s"
    store = Store.open(path, create=True)
    store.close()
    return sqlite3.connect(path / "metadata.db")


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
hostile_keys = st.sampled_from([
    "x'; DROP TABLE documents; --", "$.a", '" OR 1=1 --', "a.b", "chunk.x/*", ";", "é",
    "document_id", "chunk.page", "metadata.country", "$and", "$in", "$or",
]) | st.text(min_size=1, max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.dictionaries(hostile_keys, json_values, max_size=4))
def test_arbitrary_json_compiles_to_safe_sql_or_a_clear_error(conn: sqlite3.Connection, spec: dict) -> None:
    tables_before = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    try:
        sql, params = compile_filter(spec)
    except RagError:
        return
    # No key or value of the caller's reaches the SQL text: it is built from the allow-list.
    allowed_words = set(
        "AND OR IS NOT NULL IN SELECT value FROM json_each WHERE key document_id chunk_id "
        "document_fields chunk_fields typeof 'text' 'integer' 'real' = != > >= < <= ? 1".split()
    )
    for token in sql.replace("(", " ").replace(")", " ").replace(",", " ").split():
        assert token in allowed_words or token.startswith(("d.", "c.")), token
    conn.execute(
        "SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id WHERE " + sql, params
    ).fetchone()
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == tables_before


def test_metadata_fields_flatten_nested_objects_and_lists() -> None:
    from mlflow_rag.store.filters import metadata_fields

    rows = metadata_fields({"a": {"b": 1, "c": [True, "x"]}, "n": None, "_pii": {"e": "x"}},
                           skip=("_pii",))
    assert rows == [("a.b", 1), ("a.c", 1), ("a.c", "x"), ("n", None)]


@pytest.fixture
def semantics_store(tmp_path: Path):
    import numpy as np

    from tests.conftest import make_record

    store = Store.open(tmp_path / "s", create=True)
    store.ensure_model("m", 4)
    docs = {
        "a": {"tags": ["red", "blue"], "year": 2020, "author": {"name": "Ann"}},
        "b": {"tags": ["green"], "year": "2021", "author": {"name": "Bob"}},
        "c": {"year": 2023, "flag": True},
        "d": {"year": None},
    }
    store.write([make_record(k, [f"text {k}"], vectors=np.ones((1, 4)), metadata=v)
                 for k, v in docs.items()])
    yield store
    store.close()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"tags": "red"}, ["a"]),
        ({"tags": {"$in": ["green", "blue"]}}, ["a", "b"]),
        ({"tags": {"$nin": ["red"]}}, ["b", "c", "d"]),
        ({"tags": {"$ne": "green"}}, ["a", "c", "d"]),
        ({"tags": {"$exists": False}}, ["c", "d"]),
        ({"year": {"$gte": 2020}}, ["a", "c"]),  # "2021" is a string: not a number
        ({"year": {"$gte": "2000"}}, ["b"]),
        ({"year": None}, ["d"]),
        ({"year": {"$ne": None}}, ["a", "b", "c"]),
        ({"author.name": "Bob"}, ["b"]),
        ({"metadata.author.name": {"$lt": "B"}}, ["a"]),
        ({"flag": True}, ["c"]),
        ({"chunk.position": 0, "document_id": {"$in": ["a", "c"]}}, ["a", "c"]),
        ({"$or": [{"tags": "green"}, {"year": 2023}]}, ["b", "c"]),
        ({"source_type": {"$ne": "text"}}, []),
    ],
)
def test_filter_semantics_on_a_real_store(semantics_store, spec: dict, expected: list[str]) -> None:
    assert sorted(d.id for d in semantics_store.find_documents(spec)) == expected


# ------------------------------------------------------------ masks agree with the SQL form


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory):
    """Documents with mixed metadata types, several chunks each, and one chunk without a
    vector of the model (a second model covers it), so masks meet every case the SQL does."""
    import numpy as np

    from mlflow_rag.types import VectorBatch
    from tests.conftest import make_record

    rng = np.random.default_rng(0)
    store = Store.open(tmp_path_factory.mktemp("mixed") / "s", create=True)
    store.ensure_model("m", 4)
    store.ensure_model("other", 4)
    values = ["UK", "Germany", 3, 2.5, None, True, ["UK", 7], {"name": "Ann"}, "", -1]
    records = []
    for i in range(40):
        metadata = {"country": values[i % len(values)], "year": 2000 + i % 7}
        if i % 3:
            metadata["tags"] = ["a", "b"][: i % 3]
        texts = [f"text {i} part {j}" for j in range(1 + i % 3)]
        record = make_record(f"doc{i}", texts, vectors=rng.normal(size=(len(texts), 4)),
                             metadata=metadata, chunk_type=["bio", "abstract", None][i % 3])
        if i == 5:  # this document's vectors are of the other model only
            record = make_record(f"doc{i}", texts, metadata=metadata)
            record = type(record)(**{**record.__dict__, "vectors": (
                VectorBatch("other", rng.normal(size=(len(texts), 4))),)})
        records.append(record)
    store.write(records)
    yield store
    store.close()


mask_values = st.sampled_from(["UK", "Germany", "", "a", "b", "Ann", 3, 7, 2.5, -1, 2003, 0, 1])
mask_condition = (
    st.none() | st.booleans() | mask_values
    | st.fixed_dictionaries({}, optional={
        "$eq": mask_values, "$ne": mask_values | st.none(), "$gt": mask_values,
        "$lte": mask_values}).filter(bool)
    | st.builds(lambda op, v: {op: v}, st.sampled_from(["$in", "$nin"]),
                st.lists(mask_values, max_size=3))
    | st.builds(lambda flag: {"$exists": flag}, st.booleans())
)
mask_keys = st.sampled_from([
    "country", "year", "tags", "name", "metadata.country.name", "chunk.position", "chunk_type",
    "chunk_index", "document_id", "source_type", "updated_at", "token_count", "missing",
])
mask_filters = st.recursive(
    st.dictionaries(mask_keys, mask_condition, max_size=3),
    lambda inner: st.builds(lambda op, items: {op: items}, st.sampled_from(["$and", "$or"]),
                            st.lists(inner, min_size=1, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=mask_filters)
def test_masks_select_exactly_the_vectors_the_sql_form_selects(mixed_store, spec: dict) -> None:
    import numpy as np

    from mlflow_rag.store.filter_masks import VectorKeys, allowed_vector_ids
    from mlflow_rag.store.filters import plan_filter

    conn = mixed_store.backend.conn
    where, params = compile_filter(spec)
    expected = sorted(r[0] for r in conn.execute(
        "SELECT e.vector_id FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
        "JOIN documents d ON d.id = c.document_id WHERE e.model_name = 'm' AND (" + where + ")",
        params))
    keys = VectorKeys(*mixed_store.backend.vector_keys("m"))
    got = allowed_vector_ids(plan_filter(spec), keys, mixed_store.backend.condition_ids)
    assert got.tolist() == expected
    assert got.dtype == np.int64
    hits = mixed_store.dense_search(np.ones(4), model="m", k=200, filters=spec)
    assert sorted(h.vector_id for h in hits) == expected
