"""Metadata a chunk inherits from the document sections it overlaps (PDF pages, fields)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlflow_rag.types import ChunkSpan, Section

_PAGE = "page"


def _is_page_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def section_metadata(chunk: ChunkSpan, sections: Sequence[Section]) -> dict[str, Any]:
    """Section metadata merged for ``chunk``, from every section sharing a character with it.

    * ``page`` (integer page numbers, e.g. PDF page sections) becomes a range: ``page_start`` /
      ``page_end`` (first and last page touched), and ``page`` itself: the page number when
      the chunk lies on one page, else the list of the pages it touches, so the filter
      ``{"chunk.page": 2}`` finds every chunk with text on page 2 (a list-valued field
      matches when any element does).
    * Any other key is copied when every overlapping section that has it agrees on the value,
      and left out when they disagree (a chunk across two languages has no single language).

    Sections that share no character with the chunk (including empty ones) are ignored;
    a chunk that overlaps no section gets ``{}``.
    """
    touching = [s for s in sections if max(s.start, chunk.start_char) < min(s.end, chunk.end_char)]
    pages: list[int] = []
    values: dict[str, Any] = {}
    conflicting: set[str] = set()
    for section in touching:
        for key, value in section.metadata.items():
            if key == _PAGE and _is_page_number(value):
                pages.append(value)
            elif key in conflicting:
                continue
            elif key not in values:
                values[key] = value
            elif values[key] != value:
                conflicting.add(key)
                del values[key]
    out: dict[str, Any] = {}
    if pages:
        first, last = min(pages), max(pages)
        out[_PAGE] = first if first == last else sorted(set(pages))
        out["page_start"] = first
        out["page_end"] = last
    out.update(values)
    return out
