"""Huge pages under a flat index's vectors: asked for after an answer, never changing one."""

from __future__ import annotations

import numpy as np

from mlflow_rag.index import pages
from mlflow_rag.index.choose import IndexSpec
from mlflow_rag.index.vector_index import VectorIndex


def test_the_span_is_whole_huge_pages_inside_the_buffer_and_small_arrays_are_left_alone() -> None:
    assert pages.huge_page_span(np.zeros(1000, np.float32)) is None
    array = np.zeros(pages.MIN_BYTES // 4 + 12345, np.float32)
    span = pages.huge_page_span(array)
    assert span is not None
    start, length = span
    address = array.ctypes.data
    assert start % pages.HUGE_PAGE == 0 and length % pages.HUGE_PAGE == 0 and length > 0
    assert address <= start and start + length <= address + array.nbytes


def test_collapsing_never_changes_the_memory() -> None:
    rng = np.random.default_rng(0)
    array = rng.standard_normal(pages.MIN_BYTES // 4 * 2).astype(np.float32)
    before = array.copy()
    span = pages.huge_page_span(array)
    assert span is not None
    pages.collapse(*span)  # True where the kernel can (Linux 6.1+, THP not "never")
    assert np.array_equal(array, before)


def test_a_flat_search_answers_first_then_asks_once_per_buffer(monkeypatch) -> None:
    asked: list[int] = []
    monkeypatch.setattr("mlflow_rag.index.vector_index.prefer_huge_pages",
                        lambda matrix: asked.append(matrix.ctypes.data))
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # each its own best match
    index = VectorIndex.build(IndexSpec("flat", {}), 16, np.arange(1, 2001), vectors,
                              generation=1)
    for row in (5, 77):
        found = index.search(vectors[row], 3)
        assert found.ids[0] == row + 1
    assert len(asked) == 1
    index.add(np.array([5000]), rng.standard_normal((1, 16)).astype(np.float32))
    index.search(vectors[0], 3)  # a new buffer after the write: asked again
    assert len(asked) == 2
