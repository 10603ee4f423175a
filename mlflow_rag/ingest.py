"""The ingestion pipeline: load -> chunk -> embed (with the cache) -> store, then index.

Decisions are pure functions (:func:`document_action`, :func:`chunk_records`); the pipeline
only sequences them. Nothing is embedded twice: unchanged documents are skipped, and a text a
model embedded before (keyed by sha256 of the text) reuses the stored vector.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.chunk.base import Chunker
from mlflow_rag.chunk.registry import DEFAULT_CHUNK_SIZE, default_chunker_for, get_chunker
from mlflow_rag.chunk.sections import section_metadata
from mlflow_rag.embed.base import Embedder
from mlflow_rag.errors import InvalidInput, LoaderError, RagError
from mlflow_rag.store.store import PII_KEY, Store, clean_vectors, content_hash
from mlflow_rag.types import (
    ChunkRecord,
    DocumentRecord,
    IngestReport,
    LoadFailure,
    SourceDocument,
    VectorBatch,
)

WRITE_BATCH = 256  # documents per transaction: commits often enough to resume after a kill


@dataclass
class _Stage:
    """Seconds spent per stage, for the report."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


# --------------------------------------------------------------------------- pure decisions


def document_action(
    existing: tuple[str | None, Mapping[str, Any]] | None, new_hash: str,
    new_metadata: Mapping[str, Any],
) -> str:
    """"new", "unchanged" or "updated" for a document, from its stored hash and metadata."""
    if existing is None:
        return "new"
    old_hash, old_metadata = existing
    return "unchanged" if old_hash == new_hash and dict(old_metadata) == dict(new_metadata) else "updated"


def chunk_id(document_id: str, chunk_index: int) -> str:
    """Readable and unique: the suffix after the last '#' is always the chunk index."""
    return f"{document_id}#{chunk_index}"


def document_metadata(document: SourceDocument, chunking: Mapping[str, Any]) -> dict[str, Any]:
    """What the store keeps as documents.metadata: the loader's fields, how it was chunked,
    and PII under a key that search output hides unless asked for."""
    metadata = dict(document.metadata)
    metadata["chunking"] = dict(chunking)
    if document.pii:
        metadata[PII_KEY] = dict(document.pii)
    return metadata


def chunk_records(document: SourceDocument, chunker: Chunker) -> tuple[ChunkRecord, ...]:
    """Chunk a document. Only the ``fields`` chunker treats sections as chunk boundaries; for
    the others sections only annotate chunks (PDF pages), so a BEIR title stays with its text.
    """
    source = document if chunker.name == "fields" else replace(document, sections=())
    spans = chunker.chunk(source)
    records = []
    for span in spans:
        metadata = dict(span.metadata)
        if document.sections and chunker.name != "fields":
            metadata.update(section_metadata(span, document.sections))
        records.append(
            ChunkRecord(
                id=chunk_id(document.id, span.chunk_index), chunk_index=span.chunk_index,
                chunk_type=span.chunk_type, text=span.text, start_char=span.start_char,
                end_char=span.end_char, token_count=span.token_count,
                text_hash=content_hash(span.text), metadata=metadata,
            )
        )
    return tuple(records)


# Generic ingest options -> each loader's own option names. Options a loader has no use for
# are not passed to it; an option no source could use is an error (see load_sources).
_LOADER_OPTION_NAMES: dict[str, dict[str, str]] = {
    "csv": {"id_column": "id_column", "text_columns": "text_columns", "pii_columns": "pii_columns"},
    "jsonl": {"id_column": "id_field", "text_columns": "text_fields", "pii_columns": "pii_fields"},
    "web": {"allow_private": "allow_private"},
}


def loader_options_for(loader: str, options: Mapping[str, Any]) -> dict[str, Any]:
    names = _LOADER_OPTION_NAMES.get(loader, {})
    return {names[k]: v for k, v in options.items() if k in names}


# A lone UTF-16 surrogate (a JSON "\ud800" escape, a broken PDF font map, a file name that is
# not UTF-8) is a str Python holds but cannot encode; an integer beyond 64 bits or a NaN cannot
# be stored either. Any of them would fail the whole write batch, so each is found first.
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = (-(2**63), 2**63 - 1)


def _unstorable(value: Any, *, depth: int = 0) -> tuple[str, int | None] | None:
    """(what cannot be stored, its character offset in a str) of the first such thing in a
    str or nested JSON value, or None."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (f"a lone surrogate U+{ord(found.group()):04X}", found.start()) if found else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return None
        return f"an integer of {value.bit_length()} bits (at most 64 can be stored)", None
    if isinstance(value, float):
        return None if math.isfinite(value) else (f"the number {value!r}", None)
    if depth > 500:  # also keeps this walk far from Python's recursion limit
        return "values nested more than 500 deep", None
    if isinstance(value, Mapping):
        items: Iterable[Any] = (part for pair in value.items() for part in pair)
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return None
    for item in items:
        hit = _unstorable(item, depth=depth + 1)
        if hit is not None:
            return hit
    return None


def document_problem(document: SourceDocument) -> str | None:
    """Why a loaded document cannot be stored as it is, or None.

    Ids with NUL cannot be typed, shown or deleted from a shell; lone surrogates are not
    valid Unicode and, like integers beyond 64 bits, cannot be written. Each costs this
    document alone, never its batch.
    """
    if "\0" in document.id:
        return (f"document id {document.id!r} contains a NUL character; such an id could "
                "not be shown or deleted from the command line")
    parts: list[tuple[str, Any]] = [
        ("id", document.id), ("source path", document.source_path), ("text", document.text),
        ("section names", [s.name for s in document.sections]),
        ("section metadata", [s.metadata for s in document.sections]),
        ("metadata", document.metadata), ("PII fields", document.pii),
    ]
    for where, value in parts:
        hit = _unstorable(value)
        if hit is not None:
            what, offset = hit
            at = f" at character {offset}" if offset is not None and where in ("text", "id") else ""
            why = ("which is not valid Unicode (a bad \\u escape, font map or non-UTF-8 file "
                   "name?)" if what.startswith("a lone") else "which cannot be stored")
            return f"document {document.id!r} has {what} in its {where}{at}, {why}; not loaded"
    return None


def _printable(text: str) -> str:
    """``text`` with lone surrogates escaped, so a report line can always be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def source_digest(documents: Iterable[SourceDocument]) -> str:
    """sha256 over (id, content hash) of every loaded document, order-independent."""
    digest = hashlib.sha256()
    for doc_id, text_hash in sorted((d.id, content_hash(d.text)) for d in documents):
        digest.update(f"{doc_id}\0{text_hash}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class IngestOptions:
    chunker: str | None = None  # None: by source type (csv/legacy -> fields, else recursive)
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    embedder: str = "minilm"
    batch_size: int = 64
    index_type: str | None = None
    index_params: Mapping[str, int] | None = None
    loader_options: Mapping[str, Any] | None = None


def load_sources(
    sources: Sequence[str], *, loader_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[list[SourceDocument], list[LoadFailure], list[str]]:
    """Load every source; bad items are reported, the rest land. Returns loader names too."""
    from tqdm import tqdm

    from mlflow_rag.load.registry import choose_loader, make_loader

    documents: list[SourceDocument] = []
    failures: list[LoadFailure] = []
    loaders: list[str] = []
    seen: dict[str, str] = {}
    generic = dict(loader_options or {})
    kinds = [choose_loader(source) for source in sources]
    used = {k for kind in kinds for k in generic if k in _LOADER_OPTION_NAMES.get(kind, {})}
    if set(generic) - used:
        unused = sorted(set(generic) - used)
        raise InvalidInput(f"option(s) {unused} do not apply to these sources ({sorted(set(kinds))})")
    for source, kind in zip(sources, kinds, strict=True):
        loader = make_loader(kind, options=loader_options_for(kind, generic))
        loaders.append(loader.name)
        for item in tqdm(loader.load(source), desc=f"load {Path(source).name or source}",
                         unit="doc", disable=not progress, leave=False):
            if isinstance(item, LoadFailure):
                failures.append(item)
            elif (problem := document_problem(item)) is not None:
                failures.append(LoadFailure(_printable(item.source_path), problem))
            elif item.id in seen:
                failures.append(LoadFailure(item.source_path,
                                            f"document id {item.id!r} also comes from {seen[item.id]}"))
            elif not item.text.strip():
                failures.append(LoadFailure(item.source_path, f"document {item.id!r} has no text"))
            else:
                seen[item.id] = item.source_path
                documents.append(item)
    return documents, failures, loaders


def ingest(
    sources: Sequence[str], store: Store, *, options: IngestOptions = IngestOptions(),
    embedder: Embedder | None = None, progress: bool = True,
    on_failure: Callable[[LoadFailure], None] | None = None,
) -> IngestReport:
    """Put ``sources`` into ``store``: documents new, updated or unchanged; vectors embedded
    or taken from the cache; index files persisted at the end."""
    from tqdm import tqdm

    if not sources:
        raise InvalidInput("no sources given; name files, folders, globs or URLs")
    if options.index_params and options.index_type is None:
        raise InvalidInput("index parameters need an index type: add --index-type hnsw, ivf or flat")
    if options.batch_size < 1:
        raise InvalidInput(f"batch size must be positive, got {options.batch_size}")
    stages = _Stage()

    started = time.perf_counter()
    documents, failures, loaders = load_sources(
        sources, loader_options=options.loader_options, progress=progress
    )
    for failure in failures:
        if on_failure:
            on_failure(failure)
    stages.add("load", started)
    if not documents:
        raise LoaderError(_printable(
            f"nothing to ingest: {len(failures)} item(s) failed to load"
            + (f"; first: {failures[0].source_path}: {failures[0].reason}" if failures else "")
        ))

    started = time.perf_counter()
    model = embedder or _make_embedder(options.embedder, store)
    spans = getattr(model, "token_spans", None)
    source_types = {d.source_type for d in documents}
    chunker_name = options.chunker or default_chunker_for(
        "csv" if source_types <= {"csv", "legacy"} else next(iter(source_types))
    )
    chunk_size = options.chunk_size
    if chunk_size is None and getattr(model, "max_tokens", None):
        # keep default chunks inside the model's window, so nothing is silently truncated
        chunk_size = min(DEFAULT_CHUNK_SIZE, int(model.max_tokens))  # type: ignore[attr-defined]
    chunker = get_chunker(chunker_name, chunk_size=chunk_size,
                          chunk_overlap=options.chunk_overlap, token_spans=spans)
    chunking = chunker.config()
    # Decide before chunking: an unchanged document (same text, same chunking) is not chunked
    # again, so re-ingesting an unchanged corpus costs loading and hashing only. An embedder
    # that still has to be fitted sees every chunk, as on a first ingest.
    needs_fit = hasattr(model, "fit") and not getattr(model, "fitted", True)
    described = [(d, document_metadata(d, chunking)) for d in documents]
    states = store.document_states([d.id for d in documents])
    actions = {d.id: document_action(states.get(d.id), content_hash(d.text), meta)
               for d, meta in described}
    prepared: list[tuple[SourceDocument, dict[str, Any], tuple[ChunkRecord, ...]]] = []
    for document, meta in tqdm(described, desc="chunk", unit="doc", disable=not progress, leave=False):
        if actions[document.id] == "unchanged" and not needs_fit:
            prepared.append((document, meta, ()))  # nothing of it is written
            continue
        chunks = chunk_records(document, chunker)
        if not chunks:
            failures.append(LoadFailure(document.source_path, f"document {document.id!r} gave no chunks"))
            continue
        prepared.append((document, meta, chunks))
    stages.add("chunk", started)

    started = time.perf_counter()
    if needs_fit:
        model.fit([c.text for _, _, chunks in prepared for c in chunks])  # type: ignore[attr-defined]
        state_dir = store.root / "models" / _slug(model.name)
        model.save(state_dir)  # type: ignore[attr-defined]
    info = store.ensure_model(
        model.name, model.dimension, embedder=model.name, model_version=model.version,
        index_type=options.index_type, index_params=options.index_params,
    )
    to_write = [(d, meta, chunks) for d, meta, chunks in prepared if actions[d.id] != "unchanged"]
    unchanged_ids = [d.id for d, _, _ in prepared if actions[d.id] == "unchanged"]
    missing = store.chunks_without_vectors(info.name, unchanged_ids)  # e.g. a new embedder
    texts = {c.text_hash: c.text for _, _, chunks in to_write for c in chunks}
    texts.update({text_hash: text for _, text, text_hash in missing})
    cached = store.cached_vectors(info.name, list(texts))
    todo = [h for h in texts if h not in cached]
    stages.add("plan", started)

    started = time.perf_counter()
    vectors, tokens, cost = _embed_all(model, [texts[h] for h in todo], todo,
                                       batch_size=options.batch_size, progress=progress)
    vectors.update(cached)
    stages.add("embed", started)

    started = time.perf_counter()
    new = updated = 0
    bar = tqdm(total=len(to_write), desc="write", unit="doc", disable=not progress, leave=False)
    for start in range(0, len(to_write), WRITE_BATCH):
        block = to_write[start : start + WRITE_BATCH]
        records = [
            DocumentRecord(
                id=d.id, source_path=d.source_path, source_type=d.source_type,
                content_hash=content_hash(d.text), raw_text=d.text, chunks=chunks,
                metadata=meta,
                vectors=(VectorBatch(info.name, np.stack([vectors[c.text_hash] for c in chunks]),
                                     model_version=model.version),),
            )
            for d, meta, chunks in block
        ]
        report = store.write(records, skip_unchanged=False)
        new += report.new
        updated += report.updated
        bar.update(len(block))
    bar.close()
    if missing:
        store.add_vectors(info.name, [cid for cid, _, _ in missing],
                          np.stack([vectors[h] for _, _, h in missing]), model_version=model.version)
    stages.add("write", started)

    index, stats = _persist(store, info.name, stages)
    return IngestReport(
        sources=tuple(sources), source_digest=source_digest(documents),
        loader=",".join(sorted(set(loaders))), chunker=chunking, embedder=info.name,
        embedder_version=model.version, dimension=info.dimension,
        index=index,
        documents_new=new, documents_updated=updated, documents_unchanged=len(unchanged_ids),
        documents_failed=len(failures), chunks=sum(len(c) for _, _, c in to_write),
        vectors_embedded=len(todo), vectors_cached=len(texts) - len(todo), tokens=tokens,
        cost_usd=cost, seconds=dict(stages.seconds), failures=tuple(failures),
        store_generation=stats.generation, store_bytes=stats.bytes_on_disk,
    )


def _persist(store: Store, model_name: str, stages: _Stage) -> tuple[dict[str, Any], Any]:
    """Persist the index files (timed as the "index" stage); the model's index and store stats."""
    started = time.perf_counter()
    store.flush()
    stages.add("index", started)
    final = next(m for m in store.models() if m.name == model_name)
    return {"kind": final.index_type, "params": dict(final.index_params)}, store.stats()


def _slug(name: str) -> str:
    from mlflow_rag.store.store import model_slug

    return model_slug(name)


def _make_embedder(spec: str, store: Store) -> Embedder:
    from mlflow_rag.embed.registry import get_embedder

    state = store.root / "models" / _slug(spec)
    return get_embedder(spec, state_dir=state if state.is_dir() else None)


def _embed_all(
    model: Embedder, texts: list[str], hashes: list[str], *, batch_size: int, progress: bool
) -> tuple[dict[str, np.ndarray], int, float]:
    from tqdm import tqdm

    vectors: dict[str, np.ndarray] = {}
    tokens, cost = 0, 0.0
    with tqdm(total=len(texts), desc=f"embed ({model.name})", unit="chunk",
              disable=not progress or not texts, leave=False) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            result = model.embed(batch)
            tokens += result.tokens
            cost += result.cost_usd
            for offset, vector in enumerate(result.vectors):
                vectors[hashes[start + offset]] = vector
            bar.update(len(batch))
    return vectors, tokens, cost


# --------------------------------------------------------------------------- legacy import


def import_legacy(
    path: str | Path, store: Store, *, model_name: str | None = None, progress: bool = True
) -> IngestReport:
    """Import a chatboti ``embeddings-<model>.json``: documents, their abstract and bio
    chunks, and the stored vectors under that model's name, with no re-embedding."""
    from mlflow_rag.load.legacy import read_legacy

    stages = _Stage()
    started = time.perf_counter()
    legacy = read_legacy(path, model_name=model_name)
    stages.add("load", started)
    started = time.perf_counter()
    chunker = get_chunker("fields")
    chunking = chunker.config()
    spec = legacy.model_name
    embedder_spec = f"openai:{spec}" if spec.startswith("text-embedding-") else None
    if spec.startswith("openai:"):
        embedder_spec = spec
    ready = []
    failures = list(legacy.failures)
    for item in legacy.documents:
        problem = document_problem(item.document)
        if problem is not None:
            failures.append(LoadFailure(_printable(item.document.source_path), problem))
            continue
        chunks = chunk_records(item.document, chunker)
        names = [c.chunk_type or "" for c in chunks]
        if any(name not in item.vectors for name in names):
            failures.append(LoadFailure(item.document.source_path,
                                        f"record {item.document.id!r} has text without its vector"))
            continue
        vectors = np.stack([item.vectors[n] for n in names])
        try:  # what the store would refuse fails this record here, not the whole write
            clean_vectors(vectors, legacy.dimension)
        except RagError as exc:
            failures.append(LoadFailure(item.document.source_path,
                                        f"record {item.document.id!r}: {exc}"))
            continue
        ready.append((item.document, chunks, vectors))
    stages.add("chunk", started)
    if not ready:  # before ensure_model: a file with nothing to import changes nothing
        raise LoaderError(_printable(
            f"nothing to import: {len(failures)} record(s) failed"
            + (f"; first: {failures[0].reason}" if failures else "")
        ))
    info = store.ensure_model(legacy.model_name, legacy.dimension, embedder=embedder_spec,
                              model_version=legacy.model_name)
    records = [
        DocumentRecord(
            id=document.id, source_path=document.source_path,
            source_type=document.source_type, content_hash=content_hash(document.text),
            raw_text=document.text, chunks=chunks,
            metadata=document_metadata(document, chunking),
            vectors=(VectorBatch(info.name, vectors, model_version=legacy.model_name),),
        )
        for document, chunks, vectors in ready
    ]
    started = time.perf_counter()
    report = store.write(records)
    stages.add("write", started)
    index, stats = _persist(store, info.name, stages)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return IngestReport(
        sources=(str(path),), source_digest=digest, loader="legacy", chunker=chunking,
        embedder=info.name, embedder_version=legacy.model_name, dimension=info.dimension,
        index=index,
        documents_new=report.new, documents_updated=report.updated,
        documents_unchanged=report.unchanged, documents_failed=len(failures),
        chunks=report.chunks, vectors_embedded=0, vectors_cached=report.vectors,
        seconds=dict(stages.seconds), failures=tuple(failures),
        store_generation=stats.generation, store_bytes=stats.bytes_on_disk,
    )


def format_report(report: IngestReport) -> str:
    """The human-readable summary the CLI prints."""
    stage_text = ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    lines = [
        f"documents: {report.documents_new} new, {report.documents_updated} updated, "
        f"{report.documents_unchanged} unchanged, {report.documents_failed} failed",
        f"chunks: {report.chunks} written ({report.chunker.get('name')}); vectors: "
        f"{report.vectors_embedded} embedded, {report.vectors_cached} cached "
        f"({report.embedder}, dim {report.dimension}, index {report.index.get('kind')})",
        f"tokens: {report.tokens}, cost: ${report.cost_usd:.6f}",
        f"seconds: {stage_text} (total {report.total_seconds:.2f}s)",
    ]
    for failure in report.failures[:20]:
        lines.append(_printable(f"failed: {failure.source_path}: {failure.reason}"))
    if len(report.failures) > 20:
        lines.append(f"... and {len(report.failures) - 20} more failures")
    return "\n".join(lines)


__all__ = [
    "IngestOptions",
    "RagError",
    "chunk_records",
    "document_action",
    "format_report",
    "import_legacy",
    "ingest",
    "load_sources",
    "source_digest",
]
