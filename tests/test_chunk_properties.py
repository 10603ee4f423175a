"""Property tests: the chunker contract and the approximate tokenizer on arbitrary text."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_rag.chunk import (
    CHUNKERS,
    approx_token_spans,
    count_tokens,
    get_chunker,
    markdown_sections,
)
from mlflow_rag.chunk.contract import contract_violations
from mlflow_rag.types import Section, SourceDocument

SIZED = [name for name in CHUNKERS if name != "fields"]
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that exercise every boundary the chunkers know about.
ATOMS = [
    "the", "matter", "microstructural", ".", ". ", "! ", "? ", "...", " ", "  ", "\t", "\n",
    "\n\n", "\n \n", "\r\n", "\f", "\u00a0", "\u3000", "# Head\n", "## Sub\n", "####### no\n",
    "```\n", "~~~\n", "```py\n", "中文", "。", "é", "e\u0301", "😀", "1234567", "_", "—", "x",
]  # fmt: skip
long_words = st.one_of(
    st.integers(6, 600).map(lambda n: "y" * n),
    st.text(alphabet=string.ascii_letters + string.digits, min_size=20, max_size=300),
)
texts = st.one_of(
    st.just(""),
    st.text(max_size=300),
    st.text(alphabet=" \t\n\r\f\v\u00a0\u2028\u3000", max_size=40),
    st.lists(
        st.one_of(st.sampled_from(ATOMS), st.text(min_size=1, max_size=4), long_words),
        max_size=80,
    ).map("".join),
)


@st.composite
def sizes(draw: st.DrawFn, min_size: int = 1) -> tuple[int, int]:
    size = draw(st.integers(min_size, 40))
    return size, draw(st.integers(0, size - 1))


@st.composite
def sectioned_documents(draw: st.DrawFn) -> SourceDocument:
    text = draw(texts)
    points = sorted(draw(st.lists(st.integers(0, len(text)), min_size=2, max_size=8)))
    # Consecutive pairs of sorted points: sections in order, possibly empty, possibly with gaps.
    sections = tuple(
        Section(draw(st.sampled_from(["title", "abstract", "page"])), a, b)
        for a, b in zip(points[::2], points[1::2], strict=False)
    )
    return SourceDocument(id="s", source_path="s", source_type="t", text=text, sections=sections)


def plain(text: str) -> SourceDocument:
    return SourceDocument(id="p", source_path="p", source_type="t", text=text)


def reference_approx_spans(text: str) -> list[tuple[int, int]]:
    """The documented rule, written character by character (slow, obviously right)."""

    def kind(ch: str) -> str:
        if re.fullmatch(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]", ch):
            return "cjk"
        if ch.isspace():
            return "space"
        if re.fullmatch(r"\d", ch):
            return "digit"
        if re.fullmatch(r"\w", ch) and ch != "_":
            return "letter"
        return "other"

    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        k = kind(text[i])
        if k == "space":
            i += 1
            continue
        j = i + 1
        if k in ("letter", "digit"):
            while j < len(text) and kind(text[j]) == k:
                j += 1
            spans.extend((p, min(p + 5, j)) for p in range(i, j, 5))
        else:
            spans.append((i, j))
        i = j
    return spans


# --------------------------------------------------------------------------- foreign tokenizers


def one_per_character(text: str) -> list[tuple[int, int]]:
    return [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()]


def whitespace_words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


_QUIRKY = re.compile(r"\n|[^\sx]{1,3}")


def quirky(text: str) -> list[tuple[int, int]]:
    """A hostile tokenizer: skips every 'x', makes newlines tokens, and counts a text's first
    token twice, so a chunk cut out of a document always counts one more token than in place."""
    spans = [m.span() for m in _QUIRKY.finditer(text)]
    if spans and not text[0].isspace():
        spans.insert(0, spans[0])
    return spans


FOREIGN = [
    pytest.param(one_per_character, 1, id="one_per_character"),
    pytest.param(whitespace_words, 1, id="whitespace_words"),
    pytest.param(quirky, 2, id="quirky"),  # every chunk counts 2+ tokens, so sizes start at 2
]


# --------------------------------------------------------------------------- approximate tokens


@FAST
@given(texts)
def test_approx_tokens_follow_the_documented_rule(text: str) -> None:
    assert approx_token_spans(text) == reference_approx_spans(text)


@FAST
@given(texts)
def test_approx_tokens_cover_each_non_whitespace_character_once(text: str) -> None:
    spans = approx_token_spans(text)
    covered = [position for start, end in spans for position in range(start, end)]
    assert covered == [i for i, ch in enumerate(text) if not ch.isspace()]
    assert all(0 < end - start <= 5 for start, end in spans)
    assert count_tokens(text) == len(spans)


@FAST
@given(texts, st.data())
def test_approx_tokens_are_context_free_at_token_boundaries(text: str, data: st.DataObject) -> None:
    spans = approx_token_spans(text)
    if not spans:
        return
    first = data.draw(st.integers(0, len(spans) - 1))
    last = data.draw(st.integers(first, len(spans) - 1))
    start, end = spans[first][0], spans[last][1]
    shifted = [(s + start, e + start) for s, e in approx_token_spans(text[start:end])]
    assert shifted == spans[first : last + 1]


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", CHUNKERS)
@FAST
@given(text=texts, size_overlap=sizes())
def test_chunker_keeps_the_contract_on_arbitrary_text(
    name: str, text: str, size_overlap: tuple[int, int]
) -> None:
    size, overlap = size_overlap
    document = plain(text)
    chunks = get_chunker(name, chunk_size=size, chunk_overlap=overlap).chunk(document)
    max_tokens = None if name == "fields" else size
    assert contract_violations(document, chunks, max_tokens=max_tokens) == []


@pytest.mark.parametrize("name", CHUNKERS)
@FAST
@given(document=sectioned_documents(), size_overlap=sizes())
def test_chunker_keeps_the_contract_on_sectioned_documents(
    name: str, document: SourceDocument, size_overlap: tuple[int, int]
) -> None:
    size, overlap = size_overlap
    chunks = get_chunker(name, chunk_size=size, chunk_overlap=overlap).chunk(document)
    max_tokens = None if name == "fields" else size
    assert contract_violations(document, chunks, max_tokens=max_tokens) == []
    if name != "markdown":  # markdown chunks are "section"s; the rest are named after theirs
        for chunk in chunks:
            assert any(
                s.name == chunk.chunk_type and s.start <= chunk.start_char < s.end for s in document.sections
            )


@pytest.mark.parametrize("name", CHUNKERS)
@pytest.mark.parametrize(("tokenizer", "min_size"), FOREIGN)
@FAST
@given(text=texts, data=st.data())
def test_chunker_keeps_the_contract_with_foreign_tokenizers(
    name: str,
    tokenizer: Callable[[str], list[tuple[int, int]]],
    min_size: int,
    text: str,
    data: st.DataObject,
) -> None:
    size, overlap = data.draw(sizes(min_size))
    document = plain(text)
    chunker = get_chunker(name, chunk_size=size, chunk_overlap=overlap, token_spans=tokenizer)
    chunks = chunker.chunk(document)
    max_tokens = None if name == "fields" else size
    assert contract_violations(document, chunks, token_spans=tokenizer, max_tokens=max_tokens) == []


# --------------------------------------------------------------------------- sizes and overlap


@FAST
@given(text=texts, size_overlap=sizes())
def test_fixed_windows_are_full_and_share_exactly_the_overlap(
    text: str, size_overlap: tuple[int, int]
) -> None:
    size, overlap = size_overlap
    chunks = get_chunker("fixed", chunk_size=size, chunk_overlap=overlap).chunk(plain(text))
    assert all(chunk.token_count == size for chunk in chunks[:-1])
    for previous, current in pairwise(chunks):
        shared = text[current.start_char : previous.end_char]
        assert count_tokens(shared) == overlap
        assert current.start_char > previous.start_char


@pytest.mark.parametrize("name", ["recursive", "markdown"])
@FAST
@given(text=texts, size_overlap=sizes())
def test_boundary_chunkers_overlap_by_at_most_the_overlap(
    name: str, text: str, size_overlap: tuple[int, int]
) -> None:
    size, overlap = size_overlap
    chunks = get_chunker(name, chunk_size=size, chunk_overlap=overlap).chunk(plain(text))
    for previous, current in pairwise(chunks):
        assert current.start_char > previous.start_char
        assert current.end_char > previous.end_char
        assert count_tokens(text[current.start_char : previous.end_char]) <= overlap


@pytest.mark.parametrize("name", SIZED)
@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.sampled_from(["alpha", "beta", "gamma."]), min_size=1, max_size=200))
def test_text_that_fits_is_a_single_chunk(name: str, words: list[str]) -> None:
    text = " ".join(words)
    size = count_tokens(text)
    chunks = get_chunker(name, chunk_size=size, chunk_overlap=0).chunk(plain(text))
    assert [chunk.text for chunk in chunks] == [text]


# --------------------------------------------------------------------------- markdown sections


@FAST
@given(texts)
def test_markdown_sections_tile_the_text_in_order(text: str) -> None:
    sections = markdown_sections(text)
    assert sections, "even an empty text has its (empty) preamble section"
    assert sections[0].start == 0 and sections[-1].end == len(text)
    for previous, current in pairwise(sections):
        assert previous.end == current.start
    for section in sections:
        assert (section.level == 0) == (section.title is None) == (section.headings == ())
        if section.headings:
            assert section.headings[-1] == section.title
