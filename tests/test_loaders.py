"""Loaders: CSV, JSONL, BEIR, text/Markdown, PDF, the directory dispatcher and the registry.

Real data from ../shared/data where it exists (skipped with the path when absent), generated
files for every edge: encodings, BOMs, multi-line and enormous fields, malformed rows,
hostile paths, corrupt / encrypted / bomb PDFs.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.load import (
    LOADERS,
    BeirLoader,
    CsvLoader,
    DirectoryLoader,
    JsonlLoader,
    LegacyLoader,
    Loader,
    PdfLoader,
    TextLoader,
    choose_loader,
    loader_for,
    make_loader,
)
from mlflow_rag.load.csv import ColumnStats, choose_text_columns
from mlflow_rag.types import LoadFailure, SourceDocument
from tests.fixtures_loaders import bomb_pdf, encrypt_pdf, make_pdf, shared_file

SPEAKERS = ("chatboti", "2025-09-02-speaker-bio.csv")
ABSTRACT = "Final abstract (Max. 150 words)"
BIO = "Bio (Max. 120 words)"
PII = ["Mail adress", "Social Media Handles"]


def split(items: object) -> tuple[list[SourceDocument], list[LoadFailure]]:
    docs, failures = [], []
    for item in items:  # type: ignore[attr-defined]
        (docs if isinstance(item, SourceDocument) else failures).append(item)
        assert isinstance(item, (SourceDocument, LoadFailure))
    return docs, failures


def section_texts(doc: SourceDocument) -> dict[str, str]:
    return {s.name: doc.text[s.start : s.end] for s in doc.sections}


def write_csv(path: Path, rows: list[list[str]], *, encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        csv.writer(f).writerows(rows)
    return path


LONG_A = "This is a long abstract about retrieval augmented generation and its evaluation. " * 2
LONG_B = "A second long free text value that is clearly prose, with many words in it. " * 2


# =========================================================================== contract


def _csv_source(tmp: Path) -> str:
    rows = [["id", "title", "body"], ["a", "T1", LONG_A], ["b", "T2", LONG_B]]
    return str(write_csv(tmp / "x.csv", rows))


def _jsonl_source(tmp: Path) -> str:
    lines = [{"_id": "1", "title": "One", "text": LONG_A}, {"_id": "2", "text": LONG_B}]
    (tmp / "x.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(tmp / "x.jsonl")


def _beir_source(tmp: Path) -> str:
    (tmp / "ds").mkdir()
    _jsonl_source(tmp)
    os.replace(tmp / "x.jsonl", tmp / "ds" / "corpus.jsonl")
    return str(tmp / "ds")


def _text_source(tmp: Path) -> str:
    (tmp / "docs" / "sub").mkdir(parents=True)
    (tmp / "docs" / "a.txt").write_text(LONG_A)
    (tmp / "docs" / "sub" / "b.md").write_text("# B\n\n" + LONG_B)
    return str(tmp / "docs")


def _pdf_source(tmp: Path) -> str:
    (tmp / "p.pdf").write_bytes(make_pdf([LONG_A, LONG_B]))
    return str(tmp / "p.pdf")


def _directory_source(tmp: Path) -> str:
    root = Path(_text_source(tmp))
    (root / "p.pdf").write_bytes(make_pdf([LONG_A]))
    return str(root)


def _legacy_source(tmp: Path) -> str:
    records = [
        {
            "name": n,
            "final_abstract_max_150_words": LONG_A,
            "bio_max_120_words": LONG_B,
            "mail_adress": f"{n}@example.com",
            "abstract_embedding": [0.6, 0.8],
            "bio_embedding": [1.0, 0.0],
        }
        for n in ("Ada", "Brian")
    ]
    (tmp / "embeddings-m.json").write_text(json.dumps(records))
    return str(tmp / "embeddings-m.json")


CONTRACT: dict[str, tuple[Callable[[], Loader], Callable[[Path], str]]] = {
    "csv": (lambda: CsvLoader(id_column="id"), _csv_source),
    "jsonl": (JsonlLoader, _jsonl_source),
    "beir": (BeirLoader, _beir_source),
    "text": (TextLoader, _text_source),
    "pdf": (PdfLoader, _pdf_source),
    "directory": (DirectoryLoader, _directory_source),
    "legacy": (LegacyLoader, _legacy_source),
}


@pytest.mark.parametrize("kind", sorted(CONTRACT))
def test_every_loader_meets_the_source_document_contract(kind: str, tmp_path: Path) -> None:
    make, build = CONTRACT[kind]
    loader = make()
    source = build(tmp_path)
    assert isinstance(loader.name, str) and loader.name == kind
    assert isinstance(loader.version, str) and loader.version
    docs, failures = split(loader.load(source))
    assert failures == []
    assert len(docs) >= 2 or kind == "pdf"
    assert len({d.id for d in docs}) == len(docs)
    for doc in docs:
        assert doc.id and doc.text
        for key in ("file_size", "encoding", "loader", "loader_version"):
            assert key in doc.metadata, (kind, key)
        assert isinstance(doc.metadata["file_size"], int) and doc.metadata["file_size"] > 0
        assert doc.metadata["loader"] in LOADERS
        json.dumps(dict(doc.metadata))  # metadata is stored as JSON
        previous_end = 0
        for s in doc.sections:
            assert previous_end <= s.start < s.end <= len(doc.text)
            assert doc.text[s.start : s.end].strip()
            previous_end = s.end
    # Re-loading gives the same ids and text: a re-ingest recognises its documents.
    again, _ = split(make().load(source))
    assert [(d.id, d.text, d.sections) for d in again] == [(d.id, d.text, d.sections) for d in docs]


# =========================================================================== CSV


def test_csv_speaker_file_gives_13_documents_with_abstract_and_bio_sections() -> None:
    path = shared_file(*SPEAKERS)
    loader = CsvLoader(id_column="Name", text_columns=[ABSTRACT, BIO], pii_columns=PII)
    docs, failures = split(loader.load(str(path)))
    assert failures == []
    assert len(docs) == 13
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [d.id for d in docs] == [r["Name"].strip() for r in rows]
    for doc, row in zip(docs, rows, strict=True):
        assert doc.source_type == "csv"
        assert doc.source_path == str(path)
        assert section_texts(doc) == {ABSTRACT: row[ABSTRACT], BIO: row[BIO]}
        assert doc.text == row[ABSTRACT] + "\n\n" + row[BIO]
        assert doc.pii == {c: row[c] for c in PII}
        assert doc.metadata["pii_fields"] == PII
        assert doc.metadata["encoding"] == "utf-8"
        assert doc.metadata["file_size"] == path.stat().st_size
        assert doc.metadata["loader"] == "csv" and doc.metadata["id_source"] == "column"
        assert doc.metadata["Country"] == row["Country"]
        assert doc.metadata["Final title"] == row["Final title"]
        for column in PII:  # PII never reaches text or metadata
            assert column not in doc.metadata
            # Each address and URL of the PII columns. (A speaker's own bio may name their
            # website: that is the bio's text, so text is checked for e-mail addresses only.)
            for value in row[column].split():
                if "@" not in value and "://" not in value:
                    continue
                if column == "Mail adress":
                    assert value not in doc.text
                assert value not in json.dumps(dict(doc.metadata), ensure_ascii=False)


def test_csv_auto_detects_abstract_and_bio_as_the_text_columns_of_the_speaker_file() -> None:
    path = shared_file(*SPEAKERS)
    docs, failures = split(CsvLoader(id_column="Name", pii_columns=PII).load(str(path)))
    assert failures == [] and len(docs) == 13
    assert {s.name for d in docs for s in d.sections} == {ABSTRACT, BIO}


def test_csv_auto_detects_bio_and_abstract_in_the_sample_speakers_fixture() -> None:
    path = shared_file("chatboti", "sample_speakers.csv")
    docs, failures = split(CsvLoader(id_column="name").load(str(path)))
    assert failures == [] and len(docs) == 3
    assert [s.name for s in docs[0].sections] == ["bio", "abstract"]
    assert docs[0].metadata["title"] == "AI Research Lead"


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        ({}, []),
        ({"title": ColumnStats(10, 400, 60), "abstract": ColumnStats(10, 7000, 1100)}, ["abstract"]),
        # several qualify: all of them, in column order
        (
            {
                "bio": ColumnStats(5, 4000, 600),
                "x": ColumnStats(5, 30, 5),
                "abstract": ColumnStats(5, 3000, 500),
            },
            ["bio", "abstract"],
        ),
        # long but not prose (URLs, ids): not free text; nothing qualifies -> the longest column
        ({"urls": ColumnStats(5, 1000, 5), "name": ColumnStats(5, 60, 10)}, ["urls"]),
        # an entirely empty column cannot be chosen
        ({"empty": ColumnStats(0, 0, 0)}, []),
    ],
)
def test_csv_text_column_choice_is_a_pure_table(stats: dict[str, ColumnStats], expected: list[str]) -> None:
    assert choose_text_columns(stats) == expected


def test_csv_cp1252_file_is_decoded_and_the_encoding_recorded(tmp_path: Path) -> None:
    body = "Café – “naïve” résumé, 5 € " * 5
    path = write_csv(tmp_path / "w.csv", [["id", "body"], ["1", body]], encoding="cp1252")
    docs, failures = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert failures == []
    assert docs[0].text == body
    assert docs[0].metadata["encoding"] == "cp1252"


def test_csv_bytes_undefined_in_cp1252_fall_back_to_latin1(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes(b"id,body\n1,caf\xe9 \x81 text\n")
    docs, _ = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert docs[0].metadata["encoding"] == "latin-1"
    assert docs[0].text == "caf\xe9 \x81 text"


@pytest.mark.parametrize(("codec", "recorded"), [("utf-8-sig", "utf-8-sig"), ("utf-16", "utf-16")])
def test_csv_byte_order_mark_is_honoured_and_not_part_of_the_first_column(
    tmp_path: Path, codec: str, recorded: str
) -> None:
    path = write_csv(tmp_path / "b.csv", [["id", "body"], ["x1", "Grüße aus Köln"]], encoding=codec)
    assert path.read_bytes()[:2] in (codecs.BOM_UTF8[:2], codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    docs, failures = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert failures == []
    assert docs[0].id == "x1" and docs[0].text == "Grüße aus Köln"
    assert docs[0].metadata["encoding"] == recorded


def test_csv_quoted_fields_spanning_lines_keep_newlines_quotes_and_commas(tmp_path: Path) -> None:
    body = 'Line one, with a comma\r\nline "two" with quotes\n\nline four'
    path = tmp_path / "m.csv"
    path.write_bytes(('id,body\r\n1,"' + body.replace('"', '""') + '"\r\n2,plain\r\n').encode())
    docs, failures = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert failures == []
    assert [d.text for d in docs] == [body, "plain"]


def test_csv_field_over_10_mb_is_reported_for_its_row_and_the_others_load(tmp_path: Path) -> None:
    huge = "x" * 10_000_001
    path = write_csv(tmp_path / "big.csv", [["id", "body"], ["1", "before"], ["2", huge], ["3", "after"]])
    docs, failures = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert [d.id for d in docs] == ["1", "3"]
    assert len(failures) == 1
    assert "line 3" in failures[0].reason and "max_field_chars=10000000" in failures[0].reason


def test_csv_enormous_records_are_skipped_unread_and_reading_resumes_at_the_next_row(
    tmp_path: Path,
) -> None:
    multi_line_huge = "\n".join(['many, "quoted" words'] * 400)  # ~8,800 chars over 400 lines
    rows = [
        ["id", "body"],
        ["1", "first"],
        ["2", "y" * 5000],  # one physical line far over the bound
        ["3", multi_line_huge],  # a quoted field over the bound spanning 400 lines
        ["4", "z" * 1500],  # within the record bound but over the field limit
        ["5", "last"],
    ]
    path = write_csv(tmp_path / "e.csv", rows)
    loader = CsvLoader(id_column="id", text_columns=["body"], max_field_chars=1000)
    docs, failures = split(loader.load(str(path)))
    assert [d.id for d in docs] == ["1", "5"]
    assert [d.text for d in docs] == ["first", "last"]
    reasons = [f.reason for f in failures]
    assert len(reasons) == 3
    assert reasons[0].startswith("lines 3-3:") and "skipped unread" in reasons[0]
    assert reasons[1].startswith("lines 4-403:") and "skipped unread" in reasons[1]
    assert reasons[2].startswith("line 404:") and "'body' has 1500 characters" in reasons[2]


def test_csv_malformed_rows_are_reported_by_line_and_the_rest_land(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "id,title,body\n"
        "1,ok,good text\n"
        "2,too,many,fields,here\n"  # line 3
        '3,"stray"quote,text\n'  # line 4
        "4,few\n"  # line 5
        "5,ok,also good\n"
        '6,open,"never closed\n'  # line 7: unterminated at end of file
        "and more\n"
    )
    docs, failures = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert [d.id for d in docs] == ["1", "5"]
    reasons = [f.reason for f in failures]
    assert reasons[0] == "line 3: row has 5 fields; the header has 3"
    assert reasons[1].startswith("line 4: malformed CSV row")
    assert reasons[2] == "line 5: row has 2 fields; the header has 3"
    assert reasons[3].startswith("line 7: malformed CSV row")
    assert all(f.source_path == str(path) for f in failures)


def test_csv_trailing_empty_cells_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,body\n1,text one,,\n\n2,text two\n")
    docs, failures = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert failures == [] and [d.text for d in docs] == ["text one", "text two"]


def test_csv_missing_id_falls_back_to_a_stable_row_hash_that_ignores_pii(tmp_path: Path) -> None:
    rows = [["id", "body", "email"], ["", "text without id", "a@example.com"], ["k", "keyed", "b@x"]]
    path = write_csv(tmp_path / "h.csv", rows)
    loader = CsvLoader(id_column="id", text_columns=["body"], pii_columns=["email"])
    docs, _ = split(loader.load(str(path)))
    assert docs[0].id.startswith("row-") and docs[0].metadata["id_source"] == "row_hash"
    assert docs[1].id == "k" and docs[1].metadata["id_source"] == "column"
    # Same row again (even with other PII) -> same id; changed text -> another id.
    rows[1][2] = "changed@example.com"
    again, _ = split(loader.load(str(write_csv(tmp_path / "h.csv", rows))))
    assert again[0].id == docs[0].id
    rows[1][1] = "edited text"
    edited, _ = split(loader.load(str(write_csv(tmp_path / "h.csv", rows))))
    assert edited[0].id != docs[0].id


def test_csv_without_id_column_gives_every_row_a_hash_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "n.csv", [["body"], ["one"], ["two"]])
    docs, _ = split(CsvLoader(text_columns=["body"]).load(str(path)))
    assert len({d.id for d in docs}) == 2 and all(d.id.startswith("row-") for d in docs)


def test_csv_duplicate_id_reports_the_later_row_and_keeps_the_first(tmp_path: Path) -> None:
    rows = [["id", "body"], ["a", "first a"], ["b", "b"], [" a ", "second a"]]
    path = write_csv(tmp_path / "d.csv", rows)
    docs, failures = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert [(d.id, d.text) for d in docs] == [("a", "first a"), ("b", "b")]
    assert failures[0].reason == (
        "line 4: duplicate id 'a' (first seen on line 2); the later row is not loaded"
    )


@pytest.mark.parametrize(
    "options",
    [
        {"id_column": "Nmae"},
        {"text_columns": ["Nmae"]},
        {"pii_columns": ["Nmae"]},
    ],
)
def test_csv_unknown_column_in_options_names_it_and_the_columns_that_exist(
    tmp_path: Path, options: dict[str, object]
) -> None:
    path = write_csv(tmp_path / "c.csv", [["Name", "Bio"], ["a", "b"]])
    loader = CsvLoader(**{"text_columns": ["Bio"], **options})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as excinfo:
        list(loader.load(str(path)))
    message = str(excinfo.value)
    assert "'Nmae'" in message and "['Name', 'Bio']" in message


@pytest.mark.parametrize(
    "options",
    [
        {"text_columns": "Bio"},
        {"text_columns": []},
        {"text_columns": ["Bio"], "pii_columns": ["Bio"]},
        {"id_column": "Mail", "pii_columns": ["Mail"]},
        {"encoding": "utf-9"},
        {"delimiter": ";;"},
        {"max_field_chars": 0},
    ],
)
def test_csv_bad_options_are_refused_when_the_loader_is_made(options: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        CsvLoader(**options)  # type: ignore[arg-type]


def test_csv_column_named_like_a_loader_key_is_kept_under_a_field_prefix(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "k.csv", [["id", "encoding", "body"], ["1", "ebcdic", "text"]])
    docs, _ = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert docs[0].metadata["encoding"] == "utf-8"
    assert docs[0].metadata["field:encoding"] == "ebcdic"


def test_csv_explicit_encoding_that_does_not_fit_is_one_failure_for_the_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "u.csv", [["id", "body"], ["1", "naïve"]], encoding="cp1252")
    docs, failures = split(CsvLoader(id_column="id", encoding="utf-8").load(str(path)))
    assert docs == []
    assert "not valid utf-8" in failures[0].reason


def test_csv_row_without_text_is_reported(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "e.csv", [["id", "body"], ["1", "  "], ["2", "text"]])
    docs, failures = split(CsvLoader(id_column="id", text_columns=["body"]).load(str(path)))
    assert [d.id for d in docs] == ["2"]
    assert failures[0].reason == "line 2: id '1' has no text in columns ['body']"


def test_csv_empty_or_missing_file_is_one_failure(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    assert split(CsvLoader().load(str(tmp_path / "empty.csv")))[1][0].reason.startswith("empty file")
    assert split(CsvLoader().load(str(tmp_path / "nope.csv")))[1][0].reason == "no such file"


def test_csv_tab_delimiter_reads_tsv(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("id\tbody\n1\ttab, separated, text\n")
    docs, _ = split(CsvLoader(id_column="id", text_columns=["body"], delimiter="\t").load(str(path)))
    assert docs[0].text == "tab, separated, text"


# =========================================================================== JSONL


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_title_and_text_become_two_sections_and_other_fields_metadata(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            {"_id": "a", "title": "Title A", "text": "Body A", "year": 2020, "tags": ["x"]},
            {"id": 7, "text": "Only a body"},
        ],
    )
    docs, failures = split(JsonlLoader().load(str(path)))
    assert failures == []
    assert section_texts(docs[0]) == {"title": "Title A", "text": "Body A"}
    assert docs[0].text == "Title A\n\nBody A"
    assert docs[0].metadata["year"] == 2020 and docs[0].metadata["tags"] == ["x"]
    assert docs[0].metadata["encoding"] == "utf-8" and docs[0].source_type == "jsonl"
    assert docs[1].id == "7" and [s.name for s in docs[1].sections] == ["text"]


def test_jsonl_bad_lines_are_failures_naming_the_line_and_the_rest_load(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"_id": "1", "text": "good"}\n'
        b'{"_id": "2", "text": \n'  # 2: invalid JSON
        b'["not", "an", "object"]\n'  # 3
        b'{"_id": "4", "text": 42}\n'  # 4: non-string text
        b'{"_id": "5", "text": "caf\xe9"}\n'  # 5: not UTF-8
        b'{"_id": "6", "title": ""}\n'  # 6: no text
        b'{"_id": true, "text": "x"}\n'  # 7: bad id type
        b"\n"
        b'{"_id": "1", "text": "dup"}\n'  # 9: duplicate
        b'{"_id": "10", "text": "' + b"w" * 300 + b'"}\n'  # 10: over the line limit
        b'{"_id": "11", "text": "also good"}\n'
    )
    docs, failures = split(JsonlLoader(max_line_bytes=200).load(str(path)))
    assert [d.id for d in docs] == ["1", "11"]
    reasons = [f.reason for f in failures]
    assert [r.split(":")[0] for r in reasons] == [f"line {n}" for n in (2, 3, 4, 5, 6, 7, 9, 10)]
    assert "invalid JSON" in reasons[0]
    assert "expected a JSON object, got list" in reasons[1]
    assert "text field 'text' must be a string, got int" in reasons[2]
    assert "not UTF-8" in reasons[3]
    assert "has no text in fields ['title', 'text']" in reasons[4]
    assert "must be a string or integer, got bool" in reasons[5]
    assert "duplicate id '1'" in reasons[6]
    assert "max_line_bytes=200" in reasons[7]


def test_jsonl_configured_fields_pii_and_hash_ids(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            {"key": "k1", "question": "Q?", "answer": "A.", "email": "p@x.org"},
            {"question": "no key here", "email": "q@x.org"},
        ],
    )
    loader = JsonlLoader(id_field="key", text_fields=["question", "answer"], pii_fields=["email"])
    docs, failures = split(loader.load(str(path)))
    assert failures == []
    assert docs[0].id == "k1" and docs[0].pii == {"email": "p@x.org"}
    assert "email" not in docs[0].metadata and docs[0].metadata["pii_fields"] == ["email"]
    assert docs[1].id.startswith("line-") and docs[1].metadata["id_source"] == "line_hash"


def test_jsonl_with_bom_records_utf8_sig(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + b'{"_id": "1", "text": "x"}\n')
    docs, failures = split(JsonlLoader().load(str(path)))
    assert failures == [] and docs[0].metadata["encoding"] == "utf-8-sig"


# =========================================================================== BEIR


def test_beir_scifact_corpus_loads_every_document_with_title_and_text_sections() -> None:
    corpus = shared_file("scifact-train", "corpus.jsonl")
    docs, failures = split(BeirLoader().load(str(corpus.parent)))
    assert failures == []
    assert len(docs) == 5183
    with corpus.open(encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert docs[0].id == first["_id"]
    assert section_texts(docs[0]) == {"title": first["title"], "text": first["text"]}
    assert docs[0].source_type == "beir" and docs[0].metadata["dataset"] == "scifact-train"


def test_beir_slice_of_scifact_keeps_ids_for_the_qrels(tmp_path: Path) -> None:
    corpus = shared_file("scifact-train", "corpus.jsonl")
    with corpus.open(encoding="utf-8") as f:
        lines = [next(f) for _ in range(50)]
    (tmp_path / "slice").mkdir()
    (tmp_path / "slice" / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    docs, failures = split(BeirLoader().load(str(tmp_path / "slice" / "corpus.jsonl")))
    assert failures == []
    assert [d.id for d in docs] == [json.loads(x)["_id"] for x in lines]


def test_beir_line_without_id_is_a_failure_and_blank_title_gives_one_section(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    write_lines(
        tmp_path / "ds" / "corpus.jsonl",
        [
            {"_id": "d1", "title": "", "text": "Body only.", "metadata": {"url": "u"}},
            {"title": "No id", "text": "lost"},
        ],
    )
    docs, failures = split(BeirLoader().load(str(tmp_path / "ds")))
    assert [s.name for s in docs[0].sections] == ["text"]
    assert docs[0].metadata["metadata"] == {"url": "u"}
    assert failures[0].reason == "line 2: no id (field '_id')"


def test_beir_folder_without_corpus_is_reported(tmp_path: Path) -> None:
    docs, failures = split(BeirLoader().load(str(tmp_path)))
    assert docs == [] and "no corpus.jsonl" in failures[0].reason


# =========================================================================== text / Markdown


def make_tree(root: Path) -> Path:
    (root / "guide" / "deep").mkdir(parents=True)
    (root / "readme.md").write_text("# Read me\n\nIntro text.\n")
    (root / "notes.txt").write_text("Plain notes.\n")
    (root / "guide" / "deep" / "part.markdown").write_text("## Part\n\nDeep text.\n")
    (root / "guide" / "table.csv").write_text("a,b\n")  # not a text source: skipped
    (root / ".hidden.txt").write_text("secret")
    (root / "guide" / "image.png").write_bytes(b"\x89PNG\r\n")
    return root


def test_text_folder_is_read_recursively_with_posix_relative_ids(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "docs")
    docs, failures = split(TextLoader().load(str(root)))
    assert failures == []
    # Walk order, top-down with names sorted in each folder: stable across runs.
    assert [(d.id, d.source_type) for d in docs] == [
        ("notes.txt", "text"),
        ("readme.md", "markdown"),
        ("guide/deep/part.markdown", "markdown"),
    ]
    readme = docs[1]
    assert readme.text == "# Read me\n\nIntro text.\n"
    assert readme.source_path == str(root / "readme.md")
    assert readme.metadata["title"] == "Read me" and readme.metadata["encoding"] == "utf-8"
    assert readme.metadata["file_size"] == len(readme.text)


def test_text_glob_ids_are_relative_to_the_pattern_root(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "docs")
    docs, _ = split(TextLoader().load(str(root / "guide" / "**" / "*.markdown")))
    assert [d.id for d in docs] == ["deep/part.markdown"]
    docs, _ = split(TextLoader().load(str(root / "*.md")))
    assert [d.id for d in docs] == ["readme.md"]


def test_text_single_file_id_is_its_name(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "docs")
    docs, _ = split(TextLoader().load(str(root / "notes.txt")))
    assert [d.id for d in docs] == ["notes.txt"]


def test_text_binary_files_named_txt_are_reported_and_the_rest_land(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "docs")
    (root / "nul.txt").write_bytes(b"looks like text\x00\x00\x01\x02binary")
    (root / "undecodable.txt").write_bytes(b"\x81\x8d\x8f\x90\x9d" * 10)
    (root / "controls.txt").write_bytes(bytes(range(1, 9)) * 100)
    docs, failures = split(TextLoader().load(str(root)))
    assert len(docs) == 3
    reasons = {Path(f.source_path).name: f.reason for f in failures}
    assert set(reasons) == {"nul.txt", "undecodable.txt", "controls.txt"}
    assert "NUL" in reasons["nul.txt"]
    assert "undecodable" in reasons["undecodable.txt"]
    assert "control characters" in reasons["controls.txt"]


def test_text_cp1252_and_utf16_files_are_decoded(tmp_path: Path) -> None:
    (tmp_path / "w.txt").write_bytes("naïve “quotes” – €".encode("cp1252"))
    (tmp_path / "u.txt").write_bytes("ünïcödé".encode("utf-16"))
    docs, failures = split(TextLoader().load(str(tmp_path)))
    assert failures == []
    assert {d.id: (d.text, d.metadata["encoding"]) for d in docs} == {
        "w.txt": ("naïve “quotes” – €", "cp1252"),
        "u.txt": ("ünïcödé", "utf-16"),
    }


def test_text_symlinks_outside_the_folder_are_refused_and_inside_ones_load(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not read")
    root = tmp_path / "docs"
    root.mkdir()
    (root / "real.txt").write_text("real")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "alias.txt").symlink_to(root / "real.txt")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "broken.txt").symlink_to(tmp_path / "missing.txt")
    docs, failures = split(TextLoader().load(str(root)))
    assert sorted((d.id, d.text) for d in docs) == [("alias.txt", "real"), ("real.txt", "real")]
    reasons = {Path(f.source_path).name: f.reason for f in failures}
    assert set(reasons) == {"leak.txt", "linked_dir", "broken.txt"}
    assert "outside the source folder" in reasons["leak.txt"]
    assert "outside the source folder" in reasons["linked_dir"]
    assert "broken symlink" in reasons["broken.txt"] or "outside" in reasons["broken.txt"]
    assert all("do not read" not in d.text for d in docs)


def test_text_glob_with_dotdot_escaping_its_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("do not read")
    pattern = str(tmp_path / "docs" / "*" / ".." / ".." / "outside" / "*.txt")
    docs, failures = split(TextLoader().load(pattern))
    assert docs == []
    assert len(failures) == 1 and "escapes the source root" in failures[0].reason


def test_text_nul_in_the_source_name_is_refused(tmp_path: Path) -> None:
    docs, failures = split(TextLoader().load(str(tmp_path / "a\x00b.txt")))
    assert docs == [] and "NUL" in failures[0].reason and "\x00" not in failures[0].source_path


def test_text_fifo_is_reported_instead_of_blocking(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "ok.txt").write_text("ok")
    docs, failures = split(TextLoader().load(str(tmp_path)))
    assert [d.id for d in docs] == ["ok.txt"]
    assert "not a regular file" in failures[0].reason


def test_text_file_over_max_bytes_is_reported_unread(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * 2000)
    _, failures = split(TextLoader(max_bytes=1000).load(str(tmp_path / "big.txt")))
    assert failures[0].reason == "file is 2000 bytes; the limit is max_bytes=1000"


def test_text_missing_source_is_one_failure(tmp_path: Path) -> None:
    _, failures = split(TextLoader().load(str(tmp_path / "nothing")))
    assert failures == [LoadFailure(str(tmp_path / "nothing"), "no such file or directory")]


# =========================================================================== PDF


def test_pdf_pages_become_page_sections_with_1_based_numbers(tmp_path: Path) -> None:
    pages = ["First page text about retrieval.", "", "Third page, after a blank one."]
    (tmp_path / "doc.pdf").write_bytes(make_pdf(pages, title="A Title"))
    docs, failures = split(PdfLoader().load(str(tmp_path / "doc.pdf")))
    assert failures == []
    doc = docs[0]
    assert doc.id == "doc.pdf" and doc.source_type == "pdf"
    assert [(s.name, dict(s.metadata)) for s in doc.sections] == [
        ("page", {"page": 1}),
        ("page", {"page": 3}),
    ]
    assert [doc.text[s.start : s.end] for s in doc.sections] == [pages[0], pages[2]]
    assert doc.text == pages[0] + "\n\n" + pages[2]
    assert doc.metadata["pages"] == 3 and doc.metadata["empty_pages"] == [2]
    assert doc.metadata["title"] == "A Title"
    assert doc.metadata["file_size"] == (tmp_path / "doc.pdf").stat().st_size


def test_pdf_encrypted_is_reported_and_the_rest_of_the_batch_lands(tmp_path: Path) -> None:
    good = make_pdf(["Readable page one.", "Readable page two."])
    (tmp_path / "a_good.pdf").write_bytes(good)
    (tmp_path / "b_encrypted.pdf").write_bytes(encrypt_pdf(good, user_password="secret"))
    (tmp_path / "c_truncated.pdf").write_bytes(good[: len(good) // 2])
    (tmp_path / "d_garbage.pdf").write_bytes(b"%PDF-1.7\nthis is not a pdf\x00\xff")
    (tmp_path / "e_also_good.pdf").write_bytes(make_pdf(["Another one."]))
    docs, failures = split(PdfLoader().load(str(tmp_path)))
    assert [d.id for d in docs] == ["a_good.pdf", "e_also_good.pdf"]
    reasons = {Path(f.source_path).name: f.reason for f in failures}
    assert reasons["b_encrypted.pdf"] == "encrypted PDF and no password given (option password=...)"
    assert reasons["c_truncated.pdf"].startswith("unreadable PDF")
    assert reasons["d_garbage.pdf"].startswith("unreadable PDF")


def test_pdf_encrypted_opens_with_its_password_or_an_empty_user_password(tmp_path: Path) -> None:
    good = make_pdf(["Locked text."])
    (tmp_path / "locked.pdf").write_bytes(encrypt_pdf(good, user_password="secret"))
    (tmp_path / "open.pdf").write_bytes(encrypt_pdf(good, user_password=""))
    docs, _ = split(PdfLoader(password="secret").load(str(tmp_path / "locked.pdf")))
    assert docs[0].text == "Locked text."
    docs, _ = split(PdfLoader().load(str(tmp_path / "open.pdf")))
    assert docs[0].text == "Locked text."
    _, failures = split(PdfLoader(password="wrong").load(str(tmp_path / "locked.pdf")))
    assert failures[0].reason == "encrypted PDF; the password given does not open it"


def test_pdf_decompression_bomb_is_refused_at_the_stream_limit(tmp_path: Path) -> None:
    (tmp_path / "bomb.pdf").write_bytes(bomb_pdf(5_000_000))
    (tmp_path / "fine.pdf").write_bytes(make_pdf(["fine"]))
    assert (tmp_path / "bomb.pdf").stat().st_size < 50_000
    docs, failures = split(PdfLoader(max_stream_bytes=1_000_000).load(str(tmp_path)))
    assert [d.id for d in docs] == ["fine.pdf"]
    assert "max_stream_bytes=1000000" in failures[0].reason


def test_pdf_decompression_bomb_over_the_default_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bomb.pdf").write_bytes(bomb_pdf(60_000_000))
    _, failures = split(PdfLoader().load(str(tmp_path / "bomb.pdf")))
    assert "decompression bomb" in failures[0].reason


def test_pdf_text_and_page_limits_are_reported(tmp_path: Path) -> None:
    (tmp_path / "p.pdf").write_bytes(make_pdf(["a" * 600, "b" * 600, "c"]))
    _, failures = split(PdfLoader(max_text_chars=1000).load(str(tmp_path / "p.pdf")))
    assert "max_text_chars=1000" in failures[0].reason and "page 2 of 3" in failures[0].reason
    _, failures = split(PdfLoader(max_pages=2).load(str(tmp_path / "p.pdf")))
    assert failures[0].reason == "3 pages; the limit is max_pages=2"


def test_pdf_without_extractable_text_is_reported(tmp_path: Path) -> None:
    (tmp_path / "blank.pdf").write_bytes(make_pdf(["", ""]))
    _, failures = split(PdfLoader().load(str(tmp_path / "blank.pdf")))
    assert "no extractable text on any of its 2 pages" in failures[0].reason


# =========================================================================== directory + registry


def test_directory_dispatches_txt_md_and_pdf_each_to_its_loader(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "docs")
    (root / "guide" / "manual.pdf").write_bytes(make_pdf(["Manual page."]))
    (root / "guide" / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    docs, failures = split(DirectoryLoader().load(str(root)))
    assert [(d.id, d.metadata["loader"], d.source_type) for d in docs] == [
        ("notes.txt", "text", "text"),
        ("readme.md", "text", "markdown"),
        ("guide/manual.pdf", "pdf", "pdf"),
        ("guide/deep/part.markdown", "text", "markdown"),
    ]
    assert [Path(f.source_path).name for f in failures] == ["broken.pdf"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("https://example.org/page", "web"),
        ("HTTP://example.org", "web"),
        ("data/speakers.csv", "csv"),
        ("data/corpus.JSONL", "jsonl"),
        ("paper.pdf", "pdf"),
        ("notes.txt", "text"),
        ("README.md", "text"),
        ("guide.markdown", "text"),
        ("docs/**/*.md", "directory"),
        ("embeddings-text-embedding-3-small.json", "legacy"),
    ],
)
def test_choose_loader_by_scheme_and_extension(source: str, expected: str) -> None:
    assert choose_loader(source) == expected


def test_choose_loader_by_folder_layout(tmp_path: Path) -> None:
    assert choose_loader(str(tmp_path)) == "directory"
    (tmp_path / "corpus.jsonl").write_text("")
    assert choose_loader(str(tmp_path)) == "beir"


@pytest.mark.parametrize(
    ("source", "kind", "value"),
    [
        ("report.docx", "source type", ".docx"),
        ("data.json", "source type", ".json"),
        ("Makefile", "source type", "Makefile"),
        ("ftp://example.org/x.txt", "URL scheme", "ftp"),
        ("file:///etc/passwd", "URL scheme", "file"),
    ],
)
def test_unsupported_source_raises_unknown_choice_listing_the_valid_ones(
    source: str, kind: str, value: str
) -> None:
    with pytest.raises(UnknownChoice) as excinfo:
        choose_loader(source)
    assert excinfo.value.kind == kind and excinfo.value.value == value
    assert "choose from" in str(excinfo.value)
    if kind == "source type":
        assert ".csv" in excinfo.value.choices and ".pdf" in excinfo.value.choices


def test_missing_path_without_extension_is_reported_as_missing_not_as_a_type(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInput, match="No such file or folder"):
        choose_loader(str(tmp_path / "docs"))


def test_loader_for_passes_options_and_refuses_unknown_ones(tmp_path: Path) -> None:
    loader = loader_for("x.csv", options={"id_column": "Name", "pii_columns": ["Mail"]})
    assert isinstance(loader, CsvLoader) and loader.id_column == "Name"
    with pytest.raises(UnknownChoice) as excinfo:
        loader_for("x.csv", options={"id_col": "Name"})
    assert "'id_col'" in str(excinfo.value) and "id_column" in excinfo.value.choices
    directory = loader_for(str(tmp_path), options={"max_bytes": 10, "max_pages": 3})
    assert isinstance(directory, DirectoryLoader)
    assert directory.text.max_bytes == 10 and directory.pdf.max_bytes == 10
    assert directory.pdf.max_pages == 3


def test_make_loader_names_every_loader_and_refuses_unknown_names() -> None:
    for name, cls in LOADERS.items():
        assert cls.name == name and cls.version
        assert make_loader(name).name == name
    with pytest.raises(UnknownChoice, match=r"Unknown loader 'pdfs'; choose from \['beir'"):
        make_loader("pdfs")


def test_csv_truncated_utf16_file_is_one_failure_not_a_crash(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "u16.csv", [["id", "body"], ["1", "text"]], encoding="utf-16")
    path.write_bytes(path.read_bytes()[:-1])  # an odd number of bytes: the last char is cut
    docs, failures = split(CsvLoader(id_column="id").load(str(path)))
    assert docs == [] and "not valid utf-16" in failures[0].reason


def test_directory_glob_dispatches_its_matches_with_ids_relative_to_the_glob_root(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "docs")
    (root / "guide" / "manual.pdf").write_bytes(make_pdf(["Manual page."]))
    docs, failures = split(DirectoryLoader().load(str(root / "guide" / "**" / "*")))
    assert failures == []
    assert [d.id for d in docs] == ["deep/part.markdown", "manual.pdf"]
