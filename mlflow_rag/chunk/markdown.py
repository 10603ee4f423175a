"""The ``markdown`` chunker: one chunk per ATX-heading section, long sections split recursively.

Only ATX headings (``#`` to ``######`` followed by a space, up to three spaces of indent) start
sections; ``#`` lines inside fenced code blocks (``````` or ``~~~``, closed by a fence of the same
character at least as long, or running to the end) are code, not headings. Setext headings
(underlined with ``===``/``---``) are not recognised: they read as paragraphs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow_rag.chunk._common import (
    Planned,
    SizedChunker,
    assemble,
    regions,
    strip_span,
)
from mlflow_rag.chunk.recursive import split_recursive
from mlflow_rag.types import ChunkSpan, SourceDocument

# CommonMark ATX heading: optional closing run of #s must be preceded by a space.
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}(?!.*`)|~{3,})")
_FENCE_CLOSE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")


@dataclass(frozen=True)
class MarkdownSection:
    """``text[start:end]`` is the section including its heading line (if it has one).

    ``level`` is 1-6 for a heading section, 0 for text before the first heading;
    ``headings`` is the path of heading titles from the top level down to this one.
    """

    start: int
    end: int
    level: int
    title: str | None
    headings: tuple[str, ...]


def markdown_sections(text: str, start: int = 0, end: int | None = None) -> list[MarkdownSection]:
    """Sections of ``text[start:end]`` split at ATX headings outside fenced code blocks.

    A heading directly followed by a deeper heading (``# Guide`` then ``## Install``) has no
    text of its own; it is folded into the deeper section, so the chunk keeps the whole heading
    path in its text instead of being a chunk of one title.
    """
    end = len(text) if end is None else end
    headings: list[tuple[int, int, int, str]] = []  # (line start, line end, level, title)
    fence: tuple[str, int] | None = None
    position = start
    while position < end:
        newline = text.find("\n", position, end)
        line_end = end if newline == -1 else newline
        line = text[position:line_end].rstrip("\r")
        if fence is not None:
            close = _FENCE_CLOSE.fullmatch(line)
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= fence[1]:
                fence = None
        elif opened := _FENCE_OPEN.match(line):
            fence = (opened.group(1)[0], len(opened.group(1)))
        elif heading := _ATX.fullmatch(line):
            title = (heading.group(2) or "").strip()
            headings.append((position, line_end, len(heading.group(1)), title))
        position = line_end + 1

    sections: list[MarkdownSection] = []
    if not headings or headings[0][0] > start:
        first = headings[0][0] if headings else end
        sections.append(MarkdownSection(start, first, 0, None, ()))
    path: list[tuple[int, str]] = []
    carried_start: int | None = None
    for i, (line_start, line_end, level, title) in enumerate(headings):
        section_end = headings[i + 1][0] if i + 1 < len(headings) else end
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title))
        section_start = line_start if carried_start is None else carried_start
        body_start, body_end = strip_span(text, line_end, section_end)
        if body_start == body_end and i + 1 < len(headings) and headings[i + 1][2] > level:
            carried_start = section_start
            continue
        carried_start = None
        sections.append(
            MarkdownSection(section_start, section_end, level, title, tuple(title for _, title in path))
        )
    return sections


@dataclass(frozen=True, kw_only=True)
class MarkdownChunker(SizedChunker):
    """One chunk per heading section; sections over ``chunk_size`` tokens split recursively.

    ``chunk_type`` is ``"section"``; metadata ``section_title`` is the nearest heading's text
    (``None`` before the first heading) and ``headings`` the list of titles from the top.
    Document sections (if a loader gave any) are hard boundaries, as in the other chunkers.
    ``chunk_overlap`` (default ``chunk_size // 8``) applies only within a split section.
    """

    name = "markdown"

    def chunk(self, document: SourceDocument) -> list[ChunkSpan]:
        text = document.text
        planned: list[Planned] = []
        for region in regions(document):
            for section in markdown_sections(text, region.start, region.end):
                # A fresh list per chunk: chunk metadata must not alias between chunks.
                planned.extend(
                    Planned(
                        s,
                        e,
                        n,
                        "section",
                        {"section_title": section.title, "headings": list(section.headings)},
                    )
                    for s, e, n in split_recursive(
                        text,
                        section.start,
                        section.end,
                        chunk_size=self.chunk_size,
                        chunk_overlap=self.overlap,
                        token_spans=self.token_spans,
                    )
                )
        return assemble(document, planned)
