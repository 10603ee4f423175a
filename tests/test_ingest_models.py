"""Several models in one store, models fitted on the corpus, and writers that take turns.

Issue 17.1 (a second embedder must keep the first one's vectors), 17.3 (tfidf refits as the
corpus grows; a query of unknown terms has no dense hits), 16.1 (two first ingests into one
store; `check` re-embeds a sample) and 17.13 (concurrent ingests take turns).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.errors import ChunkingChangeRefused, StoreBusy
from mlflow_rag.ingest import IngestOptions, document_action, ingest, refit_model
from mlflow_rag.search import Searcher
from mlflow_rag.store.store import Store
from tests.conftest import make_record
from tests.hash_embedder import HashEmbedder

REPO = Path(__file__).resolve().parent.parent
SPEAKERS = "chatboti/2025-09-02-speaker-bio.csv"
TFIDF = IngestOptions(embedder="tfidf")


class TokenHashEmbedder(HashEmbedder):
    """HashEmbedder with its own tokenizer (whitespace words), as MiniLM has WordPiece: the
    chunking config then records another tokenizer than tfidf's approximate one."""

    name = "hash-tok"
    version = "hash-tok-1"

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        import re

        return [m.span() for m in re.finditer(r"\S+", text)]


def vector_counts(store: Store) -> dict[str, int]:
    return {m.name: m.vector_count for m in store.models()}


def write_docs(folder: Path, docs: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


MARKDOWN = {
    "alpha.md": "# Alpha\n\nVector search finds nearest neighbours in embedding space. " * 8
                + "\n\n## Details\n\nFAISS builds flat, HNSW and IVF indexes over vectors.",
    "beta.md": "# Beta\n\nSQLite keeps metadata in tables with transactions and full-text "
               "search. " * 10,
    "gamma.md": "# Gamma\n\nChunking splits long documents into passages that fit the model "
                "window, with some overlap between neighbours. " * 9,
}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], capture_output=True,
                          text=True, env=env or child_env(), timeout=600)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


# --------------------------------------------------------------------------- 17.1: models


def test_the_tokenizer_alone_never_recuts_a_stored_document() -> None:
    fields_minilm = {"chunking": {"name": "fields", "tokenizer": "MiniLM", "version": 1}}
    fields_tfidf = {"chunking": {"name": "fields", "tokenizer": "approx-v1", "version": 1}}
    rec = {"name": "recursive", "chunk_size": 256, "chunk_overlap": 32, "version": 1}
    rec_minilm = {"chunking": {**rec, "tokenizer": "MiniLM"}}
    rec_tfidf = {"chunking": {**rec, "tokenizer": "approx-v1"}}
    smaller = {"chunking": {**rec, "chunk_size": 64, "tokenizer": "approx-v1"}}
    stored = ("h", fields_minilm)
    assert document_action(stored, "h", fields_tfidf) == "unchanged"
    assert document_action(stored, "h", fields_tfidf, rechunk=True) == "rechunk"
    assert document_action(("h", rec_minilm), "h", rec_tfidf) == "unchanged"
    assert document_action(("h", rec_minilm), "h", rec_tfidf, rechunk=True) == "rechunk"
    # another size is a real change, unless no chunking option was given (keep_chunking)
    assert document_action(("h", rec_tfidf), "h", smaller) == "rechunk"
    assert document_action(("h", rec_tfidf), "h", smaller, keep_chunking=True) == "unchanged"
    # the text or loader metadata changed: replaced, whatever the chunking
    assert document_action(("h", rec_tfidf), "h2", rec_tfidf, keep_chunking=True) == "updated"
    assert document_action(("h", {**rec_tfidf, "a": 1}), "h", rec_tfidf) == "updated"


def test_a_second_embedder_keeps_the_first_models_vectors_on_a_csv(
    shared_data: Path, tmp_path: Path
) -> None:
    csv = str(shared_data / SPEAKERS)
    with Store.open(tmp_path / "s", create=True) as store:
        first = ingest([csv], store, embedder=TokenHashEmbedder(), progress=False)
        chunks = store.stats().chunks
        assert first.documents_new == 13 and vector_counts(store) == {"hash-tok": chunks}
        second = ingest([csv], store, options=TFIDF, progress=False)
        assert (second.documents_updated, second.documents_unchanged) == (0, 13)
        assert second.vectors_embedded == chunks
        assert vector_counts(store) == {"hash-tok": chunks, "tfidf": chunks}
        # and back: nothing to do for either model
        third = ingest([csv], store, embedder=TokenHashEmbedder(), progress=False)
        assert third.vectors_embedded == 0 and third.documents_unchanged == 13
        assert vector_counts(store) == {"hash-tok": chunks, "tfidf": chunks}
        report = store.verify()
        assert all(m["ids_equal"] for m in report["models"].values())


def test_markdown_keeps_its_chunks_when_a_model_with_another_tokenizer_is_added(
    tmp_path: Path,
) -> None:
    folder = write_docs(tmp_path / "docs", MARKDOWN)
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=IngestOptions(embedder="tfidf", chunk_size=40),
               progress=False)
        before = {d: [c.text for c in store.get_document(d).chunks] for d in MARKDOWN}
        n = store.stats().chunks
        # no chunking option: the stored chunks (40 approx tokens) are kept and embedded
        report = ingest([str(folder)], store, embedder=TokenHashEmbedder(), progress=False)
        assert report.documents_unchanged == 3 and report.chunks == 0
        assert {d: [c.text for c in store.get_document(d).chunks] for d in MARKDOWN} == before
        assert vector_counts(store) == {"hash-tok": n, "tfidf": n}


def test_a_chunking_change_that_drops_vectors_is_refused_then_done_with_rechunk(
    tmp_path: Path,
) -> None:
    folder = write_docs(tmp_path / "docs", MARKDOWN)
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store,
               options=IngestOptions(embedder="tfidf", chunker="recursive", chunk_size=40),
               progress=False)
        ingest([str(folder)], store, embedder=TokenHashEmbedder(), progress=False)
        counts = vector_counts(store)
        generation = store.stats().generation
        smaller = IngestOptions(embedder="tfidf", chunker="recursive", chunk_size=20, chunk_overlap=0)
        with pytest.raises(ChunkingChangeRefused) as refused:
            ingest([str(folder)], store, options=smaller, progress=False)
        message = str(refused.value)
        assert f"would drop {counts['hash-tok']} vector(s) (hash-tok: {counts['hash-tok']})" in message
        assert "--rechunk" in message and "recursive 40/5" in message and "recursive 20/0" in message
        assert vector_counts(store) == counts and store.stats().generation == generation
        notes: list[str] = []
        report = ingest([str(folder)], store, options=IngestOptions(
            embedder="tfidf", chunker="recursive", chunk_size=20, chunk_overlap=0, rechunk=True),
            progress=False, on_message=notes.append)
        assert report.documents_updated == 3
        n = store.stats().chunks
        after = vector_counts(store)
        assert after["tfidf"] == n and after["hash-tok"] < counts["hash-tok"]
        assert any("of other models went with chunks whose text changed" in m for m in notes)
        # the other model catches up with the new chunks on its next ingest
        ingest([str(folder)], store, embedder=TokenHashEmbedder(), progress=False)
        assert vector_counts(store) == {"hash-tok": n, "tfidf": n}


def test_replacing_a_document_carries_other_models_vectors_of_unchanged_text(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("a", 8)
        store.ensure_model("b", 4)
        store.write([make_record("d", ["same text", "old text"], vectors=rng.normal(size=(2, 8)),
                                 model="a")])
        kept = rng.normal(size=4).astype(np.float32)
        store.add_vectors("b", ["d#0", "d#1"], np.stack([kept, rng.normal(size=4)]))
        store.write([make_record("d", ["new first", "same text", "new text"],
                                 vectors=rng.normal(size=(3, 8)), model="a")])
        assert vector_counts(store) == {"a": 3, "b": 1}
        carried = store.catalog.vectors_for_chunks("b", ["d#0", "d#1", "d#2"])
        assert list(carried) == ["d#1"]  # the chunk that still holds "same text"
        np.testing.assert_allclose(carried["d#1"], kept / np.linalg.norm(kept), rtol=1e-6)
        hits = store.dense_search(kept, model="b", k=1)
        assert hits[0].chunk_id == "d#1" and hits[0].text == "same text"
        assert all(m["ids_equal"] for m in store.verify()["models"].values())


def test_cli_second_embedder_then_refused_rechunk_on_a_store_with_data(
    shared_data: Path, tmp_path: Path
) -> None:
    csv, store = str(shared_data / SPEAKERS), str(tmp_path / "s")
    with Store.open(store, create=True) as opened:
        ingest([csv], opened, embedder=TokenHashEmbedder(), progress=False)
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", csv, "--store", store, "--embedder", "tfidf",
                                  "--no-track"])
    assert result.exit_code == 0, result.output
    assert "0 new, 0 updated, 13 unchanged" in result.stdout
    stats = json.loads(runner.invoke(main, ["stats", "--store", store, "--json"]).stdout)
    assert {n: m["vector_count"] for n, m in stats["models"].items()} == {
        "hash-tok": stats["chunks"], "tfidf": stats["chunks"]}
    result = runner.invoke(main, ["ingest", csv, "--store", store, "--embedder", "tfidf",
                                  "--chunker", "recursive", "--chunk-size", "16", "--no-track"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: re-chunking 13")
    assert "hash-tok: 26" in result.stderr
    again = json.loads(runner.invoke(main, ["stats", "--store", store, "--json"]).stdout)
    assert again == stats
    result = runner.invoke(main, ["ingest", csv, "--store", store, "--embedder", "tfidf",
                                  "--chunker", "recursive", "--chunk-size", "16", "--rechunk",
                                  "--no-track"])
    assert result.exit_code == 0, result.output
    assert "0 new, 13 updated" in result.stdout


@pytest.mark.minilm
@pytest.mark.slow
def test_cli_minilm_then_tfidf_on_the_speakers_keeps_every_minilm_vector(
    shared_data: Path, tmp_path: Path
) -> None:
    """The issue's own steps, with the real default MiniLM (slow: torch loads in the child)."""
    csv, store = str(shared_data / SPEAKERS), str(tmp_path / "s")
    first = cli("ingest", csv, "--store", store, "--no-track")
    assert first.returncode == 0, first.stderr
    second = cli("ingest", csv, "--store", store, "--embedder", "tfidf", "--no-track")
    assert second.returncode == 0, second.stderr
    assert "0 new, 0 updated, 13 unchanged" in second.stdout
    stats = cli("stats", "--store", store)
    assert "model minilm: 26 vectors" in stats.stdout and "model tfidf: 26 vectors" in stats.stdout
    check = cli("check", "--store", store)
    assert check.returncode == 0, check.stdout
    report = json.loads(check.stdout)["models"]
    assert report["minilm"]["embed_mismatches"] == 0 and report["tfidf"]["embed_mismatches"] == 0


@pytest.mark.minilm
def test_cli_markdown_tfidf_then_minilm_onnx_int8_keeps_the_tfidf_vectors(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", MARKDOWN)
    store = str(tmp_path / "s")
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(folder), "--store", store, "--embedder", "tfidf",
                                  "--no-track"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["ingest", str(folder), "--store", store, "--embedder",
                                  "minilm:onnx-int8", "--no-track"])
    assert result.exit_code == 0, result.output
    assert "0 new, 0 updated, 3 unchanged" in result.stdout
    stats = json.loads(runner.invoke(main, ["stats", "--store", store, "--json"]).stdout)
    counts = {n: m["vector_count"] for n, m in stats["models"].items()}
    assert counts == {"minilm:onnx-int8": stats["chunks"], "tfidf": stats["chunks"]}


# --------------------------------------------------------------------------- 17.3: refit


TOPICS = [
    "honey bees pollinate orchards and keep hives through the winter",
    "green tea leaves are steamed rolled and dried before brewing",
    "glaciers carve valleys as compacted snow slowly flows downhill",
    "volcanoes erupt basalt lava when mantle plumes melt the crust",
    "sourdough bread rises with wild yeast and lactic bacteria",
    "chess openings trade pawns for tempo and central control",
    "coral reefs bleach when warm water expels their algae",
    "violins resonate through spruce tops and maple backs",
    "comets grow tails of gas and dust near the sun",
]


def topic_docs(indexes: Sequence[int]) -> dict[str, str]:
    return {f"topic{i}.txt": f"{TOPICS[i]}. " * 3 for i in indexes}


def test_tfidf_refits_when_the_corpus_outgrows_its_fit_and_search_finds_the_new_documents(
    tmp_path: Path,
) -> None:
    folder = write_docs(tmp_path / "docs", topic_docs([0, 1]))
    notes: list[str] = []
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
        assert store.model("tfidf").dimension == 2
        write_docs(folder, topic_docs(range(2, 9)))
        ingest([str(folder)], store, options=TFIDF, progress=False, on_message=notes.append)
        assert any("refitting tfidf" in n and "more than 2x the 2" in n for n in notes)
        info = store.model("tfidf")
        assert info.dimension > 2 and vector_counts(store) == {"tfidf": 9}
        hits = Searcher(store).search("glaciers carve valleys", k=3, mode="dense")
        assert "glaciers" in hits[0].text and hits[0].score > 0.5
        # every stored vector is what the saved fit gives for its text (old ones re-embedded)
        from mlflow_rag.ingest import recorded_embedders

        report = store.verify(embedders=recorded_embedders(store), embed_sample=9)["models"]
        assert report["tfidf"]["embed_checked"] == 9 and report["tfidf"]["embed_mismatches"] == 0


def test_a_searcher_open_across_a_refit_by_another_process_reloads_the_fit(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", topic_docs([0, 1]))
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
    reader = Store.open(tmp_path / "s", read_only=True)
    searcher = Searcher(reader)
    assert searcher.search("honey bees", k=1, mode="dense")
    write_docs(folder, topic_docs(range(2, 9)))
    result = cli("ingest", str(folder), "--store", str(tmp_path / "s"), "--embedder", "tfidf",
                 "--no-track")
    assert result.returncode == 0 and "refitting tfidf" in result.stderr
    hits = searcher.search("comets grow tails", k=1, mode="dense")
    assert "comets" in hits[0].text and hits[0].score > 0.5
    reader.close()


def test_refit_never_warns_with_numbers_and_the_refit_command_catches_up(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", topic_docs([0, 1]))
    store_path = str(tmp_path / "s")
    with Store.open(store_path, create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
    write_docs(folder, topic_docs(range(2, 9)))
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(folder), "--store", store_path, "--embedder",
                                  "tfidf", "--refit", "never", "--no-track"])
    assert result.exit_code == 0, result.output
    assert "tfidf is stale: it would hold 9 texts, more than 2x the 2" in result.stderr
    assert "mlflow-rag refit --store" in result.stderr
    with Store.open(store_path, read_only=True) as store:
        assert store.model("tfidf").dimension == 2
    result = runner.invoke(main, ["refit", "--store", store_path])
    assert result.exit_code == 0, result.output
    assert "tfidf: 9 vectors re-embedded; dimension 2 ->" in result.stdout
    result = runner.invoke(main, ["search", "comets grow tails", "--store", store_path,
                                  "--mode", "dense", "-k", "1", "--json"])
    assert "comets" in json.loads(result.stdout)[0]["text"]
    check = runner.invoke(main, ["check", "--store", store_path])
    assert check.exit_code == 0, check.output


def test_a_refit_whose_commit_fails_puts_the_saved_fit_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_docs(tmp_path / "docs", topic_docs([0, 1]))
    state = tmp_path / "s" / "models" / "tfidf"
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
        saved = {p.name: p.read_bytes() for p in state.iterdir()}
        vectors = store.catalog.vectors_for_chunks("tfidf", ["topic0.txt#0", "topic1.txt#0"])

        def full_disk(*args: object, **kwargs: object) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Store, "replace_model_vectors", full_disk)
        write_docs(folder, topic_docs(range(2, 9)))
        with pytest.raises(OSError, match="No space"):
            ingest([str(folder)], store, options=TFIDF, progress=False)
        assert {p.name: p.read_bytes() for p in state.iterdir()} == saved
        assert store.stats().documents == 2
        again = store.catalog.vectors_for_chunks("tfidf", list(vectors))
        assert all(np.array_equal(vectors[k], again[k]) for k in vectors)


def test_a_query_of_unknown_terms_has_no_dense_hits_and_hybrid_keeps_bm25(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", topic_docs(range(9)))
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
        searcher = Searcher(store)
        assert searcher.search("xylophone zeppelin", k=5, mode="dense") == []
        assert searcher.search("xylophone zeppelin", k=5, mode="hybrid") == []
        assert len(searcher.search("honey bees", k=5, mode="dense")) == 5
        # one known term: BM25 and dense both answer
        hybrid = searcher.search("xylophone honey", k=3, mode="hybrid")
        assert hybrid and "honey" in hybrid[0].text
    result = CliRunner().invoke(main, ["search", "xylophone zeppelin", "--store",
                                       str(tmp_path / "s"), "--mode", "dense"])
    assert result.exit_code == 0 and result.stdout.strip() == "no hits"


def test_refit_after_a_delete_drops_the_deleted_documents_terms(tmp_path: Path) -> None:
    docs = topic_docs(range(9))
    docs["secret.txt"] = "the codename quixotrel appears only here. " * 3
    folder = write_docs(tmp_path / "docs", docs)
    with Store.open(tmp_path / "s", create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
        vocabulary = tmp_path / "s" / "models" / "tfidf" / "tfidf.json"
        assert "quixotrel" in vocabulary.read_text()
        store.delete("secret.txt")
        result = refit_model(store, "tfidf")
        assert result["after"]["vectors"] == 9
        assert "quixotrel" not in vocabulary.read_text()


def test_cli_delete_refits_tfidf_so_the_documents_terms_leave_the_vocabulary(
    tmp_path: Path,
) -> None:
    docs = topic_docs(range(9))
    docs["secret.txt"] = "the codename quixotrel appears only here. " * 3
    folder = write_docs(tmp_path / "docs", docs)
    store = str(tmp_path / "s")
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(folder), "--store", store, "--embedder", "tfidf",
                                "--no-track"]).exit_code == 0
    vocabulary = tmp_path / "s" / "models" / "tfidf" / "tfidf.json"
    kept = runner.invoke(main, ["delete", "topic0.txt", "--store", store, "--no-refit"])
    assert kept.exit_code == 0 and "honey" in vocabulary.read_text()
    result = runner.invoke(main, ["delete", "secret.txt", "--store", store])
    assert result.exit_code == 0, result.output
    assert "refitting tfidf" in result.stderr
    text = vocabulary.read_text()
    assert "quixotrel" not in text and "honey" not in text and "glaciers" in text
    check = runner.invoke(main, ["check", "--store", store])
    assert check.exit_code == 0, check.output


def test_mlproject_ingest_defaults_to_the_clis_embedder() -> None:
    import yaml

    spec = yaml.safe_load((REPO / "MLproject").read_text())
    default = spec["entry_points"]["ingest"]["parameters"]["embedder"]["default"]
    option = next(p for p in main.commands["ingest"].params if p.name == "embedder")
    assert default == option.default == "minilm"


# --------------------------------------------------------------------------- 16.1, 17.13


def jsonl_corpus(path: Path, prefix: str, n: int, seed: int) -> Path:
    """Documents of random words from a shared vocabulary, each with words of its own."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(400)]
    with path.open("w") as f:
        for i in range(n):
            text = " ".join(rng.choice(words, size=25)) + f" {prefix}{i}x {prefix}{i}y"
            f.write(json.dumps({"id": f"{prefix}-{i}", "text": text}) + "\n")
    return path


def found_by_own_text(store: Store, path: Path, sample: int) -> int:
    """How many sampled documents of ``path`` a dense search for their text ranks first."""
    lines = path.read_text().splitlines()
    picks = np.linspace(0, len(lines) - 1, num=min(sample, len(lines))).astype(int)
    searcher = Searcher(store)
    found = 0
    for i in picks:
        text = json.loads(lines[i])["text"]
        hits = searcher.search(text, k=1, mode="dense")
        found += bool(hits) and hits[0].text == text and hits[0].score > 0.99
    return found


@pytest.mark.parametrize("sizes", [(30, 300), (60, 60)])
def test_two_first_ingests_started_together_take_turns_and_both_land(
    tmp_path: Path, sizes: tuple[int, int]
) -> None:
    a = jsonl_corpus(tmp_path / "a.jsonl", "a", sizes[0], seed=1)
    b = jsonl_corpus(tmp_path / "b.jsonl", "b", sizes[1], seed=2)
    store = str(tmp_path / "s")
    procs = [
        subprocess.Popen([sys.executable, "-m", "mlflow_rag.cli", "ingest", str(src), "--store",
                          store, "--embedder", "tfidf", "--no-track"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=child_env())
        for src in (a, b)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    check = cli("check", "--store", store)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["models"]["tfidf"]["embed_mismatches"] == 0
    with Store.open(store, read_only=True) as opened:
        assert opened.stats().documents == sum(sizes)
        assert vector_counts(opened) == {"tfidf": sum(sizes)}
        for path in (a, b):
            assert found_by_own_text(opened, path, 15) >= 14, path.name


@pytest.mark.slow
def test_two_large_first_ingests_started_together_both_land(tmp_path: Path) -> None:
    a = jsonl_corpus(tmp_path / "a.jsonl", "a", 1500, seed=3)
    b = jsonl_corpus(tmp_path / "b.jsonl", "b", 1500, seed=4)
    store = str(tmp_path / "s")
    procs = [subprocess.Popen([sys.executable, "-m", "mlflow_rag.cli", "ingest", str(src),
                               "--store", store, "--embedder", "tfidf", "--no-track"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env()) for src in (a, b)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert cli("check", "--store", store).returncode == 0
    with Store.open(store, read_only=True) as opened:
        found = [found_by_own_text(opened, path, 150) for path in (a, b)]
    print(f"found by their own text: {found[0]}/150 and {found[1]}/150")
    assert min(found) >= 140


def test_check_fails_on_vectors_of_another_tfidf_fit(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", topic_docs(range(9)))
    store_path = tmp_path / "s"
    with Store.open(store_path, create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
    assert CliRunner().invoke(main, ["check", "--store", str(store_path)]).exit_code == 0
    # What an unlocked concurrent ingest left behind: a state fitted on other texts saved
    # over the one the vectors were made with (same dimension, so nothing else notices).
    from mlflow_rag.embed.tfidf import TfidfEmbedder

    other = TfidfEmbedder()
    other.fit([f"{TOPICS[(i + 4) % 9]} extra words {i}" for i in range(9)])
    other.save(store_path / "models" / "tfidf")
    result = CliRunner().invoke(main, ["check", "--store", str(store_path)])
    assert result.exit_code == 1
    report = json.loads(result.stdout)["models"]["tfidf"]
    assert report["embed_mismatches"] == report["embed_checked"] == 8
    assert report["ids_equal"] and report["self_found"] == report["sampled"]  # blind to it


def test_verify_embed_check_names_a_failing_embedder_and_skips_an_unavailable_one(
    random_store,  # type: ignore[no-untyped-def]
) -> None:
    from mlflow_rag.errors import EmbedderUnavailable

    store, vectors = random_store(n_docs=10, per_doc=2, dim=16)
    try:
        by_text = {c.text: vectors[i * 2 + j] for i in range(10)
                   for j, c in enumerate(store.get_document(f"doc{i}").chunks)}

        def same(texts: Sequence[str]) -> np.ndarray:
            return np.stack([by_text[t] for t in texts])

        def broken(texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("state file unreadable")

        def absent(texts: Sequence[str]) -> np.ndarray:
            raise EmbedderUnavailable("install the extra")

        ok = store.verify(embedders={"m": same})["models"]["m"]
        assert ok["embed_checked"] == 8 and ok["embed_mismatches"] == 0
        bad = store.verify(embedders={"m": broken})["models"]["m"]
        assert bad["embed_mismatches"] == 8 and "state file unreadable" in bad["embed_error"]
        other = store.verify(embedders={"m": lambda t: same(t)[:, ::-1].copy()})["models"]["m"]
        assert other["embed_mismatches"] >= 7
        skipped = store.verify(embedders={"m": absent})["models"]["m"]
        assert skipped["embed_checked"] == 0 and "install the extra" in skipped["embed_skipped"]
    finally:
        store.close()


def test_a_stale_state_is_refitted_by_the_next_ingest(tmp_path: Path) -> None:
    """A state that is not the fit of the stored vectors (a kill between saving a refit and
    committing it) is noticed by the version check and refitted, not used."""
    folder = write_docs(tmp_path / "docs", topic_docs(range(9)))
    store_path = tmp_path / "s"
    with Store.open(store_path, create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
    from mlflow_rag.embed.tfidf import TfidfEmbedder

    other = TfidfEmbedder()
    other.fit([f"{TOPICS[(i + 4) % 9]} extra words {i}" for i in range(9)])
    other.save(store_path / "models" / "tfidf")
    write_docs(folder, {"more.txt": "one more document about honey bees and tea"})
    notes: list[str] = []
    with Store.open(store_path) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False, on_message=notes.append)
        assert any("is not the fit its 9 stored vectors were made with" in n for n in notes)
    assert CliRunner().invoke(main, ["check", "--store", str(store_path)]).exit_code == 0


def test_two_processes_creating_one_store_never_both_migrate(tmp_path: Path) -> None:
    """Both see user_version 0; one migrates, the other waits and finds it done."""
    code = (
        "import sys, time\n"
        "from mlflow_rag.store.store import Store\n"
        "start = float(sys.argv[2])\n"
        "time.sleep(max(0.0, start - time.time()))\n"
        "Store.open(sys.argv[1], create=True).close()\n"
    )
    failures = []
    for round_ in range(6):
        target = str(tmp_path / f"s{round_}")
        start = str(time.time() + 2.0)  # both children import first, then open at once
        procs = [subprocess.Popen([sys.executable, "-c", code, target, start],
                                  stderr=subprocess.PIPE, text=True, env=child_env())
                 for _ in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            if proc.returncode:
                failures.append(err.strip().splitlines()[-1])
        with Store.open(target, read_only=True) as store:
            assert store.stats().schema_version >= 1
    assert failures == []


def test_a_second_writer_waits_or_is_told_at_once(tmp_path: Path) -> None:
    folder = write_docs(tmp_path / "docs", topic_docs(range(9)))
    store_path = str(tmp_path / "s")
    with Store.open(store_path, create=True) as store:
        ingest([str(folder)], store, options=TFIDF, progress=False)
    write_docs(folder, {"more.txt": "honey bees and green tea and comets"})
    with Store.open(store_path) as holder, holder.writer_lock():
        refused = cli("ingest", str(folder), "--store", store_path, "--embedder", "tfidf",
                      "--no-wait", "--no-track")
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"error: another process (pid {os.getpid()}) is writing to {store_path}; try again "
            "when it has finished (or let this command wait for it)")
        waiting = subprocess.Popen(
            [sys.executable, "-m", "mlflow_rag.cli", "ingest", str(folder), "--store",
             store_path, "--embedder", "tfidf", "--no-track"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        # it says so at once, then waits for the lock
        line = waiting.stderr.readline() if waiting.stderr else ""
        assert line.startswith(f"another process (pid {os.getpid()}) is writing to")
        assert waiting.poll() is None
        other = Store.open(store_path)
        try:
            with pytest.raises(StoreBusy, match="another process"), other.writer_lock(wait=False):
                pass
        finally:
            other.close(flush=False)  # a flush would wait for the lock this thread holds
    out, _ = waiting.communicate(timeout=300)
    assert waiting.returncode == 0 and "1 new, 0 updated, 9 unchanged" in out


def test_a_fitted_state_goes_to_the_folder_the_store_gives_its_model(tmp_path: Path) -> None:
    """Two model names that slug alike: the store gives the second its own folder
    (``models/tfidf-<hash>``); ingest must save the fit there and search must load it from
    there, not from the other model's ``models/tfidf``."""
    from mlflow_rag.embed.tfidf import TfidfEmbedder

    folder = write_docs(tmp_path / "docs", MARKDOWN)
    with Store.open(tmp_path / "s", create=True) as store:
        store.ensure_model("TFIDF", 8)  # takes the slug "tfidf" first
        ingest([str(folder)], store, options=TFIDF, progress=False)
        state = store.model_dir("tfidf")
        assert state.name != "tfidf" and TfidfEmbedder.is_saved(state)
        assert not (store.root / "models" / "tfidf").exists()  # the other model's folder
        assert vector_counts(store) == {"TFIDF": 0, "tfidf": store.stats().chunks}
        hits = Searcher(store, model="tfidf").search("SQLite transactions", k=1, mode="dense")
        assert "SQLite" in hits[0].text
        # a second ingest loads that fit (an unchanged corpus: nothing refitted or re-embedded)
        again = ingest([str(folder)], store, options=TFIDF, progress=False)
        assert again.documents_unchanged == len(MARKDOWN) and again.vectors_embedded == 0
