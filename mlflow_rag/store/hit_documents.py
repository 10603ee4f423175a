"""The document half of a dense hit (source path, metadata), remembered for one generation.

A hit read through the map (:mod:`mlflow_rag.store.hit_keys`) used to join its document row in
the same statement as its chunk row, and decode the document's metadata JSON, for every hit
of every search. A document's fields change only in a write, and every write bumps the
store's generation (its rows are rewritten, or deleted, in a write transaction), so the
fields read at one generation hold for the whole of it. :class:`HitDocuments` keeps them,
decoded once, for the generation of the map that holds it, and is emptied when that map moves
to another generation: a search at that generation reads its chunk rows alone, by rowid (one
table, as a raw FAISS + SQLite baseline does), and takes the document fields from here.
A search whose documents are not all here reads the chunks and documents together, as before,
and remembers the documents it read.

Memory is bounded (``MAX_BYTES``, an estimate per entry: its text twice, decoded and not,
plus Python's objects; 790 bytes measured for a path and three metadata fields): at the bound
the oldest entries go first. Chunk text is never kept (it is most of a store's bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlflow_rag import codec
from mlflow_rag.store.checks import PII_KEY

# Per map (one model at one generation), as filter_cache's bound: ~40,000 documents of a
# short path and a few metadata fields.
MAX_BYTES = 32 * 1024 * 1024
# Python's own bytes per entry beside its text (the entry, the strings, the dict, the key).
ENTRY_OVERHEAD = 600


class HitDocument:
    """One document's hit fields as of one generation: its id, source path, and metadata
    decoded once. Each hit gets a dict of its own (callers may change theirs)."""

    __slots__ = ("_metadata", "_nested_text", "_public", "document_id", "source_path")

    def __init__(self, document_id: str, source_path: str, metadata_text: str | None) -> None:
        self.document_id = document_id
        self.source_path = source_path
        metadata = codec.loads_object(metadata_text)
        self._metadata = metadata
        self._public = ({k: v for k, v in metadata.items() if k != PII_KEY}
                        if PII_KEY in metadata else metadata)
        # A flat object's shallow copy is a whole copy; a nested one is decoded per hit so
        # that no caller shares a list or object with another hit.
        # (A bracket or a second brace anywhere, even inside a string, counts as nested: the
        # safe side, and a scan of the text is cheaper than a walk of the values.)
        text = metadata_text or ""
        self._nested_text = metadata_text if "[" in text or "{" in text[1:] else None

    def metadata(self, *, include_pii: bool) -> dict[str, Any]:
        if self._nested_text is None:
            return dict(self._metadata if include_pii else self._public)
        metadata = codec.loads_object(self._nested_text)
        if not include_pii:
            metadata.pop(PII_KEY, None)
        return metadata


class HitDocuments:
    """Document row key -> :class:`HitDocument`, for one map at one generation."""

    def __init__(self, *, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: dict[int, tuple[HitDocument, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def all_of(self, keys: Sequence[int]) -> list[HitDocument] | None:
        """The documents of these row keys, or None if one of them is not here."""
        entries = self._entries
        try:
            return [entries[key][0] for key in keys]
        except KeyError:
            return None

    def put(
        self, key: int, document_id: str, source_path: str, metadata_text: str | None
    ) -> HitDocument:
        """Remember a document row read at this generation; returns its entry."""
        entry = self._entries.get(key)
        if entry is not None and entry[0].document_id == document_id:
            return entry[0]
        document = HitDocument(document_id, source_path, metadata_text)
        size = 2 * (len(document_id) + len(source_path) + len(metadata_text or "")) + ENTRY_OVERHEAD
        if entry is not None:  # the key names another document now (renumbered rowids)
            self.bytes -= self._entries.pop(key)[1]
        if size > self.max_bytes:
            return document
        while self._entries and self.bytes + size > self.max_bytes:
            oldest = next(iter(self._entries))
            self.bytes -= self._entries.pop(oldest)[1]
        self._entries[key] = (document, size)
        self.bytes += size
        return document

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
