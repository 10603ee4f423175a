"""The CLI on a PostgreSQL store, as a user runs it: ingest the speakers, search every mode,
show, stats, check, delete, copy to a folder and back; the password never printed, and the
same answers from the copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], cwd=cwd,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          check=False, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_the_speakers_on_postgresql_through_the_cli(pg_cluster, shared_data: Path,
                                                    tmp_path: Path) -> None:
    csv = shared_data / "chatboti" / "2025-09-02-speaker-bio.csv"
    database = pg_cluster.new_database()
    store = pg_cluster.dsn(database) + "?schema=speakers"
    env = {**os.environ, "MLFLOW_RAG_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    outputs = []

    def run(*args: str, check: bool = True, host: str = "cache") -> subprocess.CompletedProcess[str]:
        proc = cli(*args, cwd=tmp_path, check=check,
                   env={**env, "MLFLOW_RAG_CACHE_DIR": str(tmp_path / host)})
        outputs.append(proc.stdout + proc.stderr)
        return proc

    run("ingest", str(csv), "--store", store, "--embedder", "tfidf", "--no-track")
    stats = json.loads(run("stats", "--store", store, "--json").stdout)
    assert stats["documents"] == 13 and stats["embeddings"] == stats["chunks"]
    again = run("ingest", str(csv), "--store", store, "--embedder", "tfidf", "--no-track")
    assert "unchanged" in again.stdout + again.stderr

    hits = {}
    for mode in ("dense", "bm25", "hybrid"):
        found = json.loads(run("search", "legacy modernization", "--store", store, "--mode", mode,
                               "-k", "5", "--json").stdout)
        assert len(found) == 5
        hits[mode] = [h["chunk_id"] for h in found]
    first = hits["hybrid"][0].split("#")[0]
    shown = json.loads(run("show", first, "--store", store, "--json").stdout)
    assert shown["id"] == first
    run("check", "--store", store, "--no-embed-check")

    folder = tmp_path / "shipped"
    copied = run("copy", store, str(folder))
    assert f"{stats['documents']} documents" in copied.stdout
    for mode, expected in hits.items():
        found = json.loads(run("search", "legacy modernization", "--store", str(folder), "--mode",
                               mode, "-k", "5", "--json").stdout)
        assert [h["chunk_id"] for h in found] == expected, mode

    # Another host (its own cache folder) loads the fitted TF-IDF state from the database.
    elsewhere = json.loads(run("search", "legacy modernization", "--store", store, "--mode",
                               "dense", "-k", "5", "--json", host="host-b").stdout)
    assert [h["chunk_id"] for h in elsewhere] == hits["dense"]

    run("delete", first, "--store", store)  # refits TF-IDF: a new vocabulary version
    after = json.loads(run("stats", "--store", store, "--json").stdout)
    assert after["documents"] == stats["documents"] - 1
    here, there = (
        [h["chunk_id"] for h in json.loads(run("search", "legacy modernization", "--store", store,
                                                "--mode", "dense", "-k", "5", "--json",
                                                host=host).stdout)]
        for host in ("cache", "host-b"))
    assert here == there and not any(c.startswith(first + "#") for c in here)
    missing = run("show", first, "--store", store, check=False)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1

    wrong = run("stats", "--store", pg_cluster.dsn(database, password="hunter2-wrong"), check=False)
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert "cannot connect" in wrong.stderr
    for text in outputs:
        assert pg_cluster.password not in text and "hunter2-wrong" not in text
