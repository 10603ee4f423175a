"""What a filter selected, remembered for one model at one store generation.

A filtered dense search spends most of its store-side time turning the filter into vector
ids: one SQL range scan per condition, and the string ids it returns numbered against the
model's vectors (at 100K, 50 % selectivity: ~6 ms of SQL and ~9 ms of numbering a query,
against a ~6 ms scan). An application repeats its filters (an access-label pre-filter on
every query of a user, a facet on every query of a page), so :class:`FilterResults` keeps
each plan's allowed vector ids, and each condition's mask, for the next query.

Correctness rests on where it lives: one :class:`FilterResults` belongs to one
:class:`~mlflow_rag.store.filter_masks.VectorKeys`, which the index cache builds afresh
whenever the store's generation moves, and every write (documents, their metadata and
access labels, deletions, vectors) is a write transaction that bumps it. A new generation
therefore starts with nothing remembered, and a result never outlives the rows it was read
from. Keys are the plan's ``repr``: every field of every condition (the access-label plan
included), with the value types told apart (``1``, ``1.0``, ``True`` and ``"1"`` differ), so
two different filters never share an entry.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

# Per model, per generation. At 100K vectors a 50 % filter's ids are 400 KB and a condition's
# mask 100 KB: this holds some hundred filters there, a handful at 5M.
MAX_BYTES = 32 * 1024 * 1024
MAX_ENTRIES = 256


class FilterResults:
    """A small LRU of read-only arrays by key, bounded by their bytes and their number."""

    def __init__(self, *, max_bytes: int = MAX_BYTES, max_entries: int = MAX_ENTRIES) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> np.ndarray | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: str, value: np.ndarray) -> np.ndarray:
        """Remember ``value`` (made read-only: callers share it) and return it. An entry
        larger than the whole bound is not kept."""
        value.flags.writeable = False
        size = value.nbytes + 2 * len(key)  # the key too: an $in of 10,000 values is long
        if size > self.max_bytes:
            return value
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        while self._entries and (self.bytes + size > self.max_bytes
                                 or len(self._entries) >= self.max_entries):
            _, (_, freed) = self._entries.popitem(last=False)
            self.bytes -= freed
        self._entries[key] = (value, size)
        self.bytes += size
        return value

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
