"""Scenario: the same `mlflow-rag search --mode dense --filter` before and after writes that
change what it selects (new matching notes, a note's metadata changed, a deletion), on both
backends, each time equal to brute force over the chunks the filter allows; and a served
store (one open Store, as the server holds it) answering the repeated filter the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.search import Searcher
from mlflow_rag.store.store import Store

WORDS = ["river", "stone", "cloud", "ember", "maple", "quartz", "harbor", "lantern"]


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def write_notes(folder: Path, first: int, count: int, team: str) -> None:
    rng = np.random.default_rng(first)
    for i in range(first, first + count):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 20))))
        (folder / f"note{i:03d}.md").write_text(
            f"---\nteam: {team}\n---\n{words} {'river ' * (i % 7)}\n", encoding="utf-8")


def brute_force(store: Store, query: np.ndarray, team: str, k: int) -> list[str]:
    rows = store.catalog.chunks_with_vectors("tfidf")
    vectors = store.catalog.vectors_for_chunks("tfidf", [r[0] for r in rows])
    teams = {d.id: d.metadata.get("team") for d in store.find_documents(None, limit=1000)}
    allowed = [c for c, d, _ in rows if teams[d] == team]
    return sorted(allowed, key=lambda c: (-round(float(vectors[c] @ query), 6), c))[:k]


def test_a_filter_repeated_across_writes_answers_what_the_store_now_holds(
    store_location: str, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    write_notes(folder, 0, 30, "south")
    write_notes(folder, 30, 6, "north")
    run("ingest", str(folder), "--store", store_location, "--embedder", "tfidf", "--no-track")
    served = Store.open(store_location, read_only=True)  # one open store across the writes
    spec = json.dumps({"team": "north"})
    k = 8

    def check(label: str) -> None:
        hits = json.loads(run("search", "river ember", "--store", store_location, "--mode",
                              "dense", "-k", str(k), "--filter", spec, "--json"))
        with Store.open(store_location, read_only=True) as fresh:
            query = Searcher(fresh).embed_query("river ember")  # as the CLI embedded it
            exact = brute_force(fresh, query, "north", k)
        got = sorted(hits, key=lambda h: (-round(h["score"], 6), h["chunk_id"]))
        assert [h["chunk_id"] for h in got] == exact, label
        for _ in range(2):  # the served store: the second query is the remembered filter's
            again = served.dense_search(query, model="tfidf", k=k, filters={"team": "north"})
            assert sorted(h.chunk_id for h in again) == sorted(exact), label

    check("first")
    write_notes(folder, 36, 4, "north")  # new notes the filter selects
    run("ingest", str(folder), "--store", store_location, "--embedder", "tfidf", "--no-track")
    check("after new matching notes")
    (folder / "note031.md").write_text(  # a selected note's metadata changes: it leaves
        (folder / "note031.md").read_text(encoding="utf-8").replace("team: north",
                                                                    "team: south"),
        encoding="utf-8")
    (folder / "note002.md").write_text(  # and one joins
        (folder / "note002.md").read_text(encoding="utf-8").replace("team: south",
                                                                    "team: north"),
        encoding="utf-8")
    run("ingest", str(folder), "--store", store_location, "--embedder", "tfidf", "--no-track")
    check("after a metadata change")
    with Store.open(store_location) as writable:
        gone = next(d.id for d in writable.find_documents({"team": "north"}, limit=1))
        writable.delete(gone)
    check("after a deletion")
    served.close()

