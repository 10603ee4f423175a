"""An unfiltered dense search on the generation the last search read needs no read
transaction (issue 19): the model's index and hit map are that generation's, and its hits'
chunk rows and the store's generation are read by one statement, so from one snapshot. These
tests hold it to the transaction's promise: a write by another connection before the search,
or landing between FAISS and the rows' statement, is never missed and never half seen; the
answer equals the join's; refusals are dense's, with the store's current models."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.errors import DimensionMismatch
from mlflow_rag.store.hit_documents import HitDocuments
from mlflow_rag.store.store import Store
from mlflow_rag.types import Hit
from tests.conftest import make_record
from tests.test_hit_documents import DIM, _joined, _record, _search, _store


def _count_transactions(store: Store) -> list[int]:
    """A list whose length is the read transactions the store's backend opened from now."""
    opened: list[int] = []
    backend = store.backend
    original = backend.read_transaction

    @contextmanager
    def counted() -> Iterator[None]:
        opened.append(1)
        with original():
            yield

    backend.read_transaction = counted  # type: ignore[method-assign]
    return opened


def _ids(hits: list[Hit]) -> list[str]:
    return [hit.chunk_id for hit in hits]


def test_a_search_at_the_known_generation_opens_no_transaction_and_equals_the_join(
    tmp_path: Path,
) -> None:
    store, vectors = _store(str(tmp_path / "store"))
    query = vectors[4][0]
    before = _search(store, query)
    opened = _count_transactions(store)
    hits = store.dense_search(query, model="m", k=10)
    assert opened == [] and hits == before and hits[0].chunk_id == "doc4#0"
    assert hits == _joined(store, query)  # (the join itself reads in a transaction)
    assert len(opened) == 1
    with pytest.raises(DimensionMismatch, match=r"dimension 17 does not match the model.s dimension 16"):
        store.dense_search(np.ones(DIM + 1, np.float32), model="m", k=10)
    store.close()


def test_another_connections_write_is_seen_by_the_next_search(tmp_path: Path) -> None:
    location = str(tmp_path / "store")
    store, vectors = _store(location)
    query = vectors[4][0]
    assert _search(store, query)[0].chunk_id == "doc4#0"
    other = Store.open(location)
    other.delete("doc4")
    other.write([_record(30, np.stack([vectors[4] * 2] * 31))])  # doc30's chunks where doc4's were
    opened = _count_transactions(store)
    hits = store.dense_search(query, model="m", k=10)
    # The store moved on: one transaction finds that, the search is made again in another.
    assert len(opened) == 2
    assert hits[0].chunk_id == "doc30#0" and not any(h.document_id == "doc4" for h in hits)
    assert hits == _joined(store, query)
    other.close()
    store.close()


@pytest.mark.parametrize("change", ["delete", "rewrite", "new"])
def test_a_write_landing_between_faiss_and_the_rows_is_never_half_seen(
    tmp_path: Path, change: str,
) -> None:
    # "rewrite": doc4's metadata and path change, its chunk rows stay (the same ids and rowids):
    # the map's remembered fields are the old ones. "new": a document nearer than all others
    # lands, every row of the old index's answer still there: only the generation tells.
    location = str(tmp_path / "store")
    store, vectors = _store(location)
    query = vectors[4][0]
    assert _search(store, query)[0].chunk_id == "doc4#0"
    other = Store.open(location)
    index = store._core.index_cache.indexes["m"]
    search = index.search
    landed: list[int] = []

    def search_then_delete(*args, **kwargs):  # type: ignore[no-untyped-def]
        found = search(*args, **kwargs)
        if not landed:  # the old generation's index answered; now doc4 changes
            if change == "delete":
                other.delete("doc4")
            elif change == "new":
                other.write([make_record("late", ["written later"], vectors=query[None, :] * 3)])
            else:
                other.write([dataclasses.replace(_record(4, vectors, n=40),
                                                 source_path="/moved/doc4.txt")],
                            skip_unchanged=False)
            landed.append(1)
        return found

    index.search = search_then_delete  # type: ignore[method-assign]
    opened = _count_transactions(store)
    hits = store.dense_search(query, model="m", k=10)
    assert landed and len(opened) == 2  # the rows' generation was not the index's: again
    if change == "delete":
        assert hits and not any(h.document_id == "doc4" for h in hits)
    elif change == "new":
        assert hits[0].document_id == "late" and hits[1].chunk_id == "doc4#0"
    else:
        assert hits[0].chunk_id == "doc4#0" and hits[0].source_path == "/moved/doc4.txt"
        assert hits[0].document_metadata == {"n": 40, "tags": ["a", "b"]}
    assert store.orphan_hits == 0
    index.search = search  # type: ignore[method-assign]
    assert hits == _joined(store, query)
    other.close()
    store.close()


def test_documents_not_remembered_yet_are_read_in_a_transaction_without_a_second_faiss_search(
    tmp_path: Path,
) -> None:
    store, vectors = _store(str(tmp_path / "store"))
    query = vectors[7][1]
    expected = _search(store, query)
    keys = store._core.index_cache.hit_maps["m"]
    keys.documents = HitDocuments()  # as after a first pass: no document remembered
    index = store._core.index_cache.indexes["m"]
    search = index.search
    asked: list[int] = []

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(1)
        return search(*args, **kwargs)

    index.search = counted  # type: ignore[method-assign]
    opened = _count_transactions(store)
    assert store.dense_search(query, model="m", k=10) == expected
    assert len(asked) == 1 and len(opened) == 1 and len(keys.documents) > 0
    assert store.dense_search(query, model="m", k=10) == expected  # now remembered: no transaction
    assert len(asked) == 2 and len(opened) == 1
    store.close()
