"""Filters for dense search, evaluated as boolean masks over one model's vectors.

The SQL form of a filter (a backend's rendering of the plan) joins every matching
row through documents, chunks and embeddings: three B-tree seeks per match, which dominates
when a filter keeps thousands of chunks. Here each condition of the plan is one index range
scan returning document or chunk ids; the ids become a mask over the vectors through
:class:`VectorKeys` (which chunk and document each vector belongs to, loaded once per store
generation), and ``$and`` / ``$or`` / negation are numpy operations on masks, as a search
engine combines filter bitsets. Both forms come from one plan, and a property test holds
them to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from itertools import repeat

import numpy as np

from mlflow_rag.store.filters import Condition, Plan

#: The document or chunk ids one condition's test selects (a backend's ``condition_ids``).
IdQuery = Callable[[Condition], list[str]]


class VectorKeys:
    """The chunk and document of each vector of one model, in vector id order."""

    def __init__(self, vector_ids: np.ndarray, chunk_ids: list[str], document_ids: list[str]) -> None:
        self.vector_ids = vector_ids
        self._chunk_ids = chunk_ids
        self._document_ids = document_ids

    def __len__(self) -> int:
        return len(self.vector_ids)

    @cached_property
    def chunk_position(self) -> dict[str, int]:
        return {chunk_id: i for i, chunk_id in enumerate(self._chunk_ids)}

    @cached_property
    def document_ordinal(self) -> dict[str, int]:
        return {doc_id: i for i, doc_id in enumerate(dict.fromkeys(self._document_ids))}

    @cached_property
    def document_of_vector(self) -> np.ndarray:
        ordinal = self.document_ordinal
        return np.fromiter((ordinal[d] for d in self._document_ids), dtype=np.int64,
                           count=len(self._document_ids))


def allowed_vector_ids(plan: Plan, keys: VectorKeys, query: IdQuery) -> np.ndarray:
    """The vector ids (ascending) whose chunk matches ``plan``."""
    return keys.vector_ids[_mask(plan, keys, query)]


def _mask(node: Plan, keys: VectorKeys, query: IdQuery) -> np.ndarray:
    if isinstance(node, Condition):
        mask = _condition_mask(node, keys, query)
        return ~mask if node.negate else mask
    if node.op == "AND":
        mask = np.ones(len(keys), dtype=bool)
        for part in node.parts:
            if not mask.any():
                break  # nothing left to narrow
            mask &= _mask(part, keys, query)
        return mask
    mask = np.zeros(len(keys), dtype=bool)
    for part in node.parts:
        mask |= _mask(part, keys, query)
    return mask


def _condition_mask(node: Condition, keys: VectorKeys, query: IdQuery) -> np.ndarray:
    ids = query(node)
    if node.owner == "chunk":
        lookup, size = keys.chunk_position, len(keys)
    else:
        lookup, size = keys.document_ordinal, len(keys.document_ordinal)
    # Ids with no vector of this model map to one spare slot past the end, then dropped.
    found = np.fromiter(map(lookup.get, ids, repeat(size)), dtype=np.int64, count=len(ids))
    flags = np.zeros(size + 1, dtype=bool)
    flags[found] = True
    flags = flags[:size]
    return flags if node.owner == "chunk" else flags[keys.document_of_vector]
