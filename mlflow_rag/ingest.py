"""The ingestion pipeline: load -> chunk -> embed (with the cache) -> store, then index.

This module sequences the stages; each lives in its own module:

- :mod:`mlflow_rag.ingest_sources`: loading sources, document ids and their checks;
- :mod:`mlflow_rag.ingest_plan`: pure decisions (:func:`document_action`, :func:`chunk_records`,
  which chunker cuts which document);
- :mod:`mlflow_rag.ingest_embed`: embedding in batches, the embedders a store records;
- :mod:`mlflow_rag.refit`: embedders fitted on the corpus (tfidf), fitted and refitted;
- :mod:`mlflow_rag.legacy_import`: chatboti embedding files imported as they are;
- :mod:`mlflow_rag.ingest_report`: seconds per stage and the printed summary.

Nothing is embedded twice: unchanged documents are skipped, and a text a model embedded before
(keyed by sha256 of the text) reuses the stored vector. ``__all__`` is the public API
(docs/python-api.md): the pipeline and the stage functions its users call.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_rag.chunk.base import TokenSpans
from mlflow_rag.chunk.registry import DEFAULT_CHUNK_SIZE, get_chunker
from mlflow_rag.embed.base import Embedder, TokenizedEmbedder, WindowedEmbedder, is_fitted_embedder
from mlflow_rag.embed.registry import DEFAULT_EMBEDDER
from mlflow_rag.errors import ChunkingChangeRefused, InvalidInput, LoaderError, UnknownChoice
from mlflow_rag.ingest_embed import embed_all, make_embedder, recorded_embedders
from mlflow_rag.ingest_plan import (
    chunk_records,
    chunker_names,
    describe_chunking,
    document_action,
    document_metadata,
    report_chunking,
    source_digest,
)
from mlflow_rag.ingest_report import Stages, format_report, persist_index, printable
from mlflow_rag.ingest_sources import (
    check_id_collisions,
    load_sources,
    stored_under_other_ids,
)
from mlflow_rag.ingest_sync import IngestPreview, gone_documents
from mlflow_rag.legacy_import import import_legacy
from mlflow_rag.refit import (
    REFITS,
    fit_if_needed,
    refit,
    refit_corpus_models,
    refit_model,
)
from mlflow_rag.store.access import parse_labels
from mlflow_rag.store.checks import content_hash
from mlflow_rag.store.store import Store
from mlflow_rag.store.tables import utc_now
from mlflow_rag.types import (
    ChunkRecord,
    DocumentRecord,
    IngestReport,
    IngestRun,
    LoadFailure,
    SourceDocument,
    VectorBatch,
)

log = logging.getLogger("mlflow_rag.ingest")

# ingest's default chunk tokenizer: the embedder's own (see ingest's chunk_tokenizer)
EMBEDDER_TOKENIZER = "embedder"
WRITE_BATCH = 256  # documents per transaction: commits often enough to resume after a kill


@dataclass(frozen=True)
class IngestOptions:
    chunker: str | None = None  # None: by source type (csv/legacy -> fields, else recursive)
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    embedder: str = DEFAULT_EMBEDDER
    batch_size: int = 64
    index_type: str | None = None
    index_params: Mapping[str, int] | None = None
    loader_options: Mapping[str, Any] | None = None
    id_prefix: str = ""  # put before every document id: keeps same-named files of two folders apart
    overwrite: bool = False  # documents may replace stored ones of the same id from other files
    # Re-cut documents already in the store with this ingest's chunking even where their text
    # is unchanged, accepting that other models lose the vectors of chunks whose text changes
    # (without it, such an ingest is refused and says how many vectors of which models).
    rechunk: bool = False
    # Embedders fitted on the corpus (tfidf): "auto" refits by REFIT_RULE, "always" refits,
    # "never" only warns when the rule says the fit is stale.
    refit: str = "auto"
    # Another process writing to the store: wait for it (False: StoreBusy at once).
    wait: bool = True
    # Delete stored documents that came from these sources and are gone from them, in the
    # transaction that writes the new and updated ones (ingest_sync.py).
    sync: bool = False
    # Access labels of documents whose record names none (an ``_access`` field wins); none:
    # such documents are visible to everyone (store/access.py).
    access_labels: tuple[str, ...] = ()



def ingest(
    sources: Sequence[str], store: Store, *, options: IngestOptions = IngestOptions(),
    embedder: Embedder | None = None, chunk_tokenizer: TokenSpans | str | None = EMBEDDER_TOKENIZER,
    progress: bool = True,
    on_failure: Callable[[LoadFailure], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> IngestReport:
    """Put ``sources`` into ``store``: documents new, updated or unchanged; vectors embedded
    or taken from the cache; index files persisted at the end.

    Everything after loading runs under the store's writer lock, so two ingests into one
    store take turns (the second waits, or raises StoreBusy with ``options.wait=False``) and
    each plans from what the other committed. ``on_message`` receives notes for the user
    (waiting for another writer, a refit, vectors dropped with changed text); by default
    they are logged.

    ``chunk_tokenizer`` counts chunk sizes: by default the embedder's own tokenizer (when it
    has one), else the given ``token_spans`` function, or None for the approximate tokenizer.
    Every embedder of one store must see the same chunks, so the evaluation harness passes
    one tokenizer to the ingests of all its embedders."""
    if not sources:
        raise InvalidInput("no sources given; name files, folders, globs or URLs")
    if options.index_params and options.index_type is None:
        raise InvalidInput("index parameters need an index type: add --index-type hnsw, ivf or flat")
    if options.batch_size < 1:
        raise InvalidInput(f"batch size must be positive, got {options.batch_size}")
    if options.refit not in REFITS:
        raise UnknownChoice("refit policy", options.refit, REFITS)
    parse_labels(list(options.access_labels))  # a bad label fails before anything loads
    say = on_message or log.warning
    stages = Stages()

    started = time.perf_counter()
    skipped: dict[str, int] = {}
    documents, failures, loaders = load_sources(
        sources, loader_options=options.loader_options, progress=progress,
        id_prefix=options.id_prefix, skipped=skipped,
    )
    stages.add("load", started)
    if not documents:  # said at once, without waiting for another writer's lock
        _report_failures(failures, on_failure)
        raise _nothing_to_ingest(failures)
    return ingest_documents(documents, store, sources=sources, failures=failures,
                            loaders=loaders, options=options, embedder=embedder,
                            chunk_tokenizer=chunk_tokenizer, progress=progress,
                            on_failure=on_failure, say=say, stages=stages, skipped=skipped)


def ingest_documents(
    documents: list[SourceDocument], store: Store, *, sources: Sequence[str],
    failures: list[LoadFailure] | None = None, loaders: Sequence[str] = (),
    options: IngestOptions = IngestOptions(), embedder: Embedder | None = None,
    chunk_tokenizer: TokenSpans | str | None = EMBEDDER_TOKENIZER, progress: bool = True,
    on_failure: Callable[[LoadFailure], None] | None = None,
    say: Callable[[str], None] = log.warning, stages: Stages | None = None,
    skipped: Mapping[str, int] | None = None,
) -> IngestReport:
    """:func:`ingest` of documents loaded already (by :func:`load_sources`, or rows of a
    Spark partition): everything after loading, under the store's writer lock."""
    failures = failures if failures is not None else []
    stages = stages or Stages()

    def busy(holder: str) -> None:
        say(f"another process ({holder}) is writing to {store.root}; waiting for it to finish")

    # What the store holds is read under the lock: an ingest that waited sees what the other
    # writer committed (an id it took, a file it stored) before deciding anything.
    with store.writer_lock(wait=options.wait, on_busy=busy if options.wait else None):
        documents, duplicates = stored_under_other_ids(documents, store)
        failures.extend(duplicates)
        _report_failures(failures, on_failure)
        if not documents:
            raise _nothing_to_ingest(failures)
        if not options.overwrite:
            check_id_collisions(documents, store)
        gone = _gone(store, sources, documents, failures) if options.sync else []
        return _ingest_locked(sources, store, documents, failures, list(loaders),
                              options=options, embedder=embedder,
                              chunk_tokenizer=chunk_tokenizer, progress=progress, say=say,
                              stages=stages, skipped=skipped or {}, gone=gone)


def _gone(
    store: Store, sources: Sequence[str], documents: Sequence[SourceDocument],
    failures: Sequence[LoadFailure],
) -> list[str]:
    return gone_documents(store.catalog.document_paths(), sources, loaded_ids={d.id for d in documents},
                          failed_paths={f.source_path for f in failures})


def preview_ingest(
    sources: Sequence[str], store: Store, *, options: IngestOptions = IngestOptions(),
    embedder: Embedder | None = None,
) -> IngestPreview:
    """What :func:`ingest` with these options would change (new, updated and, with
    ``options.sync``, deleted documents), writing nothing: ``ingest --dry-run``."""
    parse_labels(list(options.access_labels))
    documents, failures, _ = load_sources(
        sources, loader_options=options.loader_options, progress=False,
        id_prefix=options.id_prefix, skipped={},
    )
    documents, duplicates = stored_under_other_ids(documents, store)
    failures.extend(duplicates)
    if not options.overwrite:
        check_id_collisions(documents, store)
    model = embedder or make_embedder(options.embedder, store)
    plan = _chunk_stage(store, documents, failures, model,
                        _chunk_token_spans(model, EMBEDDER_TOKENIZER), options=options,
                        progress=False)
    written = [d.id for d, _, _ in plan.to_write]
    return IngestPreview(
        new=tuple(i for i in written if i not in plan.states),
        updated=tuple(i for i in written if i in plan.states),
        deleted=tuple(_gone(store, sources, documents, failures) if options.sync else ()),
        unchanged=len(plan.unchanged_ids), failed=tuple(f.source_path for f in failures),
    )


def embed_ahead(
    documents: Sequence[SourceDocument], store: Store, *, model: Embedder,
    options: IngestOptions = IngestOptions(),
    chunk_tokenizer: TokenSpans | str | None = EMBEDDER_TOKENIZER,
) -> dict[str, np.ndarray]:
    """The vectors an ingest of ``documents`` would embed (chunks to write whose text the
    store's cache lacks), made without the writer lock: pass them to :func:`ingest_documents`
    as ``EmbeddedAhead(model, vectors)``. The plan is made again under the lock, so a text
    another writer embedded meanwhile is only embedded twice, never stored twice."""
    plan = _chunk_stage(store, documents, [], model, _chunk_token_spans(model, chunk_tokenizer),
                        options=options, progress=False)
    texts = {c.text_hash: c.text for _, _, chunks in plan.to_write for c in chunks}
    if model.name in {info.name for info in store.models()}:
        for text_hash in store.catalog.cached_vectors(model.name, list(texts)):
            texts.pop(text_hash)
    if not texts:
        return {}
    vectors, _, _ = embed_all(model, list(texts.values()), list(texts), batch_size=options.batch_size,
                              progress=False)
    return vectors


def _chunk_token_spans(model: Embedder, chunk_tokenizer: TokenSpans | str | None) -> TokenSpans | None:
    """The tokenizer chunks are sized by (None: the approximate one); see :func:`ingest`."""
    if chunk_tokenizer == EMBEDDER_TOKENIZER:
        return model.token_spans if isinstance(model, TokenizedEmbedder) else None
    if chunk_tokenizer is not None and not callable(chunk_tokenizer):
        raise InvalidInput(f"chunk tokenizer {chunk_tokenizer!r} is neither {EMBEDDER_TOKENIZER!r}, "
                           "a token_spans function nor None (the approximate tokenizer)")
    return chunk_tokenizer if callable(chunk_tokenizer) else None


def _report_failures(
    failures: Sequence[LoadFailure], on_failure: Callable[[LoadFailure], None] | None
) -> None:
    for failure in failures:
        if on_failure:
            on_failure(failure)


def _nothing_to_ingest(failures: Sequence[LoadFailure]) -> LoaderError:
    return LoaderError(printable(
        f"nothing to ingest: {len(failures)} item(s) failed to load"
        + (f"; first: {failures[0].source_path}: {failures[0].reason}" if failures else "")
    ))


Prepared = tuple[SourceDocument, dict[str, Any], tuple[ChunkRecord, ...]]


@dataclass(frozen=True)
class _Chunked:
    """What the chunk stage decided: the documents to write (with their chunks) and those left
    as stored."""

    chunking: dict[str, Any]
    states: Mapping[str, tuple[str | None, Mapping[str, Any]]]
    actions: Mapping[str, str]
    to_write: list[Prepared]
    unchanged_ids: list[str]


def _ingest_locked(
    sources: Sequence[str], store: Store, documents: list[SourceDocument],
    failures: list[LoadFailure], loaders: list[str], *, options: IngestOptions,
    embedder: Embedder | None, chunk_tokenizer: TokenSpans | str | None, progress: bool,
    say: Callable[[str], None], stages: Stages, skipped: Mapping[str, int],
    gone: Sequence[str] = (),
) -> IngestReport:
    started = time.perf_counter()
    # Made under the lock: a tfidf state another ingest saved meanwhile is the one loaded.
    model = embedder or make_embedder(options.embedder, store)
    plan = _chunk_stage(store, documents, failures, model, _chunk_token_spans(model, chunk_tokenizer),
                        options=options, progress=progress)
    to_write = plan.to_write
    stages.add("chunk", started)

    started = time.perf_counter()
    dropped = _vectors_dropped(store, to_write, plan.states, plan.actions, model.name)
    rechunk_losses = dropped.get("rechunk", {})
    if rechunk_losses and not options.rechunk:
        raise _rechunk_refused(plan, rechunk_losses)
    missing = store.catalog.chunks_without_vectors(model.name, plan.unchanged_ids)  # e.g. a new embedder
    replaced_ids = {d.id for d, _, _ in to_write if d.id in plan.states}
    new_texts = [c.text for _, _, chunks in to_write for c in chunks] + [t for _, t, _ in missing]
    if is_fitted_embedder(model):
        fit_if_needed(model, store, new_texts, replaced_ids, policy=options.refit, say=say,
                      progress=progress)
    info = store.ensure_model(
        model.name, model.dimension, embedder=model.name, model_version=model.version,
        index_type=options.index_type, index_params=options.index_params,
    )
    texts = {c.text_hash: c.text for _, _, chunks in to_write for c in chunks}
    texts.update({text_hash: text for _, text, text_hash in missing})
    cached = store.catalog.cached_vectors(info.name, list(texts))
    todo = [h for h in texts if h not in cached]
    stages.add("plan", started)

    started = time.perf_counter()
    vectors, tokens, cost = embed_all(model, [texts[h] for h in todo], todo,
                                      batch_size=options.batch_size, progress=progress)
    vectors.update(cached)
    stages.add("embed", started)

    started = time.perf_counter()
    run = IngestRun(id=uuid.uuid4().hex, started_at=utc_now(), sources=tuple(sources),
                    source_digest=source_digest(documents), embedder=info.name,
                    embedder_version=model.version)
    new, updated = write_documents(store, to_write, vectors=vectors, model_name=info.name,
                                   model_version=model.version, progress=progress,
                                   delete=gone, run=run)
    if gone:
        store.erase_deleted()  # a synced deletion leaves no bytes behind, as `delete` does
    if missing:
        store.add_vectors(info.name, [cid for cid, _, _ in missing],
                          np.stack([vectors[h] for _, _, h in missing]), model_version=model.version)
    stages.add("write", started)
    lost = {**dropped.get("updated", {})}
    for name, count in rechunk_losses.items():
        lost[name] = lost.get(name, 0) + count
    if lost:
        say(f"{_count_text(lost)} of other models went with chunks whose text changed; "
            f"re-ingest with each of those embedders to embed the new chunks")

    index, stats = persist_index(store, info.name, stages)
    return IngestReport(
        sources=tuple(sources), source_digest=source_digest(documents),
        loader=",".join(sorted(set(loaders))), chunker=plan.chunking, embedder=info.name,
        embedder_version=model.version, dimension=info.dimension,
        index=index,
        documents_new=new, documents_updated=updated, documents_unchanged=len(plan.unchanged_ids),
        documents_failed=len(failures), chunks=sum(len(c) for _, _, c in to_write),
        vectors_embedded=len(todo), vectors_cached=len(texts) - len(todo), tokens=tokens,
        cost_usd=cost, seconds=dict(stages.seconds), failures=tuple(failures),
        store_generation=stats.generation, store_bytes=stats.bytes_on_disk, skipped=dict(skipped),
        documents_deleted=len(gone), ingest_id=run.id,
    )


def _chunk_stage(
    store: Store, documents: Sequence[SourceDocument], failures: list[LoadFailure],
    model: Embedder, spans: TokenSpans | None, *, options: IngestOptions, progress: bool,
) -> _Chunked:
    """Choose each document's chunker, decide its action and chunk those that are written.
    Documents that give no chunks are added to ``failures``."""
    from tqdm import tqdm

    states = store.catalog.document_states([d.id for d in documents])
    names = chunker_names(documents, states, options.chunker)
    chunk_size = options.chunk_size
    if chunk_size is None and isinstance(model, WindowedEmbedder) and model.max_tokens:
        # keep default chunks inside the model's window, so nothing is silently truncated
        chunk_size = min(DEFAULT_CHUNK_SIZE, int(model.max_tokens))
    chunkers = {name: get_chunker(name, chunk_size=chunk_size, chunk_overlap=options.chunk_overlap,
                                  token_spans=spans) for name in sorted(set(names.values()))}
    explicit = (options.chunker, options.chunk_size, options.chunk_overlap) != (None, None, None)
    # Decide before chunking: an unchanged document (same text, same chunking) is not chunked
    # again, so re-ingesting an unchanged corpus costs loading and hashing only.
    described = [(d, document_metadata(d, chunkers[names[d.id]].config(),
                                        access_labels=options.access_labels)) for d in documents]
    actions = {
        d.id: document_action(states.get(d.id), content_hash(d.text), meta,
                              rechunk=options.rechunk, keep_chunking=not explicit)
        for d, meta in described
    }
    to_write: list[Prepared] = []
    unchanged_ids: list[str] = []
    for document, meta in tqdm(described, desc="chunk", unit="doc", disable=not progress, leave=False):
        if actions[document.id] == "unchanged":
            unchanged_ids.append(document.id)  # nothing of it is written
            continue
        chunks = chunk_records(document, chunkers[names[document.id]])
        if not chunks:
            failures.append(LoadFailure(document.source_path, f"document {document.id!r} gave no chunks"))
            continue
        to_write.append((document, meta, chunks))
    return _Chunked(chunking=report_chunking(documents, names, chunkers), states=states,
                    actions=actions, to_write=to_write, unchanged_ids=unchanged_ids)


def _rechunk_refused(plan: _Chunked, losses: Mapping[str, int]) -> ChunkingChangeRefused:
    rechunked = [d for d, _, _ in plan.to_write if plan.actions[d.id] == "rechunk"]
    old = next(iter({describe_chunking(plan.states[d.id][1].get("chunking")) for d in rechunked}))
    return ChunkingChangeRefused(
        f"re-chunking {len(rechunked)} unchanged document(s) ({old} -> "
        f"{describe_chunking(plan.chunking)}) would drop {_count_text(losses)} of other models; "
        "pass --rechunk (IngestOptions(rechunk=True)) to re-chunk anyway, or leave out the "
        "chunking options to keep the stored chunks"
    )


def write_documents(
    store: Store, to_write: Sequence[Prepared], *, vectors: Mapping[str, np.ndarray] | None = None,
    model_name: str = "", model_version: str | None = None, skip_unchanged: bool = False,
    progress: bool = False, delete: Sequence[str] = (), run: IngestRun | None = None,
) -> tuple[int, int]:
    """Ingest's write stage: the documents with their chunks and, given ``vectors`` (text hash
    -> vector), ``model_name``'s vectors, WRITE_BATCH documents per transaction. Without
    vectors only documents and chunks are written (the harness's BM25-only stores), looking
    exactly as an ingest writes them. Documents to ``delete`` (a sync's) make it one
    transaction with the writes: a sync lands whole or not at all. Returns how many were new
    and how many updated."""
    from tqdm import tqdm

    def record(d: SourceDocument, meta: dict[str, Any], chunks: tuple[ChunkRecord, ...]) -> DocumentRecord:
        batch = () if vectors is None else (
            VectorBatch(model_name, np.stack([vectors[c.text_hash] for c in chunks]),
                        model_version=model_version),)
        return DocumentRecord(id=d.id, source_path=d.source_path, source_type=d.source_type,
                              content_hash=content_hash(d.text), raw_text=d.text, chunks=chunks,
                              metadata=meta, vectors=batch)

    new = updated = 0
    with tqdm(total=len(to_write), desc="write", unit="doc", disable=not progress,
              leave=False) as bar:
        batch = max(len(to_write), 1) if delete else WRITE_BATCH
        for start in range(0, max(len(to_write), 1 if delete else 0), batch):
            block = to_write[start : start + batch]
            report = store.write([record(*item) for item in block], skip_unchanged=skip_unchanged,
                                 delete=delete, run=run)
            new += report.new
            updated += report.updated
            bar.update(len(block))
    return new, updated


def _count_text(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))
    return f"{total} vector(s) ({parts})"


def _vectors_dropped(
    store: Store, to_write: Sequence[tuple[SourceDocument, Any, tuple[ChunkRecord, ...]]],
    states: Mapping[str, Any], actions: Mapping[str, str], model_name: str,
) -> dict[str, dict[str, int]]:
    """action ("rechunk", "updated") -> model -> how many of its vectors replacing these
    documents removes: vectors of other models on stored chunks whose text no new chunk of
    the document has (the store carries the others over; this model's are re-embedded)."""
    replaced = [d.id for d, _, _ in to_write if d.id in states]
    if not replaced:
        return {}
    kept = {d.id: {c.text_hash for c in chunks} for d, _, chunks in to_write}
    out: dict[str, dict[str, int]] = {}
    for doc_id, text_hash, name in store.catalog.vectors_on_documents(replaced):
        if name != model_name and text_hash not in kept.get(doc_id, ()):
            per_model = out.setdefault(actions[doc_id], {})
            per_model[name] = per_model.get(name, 0) + 1
    return out



__all__ = [
    "EMBEDDER_TOKENIZER",
    "REFITS",
    "IngestOptions",
    "check_id_collisions",
    "chunk_records",
    "chunker_names",
    "describe_chunking",
    "document_action",
    "document_metadata",
    "format_report",
    "import_legacy",
    "ingest",
    "load_sources",
    "preview_ingest",
    "recorded_embedders",
    "refit",
    "refit_corpus_models",
    "refit_model",
    "report_chunking",
    "source_digest",
    "stored_under_other_ids",
    "write_documents",
]
