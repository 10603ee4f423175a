"""Pieces shared by the chunkers: size validation, regions, token windows, ChunkSpan assembly.

Every chunker plans character spans ``(start, end)`` into the document text and hands them to
:func:`assemble`, which is the one place that builds :class:`ChunkSpan` objects, so the contract
(exact offsets, ordering, indices, overlap metadata) is enforced in a single function.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow_rag.chunk.base import TokenSpans
from mlflow_rag.chunk.tokens import (
    approx_token_spans,
    count_tokens,
    counts_are_additive,
    tokenizer_name,
)
from mlflow_rag.errors import InvalidInput
from mlflow_rag.types import ChunkSpan, SourceDocument

DEFAULT_CHUNK_SIZE = 256
# The default overlap is an eighth of the chunk size: 32 tokens for the default 256.
DEFAULT_OVERLAP_DIVISOR = 8
DEFAULT_CHUNK_OVERLAP = DEFAULT_CHUNK_SIZE // DEFAULT_OVERLAP_DIVISOR

# Bumped whenever a chunker's output for the same input and config changes, so that the
# pipeline's change check (which compares config()) re-chunks stored documents.
ALGORITHM_VERSION = 1


def default_overlap(chunk_size: int) -> int:
    """``chunk_size // 8``: the overlap used when none is given (32 for 256)."""
    return chunk_size // DEFAULT_OVERLAP_DIVISOR


def validate_sizes(chunk_size: object, chunk_overlap: object) -> None:
    """Raise :class:`InvalidInput` naming the bad value unless ``0 <= overlap < size``."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InvalidInput(f"chunk_size must be a positive integer (tokens), got {chunk_size!r}")
    if not isinstance(chunk_overlap, int) or isinstance(chunk_overlap, bool) or chunk_overlap < 0:
        raise InvalidInput(f"chunk_overlap must be a non-negative integer (tokens), got {chunk_overlap!r}")
    if chunk_overlap >= chunk_size:
        raise InvalidInput(
            f"chunk_overlap must be smaller than chunk_size: "
            f"chunk_overlap={chunk_overlap}, chunk_size={chunk_size}"
        )


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Narrow ``[start, end)`` past surrounding whitespace (``str.isspace``); may become empty."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


@dataclass(frozen=True)
class Region:
    """A part of the document chunks may not cross: a section, or the whole text."""

    chunk_type: str
    start: int
    end: int


def regions(document: SourceDocument) -> list[Region]:
    """The document's sections in text order (or one ``"text"`` region), stripped, non-empty.

    A section outside the text is a loader bug that would otherwise produce chunks whose text
    does not match their offsets, so it is refused with the section and document named.
    """
    text = document.text
    if not document.sections:
        spans = [("text", 0, len(text))]
    else:
        spans = []
        for section in document.sections:
            if not 0 <= section.start <= section.end <= len(text):
                raise InvalidInput(
                    f"Section {section.name!r} of document {document.id!r} has span "
                    f"[{section.start}, {section.end}) outside its text of length {len(text)}"
                )
            spans.append((section.name, section.start, section.end))
        spans.sort(key=lambda span: (span[1], span[2]))
    out = []
    for name, start, end in spans:
        start, end = strip_span(text, start, end)
        if start < end:
            out.append(Region(name, start, end))
    return out


class TokenIndex:
    """Token spans of a region, answering "how many tokens touch [a, b)?" in O(log n).

    ``spans`` are relative to ``offset`` (a tokenizer's output for ``text[offset:]``); the
    methods take and return document positions. Not shifting the spans up front saves a pass
    over every token of the region.
    """

    __slots__ = ("ends", "offset", "starts")

    def __init__(self, spans: Sequence[tuple[int, int]], offset: int = 0) -> None:
        # Sorted independently: foreign tokenizers may emit several tokens with the same
        # offsets (byte-level BPE on one emoji); counting stays right because a token that
        # ends at or before ``a`` always starts before ``b``. (Sorting sorted input is O(n).)
        self.starts = [start for start, _ in spans]
        self.starts.sort()
        self.ends = [end for _, end in spans]
        self.ends.sort()
        self.offset = offset

    def count(self, start: int, end: int) -> int:
        """Tokens with ``token_start < end`` and ``token_end > start``."""
        offset = self.offset
        return bisect_left(self.starts, end - offset) - bisect_right(self.ends, start - offset)

    def cuts(self, start: int, end: int) -> list[int]:
        """Token start positions strictly inside ``(start, end)``, unique, ascending."""
        offset = self.offset
        lo = bisect_right(self.starts, start - offset)
        hi = bisect_left(self.starts, end - offset)
        out: list[int] = []
        for position in self.starts[lo:hi]:
            if not out or out[-1] != position + offset:
                out.append(position + offset)
        return out


def fit_windows(
    text: str,
    start: int,
    end: int,
    *,
    chunk_size: int,
    chunk_overlap: int,
    token_spans: TokenSpans,
) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, token_count)`` of ``chunk_size`` tokens, ``chunk_overlap`` shared.

    Windows are cut at token starts, so the text between two tokens (whitespace, or characters a
    foreign tokenizer skips) always belongs to a window and coverage holds for any tokenizer.
    Each window's count is taken on the window's own text, as the contract defines it; if a
    tokenizer counts a cut-out piece higher than the tokens it was cut from (WordPiece reads
    ``##ious`` cut out of a word as ``io ##us``), the window is shrunk until it fits, down to
    single characters. A window only exceeds ``chunk_size`` when it is one character that the
    tokenizer maps to more tokens than that (byte-level BPE on an emoji).
    """
    start, end = strip_span(text, start, end)
    if start >= end:
        return []
    index = TokenIndex(token_spans(text[start:end]), start)
    # Unit u is [bounds[u], bounds[u+1]); the first unit absorbs anything before the first token.
    bounds = [start, *index.cuts(start, end), end]
    if counts_are_additive(token_spans):
        return _windows(text, bounds, chunk_size, chunk_overlap, index.count)
    return _windows(
        text, bounds, chunk_size, chunk_overlap, lambda s, e: count_tokens(text[s:e], token_spans)
    )


def _windows(
    text: str,
    bounds: Sequence[int],
    chunk_size: int,
    chunk_overlap: int,
    count: Callable[[int, int], int],
) -> list[tuple[int, int, int]]:
    """Windows of up to ``chunk_size`` units (``[bounds[u], bounds[u+1])``) that fit in tokens."""
    n_units = len(bounds) - 1

    def measure(first: int, stop: int) -> tuple[int, int, int]:
        s, e = strip_span(text, bounds[first], bounds[stop])
        return s, e, count(s, e)

    windows: list[tuple[int, int, int]] = []
    first = 0
    while True:
        stop = min(first + chunk_size, n_units)
        window = measure(first, stop)
        if window[2] > chunk_size and stop > first + 1:
            # Counts grow with the window for any sane tokenizer: binary search the largest fit.
            lo, hi = first + 1, stop - 1
            best = measure(first, lo)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                candidate = measure(first, mid)
                if candidate[2] <= chunk_size:
                    lo, best = mid, candidate
                else:
                    hi = mid - 1
            stop, window = lo, best
        if window[2] > chunk_size and window[1] - window[0] > 1:
            # A single unit that re-tokenises too long: cut it between characters instead.
            characters = range(window[0], window[1] + 1)
            windows.extend(_windows(text, characters, chunk_size, 0, count))
        elif window[0] < window[1]:  # whitespace-only windows (whitespace tokens) carry nothing
            windows.append(window)
        if stop >= n_units:
            return windows
        first = max(stop - chunk_overlap, first + 1)


@dataclass(frozen=True)
class Planned:
    """A chunk as planned by a chunker, before indices and overlap metadata are assigned."""

    start: int
    end: int
    token_count: int
    chunk_type: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


def assemble(document: SourceDocument, planned: Sequence[Planned]) -> list[ChunkSpan]:
    """Order planned chunks by position and build the ChunkSpans with their overlap metadata.

    ``overlap_with_prev`` / ``overlap_with_next`` are measured on the final offsets (characters
    shared by the two spans), so they are right by construction whatever the chunker did.
    """
    ordered = sorted(planned, key=lambda p: (p.start, p.end))
    text = document.text

    def shared(a: Planned, b: Planned) -> int:
        return max(0, min(a.end, b.end) - max(a.start, b.start))

    chunks = []
    for i, plan in enumerate(ordered):
        metadata = dict(plan.metadata)
        metadata["overlap_with_prev"] = shared(ordered[i - 1], plan) if i > 0 else 0
        metadata["overlap_with_next"] = shared(plan, ordered[i + 1]) if i + 1 < len(ordered) else 0
        chunks.append(
            ChunkSpan(
                chunk_index=i,
                chunk_type=plan.chunk_type,
                text=text[plan.start : plan.end],
                start_char=plan.start,
                end_char=plan.end,
                token_count=plan.token_count,
                metadata=metadata,
            )
        )
    return chunks


@dataclass(frozen=True, kw_only=True)
class SizedChunker:
    """Options shared by the chunkers that cut text to at most ``chunk_size`` tokens."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int | None = None
    token_spans: TokenSpans = approx_token_spans
    # Unannotated on purpose: a class attribute, not a dataclass field, so it reads as the
    # protocol's plain ``name: str`` (a frozen field would be a read-only property to mypy).
    name = "sized"

    def __post_init__(self) -> None:
        validate_sizes(self.chunk_size, self.overlap)

    @property
    def overlap(self) -> int:
        """The overlap in tokens actually used (``chunk_overlap`` or ``chunk_size // 8``)."""
        if self.chunk_overlap is None:
            return default_overlap(self.chunk_size)
        return self.chunk_overlap

    def config(self) -> dict[str, object]:
        return {
            "name": self.name,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.overlap,
            "tokenizer": tokenizer_name(self.token_spans),
            "version": ALGORITHM_VERSION,
        }
