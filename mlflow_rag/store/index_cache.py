"""The index lifecycle: one FAISS index per model, derived from SQLite (the source of truth).

An :class:`IndexCache` is handed a store's root and its backend (the database). It loads an
index file only if it checks out against the manifest (store id, dimension, generation, the
one file name allowed, size, sha256 or block hashes, FAISS's layout, a spot check of vectors
against SQLite), brings it up to the database's generation by replaying the deletion log and
the vectors added since, rebuilds it from SQLite when anything is wrong (and records why in
``events``), and persists indexes and manifest atomically. Callers hold the store's locks and
the read transaction each method names; this module takes none itself.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from mlflow_rag.index.choose import COMPRESSED_KINDS, IVF_KINDS, IndexSpec, choose_index
from mlflow_rag.index.compressed import as_coded
from mlflow_rag.index.side_vectors import SideVectors, carried
from mlflow_rag.index.vector_index import Blocks, VectorIndex, sorted_unique
from mlflow_rag.store import layout, side_files
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.files import (
    HASH_BLOCK_BYTES,
    FileStamp,
    atomic_write_stream,
    block_sha256s_fd,
    sha256_fd,
)
from mlflow_rag.store.filter_masks import VectorKeys
from mlflow_rag.store.hit_keys import HitKeys, MapBuild
from mlflow_rag.store.manifest import Manifest, ModelEntry, read_manifest, write_manifest
from mlflow_rag.store.schema import SCHEMA_VERSION
from mlflow_rag.types import ModelInfo

log = logging.getLogger("mlflow_rag.store")
# Bytes of float32 vectors a build reads from the database at once (43,690 x 384-d; the
# rows fetched and joined hold about twice that while a block is read).
BUILD_BLOCK_BYTES = 64 * 1024 * 1024
# first_differing_vector on a compressed index: the relative float32 rounding allowed between
# the index's score of a vector's code and the same code decoded (sums of 8-bit PQ tables).
COMPRESSED_SELF_TOLERANCE = 1e-5


class IndexCache:
    """The in-memory indexes of one open store, with what the files on disk reflect."""

    def __init__(
        self, root: Path, backend: Backend, *, store_id: str, mmap: bool,
        verified_files: Mapping[str, FileStamp] | None = None,
    ) -> None:
        self.root = root
        self.backend = backend
        self.store_id = store_id
        self.mmap = mmap
        # Files whose sha256 verify_bundle checked during this open, by identity (see
        # FileStamp): loading such an index does not hash it a second time.
        self.verified_files: dict[str, FileStamp] = dict(verified_files or {})
        self.indexes: dict[str, VectorIndex] = {}
        # Committed writes' vectors not yet in their flat index (see advance): per model,
        # (vector ids, matrix) per write, added in one call when the index is next used.
        self.pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.keys: dict[str, tuple[int, VectorKeys]] = {}  # per model: (generation, keys)
        self.hit_maps: dict[str, HitKeys | None] = {}  # per model; None: join (see hit_keys)
        self.map_builds: dict[str, MapBuild] = {}  # per model: its map being built off-request
        self.persisted: dict[str, int] = {}  # model -> generation of the file on disk
        # Per compressed model: its float16 side file mapped, or None (checked and not
        # usable: the re-rank reads the database, and the next persist writes the file).
        self.sides: dict[str, SideVectors | None] = {}
        self.events: list[str] = []  # rebuilds and repairs, for reports and tests
        self.manifest = read_manifest(root)

    def clear(self) -> None:
        for name in list(self.map_builds):
            self._cancel_build(name)
        self.indexes.clear()
        self.pending.clear()
        self.keys.clear()
        self.hit_maps.clear()
        self.sides.clear()

    def forget(self, name: str) -> None:
        """Drop a model's in-memory index: it is loaded or rebuilt on next use."""
        self.indexes.pop(name, None)
        self.pending.pop(name, None)
        self.hit_maps.pop(name, None)
        self.sides.pop(name, None)
        self._cancel_build(name)

    def rebuilt_for_new_space(self, info: ModelInfo, generation: int) -> None:
        """A refitted model (another space, maybe another dimension): build its index from
        SQLite now; the file on disk is of the old space, and replacing it is expected, not a
        repair worth a warning. Call inside a read transaction."""
        self.keys.pop(info.name, None)
        self.hit_maps.pop(info.name, None)
        self.sides[info.name] = None  # of the old space: the next persist writes it anew
        self._cancel_build(info.name)
        self.build(info, generation, "")
        self.persisted.pop(info.name, None)

    def index_for(self, info: ModelInfo, generation: int) -> VectorIndex:
        """The model's index, synced to ``generation``. Call inside a read transaction."""
        self._add_pending(info.name)
        index = self.indexes.get(info.name)
        if index is not None and index.dimension != info.dimension:
            index = None  # the model was refitted into another space (by another process)
        if index is None:
            index = self._load(info, generation)
            self.indexes[info.name] = index
        if index.generation != generation:
            index = self.sync(info, index, generation)
        if index.spec.kind in COMPRESSED_KINDS and index.side is None:
            index.side = self._side(info, index)
        return index

    def _side(self, info: ModelInfo, index: VectorIndex) -> SideVectors | None:
        """The model's side file, checked once per process and file (inside a read
        transaction). Rows are immutable per vector id, so a file older than the index
        still holds right rows; ids it lacks are read from the database."""
        if info.name in self.sides:
            side = self.sides[info.name]
            return side if side is not None and side.dimension == info.dimension else None
        entry = self.manifest.models.get(info.name) if self.manifest else None
        side, reason = (None, "no side file recorded") if entry is None else side_files.load(
            self.root, info, entry, self.backend, index.ids(), verified_files=self.verified_files)
        if side is None and entry is not None and entry.vectors_file:
            self.events.append(f"side file of {info.name!r} not used: {reason}")
            log.warning("not using the side file of %s in %s (re-ranking reads the database "
                        "until a flush writes it again): %s", info.name, self.root, reason)
        self.sides[info.name] = side
        return side

    def build(self, info: ModelInfo, generation: int, reason: str) -> VectorIndex:
        """The model's index from SQLite, read a block at a time (see ``vector_blocks``).
        Call inside a read transaction: every block comes from the same snapshot."""
        count = self.backend.vector_count(info.name)
        spec = choose_index(info.index_type, count, info.dimension, info.index_params)
        if reason:
            self.events.append(f"rebuilt index for {info.name!r}: {reason}")
            log.warning("rebuilding the %s index of %s: %s", info.name, self.root, reason)
        index = VectorIndex.build_from_blocks(
            spec, info.dimension, vector_blocks(self.backend, info.name, info.dimension), count,
            generation=generation)
        self.indexes[info.name] = index
        self.pending.pop(info.name, None)  # SQLite's rows include them
        return index

    def _add_pending(self, name: str) -> None:
        """Add the vectors :meth:`advance` deferred to their index, in one call."""
        blocks = self.pending.pop(name, None)
        if not blocks:
            return
        ids = np.concatenate([block[0] for block in blocks])
        matrix = np.concatenate([block[1] for block in blocks]) if len(blocks) > 1 else blocks[0][1]
        del blocks  # the writes' own arrays go before FAISS copies the matrix
        self.indexes[name].add(ids, matrix)

    def _load(self, info: ModelInfo, generation: int) -> VectorIndex:
        """Load the index file if it checks out against the manifest, else rebuild."""
        entry = self.manifest.models.get(info.name) if self.manifest else None
        if entry is None:
            return self.build(info, generation, "")  # first index of this model
        count = self.backend.vector_count(info.name)
        reason = self._entry_problem(info, entry, generation, count)
        if reason:
            return self.build(info, generation, reason)
        spec = IndexSpec(entry.index_type, entry.index_params)
        # One open file for the size, the hash and FAISS's read: a writer replacing the path
        # meanwhile cannot slip unverified bytes in (the descriptor keeps the hashed inode).
        with open(layout.index_path(self.root, info), "rb") as handle:
            reason = self._file_problem(entry, handle.fileno())
            if reason:
                return self.build(info, generation, reason)
            try:
                index = VectorIndex.read(
                    handle.fileno(), spec, info.dimension, generation=entry.generation,
                    max_vector_id=entry.max_vector_id, expected_count=entry.vector_count,
                    mmap=self.mmap,
                )
            except Exception as exc:  # a hash-verified file that FAISS still refuses
                return self.build(info, generation, f"{entry.index_file} unreadable: {exc}")
        self.persisted[info.name] = entry.generation
        if entry.generation != generation:  # rows were written since the file was persisted
            index = self.sync(info, index, generation)
        if index.ntotal != count:  # same read transaction: the count cannot have moved
            return self.build(info, generation, "index and SQLite disagree on the vector count")
        differs = first_differing_vector(index, self.backend, info)
        if differs is not None:
            return self.build(
                info, generation,
                f"{entry.index_file}: vector {differs} differs from SQLite (a foreign index?)",
            )
        return index

    def _file_problem(self, entry: ModelEntry, fd: int) -> str:
        """Why the open index file must not be handed to FAISS (size or sha256), or ""."""
        stamp = FileStamp.of(fd, entry.sha256)
        if stamp.size != entry.bytes:
            return f"{entry.index_file} has {stamp.size} bytes, expected {entry.bytes}"
        if self.verified_files.get(entry.index_file) == stamp:
            return ""  # verify_bundle hashed this very file (same inode, size, times) just now
        if entry.block_sha256 and entry.block_bytes > 0:
            blocks = block_sha256s_fd(fd, stamp.size, block=entry.block_bytes)
            if blocks != entry.block_sha256:
                return f"{entry.index_file} does not match its sha256 (block hashes)"
        elif sha256_fd(fd) != entry.sha256:
            return f"{entry.index_file} does not match its sha256"
        return ""

    def _entry_problem(
        self, info: ModelInfo, entry: ModelEntry, generation: int, count: int
    ) -> str:
        assert self.manifest is not None
        if self.manifest.store_id != self.store_id:
            return "the manifest belongs to another store"
        if entry.dimension != info.dimension:
            return f"index dimension {entry.dimension} != model dimension {info.dimension}"
        if entry.generation > generation:
            return f"index generation {entry.generation} is ahead of the database ({generation})"
        if entry.index_file != layout.index_relative(info):
            # Never opened: the manifest may only name the file this store writes.
            return (f"the manifest names the index file {entry.index_file!r}, not "
                    f"{layout.index_relative(info)}")
        if not layout.index_path(self.root, info).is_file():
            return f"{entry.index_file} is missing"
        wanted = choose_index(info.index_type, count, info.dimension, info.index_params)
        if wanted.kind != entry.index_type:
            return f"index type changes from {entry.index_type} to {wanted.kind}"
        if wanted.kind not in IVF_KINDS and dict(wanted.params) != dict(entry.index_params):
            return "index parameters changed"
        return ""

    def sync(self, info: ModelInfo, index: VectorIndex, generation: int) -> VectorIndex:
        """Replay what changed since the index's generation (inside a read transaction)."""
        deleted = self.backend.deletions_since(info.name, index.generation)
        if len(deleted) and not index.remove(deleted):
            return self.build(info, generation, "")
        for ids, vectors in vector_blocks(self.backend, info.name, info.dimension,
                                          after=index.max_vector_id)():
            index.add(ids, vectors)
        index.generation = generation
        return index

    def persist(self, models_at: Callable[[int], Mapping[str, ModelInfo]]) -> None:
        """Bring every model's index up to date and persist it atomically, then the manifest.

        ``models_at(generation)``: the store's models as of that generation. The caller holds
        the store's lock file (every writer of these files does) and its thread lock."""
        layout.remove_stale_temp_files(self.root)
        on_disk = read_manifest(self.root)
        manifest = on_disk or Manifest(self.store_id, SCHEMA_VERSION)
        if manifest.store_id != self.store_id:
            manifest = Manifest(self.store_id, SCHEMA_VERSION)
        before = copy.deepcopy(manifest.to_dict()) if manifest is on_disk else None
        self.manifest = manifest
        written: list[VectorIndex] = []
        with self.backend.read_transaction():
            generation = self.backend.generation()
            models = dict(models_at(generation))
            current = {name: self.index_for(info, generation)
                       for name, info in models.items()}
            for name, index in current.items():
                info = models[name]
                wanted = choose_index(info.index_type, index.ntotal, info.dimension,
                                      info.index_params)
                if wanted.kind != index.spec.kind:  # grown past what "auto" keeps exact
                    current[name] = self.build(info, generation, "")
        for name, index in current.items():
            info = models[name]
            entry = manifest.models.get(name)
            file_ok = (
                entry is not None and self.persisted.get(name) is not None
                and entry.index_type == index.spec.kind
                and entry.index_file == layout.index_relative(info)
                and layout.index_path(self.root, info).is_file()
            )
            if file_ok and not index.dirty:
                assert entry is not None
                entry.generation = generation
                continue
            relative = layout.index_relative(info)
            # FAISS writes the file through one buffer that is hashed on its way to disk.
            stored = atomic_write_stream(layout.index_path(self.root, info), index.write_to,
                                         block=HASH_BLOCK_BYTES)
            manifest.models[name] = ModelEntry(
                slug=info.slug, dimension=info.dimension, embedder=info.embedder,
                model_version=info.model_version, index_type=index.spec.kind,
                index_params=dict(index.spec.params), generation=generation,
                vector_count=index.ntotal, max_vector_id=index.max_vector_id,
                index_file=relative, sha256=stored.sha256, bytes=stored.size,
                block_sha256=stored.block_sha256, block_bytes=HASH_BLOCK_BYTES,
            )
            written.append(index)
        for name, index in current.items():
            if index.spec.kind not in COMPRESSED_KINDS:
                side_files.clear(self.root, models[name], manifest.models.get(name))
            elif index in written or self.sides.get(name) is None:
                self._write_side(models[name], manifest.models[name])
        for name in list(manifest.models):
            if name not in current:
                del manifest.models[name]
        manifest.generation = generation
        manifest.schema_version = SCHEMA_VERSION
        # An unchanged store writes nothing (close() must not fail on a full disk), and an
        # index counts as persisted only once the manifest that vouches for it is written.
        if manifest.to_dict() != before:
            write_manifest(self.root, manifest)
        for index in written:
            index.dirty = False
        for name in current:
            self.persisted[name] = generation

    def _write_side(self, info: ModelInfo, entry: ModelEntry) -> None:
        """Write the model's side file in one snapshot: the checked file it replaces, its
        deleted rows erased, plus the vectors added since from the database; without one, all
        of them from the database. A block at a time either way."""
        with self.backend.read_transaction():
            generation = self.backend.generation()
            blocks = vector_blocks(self.backend, info.name, info.dimension)
            old = self.sides.get(info.name)
            if old is not None and old.dimension == info.dimension and len(old.rows):
                blocks = carried(old, self.backend.deletions_since(info.name, old.generation),
                                 vector_blocks(self.backend, info.name, info.dimension,
                                               after=old.max_vector_id))
            side = side_files.write(self.root, info, entry, blocks, generation=generation)
        self.sides[info.name] = side
        index = self.indexes.get(info.name)
        if index is not None:
            index.side = side

    def advance(
        self, generation: int, added: Mapping[str, tuple[list[int], list[np.ndarray]]],
        fresh: set[str], models: Mapping[str, ModelInfo],
    ) -> None:
        """Add a committed write's vectors to the in-memory indexes it extends, so that flush
        need not read them back from SQLite. Only an index that reflected the store exactly
        before this write (its generation is the one before) or a model this write started
        qualifies; any other index catches up from SQLite in :meth:`sync` as before."""
        for name, (ids, blocks) in added.items():
            vector_ids = np.asarray(ids, dtype=np.int64)
            matrix = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
            index = self.indexes.get(name)
            if index is not None and index.generation == generation - 1:
                if self._outgrown(index, models[name], len(vector_ids)):
                    # Its next use builds the kind the size now calls for, from the database
                    # in blocks: growing this one would hold every vector meanwhile (15 GB
                    # of a flat index at 10M x 384, written in 5,000-chunk transactions).
                    self.forget(name)
                elif index.spec.kind == "flat":
                    # Deferred to the index's next use (a search, a flush): FAISS grows its
                    # storage by reallocating and copying it, so one add per write batch
                    # cost 1.4 s of a 100K-chunk ingest, one add per flush a single copy.
                    self.pending.setdefault(name, []).append((vector_ids, matrix))
                else:
                    index.add(vector_ids, matrix)
                index.generation = generation
            elif index is None and name in fresh:
                info = models[name]
                spec = choose_index(info.index_type, len(ids), info.dimension, info.index_params)
                if spec.kind in IVF_KINDS:
                    continue  # trained at flush on all the vectors, not on this first batch
                self.indexes[name] = VectorIndex.build(
                    spec, info.dimension, vector_ids, matrix, generation=generation
                )

    def _outgrown(self, index: VectorIndex, info: ModelInfo, adding: int) -> bool:
        """Whether ``adding`` more vectors take the model past what its index's kind is
        chosen for (``auto``: flat up to 250K, then IVF, then IVF-PQ)."""
        total = index.ntotal + adding + sum(len(ids) for ids, _ in self.pending.get(info.name, ()))
        wanted = choose_index(info.index_type, total, info.dimension, info.index_params)
        return wanted.kind != index.spec.kind

    def vector_keys(self, model_name: str, generation: int) -> VectorKeys:
        """Which chunk and document each vector belongs to, as of ``generation`` (cached)."""
        cached = self.keys.get(model_name)
        if cached is None or cached[0] != generation:
            cached = (generation, VectorKeys(*self.backend.vector_keys(model_name)))
            self.keys[model_name] = cached
        return cached[1]

    def hit_keys(self, model_name: str, generation: int, *, now: bool = False) -> HitKeys | None:
        """The model's vector id -> chunk row map at ``generation`` (inside a read
        transaction), or None: hydrate by joining from the vector id. A model's first search
        in this process joins and only notes the model (a one-shot CLI search would pay ~0.2
        s per 100K vectors to build a map it uses once); the second starts building the map
        off the request path (:class:`MapBuild`: 4.3 s at 1M) and joins, as do the searches
        until the map is handed over; later generations replay into it like the index. A
        stale map (renumbered rows) is rebuilt the same way. ``now``: build it on this call
        (a server loading its indexes before it answers)."""
        self._take_finished_build(model_name)
        if model_name not in self.hit_maps and not now:
            self.hit_maps[model_name] = None
            return None
        keys = self.hit_maps.get(model_name)
        if keys is not None and not keys.stale:
            if keys.generation == generation:
                return keys
            if keys.generation > generation:
                return None  # built in a snapshot newer than this search's: the next one
            if keys.replay(self.backend, model_name, generation):
                return keys
            keys.stale = True  # half replayed; the backend stopped returning keys
        if now:
            self._cancel_build(model_name)
            keys = HitKeys.load(self.backend, model_name, generation)
            self.hit_maps[model_name] = keys
            return keys
        build = self.map_builds.get(model_name)
        if build is None or (build.failed and build.started_at != generation):
            self._cancel_build(model_name)
            reader = self.backend.row_key_reader()
            if reader is not None:
                self.map_builds[model_name] = MapBuild(reader, model_name, generation)
        return None

    def _take_finished_build(self, model_name: str) -> None:
        build = self.map_builds.get(model_name)
        if build is None:
            return
        if build.lost:  # the process forked meanwhile: start again
            del self.map_builds[model_name]
        elif build.finished.is_set() and not build.failed:
            del self.map_builds[model_name]
            self.hit_maps[model_name] = build.keys

    def _cancel_build(self, model_name: str) -> None:
        build = self.map_builds.pop(model_name, None)
        if build is not None:
            build.cancel()

    def wait_for_hit_maps(self, timeout: float | None = None) -> None:
        """Wait for the maps being built (tests and benchmarks: a search never waits)."""
        for build in list(self.map_builds.values()):
            build.wait(timeout)


def vector_blocks(
    backend: Backend, model_name: str, dimension: int, *, after: int = 0, rows: int = 0
) -> Blocks:
    """A model's vectors with id > ``after`` from the database in blocks of ``rows`` (default:
    ``BUILD_BLOCK_BYTES`` of float32), in id order: what a build, a replay or ``verify`` holds
    at once, whatever the store's size (reading all of them at once took 15 GB at 10M x 384)."""
    rows = rows or max(1, BUILD_BLOCK_BYTES // (4 * dimension))
    start = after

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        after = start
        while True:
            ids, vectors = backend.vectors_after(model_name, after, dimension, limit=rows)
            if len(ids):
                yield ids, vectors
            if len(ids) < rows:
                return
            after = int(ids[-1])

    return blocks


def first_differing_vector(
    index: VectorIndex, backend: Backend, info: ModelInfo, *, samples: int = 16
) -> int | None:
    """Spot-check a loaded index against SQLite: up to ``samples`` vector ids, evenly spread,
    must each score their own SQLite vector at its full length. An index from another store
    whose hash was recomputed, with the same ids, passes every other check. Returns the first
    id that differs, or None. A compressed index scores its codes, not the vector: there the
    score must be that of the vector encoded and decoded by the same index (``as_coded``),
    which a foreign index's code of another vector is not."""
    ids = index.ids()
    if len(ids) == 0:
        return None
    picks = ids[sorted_unique(np.linspace(0, len(ids) - 1, num=min(samples, len(ids))).astype(int))]
    stored = backend.vectors_by_ids(picks.tolist(), info.dimension)
    coded = index.spec.kind in COMPRESSED_KINDS
    relative = COMPRESSED_SELF_TOLERANCE if coded else 0.0
    for vector_id, vector in zip(picks.tolist(), stored, strict=True):
        result = index.search(vector, 1, allowed=np.array([vector_id], dtype=np.int64))
        expected = float(vector @ (as_coded(index.index, vector) if coded else vector))
        if result.ids.tolist() != [vector_id] or abs(
            float(result.scores[0]) - expected
        ) > max(1e-4, relative * abs(expected)):
            return int(vector_id)
    return None
