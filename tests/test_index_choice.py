"""choose_index: a pure, table-tested decision; VectorIndex checked against exact numpy."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.index.choose import EXACT_UP_TO, choose_index, ivf_lists
from mlflow_rag.index.vector_index import VectorIndex, top_k


@pytest.mark.parametrize(
    ("requested", "n", "kind"),
    [
        ("auto", 0, "flat"),
        ("auto", 10_000, "flat"),
        ("auto", EXACT_UP_TO, "flat"),
        ("auto", EXACT_UP_TO + 1, "ivf"),
        ("auto", 1_000_000, "ivf"),
        ("flat", 5_000_000, "flat"),
        ("hnsw", 10, "hnsw"),
        ("ivf", 100, "ivf"),
    ],
)
def test_choice_by_requested_type_and_size(requested: str, n: int, kind: str) -> None:
    assert choose_index(requested, n, 384).kind == kind


def test_ivf_list_count_grows_with_size_but_keeps_enough_training_points() -> None:
    assert ivf_lists(100) == 2  # 100 // 39
    assert ivf_lists(1_000_000) == 4000
    spec = choose_index("ivf", 1_000_000, 384)
    assert spec.params["nlist"] == 4000 and 1 <= spec.params["nprobe"] <= 4000


def test_user_parameters_override_defaults_and_are_validated() -> None:
    assert choose_index("hnsw", 10, 8, {"ef_search": 300}).params["ef_search"] == 300
    with pytest.raises(UnknownChoice, match="hnsw index parameter 'efsearch'"):
        choose_index("hnsw", 10, 8, {"efsearch": 300})
    with pytest.raises(InvalidInput, match="non-negative integer"):
        choose_index("ivf", 10, 8, {"nprobe": -1})
    with pytest.raises(UnknownChoice, match="Unknown index type 'lsh'"):
        choose_index("lsh", 10, 8)


def test_top_k_orders_best_first_and_breaks_ties_by_position() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3], dtype=np.float32)
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 4, 0]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_index_type_round_trips_and_removes(kind: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 12)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(10, 310, dtype=np.int64)
    index = VectorIndex.build(choose_index(kind, 300, 12), 12, ids, vectors, generation=3)
    assert index.ntotal == 300 and index.ids().tolist() == ids.tolist()
    copy = VectorIndex.deserialize(index.serialize(), index.spec, 12, generation=3,
                                   max_vector_id=309, expected_count=300)
    result = copy.search(vectors[42], 1, allowed=ids)
    assert result.ids[0] == 52
    if kind != "hnsw":
        assert copy.remove(np.array([52, 999], dtype=np.int64))
        assert copy.ntotal == 299 and 52 not in copy.ids()
    else:
        assert not copy.remove(np.array([52], dtype=np.int64))
