"""The ingestion pipeline: load -> chunk -> embed (with the cache) -> store, then index.

Decisions are pure functions (:func:`document_action`, :func:`chunk_records`); the pipeline
only sequences them. Nothing is embedded twice: unchanged documents are skipped, and a text a
model embedded before (keyed by sha256 of the text) reuses the stored vector.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.chunk.base import Chunker
from mlflow_rag.chunk.registry import CHUNKERS, DEFAULT_CHUNK_SIZE, default_chunker_for, get_chunker
from mlflow_rag.chunk.sections import section_metadata
from mlflow_rag.embed.base import (
    Embedder,
    FittedEmbedder,
    TokenizedEmbedder,
    WindowedEmbedder,
    is_fitted_embedder,
)
from mlflow_rag.embed.registry import DEFAULT_EMBEDDER, KINDS, OPENAI_PREFIX, find_embedder_kind
from mlflow_rag.errors import (
    ChunkingChangeRefused,
    IdCollision,
    InvalidInput,
    LoaderError,
    RagError,
    UnknownChoice,
)
from mlflow_rag.store.checks import PII_KEY, clean_vectors, content_hash
from mlflow_rag.store.store import Store
from mlflow_rag.types import (
    ChunkRecord,
    DocumentRecord,
    IngestReport,
    LoadFailure,
    SourceDocument,
    VectorBatch,
)

log = logging.getLogger("mlflow_rag.ingest")

WRITE_BATCH = 256  # documents per transaction: commits often enough to resume after a kill


@dataclass
class _Stage:
    """Seconds spent per stage, for the report."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


# --------------------------------------------------------------------------- pure decisions


def chunking_identity(chunking: Mapping[str, Any] | None) -> dict[str, Any]:
    """What decides a document's chunk texts: the chunking config without its tokenizer.

    The tokenizer only sets how chunk sizes are counted; adding a model whose tokenizer
    differs keeps the stored chunks and embeds them (ingest with ``rechunk`` to re-cut them)."""
    return {k: v for k, v in (chunking or {}).items() if k != "tokenizer"}


def document_action(
    existing: tuple[str | None, Mapping[str, Any]] | None, new_hash: str,
    new_metadata: Mapping[str, Any], *, rechunk: bool = False, keep_chunking: bool = False,
) -> str:
    """"new", "unchanged", "updated" (text or loader metadata changed) or "rechunk" (same
    text and metadata, another chunking) for a document, from its stored hash and metadata.

    A document whose text and metadata are unchanged keeps its stored chunks when the
    chunking differs only by tokenizer, or when ``keep_chunking`` (no chunking option was
    given: defaults never re-cut stored documents); ``rechunk`` re-cuts it whenever its
    chunking config differs in anything, the tokenizer included.
    """
    if existing is None:
        return "new"
    old_hash, old_metadata = existing
    old, new = dict(old_metadata), dict(new_metadata)
    old_chunking, new_chunking = old.pop("chunking", None), new.pop("chunking", None)
    if old_hash != new_hash or old != new:
        return "updated"
    if old_chunking == new_chunking:
        return "unchanged"
    if rechunk:
        return "rechunk"
    if keep_chunking or chunking_identity(old_chunking) == chunking_identity(new_chunking):
        return "unchanged"
    return "rechunk"


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


def chunker_names(
    documents: Sequence[SourceDocument], states: Mapping[str, tuple[str | None, Mapping[str, Any]]],
    asked: str | None,
) -> dict[str, str]:
    """Document id -> chunker name: the one asked for; else, for a stored document, the one it
    was stored with (a new default never re-chunks a store by itself); else its source type's
    default (fields for CSV, markdown for Markdown and HTML, recursive otherwise)."""
    names: dict[str, str] = {}
    for document in documents:
        stored = states.get(document.id)
        chunking = stored[1].get("chunking") if stored else None
        previous = chunking.get("name") if isinstance(chunking, Mapping) else None
        names[document.id] = asked or (previous if previous in CHUNKERS else None) or \
            default_chunker_for(document.source_type)
    return names


def report_chunking(
    documents: Sequence[SourceDocument], names: Mapping[str, str], chunkers: Mapping[str, Chunker]
) -> dict[str, Any]:
    """The report's chunker: its config when one chunker did it all, else the names joined
    ("markdown+recursive") and the config per source type."""
    if len(chunkers) == 1:
        return dict(next(iter(chunkers.values())).config())
    by_type: dict[str, dict[str, Any]] = {}
    for document in documents:
        by_type.setdefault(document.source_type, dict(chunkers[names[document.id]].config()))
    return {"name": "+".join(sorted(chunkers)), "by_source_type": dict(sorted(by_type.items()))}


# --------------------------------------------------------------------------- pipeline


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


REFITS = ("auto", "always", "never")
# The auto-refit rule for an embedder fitted on the corpus (docs/store.md, "Models fitted on
# the corpus"): refit, re-embedding all the model's vectors, when after this ingest the model
# would hold more than REFIT_GROWTH times the texts it was fitted on, or when the texts this
# ingest embeds bring more distinct terms the vocabulary lacks than REFIT_NEW_TERMS of its
# size. Doubling keeps the total refit work linear in the corpus; the new-terms bound catches
# a corpus that changes subject without growing much.
REFIT_GROWTH = 2.0
REFIT_NEW_TERMS = 0.10


# --------------------------------------------------------------------------- document ids
#
# A document's id is what its loader chose: a file's path relative to the folder (or glob
# root) named, its name when the file itself is named, a CSV/JSONL id column, BEIR's _id, a
# page's URL. Relative ids stay the same on every machine and in every working directory, so
# stores, filters and qrels that name them keep working. What tells two files with the same
# id apart is where they come from: source_path is stored absolute, and an ingest that would
# replace a stored document by one from another file is refused (see check_id_collisions).

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def source_identity(source_path: str) -> str:
    """A URL as given; a file path made absolute (not following symlinks, so it reads as typed)."""
    return source_path if _URL.match(source_path) else os.path.abspath(source_path)


def same_source(stored: str, new: str) -> bool:
    """Whether two source paths name the same file (or both name web pages).

    A web page's id is its final URL, so two pages with one id are one page. A relative path
    (stores written before paths were stored absolute) is read from the current folder.
    """
    if stored == new:
        return True
    if _URL.match(stored) or _URL.match(new):
        return bool(_URL.match(stored) and _URL.match(new))
    return os.path.realpath(stored) == os.path.realpath(new)


def check_id_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or (prefix and not prefix.strip()) or _CONTROL.search(prefix):
        raise InvalidInput(
            f"id prefix {prefix!r} must be printable text that is not only spaces, e.g. 'corpus2/'"
        )
    return prefix


def _suggested_prefix(document: SourceDocument) -> str:
    """The folder the document was named from (``corpus2/`` for ``.../corpus2/notes.txt``)."""
    path = document.source_path
    root = path[: -len(document.id)] if path.endswith(os.sep + document.id) else os.path.dirname(path)
    name = os.path.basename(root.rstrip(os.sep)) or "source2"
    return f"{name}/"


def check_id_collisions(documents: Sequence[SourceDocument], store: Store) -> None:
    """Refuse, before anything is written, documents that would replace a stored document of
    the same id from another file. The same text from another place (a folder that moved) is
    no loss and passes."""
    stored = store.document_sources([d.id for d in documents])
    clashes = [
        (d, stored[d.id][0]) for d in documents
        if d.id in stored and not same_source(stored[d.id][0], d.source_path)
        and stored[d.id][1] != content_hash(d.text)
    ]
    if not clashes:
        return
    shown = "; ".join(f"{d.id!r} (stored from {old}, now {d.source_path})" for d, old in clashes[:3])
    more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
    raise IdCollision(
        f"{len(clashes)} document id(s) already belong to documents from other files: {shown}{more}; "
        f"nothing was written. Keep both with an id prefix (--id-prefix {_suggested_prefix(clashes[0][0])}), "
        "or, if these are the same documents moved, replace them with --overwrite"
    )


# Loaders that make one document of a whole file: such a file stored under another id (its
# folder was named differently) would be a duplicate.
_ONE_DOCUMENT_PER_FILE = frozenset({"text", "markdown", "html", "pdf"})


def stored_under_other_ids(
    documents: Sequence[SourceDocument], store: Store
) -> tuple[list[SourceDocument], list[LoadFailure]]:
    """Split off files that are already stored under another id (``sub/a.txt`` when the folder
    was named, ``a.txt`` when the subfolder is): loading them again would duplicate them."""
    files = [d.source_path for d in documents if d.source_type in _ONE_DOCUMENT_PER_FILE]
    stored = store.document_ids_by_source(files) if files else {}
    keep: list[SourceDocument] = []
    failures: list[LoadFailure] = []
    for document in documents:
        others = [i for i in stored.get(document.source_path, ()) if i != document.id]
        if others and document.source_type in _ONE_DOCUMENT_PER_FILE:
            failures.append(LoadFailure(
                document.source_path,
                f"this file is already stored as document {others[0]!r}, not loaded again as "
                f"{document.id!r}: ids are paths relative to the folder named, so name the same "
                f"folder as before, or remove the old one first (mlflow-rag delete {others[0]!r})"))
        else:
            keep.append(document)
    return keep, failures



def load_sources(
    sources: Sequence[str], *, loader_options: Mapping[str, Any] | None = None,
    progress: bool = True, id_prefix: str = "", skipped: dict[str, int] | None = None,
) -> tuple[list[SourceDocument], list[LoadFailure], list[str]]:
    """Load every source; bad items are reported, the rest land. Returns loader names too.

    Every document's id gets ``id_prefix`` in front and its source_path is made absolute. A
    document named twice (a folder and a file in it) is loaded once; two files with one id
    are a failure for the second. Files of folders and globs that no loader reads are counted
    by extension into ``skipped`` when it is given.
    """
    from tqdm import tqdm

    from mlflow_rag.load.registry import choose_loader, make_loader

    check_id_prefix(id_prefix)
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
                continue
            item = replace(item, id=id_prefix + item.id, source_path=source_identity(item.source_path))
            if (problem := document_problem(item)) is not None:
                failures.append(LoadFailure(_printable(item.source_path), problem))
            elif item.id in seen:
                if not same_source(seen[item.id], item.source_path):
                    failures.append(LoadFailure(
                        item.source_path,
                        f"document id {item.id!r} also comes from {seen[item.id]}; ingest these "
                        "sources one at a time with --id-prefix to keep both"))
            elif not item.text.strip():
                failures.append(LoadFailure(item.source_path, f"document {item.id!r} has no text"))
            else:
                seen[item.id] = item.source_path
                documents.append(item)
        if skipped is not None:
            for extension, count in getattr(loader, "skipped", {}).items():
                skipped[extension] = skipped.get(extension, 0) + count
    return documents, failures, loaders


def ingest(
    sources: Sequence[str], store: Store, *, options: IngestOptions = IngestOptions(),
    embedder: Embedder | None = None, progress: bool = True,
    on_failure: Callable[[LoadFailure], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> IngestReport:
    """Put ``sources`` into ``store``: documents new, updated or unchanged; vectors embedded
    or taken from the cache; index files persisted at the end.

    Everything after loading runs under the store's writer lock, so two ingests into one
    store take turns (the second waits, or raises StoreBusy with ``options.wait=False``) and
    each plans from what the other committed. ``on_message`` receives notes for the user
    (waiting for another writer, a refit, vectors dropped with changed text); by default
    they are logged."""
    if not sources:
        raise InvalidInput("no sources given; name files, folders, globs or URLs")
    if options.index_params and options.index_type is None:
        raise InvalidInput("index parameters need an index type: add --index-type hnsw, ivf or flat")
    if options.batch_size < 1:
        raise InvalidInput(f"batch size must be positive, got {options.batch_size}")
    if options.refit not in REFITS:
        raise UnknownChoice("refit policy", options.refit, REFITS)
    say = on_message or log.warning
    stages = _Stage()

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
        return _ingest_locked(sources, store, documents, failures, loaders, options=options,
                              embedder=embedder, progress=progress, say=say, stages=stages,
                              skipped=skipped)


def _report_failures(
    failures: Sequence[LoadFailure], on_failure: Callable[[LoadFailure], None] | None
) -> None:
    for failure in failures:
        if on_failure:
            on_failure(failure)


def _nothing_to_ingest(failures: Sequence[LoadFailure]) -> LoaderError:
    return LoaderError(_printable(
        f"nothing to ingest: {len(failures)} item(s) failed to load"
        + (f"; first: {failures[0].source_path}: {failures[0].reason}" if failures else "")
    ))


def _ingest_locked(
    sources: Sequence[str], store: Store, documents: list[SourceDocument],
    failures: list[LoadFailure], loaders: list[str], *, options: IngestOptions,
    embedder: Embedder | None, progress: bool, say: Callable[[str], None], stages: _Stage,
    skipped: Mapping[str, int],
) -> IngestReport:
    from tqdm import tqdm

    started = time.perf_counter()
    # Made under the lock: a tfidf state another ingest saved meanwhile is the one loaded.
    model = embedder or _make_embedder(options.embedder, store)
    spans = model.token_spans if isinstance(model, TokenizedEmbedder) else None
    states = store.document_states([d.id for d in documents])
    names = chunker_names(documents, states, options.chunker)
    chunk_size = options.chunk_size
    if chunk_size is None and isinstance(model, WindowedEmbedder) and model.max_tokens:
        # keep default chunks inside the model's window, so nothing is silently truncated
        chunk_size = min(DEFAULT_CHUNK_SIZE, int(model.max_tokens))
    chunkers = {name: get_chunker(name, chunk_size=chunk_size, chunk_overlap=options.chunk_overlap,
                                  token_spans=spans) for name in sorted(set(names.values()))}
    chunking = report_chunking(documents, names, chunkers)
    explicit = (options.chunker, options.chunk_size, options.chunk_overlap) != (None, None, None)
    # Decide before chunking: an unchanged document (same text, same chunking) is not chunked
    # again, so re-ingesting an unchanged corpus costs loading and hashing only.
    described = [(d, document_metadata(d, chunkers[names[d.id]].config())) for d in documents]
    actions = {
        d.id: document_action(states.get(d.id), content_hash(d.text), meta,
                              rechunk=options.rechunk, keep_chunking=not explicit)
        for d, meta in described
    }
    prepared: list[tuple[SourceDocument, dict[str, Any], tuple[ChunkRecord, ...]]] = []
    for document, meta in tqdm(described, desc="chunk", unit="doc", disable=not progress, leave=False):
        if actions[document.id] == "unchanged":
            prepared.append((document, meta, ()))  # nothing of it is written
            continue
        chunks = chunk_records(document, chunkers[names[document.id]])
        if not chunks:
            failures.append(LoadFailure(document.source_path, f"document {document.id!r} gave no chunks"))
            continue
        prepared.append((document, meta, chunks))
    stages.add("chunk", started)

    started = time.perf_counter()
    to_write = [(d, meta, chunks) for d, meta, chunks in prepared if actions[d.id] != "unchanged"]
    unchanged_ids = [d.id for d, _, _ in prepared if actions[d.id] == "unchanged"]
    dropped = _vectors_dropped(store, to_write, states, actions, model.name)
    rechunk_losses = dropped.get("rechunk", {})
    if rechunk_losses and not options.rechunk:
        n_docs = sum(1 for d, _, _ in to_write if actions[d.id] == "rechunk")
        old = next(iter({describe_chunking(states[d.id][1].get("chunking")) for d, _, _ in to_write
                         if actions[d.id] == "rechunk"}))
        raise ChunkingChangeRefused(
            f"re-chunking {n_docs} unchanged document(s) ({old} -> {describe_chunking(chunking)}) "
            f"would drop {_count_text(rechunk_losses)} of other models; pass --rechunk "
            "(IngestOptions(rechunk=True)) to re-chunk anyway, or leave out the chunking "
            "options to keep the stored chunks"
        )
    missing = store.chunks_without_vectors(model.name, unchanged_ids)  # e.g. a new embedder
    replaced_ids = {d.id for d, _, _ in to_write if d.id in states}
    new_texts = [c.text for _, _, chunks in to_write for c in chunks] + [t for _, t, _ in missing]
    if is_fitted_embedder(model):
        _fit_if_needed(model, store, new_texts, replaced_ids, options=options, say=say,
                       progress=progress)
    info = store.ensure_model(
        model.name, model.dimension, embedder=model.name, model_version=model.version,
        index_type=options.index_type, index_params=options.index_params,
    )
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
    lost = {**dropped.get("updated", {})}
    for name, count in rechunk_losses.items():
        lost[name] = lost.get(name, 0) + count
    if lost:
        say(f"{_count_text(lost)} of other models went with chunks whose text changed; "
            f"re-ingest with each of those embedders to embed the new chunks")

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
        store_generation=stats.generation, store_bytes=stats.bytes_on_disk, skipped=dict(skipped),
    )


def describe_chunking(chunking: Mapping[str, Any] | None) -> str:
    """A chunking config in a few words for messages: ``recursive 256/32 (approx-v1)``."""
    if not chunking:
        return "unknown chunking"
    size = (f" {chunking['chunk_size']}/{chunking.get('chunk_overlap')}"
            if "chunk_size" in chunking else "")
    return f"{chunking.get('name')}{size} ({chunking.get('tokenizer')})"


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
    for doc_id, text_hash, name in store.vectors_on_documents(replaced):
        if name != model_name and text_hash not in kept.get(doc_id, ()):
            per_model = out.setdefault(actions[doc_id], {})
            per_model[name] = per_model.get(name, 0) + 1
    return out


def _fit_if_needed(
    model: FittedEmbedder, store: Store, new_texts: Sequence[str], replaced_ids: set[str], *,
    options: IngestOptions, say: Callable[[str], None], progress: bool,
) -> None:
    """Fit an embedder fitted on the corpus (tfidf) where it must be, under the store's lock:
    a first fit on the texts it will embed, or a refit that re-embeds every vector the model
    has (never a new fit beside vectors of an old one)."""
    existing = {m.name: m for m in store.models()}.get(model.name)
    count = existing.vector_count if existing is not None else 0
    reason = ""
    if not model.fitted:
        if count == 0:
            model.fit(list(new_texts))
            model.save(store.model_dir(model.name))
            if existing is not None and existing.dimension != model.dimension:
                # a model left without vectors (all its documents deleted), fitted anew
                store.replace_model_vectors(model.name, [], np.zeros((0, model.dimension)),
                                            dimension=model.dimension, model_version=model.version)
            return
        reason = "the embedder given is not fitted"
    elif count and existing is not None and existing.model_version != model.version:
        reason = (f"its saved state ({model.version}) is not the fit its {count} stored vectors "
                  f"were made with ({existing.model_version})")
    elif options.refit == "always":
        reason = "asked for"
    else:
        stale = refit_reason(model, count, new_texts)
        if stale and options.refit == "never":
            say(f"{model.name} is stale: {stale}; refit it with `mlflow-rag refit --store "
                f"{store.root} --embedder {model.name}` (or ingest with --refit auto)")
        if not stale or options.refit == "never":
            return
        reason = stale
    refit(store, model, extra_texts=new_texts, skip_documents=replaced_ids, reason=reason,
          say=say, progress=progress)


def refit_reason(model: FittedEmbedder, vector_count: int, new_texts: Sequence[str]) -> str:
    """Why a fitted embedder is stale by the refit rule (REFIT_GROWTH, REFIT_NEW_TERMS), or ""."""
    if not new_texts:
        return ""
    fitted_on = int(model.n_documents)
    after = vector_count + len(new_texts)
    if after > REFIT_GROWTH * fitted_on:
        return (f"it would hold {after} texts, more than {REFIT_GROWTH:g}x the {fitted_on} "
                "it was fitted on")
    unknown, distinct = model.unknown_terms(new_texts)
    vocabulary = int(model.n_features)
    if unknown > REFIT_NEW_TERMS * vocabulary:
        return (f"{unknown} of the {distinct} distinct terms of the new texts are not in its "
                f"{vocabulary}-term vocabulary (over {REFIT_NEW_TERMS:.0%} of it)")
    return ""


def refit(
    store: Store, model: FittedEmbedder, *, extra_texts: Sequence[str] = (),
    skip_documents: set[str] | frozenset[str] = frozenset(), reason: str = "asked for",
    say: Callable[[str], None] | None = None, progress: bool = False, batch_size: int = 256,
) -> int:
    """Refit ``model`` (an embedder fitted on the corpus) on every chunk that holds one of its
    vectors (except chunks of ``skip_documents``, about to be replaced) plus ``extra_texts``,
    re-embed all those chunks and replace all its vectors in one transaction, then save the
    new state. Call it under ``store.writer_lock()``. Returns the number of vectors
    re-embedded."""
    say = say or log.warning
    stored = store.chunks_with_vectors(model.name)
    chunks = [(cid, text) for cid, _, text in stored]
    say(f"refitting {model.name}: {reason}; re-embedding its {len(chunks)} stored vector(s)")
    state_dir = store.model_dir(model.name)
    # The saved files as they were, put back if the vectors' commit fails.
    previous = {p.name: p.read_bytes() for p in sorted(state_dir.glob("*")) if p.is_file()} \
        if state_dir.is_dir() else {}
    # Replaced documents' old chunks are re-embedded too (their text may come back and be
    # served from the cache) but not fitted on: that text is leaving the store.
    model.fit([text for _, doc_id, text in stored if doc_id not in skip_documents]
              + list(extra_texts))
    hashes = [str(i) for i in range(len(chunks))]
    vectors, _, _ = _embed_all(model, [text for _, text in chunks], hashes,
                               batch_size=batch_size, progress=progress)
    matrix = (np.stack([vectors[h] for h in hashes]) if chunks
              else np.zeros((0, model.dimension), dtype=np.float32))
    # The state is saved before the vectors commit and put back if the commit fails, so the
    # two disagree only if the process dies in between; the next ingest sees the version
    # mismatch and refits, and `check` reports it.
    model.save(state_dir)
    try:
        if any(m.name == model.name for m in store.models()):
            store.replace_model_vectors(model.name, [cid for cid, _ in chunks], matrix,
                                        dimension=model.dimension, model_version=model.version)
    except BaseException:
        _restore_files(state_dir, previous)
        raise
    return len(chunks)


def refit_corpus_models(
    store: Store, *, wait: bool = True, on_message: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Refit every model of the store fitted on the corpus (tfidf), as after a delete: the
    deleted documents' terms leave the saved vocabulary. Returns each refit's facts."""
    return [refit_model(store, info.name, wait=wait, on_message=on_message)
            for info in store.models() if _fitted_on_corpus(info.embedder)]


def _fitted_on_corpus(spec: str | None) -> bool:
    kind = find_embedder_kind(spec)
    return kind is not None and kind.fitted_on_corpus


def _restore_files(directory: Path, files: Mapping[str, bytes]) -> None:
    from mlflow_rag.store.files import atomic_write_bytes

    # The JSON names the npz's hash and is read first: write it last, as a save does.
    for name in sorted(files, key=lambda n: n.endswith(".json")):
        atomic_write_bytes(directory / name, files[name])


def refit_model(
    store: Store, model_name: str = "tfidf", *, wait: bool = True, progress: bool = False,
    on_message: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Refit a model fitted on the corpus (tfidf) on the chunks that hold its vectors, and
    re-embed them: what ``mlflow-rag refit`` runs. After deletions it also takes the deleted
    documents' terms out of the saved vocabulary. Returns before/after facts."""
    say = on_message or log.warning
    def busy(holder: str) -> None:
        say(f"another process ({holder}) is writing to {store.root}; waiting for it to finish")

    with store.writer_lock(wait=wait, on_busy=busy if wait else None):
        info = store.model(model_name)
        if not _fitted_on_corpus(info.embedder):
            fitted = [kind.spec for kind in KINDS if kind.fitted_on_corpus]
            raise InvalidInput(
                f"model {model_name!r} is embedded by {info.embedder!r}, which is not fitted on "
                f"the corpus; only {', '.join(fitted)} models can be refitted"
            )
        from mlflow_rag.embed.tfidf import STATE_JSON, STATE_NPZ, TfidfEmbedder

        state_dir = store.model_dir(model_name)
        saved = TfidfEmbedder.load(state_dir) if TfidfEmbedder.is_saved(state_dir) else None
        model = TfidfEmbedder(**saved.params()) if saved is not None else TfidfEmbedder()
        vectors = next(m.vector_count for m in store.models() if m.name == model_name)
        before = {"dimension": info.dimension, "vectors": vectors,
                  "n_features": saved.n_features if saved is not None else None}
        if vectors == 0:
            # Nothing left to fit on (every document deleted): the vocabulary goes too.
            for name in (STATE_JSON, STATE_NPZ):
                (state_dir / name).unlink(missing_ok=True)
            return {"model": model_name, "before": before,
                    "after": {"dimension": info.dimension, "vectors": 0, "n_features": None}}
        count = refit(store, model, say=say, progress=progress)
        store.flush()
        after = {"dimension": model.dimension, "vectors": count, "n_features": model.n_features}
    return {"model": model_name, "before": before, "after": after}


def recorded_embedders(
    store: Store, *, include_remote: bool = False
) -> dict[str, Callable[[Sequence[str]], np.ndarray]]:
    """model name -> a function embedding texts with that model's recorded embedder (its
    saved tfidf state included), for :meth:`Store.verify`. Each loads its embedder on first
    use, so a model that cannot be loaded fails the check with the reason."""
    from mlflow_rag.embed.registry import get_embedder

    out: dict[str, Callable[[Sequence[str]], np.ndarray]] = {}
    for info in store.models():
        spec = info.embedder
        kind = find_embedder_kind(spec)
        # Local embedders only, unless asked: an openai model costs money and needs a key.
        if not spec or not (include_remote or (kind is not None and kind.local)):
            continue
        state = store.model_dir(info.name)

        def embed(texts: Sequence[str], spec: str = spec, state: Path = state) -> np.ndarray:
            model = get_embedder(spec, state_dir=state if state.is_dir() else None)
            vectors: np.ndarray = model.embed(list(texts)).vectors
            return vectors

        out[info.name] = embed
    return out


def _persist(store: Store, model_name: str, stages: _Stage) -> tuple[dict[str, Any], Any]:
    """Persist the index files (timed as the "index" stage); the model's index and store stats."""
    started = time.perf_counter()
    store.flush()
    stages.add("index", started)
    final = next(m for m in store.models() if m.name == model_name)
    return {"kind": final.index_type, "params": dict(final.index_params)}, store.stats()


def _make_embedder(spec: str, store: Store) -> Embedder:
    from mlflow_rag.embed.registry import get_embedder

    state = store.model_dir(spec)
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
    with store.writer_lock():  # one writer at a time, as for ingest
        return _import_legacy_locked(path, store, legacy, stages)


def _import_legacy_locked(path: str | Path, store: Store, legacy: Any, stages: _Stage) -> IngestReport:
    started = time.perf_counter()
    chunker = get_chunker("fields")
    chunking = chunker.config()
    spec = legacy.model_name
    embedder_spec = f"{OPENAI_PREFIX}{spec}" if spec.startswith("text-embedding-") else None
    if spec.startswith(OPENAI_PREFIX):
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
    if report.skipped:
        from mlflow_rag.load._paths import NO_EXTENSION

        ordered = sorted(report.skipped.items(), key=lambda kv: (-kv[1], kv[0] == NO_EXTENSION, kv[0]))
        total = sum(report.skipped.values())
        lines.append(f"skipped: {total} file{'' if total == 1 else 's'} of types not loaded: "
                     + ", ".join(f"{ext} {count}" for ext, count in ordered))
    for failure in report.failures[:20]:
        lines.append(_printable(f"failed: {failure.source_path}: {failure.reason}"))
    if len(report.failures) > 20:
        lines.append(f"... and {len(report.failures) - 20} more failures")
    return "\n".join(lines)


__all__ = [
    "IngestOptions",
    "RagError",
    "check_id_collisions",
    "chunk_records",
    "document_action",
    "format_report",
    "import_legacy",
    "ingest",
    "load_sources",
    "source_digest",
]
