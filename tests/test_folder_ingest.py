"""Folder ingest as a user runs it: what was skipped is reported, .html files load as text,
Markdown front matter is metadata and .md is chunked by headings, JSONL PII is guessed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlflow_rag.ingest import IngestOptions, format_report, ingest, load_sources
from mlflow_rag.load.jsonl import JsonlLoader
from mlflow_rag.load.registry import choose_loader
from mlflow_rag.load.text import TextLoader
from mlflow_rag.store.store import Store
from mlflow_rag.types import IngestReport, LoadFailure, SourceDocument
from tests.hash_embedder import HashEmbedder

REPO = Path(__file__).resolve().parent.parent

PAGE = """<!doctype html><html><head><title>Bee keeping</title>
<style>body { color: red }</style><script>var secret = 1;</script></head>
<body><nav>Home | About</nav><h1>Hives</h1><p>Bees   store honey
in combs.</p><h2>Winter</h2><p>The colony clusters for warmth.</p></body></html>"""

NOTE = """---
title: Honey harvest
tags: [bees, honey]
date: 2024-05-01
author:
  name: Ada
loader: not the real loader
---
# Harvest

Take frames when they are capped.

## Extraction

Spin the frames in an extractor.
"""


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def run_ingest(sources: list[str], store: Store, **options: Any) -> IngestReport:
    return ingest(sources, store, options=IngestOptions(**options), embedder=HashEmbedder(),
                  progress=False)


def only_document(items: list[SourceDocument | LoadFailure]) -> SourceDocument:
    assert len(items) == 1 and isinstance(items[0], SourceDocument), items
    return items[0]


# --------------------------------------------------------------------------- skipped files


def test_folder_ingest_reports_skipped_files_by_extension(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {
        "a.txt": "Plain text about bees.", "b.md": "# B\n\nMarkdown about honey.",
        "c.docx": b"PK\x03\x04", "sub/d.DOCX": b"PK\x03\x04", "e.png": b"\x89PNG",
        "Makefile": "all:\n", ".hidden.docx": b"x",
    })
    with Store.open(tmp_path / "s", create=True) as store:
        report = run_ingest([str(docs)], store)
    assert report.documents_new == 2
    assert dict(report.skipped) == {".docx": 2, ".png": 1, "(no extension)": 1}
    text = format_report(report)
    assert "skipped: 4 files of types not loaded: .docx 2, .png 1, (no extension) 1" in text
    from mlflow_rag.tracking import ingest_metrics  # what the ingest run logs

    assert ingest_metrics(report)["files_skipped"] == 4


def test_a_glob_reports_what_it_matched_but_did_not_load(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {"a.txt": "Bees.", "b.csv": "id,text\n1,x\n", "c.md": "# C\n\nHoney."})
    skipped: dict[str, int] = {}
    documents, _, _ = load_sources([str(docs / "*")], progress=False, skipped=skipped)
    assert skipped == {".csv": 1} and len(documents) == 2
    none: dict[str, int] = {}
    load_sources([str(docs / "*.md")], progress=False, skipped=none)
    assert none == {}


def test_nothing_skipped_prints_no_skipped_line(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {"a.txt": "Bees and honey.", "b.txt": "Wax and combs."})
    with Store.open(tmp_path / "s", create=True) as store:
        report = run_ingest([str(docs)], store)
    assert report.skipped == {} and "skipped" not in format_report(report)
    one = write(tmp_path / "one", {"a.txt": "Bees and honey.", "b.png": b"\x89PNG"})
    with Store.open(tmp_path / "s", create=True) as store:
        assert "skipped: 1 file of types not loaded: .png 1" in format_report(run_ingest([str(one)], store))


# --------------------------------------------------------------------------- html


def test_html_files_load_as_page_text_with_their_title(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {"page.html": PAGE, "old.htm": "<p>An old page.</p>"})
    assert choose_loader(str(docs / "page.html")) == "text"
    items = list(TextLoader().load(str(docs / "page.html")))
    doc = only_document(items)
    assert doc.source_type == "html" and doc.id == "page.html"
    assert doc.metadata["title"] == "Bee keeping"
    assert doc.text.startswith("# Hives\n\nBees store honey in combs.")
    assert "## Winter" in doc.text
    for hidden in ("secret", "color: red", "Home | About", "<p>"):
        assert hidden not in doc.text
    with Store.open(tmp_path / "s", create=True) as store:
        report = run_ingest([str(docs)], store)
        assert report.documents_new == 2 and report.skipped == {}
        assert store.get_document("old.htm").raw_text == "An old page."


def test_html_charset_from_the_meta_tag(tmp_path: Path) -> None:
    page = '<html><head><meta charset="windows-1252"></head><body><p>Caf\xe9 cr\xe8me</p></body></html>'
    write(tmp_path, {"cafe.html": page.encode("cp1252")})
    doc = only_document(list(TextLoader().load(str(tmp_path / "cafe.html"))))
    assert doc.text == "Café crème"


def test_an_html_file_without_text_is_reported(tmp_path: Path) -> None:
    write(tmp_path, {"empty.html": "<html><head><script>x()</script></head><body></body></html>"})
    with Store.open(tmp_path / "s", create=True) as store:
        report = run_ingest([str(tmp_path / "empty.html"), str(write(tmp_path / "d", {"a.txt": "Bees."}))],
                            store)
    assert report.documents_failed == 1 and "no text" in report.failures[0].reason


# --------------------------------------------------------------------------- markdown front matter


def test_markdown_front_matter_becomes_metadata_and_leaves_the_text(tmp_path: Path) -> None:
    write(tmp_path, {"note.md": NOTE})
    doc = only_document(list(TextLoader().load(str(tmp_path / "note.md"))))
    assert doc.text.startswith("# Harvest\n")
    assert "tags:" not in doc.text
    meta = doc.metadata
    assert meta["title"] == "Honey harvest"  # front matter wins over the first heading
    assert meta["tags"] == ["bees", "honey"]
    assert meta["date"] == "2024-05-01"  # YAML dates become ISO strings (JSON has no dates)
    assert meta["author"] == {"name": "Ada"}
    assert meta["loader"] == "text" and meta["field:loader"] == "not the real loader"
    assert meta["front_matter"] == ["title", "tags", "date", "author", "loader"]


@pytest.mark.parametrize(("text", "expected"), [
    ("---\ntitle: [unclosed\n---\nBody.\n", "front matter is not valid YAML: "),
    ("---\ntitle: ok\n  bad: indent\n---\nBody.\n", "(line 3)"),
    ("---\na: &x [1, 2]\nb: *x\n---\nBody.\n", "aliases"),
    ("---\na: " + "[" * 20 + "]" * 20 + "\n---\nBody.\n", "nested deeper than 16 levels"),
    ("---\na: " + "[" * 30000 + "]" * 30000 + "\n---\nBody.\n", "nested too deeply"),
])
def test_bad_front_matter_is_a_failure_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, {"bad.md": text})
    items = list(TextLoader().load(str(tmp_path / "bad.md")))
    assert len(items) == 1 and isinstance(items[0], LoadFailure)
    assert expected in items[0].reason and items[0].source_path.endswith("bad.md")


@pytest.mark.parametrize("text", [
    "---\nnot closed, so a thematic break\n\nBody.\n",  # no closing fence: plain Markdown
    "Intro\n---\ntitle: x\n---\n",  # not at the start
    "---\n---\nBody after an empty block.\n",
    "---\n- a list\n- between rules\n---\nBody.\n",
    "---\nA paragraph: between rules, not YAML: at all\n---\nBody.\n",
    "---\nJust a sentence between two rules.\n---\nBody.\n",
])
def test_text_without_front_matter_is_kept_whole(tmp_path: Path, text: str) -> None:
    write(tmp_path, {"plain.md": text})
    doc = only_document(list(TextLoader().load(str(tmp_path / "plain.md"))))
    assert "front_matter" not in doc.metadata
    if text.startswith("---\n---\n"):
        assert doc.text == "Body after an empty block.\n"
    else:
        assert doc.text == text


def test_front_matter_in_a_txt_file_is_text(tmp_path: Path) -> None:
    write(tmp_path, {"a.txt": "---\ntitle: x\n---\nBody.\n"})
    doc = only_document(list(TextLoader().load(str(tmp_path / "a.txt"))))
    assert doc.text.startswith("---\ntitle: x") and "front_matter" not in doc.metadata


# --------------------------------------------------------------------------- markdown chunker default


def test_markdown_defaults_to_the_markdown_chunker_and_text_to_recursive(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {"note.md": NOTE, "plain.txt": "# not a heading in a text file\nBees."})
    with Store.open(tmp_path / "s", create=True) as store:
        report = run_ingest([str(docs)], store)
        note = store.get_document("note.md")
        plain = store.get_document("plain.txt")
    assert note.metadata["chunking"]["name"] == "markdown"
    assert plain.metadata["chunking"]["name"] == "recursive"
    assert [c.text.splitlines()[0] for c in note.chunks] == ["# Harvest", "## Extraction"]
    assert report.chunker["name"] == "markdown+recursive"
    assert report.chunker["by_source_type"]["markdown"]["name"] == "markdown"


def test_a_stored_markdown_document_keeps_its_chunker_unless_one_is_asked_for(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {"note.md": NOTE})
    with Store.open(tmp_path / "s", create=True) as store:
        run_ingest([str(docs)], store, chunker="recursive")  # as stores written before
        again = run_ingest([str(docs)], store)
        assert (again.documents_unchanged, again.documents_updated) == (1, 0)
        asked = run_ingest([str(docs)], store, chunker="markdown")
        assert asked.documents_updated == 1
        assert store.get_document("note.md").metadata["chunking"]["name"] == "markdown"


# --------------------------------------------------------------------------- jsonl pii


def test_jsonl_guesses_pii_fields_from_their_names_like_csv(tmp_path: Path) -> None:
    path = tmp_path / "talks.jsonl"
    path.write_text(json.dumps({"id": "t1", "text": "A talk on bees.", "Email": "ada@example.com",
                                "phone_number": "+44 1", "country": "UK"}) + "\n")
    doc = only_document(list(JsonlLoader().load(str(path))))
    assert dict(doc.pii) == {"Email": "ada@example.com", "phone_number": "+44 1"}
    assert "Email" not in doc.metadata and doc.metadata["country"] == "UK"
    assert doc.metadata["pii_fields"] == ["Email", "phone_number"]
    assert "ada@" not in doc.text
    off = only_document(list(JsonlLoader(pii_fields=[]).load(str(path))))
    assert off.pii == {} and off.metadata["Email"] == "ada@example.com"
    # a field named as text is text, whatever its name
    named = only_document(list(JsonlLoader(text_fields=["text", "Email"]).load(str(path))))
    assert "ada@example.com" in named.text and "Email" not in named.pii


def test_jsonl_hash_ids_leave_out_guessed_pii(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"text": "Bees.", "email": "one@example.com"}) + "\n")
    b.write_text(json.dumps({"text": "Bees.", "email": "two@example.com"}) + "\n")
    first, second = (only_document(list(JsonlLoader().load(str(p)))) for p in (a, b))
    assert first.id == second.id


# --------------------------------------------------------------------------- the CLI, on a store holding data


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_folder_ingest_into_a_store_with_data(tmp_path: Path) -> None:
    first = write(tmp_path / "first", {"a.txt": "Whales sing in the ocean.", "b.txt": "Dogs fetch sticks."})
    notes = write(tmp_path / "notes", {
        "note.md": NOTE, "page.html": PAGE, "slides.pptx": b"PK\x03\x04", "photo.jpg": b"\xff\xd8",
        "talks.jsonl": json.dumps({"id": "t1", "text": "Bees in cities.", "email": "ada@example.com"}),
    })
    common = ["--store", "store", "--embedder", "tfidf", "--no-track"]
    assert _cli("ingest", str(first), *common, cwd=tmp_path).returncode == 0
    out = _cli("ingest", str(notes), *common, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 new" in out.stdout
    assert "skipped: 3 files of types not loaded: .jpg 1, .jsonl 1, .pptx 1" in out.stdout
    hits = _cli("search", "extractor", "--store", "store", "--mode", "bm25", "--json",
                "--filter", '{"tags": "honey"}', cwd=tmp_path)
    assert hits.returncode == 0, hits.stderr
    found = json.loads(hits.stdout)
    assert [h["document_id"] for h in found] == ["note.md"]
    assert found[0]["text"].startswith("## Extraction")  # a chunk per heading section
    page = _cli("show", "page.html", "--store", "store", cwd=tmp_path).stdout
    assert "Bee keeping" in page and "secret" not in page
    jsonl = _cli("ingest", str(notes / "talks.jsonl"), *common, cwd=tmp_path)
    assert jsonl.returncode == 0, jsonl.stderr
    shown = _cli("show", "t1", "--store", "store", "--json", cwd=tmp_path)
    assert "ada@example.com" not in shown.stdout
