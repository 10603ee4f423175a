"""Hydration by row key: which chunk row each of a model's vectors belongs to, in memory.

A dense hit's row used to be read by joining from its vector id: the vector_id index, the
embeddings row (which holds the 1.5 KB vector), the chunk id index, then the chunk and
document rows, six B-tree descents per hit where a raw FAISS + SQLite baseline makes one.
:class:`HitKeys` maps each vector id to its chunk's and its document's row keys (SQLite's
rowids), so a search reads both by primary key: two descents. It holds no text: every field
of a hit is still read from the database in the search's read snapshot, so an erased or
edited chunk never shows stale.

The map is stamped with the store generation it reflects and catches up as the index does
(the deletion log, then the vectors added since: :meth:`HitKeys.replay`). A row key can
change without a new generation (SQLite's VACUUM may renumber rowids), so the map also holds
a hash of each vector's chunk id, and a row whose chunk id does not hash to it marks the map
stale: that search hydrates by the join instead, and the map is rebuilt on the next one.
Memory: four int64 columns, 32 bytes per vector (32 MB at 1M vectors), and a table by
vector id of 4 bytes per id of the ids' span (8-9 MB at 1M).

Building a map reads every vector's keys (4.3 s at 1M on a busy machine), so it is never
done inside a search: :class:`MapBuild` builds it on a thread of its own, over a read-only
connection of its own and in that connection's snapshot, while searches join; the map it
hands over is stamped with that snapshot's generation and replays from there like any other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlflow_rag.store.backend import Backend
from mlflow_rag.store.hit_documents import HitDocument, HitDocuments

log = logging.getLogger("mlflow_rag.store")
Row = tuple[Any, ...]
# The SQLite backend's chunk_rows_at_generation: chunk rows by rowid and the store's
# generation, read by one statement; None unless that generation is the one asked for.
ChunkRowsAt = Callable[[Sequence[int], int], Mapping[int, Row] | None]


def _hashes(chunk_ids: list[str]) -> np.ndarray:
    # Python's str hash: salted per process, and the map never leaves its process.
    return np.fromiter(map(hash, chunk_ids), dtype=np.int64, count=len(chunk_ids))


# A hit's keys are found through a table by vector id (one read each) when the ids of the
# map span at most this many times their number (a sequence shared with chunk ids and never
# reused spans about twice the vectors of one model); beyond, a binary search (17 reads
# each at 100K: 25 us of a search with the processor's caches cold after FAISS's walk).
MAX_SLOTS_PER_VECTOR = 4


def _slots(vector_ids: np.ndarray) -> np.ndarray | None:
    """Position of each vector id in ``vector_ids`` (sorted), indexed by id - the first id:
    -1 where no vector; None when the ids spread too widely for a table."""
    if not len(vector_ids):
        return None
    span = int(vector_ids[-1]) - int(vector_ids[0]) + 1
    if span > MAX_SLOTS_PER_VECTOR * len(vector_ids) + 1024:
        return None
    slots = np.full(span, -1, dtype=np.int32 if len(vector_ids) < 2**31 else np.int64)
    slots[vector_ids - vector_ids[0]] = np.arange(len(vector_ids), dtype=slots.dtype)
    return slots


class HitKeys:
    """vector id -> (chunk and document row keys, hash of the chunk id) for one model, at one
    generation."""

    def __init__(self, generation: int, vector_ids: np.ndarray, row_keys: np.ndarray,
                 document_keys: np.ndarray, checks: np.ndarray) -> None:
        order = np.argsort(vector_ids, kind="stable")
        self.generation = generation
        self._set(vector_ids[order], np.stack([row_keys, document_keys, checks], axis=1)[order])
        self.stale = False
        self.documents = HitDocuments()  # this generation's document fields (hit_documents)

    def _set(self, vector_ids: np.ndarray, table: np.ndarray) -> None:
        # The vector ids ascending, and a row per vector in their order: (chunk row key,
        # document row key, chunk id hash), so a hit's keys are one read.
        self.vector_ids = np.ascontiguousarray(vector_ids, dtype=np.int64)
        self.table = np.ascontiguousarray(table, dtype=np.int64).reshape(-1, 3)
        self.slots = _slots(self.vector_ids)
        # Python views of both, read a value at a time: a search's ten lookups take ~50 ns
        # each through them, against 3-7 us for each numpy call with the processor's caches
        # cold after FAISS's walk (28 us of numpy calls a search at 100K).
        self._first = int(self.vector_ids[0]) if len(self.vector_ids) else 0
        self._slot_view = self.slots.data if self.slots is not None else None
        self._table_view = self.table.reshape(-1).data

    @classmethod
    def load(cls, backend: Backend, model_name: str, generation: int) -> HitKeys | None:
        """The model's map from the database (inside a read transaction at ``generation``), or
        None when the backend hydrates by vector id only."""
        found = backend.chunk_row_keys(model_name, 0)
        if found is None:
            return None
        ids, keys, documents, chunk_ids = found
        return cls(generation, ids, keys, documents, _hashes(chunk_ids))

    @property
    def max_vector_id(self) -> int:
        return int(self.vector_ids[-1]) if len(self.vector_ids) else 0

    @property
    def nbytes(self) -> int:
        return int(self.vector_ids.nbytes + self.table.nbytes
                   + (self.slots.nbytes if self.slots is not None else 0))

    def replay(self, backend: Backend, model_name: str, generation: int) -> bool:
        """Catch up to ``generation`` (inside a read transaction): drop the vectors deleted
        since, add those written since. False when the backend stopped returning keys."""
        if generation != self.generation:
            self.documents.clear()  # every write bumps the generation: fields may have changed
        deleted = backend.deletions_since(model_name, self.generation)
        vector_ids, table = self.vector_ids, self.table
        if len(deleted):
            keep = ~np.isin(vector_ids, deleted)
            vector_ids, table = vector_ids[keep], table[keep]
        found = backend.chunk_row_keys(model_name, self.max_vector_id)
        if found is None:
            return False
        ids, keys, documents, chunk_ids = found
        if len(ids):
            order = np.argsort(ids, kind="stable")
            vector_ids = np.concatenate([vector_ids, ids[order]])
            table = np.concatenate([table, np.stack([keys, documents, _hashes(chunk_ids)],
                                                    axis=1)[order]])
        if table is not self.table:
            self._set(vector_ids, table)  # new ids are above every id held: still in order
        self.generation = generation
        return True

    def keys_of(self, vector_ids: Sequence[int]) -> list[tuple[int, int, int]] | None:
        """(chunk row key, document row key, chunk id hash) of each id, or None if one of
        them is not in the map."""
        slots = self._slot_view
        if slots is None:
            wanted = np.array(vector_ids, dtype=np.int64)
            at = self.vector_ids.searchsorted(wanted)
            if not np.array_equal(self.vector_ids.take(at, mode="clip"), wanted):
                return None
            return [(key, document, check) for key, document, check in self.table[at].tolist()]
        table, first, count = self._table_view, self._first, len(slots)
        out = []
        for vector_id in vector_ids:
            offset = vector_id - first
            if offset < 0 or offset >= count:
                return None
            row = slots[offset] * 3
            if row < 0:
                return None
            out.append((table[row], table[row + 1], table[row + 2]))
        return out

    def rows(self, backend: Backend, vector_ids: Sequence[int]) -> dict[int, Row] | None:
        """vector id -> hit row for ``vector_ids`` (inside the search's read transaction), or
        None when the map cannot answer for all of them (the caller joins instead). A row's
        last field is its :class:`HitDocument`: when every hit's document is remembered at
        this generation, only the chunk rows are read."""
        if not vector_ids:
            return {}
        if not len(self.vector_ids):
            return None
        picked = self.keys_of(vector_ids)
        if picked is None:
            return None  # not a vector of this map's generation: never expected
        keys = [row[0] for row in picked]
        document_keys = [row[1] for row in picked]
        documents = self.documents.all_of(document_keys)
        out: dict[int, Row] | None
        if documents is not None:
            out = _with_documents(vector_ids, picked, documents,
                                  backend.chunk_rows_by_row_keys(keys))
            if out is None:
                self.stale = True  # renumbered rowids (VACUUM)
            return out
        out = {}
        by_key = backend.hits_by_row_keys(list(zip(keys, document_keys, strict=True)))
        for vector_id, (key, document_key, check) in zip(vector_ids, picked, strict=True):
            row = by_key.get(key)
            if row is None or hash(row[0]) != check:  # renumbered rowids (VACUUM)
                self.stale = True
                return None
            document = self.documents.put(document_key, row[1], row[6], row[7])
            out[vector_id] = (*row[:7], document)
        return out

    def rows_at_generation(
        self, chunk_rows_at_generation: ChunkRowsAt, vector_ids: Sequence[int]
    ) -> dict[int, Row] | None:
        """:meth:`rows` outside a read transaction, for a search of the index at this map's
        generation: the chunk rows and the store's generation come from one statement, so
        from one snapshot, and that snapshot is this generation's if the generation read
        equals it (every write moves it). None if the store has moved on, a document is not
        remembered, no row came back or one does not check: the caller searches again in a
        read transaction (which marks a renumbered map stale); nothing here has changed."""
        picked = self.keys_of(vector_ids) if vector_ids and len(self.vector_ids) else None
        if picked is None:
            return None
        documents = self.documents.all_of([row[1] for row in picked])
        if documents is None:
            return None
        chunks = chunk_rows_at_generation([row[0] for row in picked], self.generation)
        if chunks is None:
            return None
        return _with_documents(vector_ids, picked, documents, chunks)


def _with_documents(
    vector_ids: Sequence[int], picked: Sequence[tuple[int, int, int]],
    documents: Sequence[HitDocument], chunks: Mapping[int, tuple[Any, ...]],
) -> dict[int, Row] | None:
    """Hit rows of chunk rows and their remembered documents, or None if a row is missing or
    is not the chunk the map names (renumbered rowids)."""
    out: dict[int, Row] = {}
    for vector_id, (key, _, check), document in zip(vector_ids, picked, documents, strict=True):
        row = chunks.get(key)
        if row is None or hash(row[0]) != check or row[1] != document.document_id:
            return None
        out[vector_id] = (*row, document.source_path, document)
    return out


class MapBuild:
    """One model's :class:`HitKeys` built on a daemon thread over ``reader`` (a read-only
    connection of its own, closed here), in one snapshot of it. ``started_at``: the
    generation of the search that asked, so a failed build is retried only once the store
    moves (a failure is logged; searches join meanwhile)."""

    def __init__(self, reader: Backend, model_name: str, started_at: int) -> None:
        self.reader = reader
        self.model_name = model_name
        self.started_at = started_at
        self.keys: HitKeys | None = None
        self.failed = False
        self.finished = threading.Event()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=f"mlflow-rag hit map {model_name}",
                                        daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        """The thread ended without finishing (the process forked after it started)."""
        return not self.finished.is_set() and not self._thread.is_alive()

    def _run(self) -> None:
        try:
            if not self._cancelled:
                with self.reader.read_transaction():
                    generation = self.reader.generation()
                    self.keys = HitKeys.load(self.reader, self.model_name, generation)
        except Exception as exc:  # the searches join instead; nothing is lost
            self.failed = True
            if not self._cancelled:
                log.warning("building the hit map of %s failed (searches join instead): %s",
                            self.model_name, exc)
        finally:
            self.reader.close()
            self.finished.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the build to end (tests, benchmarks); True if it did."""
        return self.finished.wait(timeout)

    def cancel(self) -> None:
        """Stop the build (its statement is interrupted) and wait for its thread."""
        self._cancelled = True
        self.reader.interrupt()
        if self._thread is not threading.current_thread():
            self._thread.join()
