"""Filters for dense search, evaluated as boolean masks over one model's vectors.

The SQL form of a filter (a backend's rendering of the plan) joins every matching
row through documents, chunks and embeddings: three B-tree seeks per match, which dominates
when a filter keeps thousands of chunks. Here each condition of the plan is one index range
scan returning document or chunk ids; the ids become a mask over the vectors through
:class:`VectorKeys` (which chunk and document each vector belongs to, loaded once per store
generation), and ``$and`` / ``$or`` / negation are numpy operations on masks, as a search
engine combines filter bitsets. Both forms come from one plan, and a property test holds
them to the same answers.

What a plan selected is remembered per store generation (:mod:`~mlflow_rag.store.filter_cache`,
held by the generation's :class:`VectorKeys`): a repeated filter skips the SQL and the
numbering.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from itertools import repeat

import numpy as np

from mlflow_rag.store.filter_cache import FilterResults
from mlflow_rag.store.filters import Condition, Plan

#: The document or chunk ids one condition's test selects (a backend's ``condition_ids``).
IdQuery = Callable[[Condition], list[str]]


# Ids are matched through their Python hashes, sorted in a numpy array (a binary search per
# id, in C), each match confirmed by comparing the strings as fixed-width numpy arrays, when
# that array stays under this size; else through a dict. At 100K, 50 % selectivity, mapping
# 50,000 document ids through a dict of 100,000 took 50-65 ms a query (a cache miss per
# string compare); see benchmarks/RESULTS.md for the hashed form.
MAX_ARRAY_BYTES = 128 * 1024 * 1024


class IdNumbers:
    """Distinct string ids numbered 0..size-1: ``codes`` numbers each id given at construction
    (in its order), ``lookup`` numbers many ids at once (-1: not among them)."""

    def __init__(self, ids: list[str]) -> None:
        distinct = list(dict.fromkeys(ids))
        self.size = len(distinct)
        width = max(map(len, distinct), default=1)
        self._numbers: dict[str, int] | None = None
        self._strings = np.zeros(0, dtype="<U1")
        self._hashes = np.zeros(0, dtype=np.uint64)
        if 4 * width * self.size <= MAX_ARRAY_BYTES and not _has_nul(distinct):
            strings = np.array(distinct, dtype=f"<U{width}")
            hashes = _hashes(strings)
            order = np.argsort(hashes, kind="stable")
            self._strings, self._hashes = strings[order], hashes[order]
        # numpy's str arrays drop trailing NULs ("a\0" == "a"): ids holding one take the dict,
        # and so do two ids of one hash.
        if len(self._strings) < self.size or bool(np.any(self._hashes[1:] == self._hashes[:-1])):
            self._numbers = {i: n for n, i in enumerate(distinct)}
        self.codes = self.lookup(ids)

    def lookup(self, wanted: list[str]) -> np.ndarray:
        if self._numbers is not None or _has_nul(wanted):
            numbers = self._numbers if self._numbers is not None else dict(
                zip(self._strings.tolist(), range(self.size), strict=True))
            return np.fromiter(map(numbers.get, wanted, repeat(-1)), np.int64, len(wanted))
        if not wanted or not self.size:
            return np.full(len(wanted), -1, dtype=np.int64)
        strings = np.array(wanted, dtype=str)
        hashes = _hashes(strings)
        # Binary searches for needles in order walk the array once (10x faster at 50,000).
        order = np.argsort(hashes)
        hashes = hashes[order]
        found = np.searchsorted(self._hashes, hashes)
        found[found == self.size] = 0  # past the end: refused by the hash test below
        same = (self._hashes[found] == hashes) & (self._strings[found] == strings[order])
        codes = np.empty(len(wanted), dtype=np.int64)
        codes[order] = np.where(same, found, -1)
        return codes


_PRIME = 0x100000001B3  # FNV's 64-bit prime


def _hashes(strings: np.ndarray) -> np.ndarray:
    """A hash of each string of a fixed-width str array, in numpy (Python's hash() took 7 ms
    for 50,000 ids): the sum of code point x PRIME**position (mod 2**64). Padding adds zero,
    so arrays of different widths hash alike; equal hashes are confirmed by comparing strings."""
    width = strings.dtype.itemsize // 4
    points = strings.view(np.uint32).reshape(len(strings), width)
    factors = np.ones(width, dtype=np.uint64)
    np.cumprod(np.full(width - 1, _PRIME, dtype=np.uint64), out=factors[1:])  # wraps, silently
    hashes = np.zeros(len(strings), dtype=np.uint64)
    for position in range(width):
        hashes += points[:, position] * factors[position]
    return hashes


def _has_nul(ids: list[str]) -> bool:
    return "\0" in "".join(ids)


class VectorKeys:
    """The chunk and document of each vector of one model, in vector id order."""

    def __init__(self, vector_ids: np.ndarray, chunk_ids: list[str], document_ids: list[str]) -> None:
        self.vector_ids = vector_ids
        self._chunk_ids = chunk_ids
        self._document_ids = document_ids
        # What filters selected among these vectors: valid exactly as long as these keys
        # (the index cache makes new keys when the store's generation moves).
        self.results = FilterResults()

    def __len__(self) -> int:
        return len(self.vector_ids)

    @cached_property
    def chunks(self) -> IdNumbers:
        return IdNumbers(self._chunk_ids)

    @cached_property
    def documents(self) -> IdNumbers:
        return IdNumbers(self._document_ids)


def allowed_vector_ids(plan: Plan, keys: VectorKeys, query: IdQuery) -> np.ndarray:
    """The vector ids (ascending) whose chunk matches ``plan`` (read-only: it is shared with
    the next search of the same plan at the same generation)."""
    key = f"plan {plan!r}"
    found = keys.results.get(key)
    if found is None:
        # A lone condition is remembered as this plan; inside $and/$or each is remembered
        # as a mask too, so an access-label condition is read once for every filter.
        mask = _mask(plan, keys, query, remember=not isinstance(plan, Condition))
        found = keys.results.put(key, keys.vector_ids[mask])
    return found


def _mask(node: Plan, keys: VectorKeys, query: IdQuery, *, remember: bool) -> np.ndarray:
    if isinstance(node, Condition):
        mask = _condition_mask(node, keys, query, remember=remember)
        return ~mask if node.negate else mask
    if node.op == "AND":
        mask = np.ones(len(keys), dtype=bool)
        for part in node.parts:
            if not mask.any():
                break  # nothing left to narrow
            mask &= _mask(part, keys, query, remember=remember)
        return mask
    mask = np.zeros(len(keys), dtype=bool)
    for part in node.parts:
        mask |= _mask(part, keys, query, remember=remember)
    return mask


def _condition_mask(
    node: Condition, keys: VectorKeys, query: IdQuery, *, remember: bool
) -> np.ndarray:
    # The test without its negation: ~mask serves the negated form from the same entry.
    key = f"condition {(node.owner, node.column, node.field, node.op, node.arg)!r}"
    cached = keys.results.get(key) if remember else None
    if cached is not None:
        return cached
    numbering = keys.chunks if node.owner == "chunk" else keys.documents
    found = numbering.lookup(query(node))
    # Ids with no vector of this model are -1: they land in one spare slot, then dropped.
    flags = np.zeros(numbering.size + 1, dtype=bool)
    flags[found] = True
    mask = flags[:-1][numbering.codes]
    return keys.results.put(key, mask) if remember else mask
