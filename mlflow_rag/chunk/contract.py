"""The chunker contract as a checkable function, shared by the tests and usable as a debug check.

Every chunker's output must satisfy :func:`contract_violations` with no violations. The pipeline
may run it on a sample of documents when a third-party chunker is plugged in.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlflow_rag.chunk.base import TokenSpans
from mlflow_rag.chunk.tokens import count_tokens
from mlflow_rag.types import ChunkSpan, Section, SourceDocument


def contract_violations(
    document: SourceDocument,
    chunks: Sequence[ChunkSpan],
    *,
    token_spans: TokenSpans | None = None,
    max_tokens: int | None = None,
    must_cover: bool = True,
) -> list[str]:
    """Every way ``chunks`` break the contract for ``document``; ``[]`` when they keep it.

    Checked: ``chunk_index`` is 0..n-1 in order; ``document.text[start_char:end_char] == text``;
    text is not empty or whitespace-only; ``token_count`` is the token count of the text (with
    ``token_spans``); ``overlap_with_prev`` / ``overlap_with_next`` are the characters shared
    with the neighbours; chunks are ordered by ``start_char``; a sectioned document's chunks
    each lie inside one section. Optionally: at most ``max_tokens`` tokens per chunk, and (with
    ``must_cover``) every non-whitespace character of the text, or of its sections, is in a chunk.
    """
    problems: list[str] = []
    for i in range(len(chunks)):
        problems.extend(
            _chunk_violations(document, chunks, i, token_spans=token_spans, max_tokens=max_tokens)
        )
    if must_cover:
        problems.extend(_coverage_violations(document, chunks))
    return problems


def _chunk_violations(
    document: SourceDocument,
    chunks: Sequence[ChunkSpan],
    i: int,
    *,
    token_spans: TokenSpans | None,
    max_tokens: int | None,
) -> list[str]:
    """How chunk ``i`` alone (with its neighbours for overlaps and order) breaks the contract."""
    text = document.text
    chunk = chunks[i]
    label = f"chunk {i}"
    problems: list[str] = []
    if chunk.chunk_index != i:
        problems.append(f"{label}: chunk_index is {chunk.chunk_index}")
    if not 0 <= chunk.start_char < chunk.end_char <= len(text):
        problems.append(f"{label}: bad span [{chunk.start_char}, {chunk.end_char})")
    elif text[chunk.start_char : chunk.end_char] != chunk.text:
        problems.append(f"{label}: text differs from document.text[start_char:end_char]")
    if not chunk.text.strip():
        problems.append(f"{label}: text is empty or whitespace-only")
    expected_tokens = count_tokens(chunk.text, token_spans)
    if chunk.token_count != expected_tokens:
        problems.append(f"{label}: token_count {chunk.token_count} != {expected_tokens}")
    if max_tokens is not None and chunk.token_count > max_tokens:
        problems.append(f"{label}: {chunk.token_count} tokens > {max_tokens}")
    for key, neighbour in (("overlap_with_prev", i - 1), ("overlap_with_next", i + 1)):
        shared = 0
        if 0 <= neighbour < len(chunks):
            other = chunks[neighbour]
            shared = max(
                0,
                min(chunk.end_char, other.end_char) - max(chunk.start_char, other.start_char),
            )
        if chunk.metadata.get(key) != shared:
            problems.append(f"{label}: {key} is {chunk.metadata.get(key)!r}, expected {shared}")
    if i > 0 and chunk.start_char < chunks[i - 1].start_char:
        problems.append(f"{label}: starts before the previous chunk")
    if document.sections and not any(
        s.start <= chunk.start_char and chunk.end_char <= s.end for s in document.sections
    ):
        problems.append(f"{label}: not inside a single section")
    return problems


def _coverage_violations(document: SourceDocument, chunks: Sequence[ChunkSpan]) -> list[str]:
    """The first non-whitespace character of each section (or the text) in no chunk."""
    text = document.text
    problems: list[str] = []
    covered = bytearray(len(text))
    for chunk in chunks:
        start, end = max(0, chunk.start_char), min(len(text), chunk.end_char)
        if start < end:  # bad spans are reported above; never resize the bytearray
            covered[start:end] = b"\x01" * (end - start)
    sections = document.sections or (Section("text", 0, len(text)),)
    for start, end in ((s.start, s.end) for s in sections):
        for position in range(start, end):
            if not covered[position] and not text[position].isspace():
                problems.append(f"character {position} ({text[position]!r}) is in no chunk")
                break
    return problems
