"""The ``recursive`` chunker: LangChain's RecursiveCharacterTextSplitter, measured in tokens.

A span longer than ``chunk_size`` tokens is split at the strongest boundary it contains
(paragraph, then sentence, then line, then word, then token); pieces that fit are merged
greedily back into chunks of at most ``chunk_size`` tokens, and pieces that do not fit are split
again at the next weaker boundary. Consecutive chunks of one merge share up to ``chunk_overlap``
tokens made of whole trailing pieces of the previous chunk, so overlap starts at a boundary.
As in LangChain, no overlap is carried across a piece that had to be split further (the overlap
would start mid-way through a block the splitter already had to break).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from itertools import pairwise

from mlflow_rag.chunk._common import (
    Planned,
    SizedChunker,
    TokenIndex,
    assemble,
    fit_windows,
    regions,
    strip_span,
)
from mlflow_rag.chunk.base import TokenSpans
from mlflow_rag.chunk.tokens import (
    count_tokens,
    counts_are_additive,
)
from mlflow_rag.types import ChunkSpan, SourceDocument

# Separators, strongest first. A separator is the span of the pattern's matched group, or of the
# whole match when the pattern has no group. Separators are whitespace only (or empty, after a
# CJK full stop), so the stripped pieces between them keep every non-whitespace character.
_SEPARATORS: tuple[re.Pattern[str], ...] = (
    # A blank line: a whitespace run holding two or more newlines (\r of CRLF is whitespace).
    re.compile(r"[^\S\n]*\n[^\S\n]*\n\s*"),
    # Sentence end: . ! ? or an ellipsis, optionally closed by a quote or bracket, then
    # whitespace; CJK full stops need no whitespace after them. The punctuation is matched
    # rather than looked behind for because lookbehinds at every position are 3x slower.
    # Abbreviations ("e.g. x") split too, which is harmless: pieces are merged back up to size.
    re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]?(\s+)|[\u3002\uff01\uff1f](\s*)"),
    # A line break.
    re.compile(r"[^\S\n]*\n\s*"),
    # Any whitespace run.
    re.compile(r"\s+"),
)
_TOKEN_LEVEL = len(_SEPARATORS)


def _split_at(text: str, start: int, end: int, separator: re.Pattern[str]) -> list[tuple[int, int]]:
    """Stripped, non-empty pieces of ``text[start:end]`` between matches of ``separator``."""
    pieces = []
    position = start
    for match in separator.finditer(text, start, end):
        sep_start, sep_end = match.span(match.lastindex or 0)
        s, e = strip_span(text, position, sep_start)
        if s < e:
            pieces.append((s, e))
        position = sep_end
    s, e = strip_span(text, position, end)
    if s < e:
        pieces.append((s, e))
    return pieces


@dataclass(frozen=True)
class _Splitter:
    text: str
    index: TokenIndex
    chunk_size: int
    chunk_overlap: int

    def split(self, start: int, end: int, level: int) -> list[tuple[int, int]]:
        """Chunks of ``[start, end)`` (already larger than the size) using ``level`` and weaker."""
        pieces: list[tuple[int, int]] = []
        while level < _TOKEN_LEVEL:
            pieces = _split_at(self.text, start, end, _SEPARATORS[level])
            level += 1
            if len(pieces) > 1:
                break
        else:
            # Token level: cut at token starts; what lies between tokens goes with the token
            # before it, so characters a tokenizer skips are still covered.
            bounds = [start, *self.index.cuts(start, end), end]
            pieces = []
            for a, b in pairwise(bounds):
                s, e = strip_span(self.text, a, b)
                if s < e:
                    pieces.append((s, e))
            return self.merge(pieces)

        chunks: list[tuple[int, int]] = []
        fitting: list[tuple[int, int]] = []
        for piece in pieces:
            if self.index.count(*piece) <= self.chunk_size:
                fitting.append(piece)
                continue
            if fitting:
                chunks.extend(self.merge(fitting))
                fitting = []
            chunks.extend(self.split(piece[0], piece[1], level))
        if fitting:
            chunks.extend(self.merge(fitting))
        return chunks

    def merge(self, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Greedy merge into chunks of at most ``chunk_size`` tokens, overlapping by whole pieces.

        Sizes are counted over the whole span from first to last piece, so tokens a tokenizer
        puts in the gaps (BPE newline tokens) are counted too.
        """
        count = self.index.count
        chunks: list[tuple[int, int]] = []
        current: deque[tuple[int, int]] = deque()
        for piece in pieces:
            if current and count(current[0][0], piece[1]) > self.chunk_size:
                chunks.append((current[0][0], current[-1][1]))
                # Keep the longest tail that is within the overlap and leaves room for `piece`.
                while current and (
                    count(current[0][0], current[-1][1]) > self.chunk_overlap
                    or count(current[0][0], piece[1]) > self.chunk_size
                ):
                    current.popleft()
            current.append(piece)
        if current:
            chunks.append((current[0][0], current[-1][1]))
        return chunks


def split_recursive(
    text: str,
    start: int,
    end: int,
    *,
    chunk_size: int,
    chunk_overlap: int,
    token_spans: TokenSpans,
) -> list[tuple[int, int, int]]:
    """Chunks ``(start, end, token_count)`` of ``text[start:end]``, each at most ``chunk_size``.

    Pure function over a span of a string, reused by the markdown chunker for long sections.
    Counts are taken on each chunk's own text; a chunk a foreign tokenizer counts higher than
    planned is re-cut by :func:`fit_windows`.
    """
    start, end = strip_span(text, start, end)
    if start >= end:
        return []
    spans = token_spans(text[start:end])
    if len(spans) <= chunk_size:
        return [(start, end, len(spans))]
    splitter = _Splitter(text, TokenIndex(spans, start), chunk_size, chunk_overlap)
    additive = counts_are_additive(token_spans)
    out: list[tuple[int, int, int]] = []
    for s, e in splitter.split(start, end, 0):
        if additive:  # chunk bounds are token bounds, so this is the count of the chunk text
            out.append((s, e, splitter.index.count(s, e)))
            continue
        n_tokens = count_tokens(text[s:e], token_spans)
        if n_tokens <= chunk_size:
            out.append((s, e, n_tokens))
        else:
            out.extend(
                fit_windows(
                    text,
                    s,
                    e,
                    chunk_size=chunk_size,
                    chunk_overlap=chunk_overlap,
                    token_spans=token_spans,
                )
            )
    return out


@dataclass(frozen=True, kw_only=True)
class RecursiveChunker(SizedChunker):
    """Chunks of at most ``chunk_size`` tokens that end at the strongest boundary available.

    Sections are hard boundaries: a chunk never spans two sections; ``chunk_type`` is the
    section name, or ``"text"`` for a document without sections. ``chunk_overlap`` defaults to
    ``chunk_size // 8``.
    """

    name = "recursive"

    def chunk(self, document: SourceDocument) -> list[ChunkSpan]:
        planned = [
            Planned(s, e, n, region.chunk_type)
            for region in regions(document)
            for s, e, n in split_recursive(
                document.text,
                region.start,
                region.end,
                chunk_size=self.chunk_size,
                chunk_overlap=self.overlap,
                token_spans=self.token_spans,
            )
        ]
        return assemble(document, planned)
