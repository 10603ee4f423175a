"""Evaluation datasets: BEIR folders, questions files, and BEIR downloads from a local server."""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlflow_rag.errors import InvalidInput, LoaderError, UnknownChoice
from mlflow_rag.evaluation.datasets import (
    ENV_BEIR_URL,
    ENV_CACHE_DIR,
    EvalDataset,
    load_beir_folder,
    load_questions_file,
    resolve_dataset,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MLFLOW_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))
SCIFACT = SHARED_DATA / "scifact-train"

SECRET_QUERY = "Is my colleague's salary 90k?"  # query text must never appear in errors


# --------------------------------------------------------------------------- BEIR folders


def beir_files(*, qrels: dict[str, str] | None = None, queries: list[dict] | None = None) -> dict[str, bytes]:
    """The files of a tiny BEIR folder, by relative path."""
    corpus = [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(5)]
    queries = queries or [{"_id": q, "text": f"query {q}", "metadata": {}} for q in "12345"]
    qrels = qrels or {
        "test": "query-id\tcorpus-id\tscore\n3\td0\t1\n1\td1\t2\n1\td2\t0\n3\td4\t1\n",
        "train": "query-id\tcorpus-id\tscore\n2\td3\t1\n",
    }
    files = {
        "corpus.jsonl": "".join(json.dumps(d) + "\n" for d in corpus).encode(),
        "queries.jsonl": "".join(json.dumps(q) + "\n" for q in queries).encode(),
    }
    files.update({f"qrels/{split}.tsv": text.encode() for split, text in qrels.items()})
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_beir_folder_keeps_only_queries_judged_in_the_split(tmp_path):
    ds = load_beir_folder(write_tree(tmp_path / "mini", beir_files()), split="test")
    assert ds.name == "mini" and ds.split == "test"
    assert list(ds.queries) == ["3", "1"]  # qrels order; 2, 4, 5 are not judged in test
    assert ds.queries["1"] == "query 1"
    assert ds.qrels == {"3": {"d0": 1, "d4": 1}, "1": {"d1": 2, "d2": 0}}
    assert ds.corpus_path == tmp_path / "mini" / "corpus.jsonl"
    assert len(ds.digest) == 64


def test_beir_max_queries_keeps_the_first_queries_in_qrels_order(tmp_path):
    ds = load_beir_folder(write_tree(tmp_path, beir_files()), max_queries=1)
    assert list(ds.qrels) == ["3"] and list(ds.queries) == ["3"]


def test_missing_split_names_the_splits_that_exist(tmp_path):
    with pytest.raises(UnknownChoice) as info:
        load_beir_folder(write_tree(tmp_path, beir_files()), split="dev")
    assert str(info.value) == "Unknown split 'dev'; choose from ['test', 'train']"


def test_folder_without_beir_layout_is_refused(tmp_path):
    files = beir_files()
    del files["queries.jsonl"]
    with pytest.raises(InvalidInput, match=r"not a BEIR folder: missing \['queries.jsonl'\]"):
        load_beir_folder(write_tree(tmp_path, files))


def test_bad_qrels_score_names_the_line_and_value(tmp_path):
    files = beir_files(qrels={"test": "query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\thigh\n"})
    with pytest.raises(InvalidInput, match=r"test.tsv line 3: grade 'high' is not an integer"):
        load_beir_folder(write_tree(tmp_path, files))


def test_judged_query_missing_from_queries_file_is_an_error(tmp_path):
    files = beir_files(qrels={"test": "query-id\tcorpus-id\tscore\n9\td1\t1\n"})
    with pytest.raises(InvalidInput, match=r"missing from queries.jsonl, e.g. \['9'\]"):
        load_beir_folder(write_tree(tmp_path, files))


def test_digest_changes_with_the_corpus_bytes(tmp_path):
    files = beir_files()
    first = load_beir_folder(write_tree(tmp_path / "a", files))
    files["corpus.jsonl"] += b'{"_id": "d9", "title": "", "text": "new"}\n'
    second = load_beir_folder(write_tree(tmp_path / "b", files))
    assert first.queries == second.queries and first.qrels == second.qrels
    assert first.digest != second.digest


def test_real_scifact_train_split_loads():
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT} (set MLFLOW_RAG_SHARED_DATA)")
    ds = load_beir_folder(SCIFACT, split="train")
    assert len(ds.queries) == 809
    assert sum(len(j) for j in ds.qrels.values()) == 919
    with pytest.raises(UnknownChoice, match=r"choose from \['train'\]"):
        load_beir_folder(SCIFACT)  # default split "test" is held out, not shipped


# --------------------------------------------------------------------------- questions files


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_one_row_per_question_with_either_separator_and_grades(tmp_path):
    ds = load_questions_file(
        write(
            tmp_path / "qs.csv",
            "query,relevant_ids,grades\n"
            "What is the refund policy?,doc-12|doc-40,2|1\n"
            "Who founded it?,doc-1;doc-2,\n",
        )
    )
    assert ds.name == "qs" and ds.corpus_path is None and ds.split is None
    assert list(ds.qrels.values()) == [{"doc-12": 2, "doc-40": 1}, {"doc-1": 1, "doc-2": 1}]
    assert sorted(ds.queries.values()) == ["What is the refund policy?", "Who founded it?"]
    assert all(qid.startswith("q_") and len(qid) == 14 for qid in ds.queries)


def test_csv_one_row_per_judgement_merges_rows_of_the_same_question(tmp_path):
    ds = load_questions_file(
        write(
            tmp_path / "qs.csv",
            "query_id,query,doc_id,grade\nq1,Refunds?,doc|12,2\nq1,Refunds?,doc;40,\n",
        )
    )
    assert ds.queries == {"q1": "Refunds?"}
    assert ds.qrels == {"q1": {"doc|12": 2, "doc;40": 1}}  # separators are plain text here


def test_jsonl_questions_file(tmp_path):
    lines = [
        {"query": "Refunds?", "relevant_ids": ["doc-12", 40], "grades": [2, 1]},
        {"query": "Founder?", "relevant_ids": ["doc-1"], "query_id": "founder"},
    ]
    path = write(tmp_path / "qs.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = load_questions_file(path)
    assert ds.qrels["founder"] == {"doc-1": 1}
    assert {"doc-12": 2, "40": 1} in ds.qrels.values()


def test_same_questions_in_csv_and_jsonl_have_the_same_digest(tmp_path):
    csv_ds = load_questions_file(write(tmp_path / "a.csv", "query,relevant_ids\nRefunds?,x|y\n"))
    line = json.dumps({"query": "Refunds?", "relevant_ids": ["x", "y"]})
    jsonl_ds = load_questions_file(write(tmp_path / "b.jsonl", line + "\n"))
    assert csv_ds.qrels == jsonl_ds.qrels
    assert csv_ds.digest == jsonl_ds.digest


def test_questions_max_queries_keeps_file_order(tmp_path):
    path = write(tmp_path / "qs.csv", "query_id,query,relevant_ids\nb,B?,x\na,A?,y\nc,C?,z\n")
    assert list(load_questions_file(path, max_queries=2).queries) == ["b", "a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f'query,relevant_ids,grades\n"{SECRET_QUERY}",a|b,2|x\n', r"line 2: grade 'x' is not"),
        (f"query,relevant_ids,grades\n{SECRET_QUERY},a|b,2\n", r"line 2: 2 relevant ids but 1"),
        (f"query,relevant_ids\n{SECRET_QUERY},a||b\n", r"line 2: 'relevant_ids' 'a\|\|b'"),
        (f"query,doc_id\n{SECRET_QUERY},\n", r"line 2: empty 'doc_id'"),
        ("query,relevant_ids\n  ,a\n", r"line 2: empty 'query'"),
        ("question,relevant_ids\nq,a\n", r"line 1: the header \(known columns \['relevant_ids'\]"),
        (f"{SECRET_QUERY},a\n", r"line 1: the header \(known columns \[\]\) needs a 'query'"),
        ("query,relevant_ids,doc_id\nq,a,b\n", r"line 1: the header"),
        ("query,doc_id,grades\nq,a,1\n", r"use 'grades' with 'relevant_ids'"),
        (f"query,doc_id,grade\n{SECRET_QUERY},a,1\n{SECRET_QUERY},a,2\n", r"line 3: document 'a'"),
        ("query_id,query,doc_id\nq1,A?,a\nq1,B?,b\n", r"line 3: query_id 'q1' was given before"),
        (f"query,relevant_ids\n{SECRET_QUERY},a,extra\n", r"line 2: 3 fields, the header has 2"),
    ],
)
def test_bad_csv_names_the_line_and_value_but_not_the_query(tmp_path, text, message):
    with pytest.raises(InvalidInput, match=message) as info:
        load_questions_file(write(tmp_path / "qs.csv", text))
    assert SECRET_QUERY not in str(info.value)


def test_csv_line_numbers_count_physical_lines_of_multiline_records(tmp_path):
    text = 'query,relevant_ids,grades\n"first\nquestion",a,1\nsecond,b,two\n'
    with pytest.raises(InvalidInput, match=r"line 4: grade 'two'"):
        load_questions_file(write(tmp_path / "qs.csv", text))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "' + SECRET_QUERY + '", "relevant_ids": "a"}', r"must be a non-empty list"),
        ('{"query": "' + SECRET_QUERY + '", "relevant_ids": ["a"], "grades": [1.5]}', "1.5"),
        ('{"query": "' + SECRET_QUERY + '", "relevant_ids": ["a"], "grades": []}', "one integer"),
        ('{"query": "' + SECRET_QUERY + '", "relevant_ids": [true]}', r"relevant id True"),
        ('{"query": "", "relevant_ids": ["a"]}', r"'query' must be a non-empty string"),
        ('["not", "an", "object"]', r"expected a JSON object, got list"),
        ("{broken", r"not valid JSON"),
    ],
)
def test_bad_jsonl_names_the_line_and_value(tmp_path, line, message):
    path = write(tmp_path / "qs.jsonl", '{"query": "ok", "relevant_ids": ["x"]}\n\n' + line)
    with pytest.raises(InvalidInput, match=message) as info:
        load_questions_file(path)
    assert "line 3" in str(info.value)
    assert SECRET_QUERY not in str(info.value)


def test_unknown_questions_file_suffix_names_the_formats(tmp_path):
    with pytest.raises(UnknownChoice, match=r"Unknown questions file format '.xlsx'; choose from"):
        load_questions_file(write(tmp_path / "qs.xlsx", ""))


# --------------------------------------------------------------------------- resolve_dataset


def test_resolve_local_folder_and_questions_file(tmp_path):
    folder = write_tree(tmp_path / "mini", beir_files())
    assert resolve_dataset(str(folder), split="train").qrels == {"2": {"d3": 1}}
    questions = write(tmp_path / "qs.csv", "query,relevant_ids\nA?,x\n")
    assert resolve_dataset(questions).source == str(questions)


def test_resolve_nonexistent_path_explains_the_accepted_forms(tmp_path):
    with pytest.raises(InvalidInput, match=r"neither an existing path .* nor 'beir:<name>'"):
        resolve_dataset(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["../etc", "", "a/b", ".hidden"])
def test_resolve_refuses_bad_beir_names_before_any_request(tmp_path, name):
    with pytest.raises(InvalidInput, match="bad BEIR dataset name"):
        resolve_dataset(f"beir:{name}", cache_dir=tmp_path, base_url="http://127.0.0.1:9")


@dataclass
class FakeBeirServer:
    """A real HTTP server on 127.0.0.1 serving ``files`` and recording request paths."""

    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    send_length: bool = True  # False: no Content-Length, the body ends when the socket closes


@pytest.fixture
def server(monkeypatch) -> Iterator[FakeBeirServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy from the environment must not apply
    state = FakeBeirServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            if state.send_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/beir"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def beir_zip(name: str) -> bytes:
    """Laid out like the official BEIR zips: everything under ``<name>/``."""
    return make_zip({f"{name}/{rel}": data for rel, data in beir_files().items()})


def test_beir_download_is_extracted_cached_and_not_requested_again(tmp_path, server):
    server.files["/beir/mini.zip"] = beir_zip("mini")
    first = resolve_dataset("beir:mini", cache_dir=tmp_path, base_url=server.base_url, progress=False)
    assert server.requests == ["/beir/mini.zip"]
    assert isinstance(first, EvalDataset) and first.name == "mini"
    assert first.qrels == {"3": {"d0": 1, "d4": 1}, "1": {"d1": 2, "d2": 0}}
    assert first.source == f"beir:mini ({server.base_url}/mini.zip)"
    cached = tmp_path / "beir" / "mini"
    assert (cached / "corpus.jsonl").is_file() and (cached / "qrels" / "train.tsv").is_file()
    assert not list(cached.glob("*.zip"))
    assert [p.name for p in (tmp_path / "beir").iterdir()] == ["mini"]  # no temp dirs left

    second = resolve_dataset("beir:mini", cache_dir=tmp_path, base_url=server.base_url)
    assert server.requests == ["/beir/mini.zip"]  # served from the cache
    assert second.digest == first.digest
    assert resolve_dataset("beir:mini", cache_dir=tmp_path, split="train").qrels == {"2": {"d3": 1}}


def test_beir_url_and_cache_dir_come_from_the_environment(tmp_path, server, monkeypatch):
    server.files["/beir/mini.zip"] = beir_zip("mini")
    monkeypatch.setenv(ENV_BEIR_URL, server.base_url + "/")
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    resolve_dataset("beir:mini", progress=False)
    assert server.requests == ["/beir/mini.zip"]
    assert (tmp_path / "cache" / "beir" / "mini" / "queries.jsonl").is_file()


def test_unknown_beir_dataset_404_is_a_clear_error(tmp_path, server):
    with pytest.raises(LoaderError, match=r"BEIR dataset not found: GET .*/nope.zip .*HTTP 404"):
        resolve_dataset("beir:nope", cache_dir=tmp_path, base_url=server.base_url)
    assert not (tmp_path / "beir" / "nope").exists()


def test_a_file_that_is_not_a_zip_is_refused_and_not_cached(tmp_path, server):
    server.files["/beir/mini.zip"] = b"<html>maintenance</html>"
    with pytest.raises(LoaderError, match="is not a zip archive"):
        resolve_dataset("beir:mini", cache_dir=tmp_path, base_url=server.base_url)
    assert not (tmp_path / "beir" / "mini").exists()


def test_a_zip_with_a_corrupted_member_is_refused(tmp_path, server):
    data = bytearray(beir_zip("mini"))
    # Flip bytes inside the first member's compressed data: the CRC check must catch it.
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        first = archive.infolist()[0]
    start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
    for i in range(start, start + min(8, first.compress_size)):
        data[i] ^= 0xFF
    server.files["/beir/mini.zip"] = bytes(data)
    with pytest.raises(LoaderError, match="corrupt zip archive"):
        resolve_dataset("beir:mini", cache_dir=tmp_path, base_url=server.base_url)
    assert not (tmp_path / "beir" / "mini").exists()


@pytest.mark.parametrize("evil", ["mini/../../evil.txt", "/tmp/mlflow-rag-evil.txt", "..\\evil"])
def test_a_zip_with_a_path_traversal_member_is_refused(tmp_path, server, evil):
    members = {f"mini/{rel}": data for rel, data in beir_files().items()}
    members[evil] = b"pwned"
    server.files["/beir/mini.zip"] = make_zip(members)
    with pytest.raises(LoaderError, match="unsafe archive member"):
        resolve_dataset("beir:mini", cache_dir=tmp_path / "c", base_url=server.base_url)
    assert not (tmp_path / "evil.txt").exists()
    assert not list(tmp_path.rglob("*evil*"))
    assert not (tmp_path / "c" / "beir" / "mini").exists()


def test_a_zip_without_the_beir_layout_is_refused(tmp_path, server):
    server.files["/beir/mini.zip"] = make_zip({"mini/readme.txt": b"hello"})
    with pytest.raises(LoaderError, match="does not have the BEIR layout"):
        resolve_dataset("beir:mini", cache_dir=tmp_path, base_url=server.base_url)


def test_a_download_over_the_size_limit_is_refused(tmp_path, server):
    server.files["/beir/mini.zip"] = beir_zip("mini")
    with pytest.raises(LoaderError, match="over the limit of 100 bytes"):
        resolve_dataset("beir:mini", cache_dir=tmp_path, base_url=server.base_url, max_download_bytes=100)


def test_a_download_without_a_length_is_cut_off_at_the_size_limit(tmp_path, server):
    server.files["/beir/mini.zip"] = beir_zip("mini")
    server.send_length = False
    with pytest.raises(LoaderError, match="more than the limit of 100 bytes"):
        resolve_dataset("beir:mini", cache_dir=tmp_path, base_url=server.base_url, max_download_bytes=100)
    assert not (tmp_path / "beir" / "mini").exists()
