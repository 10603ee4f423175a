"""Scenario: `mlflow-rag search --mode dense --filter` on a store that holds data, on both
backends, answers exactly what brute force over the filtered chunks answers, whichever scan
(index/filtered.py) the filter's selectivity chooses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.index import filtered
from mlflow_rag.search import Searcher
from mlflow_rag.store.store import Store

WORDS = ["river", "stone", "cloud", "ember", "maple", "quartz", "harbor", "lantern", "meadow",
         "copper", "violet", "thunder", "saffron", "glacier", "orchid", "falcon"]
TEAMS = ("north", "south", "east")


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    rng = np.random.default_rng(19)
    for i in range(120):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 30))))
        # the query's words, a different number of times in each note: distinct scores
        body = f"{words} {'river ' * (i % 9)}{'ember ' * (i % 4)}"
        (folder / f"note{i:03d}.md").write_text(
            f"---\nteam: {TEAMS[i % 3]}\nnumber: {i}\n---\n{body}\n", encoding="utf-8")
    return folder


def test_dense_search_with_a_filter_equals_brute_force_on_the_filtered_chunks(
    store_location: str, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("ingest", str(corpus), "--store", store_location, "--embedder", "tfidf", "--no-track")
    chosen: list[str] = []

    def spy(kind: str, *, allowed: int, total: int) -> str:
        chosen.append(filtered.filtered_strategy(kind, allowed=allowed, total=total))
        return chosen[-1]

    monkeypatch.setattr("mlflow_rag.index.vector_index.filtered_strategy", spy)
    with Store.open(store_location, read_only=True) as store:
        rows = store.catalog.chunks_with_vectors("tfidf")
        vectors = store.catalog.vectors_for_chunks("tfidf", [r[0] for r in rows])
        documents = {d.id: d.metadata for d in store.find_documents(None, limit=1000)}
        query = Searcher(store).embed_query("river ember")
    assert len(rows) == 120
    for spec, k, strategy in [({"team": "north"}, 10, "bitmap"),  # a third of the chunks
                              ({"team": {"$in": ["south", "east"]}}, 25, "bitmap"),
                              ({"number": 40}, 5, "gather")]:  # one chunk of 120
        chosen.clear()
        hits = json.loads(run("search", "river ember", "--store", store_location, "--mode",
                              "dense", "-k", str(k), "--filter", json.dumps(spec), "--json"))
        assert chosen[-1] == strategy  # (opening a store spot-checks its index first)
        key, value = next(iter(spec.items()))
        wanted = value["$in"] if isinstance(value, dict) else [value]
        allowed = [c for c, d, _ in rows if documents[d][key] in wanted]
        exact = sorted(allowed, key=lambda c: -float(vectors[c] @ query))[:k]
        assert [h["chunk_id"] for h in hits] == exact
        assert [h["score"] for h in hits] == pytest.approx(
            [float(vectors[c] @ query) for c in exact], abs=1e-5)
