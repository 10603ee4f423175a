"""A FAISS index over one embedding model's vectors, keyed by ``embeddings.vector_id``.

The index is a derived cache of the SQLite BLOBs. It knows nothing of chunks or documents:
the store and the index meet only in the vector id (as txtai's content store and ANN do).

Exact ("flat") search is a numpy matrix-vector product over the vectors FAISS holds: one
query is memory-bandwidth bound, and BLAS uses every core, where FAISS's single-query flat
scan uses one. An IVF query scans ~1 % of the vectors on one core (see ``IVF_PARALLEL_MODE``).
Filtered search is always exact (index/filtered.py): a selector over a graph walk misses results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import faiss
import numpy as np

from mlflow_rag.errors import IndexCorrupt
from mlflow_rag.index.choose import IVF_KINDS, IndexSpec
from mlflow_rag.index.compressed import empty_ivfpq, pq_training
from mlflow_rag.index.filtered import exact_selected, filtered_strategy, gathered_scores
from mlflow_rag.index.layout import check_index_file
from mlflow_rag.index.pages import prefer_huge_pages
from mlflow_rag.index.side_vectors import SideVectors

# Rows per block when scoring a matrix numpy cannot hand to BLAS (see scores()): 1.5 MB of
# 384-d float32, small enough to stay in cache between the copy and the product.
SCORE_BLOCK_ROWS = 1024

# IVF k-means trains on a random sample of this many vectors per list (FAISS warns below 39
# and itself samples down to 256). At 1M x 384, 1000 lists: 64 per list trains in 24 s, 256 in
# 92 s (loaded machine), and recall@10 differs by <= 0.004 (benchmarks/RESULTS.md).
TRAIN_PER_LIST = 64
# FAISS IVF parallel_mode 0 (its default: threads split the queries, so one query runs on one
# core). Mode 1 (threads split one query's probed lists) was measured at 1M: ~0.3 ms faster at
# 8-16 probes, but 6-30 ms instead of 3-5 ms once a query scans 30K+ vectors on a loaded
# machine (benchmarks/RESULTS.md), and one core per query leaves the other to a second query.
IVF_PARALLEL_MODE = 0


# A model's vectors as a build reads them: each call starts over and yields (ids, float32
# vectors) blocks in id order (the store reads them from its database, a block at a time).
Blocks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class SearchResult:
    ids: np.ndarray  # int64 vector ids, best first
    scores: np.ndarray  # float32 inner products


def _float_view(flat: faiss.IndexFlatCodes, dimension: int) -> np.ndarray:
    """The vectors an IndexFlat holds, as a (n, d) float32 view (no copy)."""
    n = flat.ntotal
    if n == 0:
        return np.zeros((0, dimension), dtype=np.float32)
    raw = faiss.rev_swig_ptr(flat.codes.data(), n * dimension * 4)
    return np.asarray(raw).view(np.float32).reshape(n, dimension)


def scores(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``matrix @ query`` at BLAS speed whatever the alignment of ``matrix``.

    A memory-mapped index file holds its vectors at whatever offset the FAISS header leaves
    (2 mod 4 for our flat files), and numpy runs products over unaligned float32 in a scalar
    loop, 3-4x slower than BLAS. Copying blocks into an aligned buffer and multiplying each
    is as fast as BLAS on an aligned matrix: the block is still in cache for the product.
    """
    if matrix.flags.aligned:
        return matrix @ query
    n = matrix.shape[0]
    out = np.empty(n, dtype=np.float32)
    block = np.empty((min(n, SCORE_BLOCK_ROWS), matrix.shape[1]), dtype=np.float32)
    for start in range(0, n, SCORE_BLOCK_ROWS):
        stop = min(n, start + SCORE_BLOCK_ROWS)
        rows = block[: stop - start]
        rows[...] = matrix[start:stop]
        np.dot(rows, query, out=out[start:stop])
    return out


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` for int arrays without its cost at start-up: np.unique imports numpy.ma
    (30-50 ms), which a cold start's first search would pay."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]

def one_query(
    index: faiss.Index, query: np.ndarray, k: int, *, params: faiss.SearchParameters | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` of one query on this thread alone. FAISS opens an OpenMP team for it
    whose other thread has no query to work on; on a busy machine the team's join waited
    for a core: HNSW p50 16-20 ms with two threads, 0.3 ms with one (benchmarks/RESULTS.md).
    omp_set_num_threads sets the calling thread's own setting, so builds elsewhere keep
    every core; it is restored afterwards for this thread's builds too."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(query.reshape(1, -1), k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)


def training_sample(vectors: np.ndarray, nlist: int, *, seed: int = 0) -> np.ndarray:
    """The vectors IVF k-means trains on: all of them, or a seeded sample of
    ``TRAIN_PER_LIST * nlist`` in their original order (a rebuild trains on the same rows)."""
    return sample_of_blocks(lambda: iter([(np.zeros(0, np.int64), vectors)]), len(vectors),
                            nlist, seed=seed)


def sample_of_blocks(blocks: Blocks, count: int, nlist: int, *, seed: int = 0) -> np.ndarray:
    """:func:`training_sample` of the ``count`` vectors ``blocks()`` yields, in one pass that
    keeps only the sampled rows: the same rows whatever the block size."""
    size = TRAIN_PER_LIST * nlist
    rows = (None if count <= size else
            np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False)))
    parts, offset = [], 0
    for _, vectors in blocks():
        if rows is None:
            parts.append(np.asarray(vectors, dtype=np.float32))
        else:
            lo, hi = np.searchsorted(rows, [offset, offset + len(vectors)])
            parts.append(np.asarray(vectors[rows[lo:hi] - offset], dtype=np.float32))
        offset += len(vectors)
    if offset != count:
        raise IndexCorrupt(f"a build counted {count} vectors but read {offset}")
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0])


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores, best first (ties: lower position first)."""
    if k >= scores.shape[0]:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


class VectorIndex:
    """One model's index plus the store generation and highest vector id it reflects."""

    def __init__(
        self, spec: IndexSpec, dimension: int, index: faiss.Index, *, generation: int,
        max_vector_id: int,
    ) -> None:
        self.spec = spec
        self.dimension = dimension
        self.index = index
        self.generation = generation
        self.max_vector_id = max_vector_id
        self._ids: np.ndarray | None = None
        self._matrix: np.ndarray | None = None
        self._storage: faiss.IndexFlatCodes | None = None
        self._ef_search: tuple[faiss.Index, int] | None = None
        self._huge_pages_asked = False
        self.dirty = True  # differs from the file on disk (cleared by the store on persist)
        # Vectors live in a read-only memory map of the index file (shared with every process
        # that maps it). FAISS aborts the process on any write to mapped storage, so mutations
        # first take a private copy (_unmap).
        self.mapped = False
        # A compressed index's float16 vectors, for its re-rank (attached by the store).
        self.side: SideVectors | None = None

    # ----------------------------------------------------------------- construction

    @classmethod
    def empty(cls, spec: IndexSpec, dimension: int) -> VectorIndex:
        if spec.kind == "flat":
            index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        elif spec.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dimension, spec.params["M"], faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = spec.params["ef_construction"]
            hnsw.hnsw.efSearch = spec.params["ef_search"]
            index = faiss.IndexIDMap2(hnsw)
        elif spec.kind == "ivf":
            quantizer = faiss.IndexFlatIP(dimension)
            index = faiss.IndexIVFFlat(
                quantizer, dimension, spec.params["nlist"], faiss.METRIC_INNER_PRODUCT
            )
            index.nprobe = spec.params["nprobe"]
            index.parallel_mode = IVF_PARALLEL_MODE
        elif spec.kind == "ivfpq":
            index = empty_ivfpq(dimension, spec.params)
            index.parallel_mode = IVF_PARALLEL_MODE
        else:  # choose_index validated the kind
            raise ValueError(spec.kind)
        return cls(spec, dimension, index, generation=0, max_vector_id=0)

    @classmethod
    def build(
        cls, spec: IndexSpec, dimension: int, ids: np.ndarray, vectors: np.ndarray, *,
        generation: int,
    ) -> VectorIndex:
        return cls.build_from_blocks(spec, dimension, lambda: iter([(ids, vectors)]), len(ids),
                                     generation=generation)

    @classmethod
    def build_from_blocks(
        cls, spec: IndexSpec, dimension: int, blocks: Blocks, count: int, *, generation: int,
    ) -> VectorIndex:
        """The index of the ``count`` vectors ``blocks()`` yields, holding one block at a time
        besides the index: an IVF kind reads them twice, once keeping only its training
        sample, once to add them. The index is the same whatever the block size."""
        if spec.kind in IVF_KINDS:
            nlist = max(1, min(spec.params["nlist"], count))
            spec = IndexSpec(spec.kind, {**spec.params, "nlist": nlist,
                                         "nprobe": min(spec.params["nprobe"], nlist)})
        built = cls.empty(spec, dimension)
        if spec.kind in IVF_KINDS:
            training = (sample_of_blocks(blocks, count, spec.params["nlist"]) if count
                        else np.zeros((1, dimension), np.float32))
            built.index.train(pq_training(training) if spec.kind == "ivfpq" else training)
        for ids, vectors in blocks():
            built.add(ids, vectors)
        built.generation = generation
        return built

    # ----------------------------------------------------------------- mutation

    def _unmap(self) -> None:
        """Replace a memory-mapped index by a private, writable copy (the map is released).

        ``faiss.clone_index`` would keep viewing the map; a serialize round trip owns its
        memory."""
        if self.mapped:
            self.index = faiss.deserialize_index(faiss.serialize_index(self.index))
            self.mapped = False
            self._invalidate()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._unmap()
        self.index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64)
        )
        self.max_vector_id = max(self.max_vector_id, int(ids.max()))
        self._invalidate()
        self.dirty = True

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ids (absent ones are ignored). False if this index type cannot remove."""
        if len(ids) == 0:
            return True
        if self.spec.kind == "hnsw":
            return False  # HNSW graphs do not support removal; the caller rebuilds
        self._unmap()
        removed = self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64)))
        if removed:
            self._invalidate()
            self.dirty = True
        return True

    def _invalidate(self) -> None:
        self._ids = None
        self._matrix = None
        self._storage = None

    # ----------------------------------------------------------------- inspection

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """All vector ids in the index (sorted ascending)."""
        if self._ids is None:
            if self.spec.kind in IVF_KINDS:
                ivf = faiss.extract_index_ivf(self.index)
                invlists = ivf.invlists
                parts = []
                for list_no in range(ivf.nlist):
                    size = invlists.list_size(list_no)
                    if size:
                        ptr = invlists.get_ids(list_no)
                        parts.append(np.array(faiss.rev_swig_ptr(ptr, size), dtype=np.int64))
                ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
                self._ids = np.sort(ids)
            else:
                ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
                # Ids are added in increasing order and removal keeps order, so this holds;
                # check once rather than trust it, because search maps ids by bisection.
                if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
                    raise IndexCorrupt("index ids are not strictly increasing")
                self._ids = ids
        return self._ids

    def matrix(self) -> np.ndarray:
        """(n, d) float32 view of the stored vectors in id order (flat and HNSW)."""
        if self._matrix is None:
            self._matrix = _float_view(self._flat_storage(), self.dimension)
            self._huge_pages_asked = False
        return self._matrix

    def _flat_storage(self) -> faiss.IndexFlatCodes:
        """The IndexFlat holding the vectors (flat and HNSW), downcast once per index object."""
        if self._storage is None:
            inner = faiss.downcast_index(self.index.index)
            if self.spec.kind == "hnsw":
                inner = faiss.downcast_index(inner.storage)
            self._storage = inner
        return self._storage

    def _ask_for_huge_pages(self) -> None:
        """Once per storage buffer, after an exact search answered (so never before the first
        answer): collapse the vectors into huge pages in the background (index/pages.py). A
        file's map stays as the page cache holds it."""
        if not self._huge_pages_asked and not self.mapped and self._matrix is not None:
            self._huge_pages_asked = True
            prefer_huge_pages(self._matrix)

    def vectors_for(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (flat and HNSW), for self-checks."""
        positions = np.searchsorted(self.ids(), ids)
        return self.matrix()[positions]

    # ----------------------------------------------------------------- search

    def search(self, query: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> SearchResult:
        """Top-k by inner product; with ``allowed`` (vector ids), exact over just those."""
        ntotal = self.ntotal  # a SWIG attribute: read once
        if ntotal == 0 or k < 1:
            return SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
        if not (isinstance(query, np.ndarray) and query.dtype == np.float32 and query.ndim == 1
                and query.flags.c_contiguous):
            # (A checked query is one already: two numpy calls saved, 3-6 us a search.)
            query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if allowed is not None:
            return self._search_allowed(query, k, allowed)
        if self.spec.kind == "flat":
            scored = scores(self.matrix(), query)
            best = top_k(scored, k)
            found = SearchResult(self.ids()[best], scored[best])
            self._ask_for_huge_pages()
            return found
        if self.spec.kind == "hnsw":
            self._set_ef_search(max(self.spec.params["ef_search"], k))
        distances, labels = one_query(self.index, query, min(k, ntotal))
        # An approximate index may find fewer than k. FAISS's heap_reorder moves the found
        # ones to the front and pads with -1, so the last label says whether all were found:
        # one item read instead of a min() over the labels (3-5 us on caches cold after FAISS).
        if labels[0, -1] >= 0:
            return SearchResult(labels[0], distances[0])
        keep = labels[0] >= 0
        return SearchResult(labels[0][keep], distances[0][keep])

    def _set_ef_search(self, ef: int) -> None:
        # The SWIG downcast costs tens of microseconds, a fifth of an HNSW query: set the
        # parameter only when it changes (k above ef_search), on the index it was read from.
        if self._ef_search != (self.index, ef):
            faiss.downcast_index(self.index.index).hnsw.efSearch = ef
            self._ef_search = (self.index, ef)

    def _search_allowed(self, query: np.ndarray, k: int, allowed: np.ndarray) -> SearchResult:
        if len(allowed) == 0:
            return SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
        allowed = np.asarray(allowed, dtype=np.int64)
        if self.spec.kind in IVF_KINDS:
            # Probing every list with a selector is an exact scan of the allowed vectors.
            ivf = faiss.extract_index_ivf(self.index)
            wanted = sorted_unique(allowed)
            found, best = exact_selected(
                lambda n, sel: one_query(self.index, query, n, params=faiss.SearchParametersIVF(
                    sel=sel, nprobe=ivf.nlist)),
                wanted, int(wanted[-1]) + 1, k)
            return SearchResult(found, best)
        ids = self.ids()
        positions = self._positions(allowed)
        if len(positions) == 0:
            return SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
        matrix = self.matrix()
        if filtered_strategy(self.spec.kind, allowed=len(positions), total=len(ids)) == "gather":
            scored = gathered_scores(matrix, positions, query)
            best = top_k(scored, k)
            return SearchResult(ids[positions[best]], scored[best])
        # "bitmap": FAISS's flat scan of the stored rows (flat, or HNSW's storage) on one thread.
        storage = self._flat_storage()
        rows, best = exact_selected(
            lambda n, sel: one_query(storage, query, n, params=faiss.SearchParameters(sel=sel)),
            positions, len(ids), k)
        self._ask_for_huge_pages()
        return SearchResult(ids[rows], best)

    def _positions(self, allowed: np.ndarray) -> np.ndarray:
        """Sorted, unique positions of the allowed ids that the index holds."""
        ids = self.ids()
        wanted = sorted_unique(allowed)
        positions = np.searchsorted(ids, wanted)
        inside = positions < len(ids)
        positions, wanted = positions[inside], wanted[inside]
        return positions[ids[positions] == wanted]

    # ----------------------------------------------------------------- persistence

    def serialize(self) -> bytes:
        return bytes(faiss.serialize_index(self.index))

    def write_to(self, write: Callable[[bytes], None]) -> None:
        """Hand the index file's bytes to ``write``, in order, as FAISS writes them (the
        bytes :meth:`serialize` returns, without holding them all: serializing copied them
        through a growing buffer, a numpy array and bytes, 3.2 s of a 100K flush).

        An exception ``write`` raises is raised here as it was (FAISS would make it a
        RuntimeError)."""
        failed: list[BaseException] = []

        def callback(data: bytes) -> None:
            try:
                write(data)
            except BaseException as exc:
                failed.append(exc)
                raise

        try:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(callback))
        except Exception:
            if failed:
                raise failed[0] from None
            raise
        if failed:  # FAISS went on after the callback failed: never count the file as written
            raise failed[0]

    @classmethod
    def deserialize(
        cls, data: bytes, spec: IndexSpec, dimension: int, *, generation: int, max_vector_id: int,
        expected_count: int,
    ) -> VectorIndex:
        """Only call on bytes whose sha256 was verified: FAISS may crash on corrupt input."""
        _check_layout(lambda offset, count: data[offset:offset + count], len(data), spec,
                      dimension, expected_count)
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls._checked(index, spec, dimension, generation=generation,
                            max_vector_id=max_vector_id, expected_count=expected_count)

    @classmethod
    def read(
        cls, fd: int, spec: IndexSpec, dimension: int, *, generation: int, max_vector_id: int,
        expected_count: int, mmap: bool = False,
    ) -> VectorIndex:
        """Read the index file open as ``fd``. Only call on a file whose sha256 was verified
        through this same descriptor: FAISS may crash on corrupt input.

        FAISS reads by path; ``/proc/self/fd/N`` names the very file (inode) that was hashed,
        even if the path was replaced since. FAISS reads straight from the page cache into
        its storage, one copy (bytes + ``deserialize_index`` made two, through a temporary
        vector). With ``mmap`` the vectors of flat storage (flat, HNSW, the IVF quantizer)
        stay in the file's pages, shared by every process that maps the file; the map is
        read-only, and it outlives a later replacement of the path (the inode stays).
        """
        # Every length FAISS will allocate for must fit in the file: a hash-consistent file
        # with one patched length field made FAISS reserve gigabytes before it failed.
        _check_layout(lambda offset, count: os.pread(fd, count, offset), os.fstat(fd).st_size,
                      spec, dimension, expected_count)
        proc_path = f"/proc/self/fd/{fd}"
        if os.path.exists(proc_path):
            flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
            index = faiss.read_index(proc_path, flags)
        else:  # no /proc (macOS): read the descriptor's bytes; no mapping
            mmap = False
            size = os.fstat(fd).st_size
            data = bytearray()
            while len(data) < size and (block := os.pread(fd, size - len(data), len(data))):
                data += block
            index = faiss.deserialize_index(np.frombuffer(bytes(data), dtype=np.uint8))
        loaded = cls._checked(index, spec, dimension, generation=generation,
                              max_vector_id=max_vector_id, expected_count=expected_count)
        loaded.mapped = mmap
        return loaded

    @classmethod
    def _checked(
        cls, index: faiss.Index, spec: IndexSpec, dimension: int, *, generation: int,
        max_vector_id: int, expected_count: int,
    ) -> VectorIndex:
        """Wrap a freshly read index after checking it against what the manifest says."""
        if index.d != dimension or index.ntotal != expected_count:
            raise IndexCorrupt(
                f"index holds {index.ntotal} vectors of dimension {index.d}; the manifest says "
                f"{expected_count} of dimension {dimension}"
            )
        loaded = cls(spec, dimension, index, generation=generation, max_vector_id=max_vector_id)
        loaded.dirty = False
        ids = loaded.ids()  # raises IndexCorrupt if the id map is out of order
        if len(ids) and (int(ids[0]) < 1 or int(ids[-1]) > max_vector_id):
            raise IndexCorrupt(
                f"index ids run from {int(ids[0])} to {int(ids[-1])}; the manifest says 1 to "
                f"{max_vector_id}"
            )
        if spec.kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = spec.params["ef_search"]
        if spec.kind in IVF_KINDS:
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = spec.params["nprobe"]
            ivf.parallel_mode = IVF_PARALLEL_MODE  # not part of the file format
        return loaded


def _check_layout(
    read_at: Callable[[int, int], bytes], size: int, spec: IndexSpec, dimension: int,
    count: int,
) -> None:
    nlist = spec.params.get("nlist") if spec.kind in IVF_KINDS else None
    pq_m = spec.params.get("m") if spec.kind == "ivfpq" else None
    check_index_file(read_at, size, kind=spec.kind, dimension=dimension, count=count,
                     nlist=nlist, pq_m=pq_m)

