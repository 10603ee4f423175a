"""A served model under hostile and concurrent clients (real `mlflow models serve`, 127.0.0.1).

8 concurrent clients for a bounded run: no errors, no cross-talk (each answer belongs to its
own question), every query logged once with 2 workers; malformed JSON, wrong content types and
oversized requests answer 4xx without the query text; the model's bundle is never written.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlflow_rag.serving import QUERY_LOG_ENV
from tests.helpers_mlflow import PII_EMAIL, post_json
from tests.test_serving import (  # noqa: F401
    Champion,
    champion,
    model_server,
    request,
    tracking_template,
    wait_for_rows,
)

pytestmark = pytest.mark.slow

SECRET = "secret question from bob.hidden@example.org about honey"
TOPICS = {"tea": "green tea brewing", "bikes": "flat bicycle tyre", "bees": "honey bees wax",
          "cobol": "COBOL mainframe migration"}
CLIENTS = 8
REQUESTS_PER_CLIENT = 25


def bundle_digest(root: Path) -> dict[str, str]:
    """sha256 of every file of the logged store bundle(s) under ``root``."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and "bundle" in p.parts]
    assert any(p.name == "metadata.db" for p in files)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def post_raw(url: str, data: bytes, content_type: str) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as reply:
            return reply.status, reply.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", errors="replace")


def test_eight_concurrent_clients_get_their_own_answers_and_every_query_is_logged(
    champion: Champion, tmp_path: Path,  # noqa: F811
) -> None:
    artifacts = champion.root / "mlruns"
    before = bundle_digest(artifacts)
    log_path = tmp_path / "queries.db"
    with model_server(champion, tmp_path, workers=2, **{QUERY_LOG_ENV: str(log_path)}) as url:

        def client(number: int) -> list[str]:
            problems = []
            topics = list(TOPICS.items())
            for i in range(REQUESTS_PER_CLIENT):
                # two questions per request, in a per-client order, to catch mixed-up rows
                (doc_a, q_a), (doc_b, q_b) = topics[(number + i) % 4], topics[(number + i + 1) % 4]
                status, body = post_json(f"{url}/invocations",
                                         request([f"{q_a} {number}-{i}", f"{q_b} {number}-{i}"],
                                                 k=1, mode="bm25"))
                if status != 200:
                    problems.append(f"client {number} request {i}: HTTP {status}")
                    continue
                got = [(r["query_index"], r["document_id"]) for r in body["predictions"]]
                if got != [(0, doc_a), (1, doc_b)]:
                    problems.append(f"client {number} request {i}: {got}")
            return problems

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            problems = [p for found in pool.map(client, range(CLIENTS)) for p in found]
        wait_for_rows(log_path, CLIENTS * REQUESTS_PER_CLIENT * 2)  # written off the request path
    assert problems == []
    conn = sqlite3.connect(log_path)
    try:
        logged = conn.execute("SELECT count(*) FROM queries").fetchone()[0]
    finally:
        conn.close()
    served = CLIENTS * REQUESTS_PER_CLIENT * 2
    print(f"\n{CLIENTS} clients, {CLIENTS * REQUESTS_PER_CLIENT} requests, {served} queries served")
    assert logged == served
    assert bundle_digest(artifacts) == before  # the bundle is never written


def test_malformed_wrong_type_and_oversized_requests_answer_4xx_without_the_query(
    champion: Champion, tmp_path: Path,  # noqa: F811
) -> None:
    with model_server(champion, tmp_path) as url:
        endpoint = f"{url}/invocations"
        cases = {
            "not a table": (json.dumps({"query": {"nested": SECRET}}).encode(), "application/json"),
            "oversized query": (json.dumps(request([SECRET + " x" * 20_000])).encode(),
                                "application/json"),
            "too many rows": (json.dumps(request([f"{SECRET} {i}" for i in range(2_000)],
                                                 k=100)).encode(), "application/json"),
            "wrong content type": (SECRET.encode(), "application/x-secret"),
        }
        for name, (data, content_type) in cases.items():
            status, body = post_raw(endpoint, data, content_type)
            assert 400 <= status < 500, (name, status, body[:300])
            assert SECRET not in body and "bob.hidden" not in body and PII_EMAIL not in body, name
        status, _ = post_raw(endpoint, json.dumps(request(["honey bees"], k=1)).encode(),
                             "application/json")
        assert status == 200  # the server is still healthy after the hostile requests


def test_every_malformed_request_is_refused_without_echoing_the_query(
    champion: Champion, tmp_path: Path,  # noqa: F811
) -> None:
    """MLflow parses the body and checks params against the signature before the model runs;
    its own messages quote the request data. None of them may reach a client."""
    secret_json = json.dumps(SECRET)[1:-1]
    with model_server(champion, tmp_path) as url:
        endpoint = f"{url}/invocations"
        cases = {
            "unparsable JSON": (
                b'{"dataframe_split": {"columns": ["query"], "data": [["' + SECRET.encode() + b'"]',
                "application/json", "not valid JSON"),
            "not UTF-8": (b'{"dataframe_records": [{"query": "\xff' + SECRET.encode() + b'"}]}',
                          "application/json", "UTF-8"),
            "k as a string": (json.dumps(request([SECRET], k="3")).encode(), "application/json",
                              "k must be"),
            "k a fraction": (json.dumps(request([SECRET], k=3.5)).encode(), "application/json",
                             "k must be"),
            "mode a number": (json.dumps(request([SECRET], mode=2)).encode(), "application/json",
                              "mode"),
            "filters a list": (json.dumps(request([SECRET], filters=["country"])).encode(),
                               "application/json", "filters"),
            "params a list": (json.dumps({**request([SECRET]), "params": [1]}).encode(),
                              "application/json", "params"),
            "query a number": (json.dumps({"dataframe_records": [{"query": 7}, {"query": SECRET}]})
                               .encode(), "application/json", "query"),
            "two input formats": (json.dumps({**request([SECRET]), "inputs": [SECRET]}).encode(),
                                  "application/json", ""),
            "CSV without a query column": (f"question\n{SECRET}\n".encode(), "text/csv", "query"),
            "CSV unterminated quote": (f'query\n"{SECRET}\n'.encode(), "text/csv", ""),
        }
        for name, (data, content_type, fragment) in cases.items():
            status, body = post_raw(endpoint, data, content_type)
            print(f"\n{name}: HTTP {status} {body[:240]}")
            assert 400 <= status < 500, (name, status, body[:300])
            for private in (SECRET, secret_json, "bob.hidden", "secret question", PII_EMAIL):
                assert private not in body, (name, body[:500])
            assert fragment in body, (name, body[:500])

        # a filters object is what users try first: it is accepted like its JSON string
        answers = []
        for filters in ({"country": "Germany"}, '{"country": "Germany"}'):
            status, body = post_json(endpoint, request(["honey bees"], k=3, mode="bm25",
                                                       filters=filters))
            assert status == 200, body
            answers.append([r["document_id"] for r in body["predictions"]])
        assert answers[0] == answers[1] and set(answers[0]) <= {"bees", "bikes"}
