"""Access labels enforced at search (issue 15): a principal never sees a hit, chunk, neighbour
or count of a document it holds no label of, on every index type and both backends; and its
top-k is the brute-force top-k over the documents it may see."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_rag.errors import ChunkNotFound, DocumentNotFound, InvalidInput
from mlflow_rag.search import Searcher
from mlflow_rag.store.access import ACCESS_KEY, Principal, parse_labels, visible, with_labels
from mlflow_rag.store.store import Store
from tests.conftest import make_record

LABELS = ["ann", "bob", "hr", "eng", "legal"]
WORDS = ["alpha", "beta", "gamma", "delta", "omega"]
DIM = 8


def labelled_store(location: str, *, index_type: str, seed: int = 0) -> tuple[Store, dict]:
    """40 documents of 1-3 chunks; a third unlabelled, the others 1-2 random labels."""
    rng = np.random.default_rng(seed)
    store = Store.open(location, create=True)
    store.ensure_model("m", DIM, index_type=index_type,
                       index_params={"nlist": 4} if index_type == "ivf" else None)
    records, truth = [], {}
    for i in range(40):
        labels = [] if i % 3 == 0 else sorted(set(rng.choice(LABELS, size=1 + i % 2).tolist()))
        metadata = {"country": ["UK", "DE"][i % 2]}
        if labels:
            metadata[ACCESS_KEY] = labels
        texts = [f"{WORDS[(i + j) % 5]} {WORDS[(i * j) % 5]} doc{i} part{j}" for j in range(1 + i % 3)]
        vectors = rng.normal(size=(len(texts), DIM)).astype(np.float32)
        records.append(make_record(f"doc{i}", texts, vectors=vectors, metadata=metadata))
        for j, v in enumerate(vectors):
            truth[f"doc{i}#{j}"] = (f"doc{i}", metadata, v / np.linalg.norm(v))
    store.write(records)
    return store, truth


principals = st.builds(
    Principal.parse, st.sampled_from([*LABELS, "zed"]),
    st.lists(st.sampled_from(LABELS), max_size=2).map(lambda g: ",".join(g)),
)
# each filter with what it means, as the oracle's predicate over document metadata
FILTERS = {
    "none": (None, lambda m: True),
    "uk": ({"country": "UK"}, lambda m: m["country"] == "UK"),
    "de": ({"country": "DE"}, lambda m: m["country"] == "DE"),
    # a filter that tries to widen access (unlabelled OR UK) only narrows within it
    "or": ({"$or": [{"country": "UK"}, {ACCESS_KEY: {"$exists": False}}]},
           lambda m: m["country"] == "UK" or ACCESS_KEY not in m),
}
filters = st.sampled_from(sorted(FILTERS))


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_no_hit_outside_the_principals_labels_and_top_k_is_brute_force(
    store_location: str, index_type: str
) -> None:
    store, truth = labelled_store(store_location, index_type=index_type)
    searcher = Searcher(store)
    # ~70 reads per example: 40 examples take a second on SQLite, 12 take ~25 s on PostgreSQL
    examples = 12 if "://" in store_location else 40

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(principal=principals, name=filters, k=st.integers(1, 60),
           seed=st.integers(0, 2**16), word=st.sampled_from(WORDS))
    def check(principal: Principal, name: str, k: int, seed: int, word: str) -> None:
        spec, matches = FILTERS[name]
        query = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
        query /= np.linalg.norm(query)

        def allowed(chunk_id: str) -> bool:
            _, metadata, _ = truth[chunk_id]
            return visible(metadata, principal) and matches(metadata)

        subset = [cid for cid in truth if allowed(cid)]
        brute = sorted(subset, key=lambda cid: -float(truth[cid][2] @ query))[:k]
        hits = store.dense(query, _retrieval(k, spec, principal))
        assert [h.chunk_id for h in hits] == brute  # exact, no shortfall, nothing hidden
        lexical = store.lexical(word, _retrieval(k, spec, principal))
        assert all(allowed(h.chunk_id) for h in lexical)
        everything = store.lexical(word, _retrieval(200, spec, None))
        assert [h.chunk_id for h in lexical] == \
            [h.chunk_id for h in everything if allowed(h.chunk_id)][:k]
        fused = searcher.hybrid(word, query, k=k, filters=spec, principal=principal)
        assert all(allowed(h.chunk_id) for h in fused)
        assert len(fused) <= min(k, len(subset))
        docs = store.find_documents(spec, limit=100, principal=principal)
        assert sorted(d.id for d in docs) == sorted({truth[c][0] for c in subset})
        for doc_id in {truth[c][0] for c in truth} - {truth[c][0] for c in subset}:
            if spec is None:
                with pytest.raises(DocumentNotFound):
                    store.get_document(doc_id, principal=principal)
                with pytest.raises(ChunkNotFound):
                    store.expand_context(f"{doc_id}#0", n=2, principal=principal)
        for chunk_id in subset[:5]:
            around = store.expand_context(chunk_id, n=3, principal=principal)
            assert all(allowed(c.id) for c in around)  # neighbours share the document

    try:
        check()
    finally:
        store.close()


def _retrieval(k: int, spec: dict | None, principal: Principal | None):
    from mlflow_rag.store.request import Retrieval

    return Retrieval.parse(k=k, filters=spec, principal=principal)


def test_not_found_reads_the_same_for_hidden_and_missing(store_location: str) -> None:
    store, _ = labelled_store(store_location, index_type="flat")
    with store:
        hidden = next(d.id for d in store.find_documents(limit=100)
                      if not visible(d.metadata, Principal.parse("zed")))
        messages = []
        for doc_id in (hidden, "no-such-doc"):
            with pytest.raises(DocumentNotFound) as caught:
                store.get_document(doc_id, principal=Principal.parse("zed"))
            messages.append(str(caught.value).replace(doc_id, "ID"))
        assert messages[0] == messages[1]


@pytest.mark.parametrize(("value", "expected"), [
    ("hr, eng,hr", ["eng", "hr"]), (["b", "a"], ["a", "b"]), ("", []), (None, []), ([], []),
])
def test_labels_are_parsed_into_their_stored_form(value: object, expected: list[str]) -> None:
    assert parse_labels(value) == expected
    stored = with_labels({ACCESS_KEY: value, "x": 1}, default="public")
    assert stored.get(ACCESS_KEY) == (expected or ["public"])


@pytest.mark.parametrize(("value", "message"), [
    (5, "comma-separated string or a list"), ([1], "must be strings"),
    (["a\nb"], "bad access label"), (["x" * 300], "1-256 printable"),
])
def test_bad_labels_are_one_line_errors(value: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_labels(value)


def test_groups_without_a_principal_are_refused() -> None:
    with pytest.raises(InvalidInput, match="without a principal"):
        Principal.optional(None, "hr")
    assert Principal.optional("", None) is None
    assert Principal.parse("ann", "hr,eng").labels == {"ann", "hr", "eng"}


def test_a_write_with_labels_not_in_stored_form_is_refused_and_nothing_lands(tmp_path) -> None:
    with Store.open(tmp_path / "s", create=True) as store:
        store.write([make_record("ok", ["kept"], metadata={ACCESS_KEY: ["hr"]})])
        with pytest.raises(InvalidInput, match="sorted list of labels"):
            store.write([make_record("bad", ["text"], metadata={ACCESS_KEY: "hr"})])
        assert [d.id for d in store.find_documents(limit=10)] == ["ok"]
