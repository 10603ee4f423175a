"""Governance through the CLI on a store that already holds data (issue 15): access labels at
ingest and principals at search, show and list, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from tests import helpers_mlflow

tracking_template = helpers_mlflow.tracking_template  # shared fixtures
tracking_uri = helpers_mlflow.tracking_uri

TOPICS = ["budget salaries payroll review", "vector search index tuning",
          "payroll vector review notes", "salaries of the search team"]


def run(*args: str, ok: bool = True) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if ok:  # stdout alone: notes on stderr (a refit) do not break the JSON
        assert result.exit_code == 0, result.output
        return result.exit_code, result.stdout
    return result.exit_code, result.output


def write_root(root: Path, name: str, count: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"{name}{i}.txt").write_text(
            f"{TOPICS[i % len(TOPICS)]} {name} document number {i}.\n" * 3, encoding="utf-8")
    return root


@pytest.fixture
def labelled(store_location: str, tmp_path: Path) -> tuple[str, Path]:
    """A store holding public documents, then HR documents labelled ``hr`` and JSONL records
    each naming its own labels."""
    public = write_root(tmp_path / "public", "pub", 4)
    hr = write_root(tmp_path / "hr", "hr", 3)
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(json.dumps(r) for r in [
        {"id": "legal-1", "text": "payroll contract review for legal", "_access": "legal,ann"},
        {"id": "open-1", "text": "payroll open notes for everyone", "_access": ""},
    ]) + "\n", encoding="utf-8")
    store = store_location
    run("ingest", str(public), "--store", store, "--embedder", "tfidf", "--no-track")
    run("ingest", str(hr), "--store", store, "--embedder", "tfidf", "--no-track",
        "--access-labels", "hr")
    run("ingest", str(records), "--store", store, "--embedder", "tfidf", "--no-track",
        "--access-labels", "hr")
    return store, tmp_path


def ids_of(output: str) -> set[str]:
    return {hit["document_id"] for hit in json.loads(output)}


def test_a_principal_sees_only_its_labels_in_every_mode_and_in_list(labelled) -> None:
    store, _ = labelled
    for mode in ("dense", "bm25", "hybrid"):
        _, everything = run("search", "payroll review", "--store", store, "--mode", mode,
                            "-k", "50", "--json")
        _, bob = run("search", "payroll review", "--store", store, "--mode", mode, "-k", "50",
                     "--json", "--principal", "bob")
        _, hr = run("search", "payroll review", "--store", store, "--mode", mode, "-k", "50",
                    "--json", "--principal", "bob", "--groups", "hr")
        _, ann = run("search", "payroll review", "--store", store, "--mode", mode, "-k", "50",
                     "--json", "--principal", "ann")
        assert any(d.startswith("hr") for d in ids_of(everything)), mode
        assert not any(d.startswith("hr") or d == "legal-1" for d in ids_of(bob)), mode
        assert any(d.startswith("hr") for d in ids_of(hr)) and "legal-1" not in ids_of(hr)
        assert "legal-1" in ids_of(ann) and not any(d.startswith("hr") for d in ids_of(ann))
        # a record with an empty _access field takes the ingest's --access-labels
        assert "open-1" not in ids_of(bob) and "open-1" in ids_of(hr)
    _, listed = run("list", "--store", store, "--json", "--principal", "bob")
    assert {d["id"] for d in json.loads(listed)} == {f"pub{i}.txt" for i in range(4)}
    _, listed = run("list", "--store", store, "--json", "--principal", "bob", "--groups", "hr")
    assert len(json.loads(listed)) == 4 + 3 + 1


def test_show_says_not_found_alike_for_hidden_and_missing(labelled) -> None:
    store, _ = labelled
    code, shown = run("show", "legal-1", "--store", store, "--json", "--principal", "ann")
    assert json.loads(shown)["metadata"]["_access"] == ["ann", "legal"]
    outputs = []
    for doc_id in ("legal-1", "legal-1#0", "nothing-here"):
        code, out = run("show", doc_id, "--store", store, "--principal", "bob", ok=False)
        assert code == 1 and len(out.strip().splitlines()) == 1
        outputs.append(out.replace(doc_id, "ID"))
    assert outputs[0] == outputs[1] == outputs[2]


def test_bad_labels_and_groups_alone_are_one_line_errors_and_nothing_changes(labelled) -> None:
    store, tmp_path = labelled
    _, before = run("stats", "--store", store, "--json")
    code, out = run("ingest", str(tmp_path / "public"), "--store", store, "--embedder", "tfidf",
                    "--no-track", "--access-labels", "a\tb", ok=False)
    assert code == 1 and "bad access label" in out and len(out.strip().splitlines()) == 1
    code, out = run("search", "payroll", "--store", store, "--groups", "hr", ok=False)
    assert code == 1 and "without a principal" in out
    _, after = run("stats", "--store", store, "--json")
    assert json.loads(after)["documents"] == json.loads(before)["documents"]


# ------------------------------------------------------------------ ingest --sync


@pytest.fixture
def two_roots(store_location: str, tmp_path: Path) -> tuple[str, Path, Path]:
    """A store holding the documents of two folders, ingested separately."""
    first = write_root(tmp_path / "first", "a", 4)
    second = write_root(tmp_path / "second", "b", 3)
    for root in (first, second):
        run("ingest", str(root), "--store", store_location, "--embedder", "tfidf", "--no-track")
    return store_location, first, second


def stored_ids(store: str) -> set[str]:
    _, out = run("list", "--store", store, "--json", "--limit", "1000")
    return {d["id"] for d in json.loads(out)}


def test_sync_dry_run_lists_the_changes_and_writes_nothing(two_roots) -> None:
    store, first, second = two_roots
    (first / "a0.txt").unlink()
    (first / "a1.txt").write_text("budget rewritten entirely.\n", encoding="utf-8")
    (first / "a9.txt").write_text("a brand new payroll note.\n", encoding="utf-8")
    (second / "b0.txt").unlink()  # gone from the other root, which is not synced
    _, before = run("stats", "--store", store, "--json")
    _, out = run("ingest", str(first), "--store", store, "--embedder", "tfidf", "--no-track",
                 "--sync", "--dry-run", "--json")
    preview = json.loads(out)
    assert (preview["new"], preview["updated"], preview["deleted"]) == (
        ["a9.txt"], ["a1.txt"], ["a0.txt"])
    assert preview["unchanged"] == 2 and preview["dry_run"] is True
    _, after = run("stats", "--store", store, "--json")
    assert json.loads(after) == json.loads(before)  # generation included: nothing written
    _, text = run("ingest", str(first), "--store", store, "--embedder", "tfidf", "--no-track",
                  "--sync", "--dry-run")
    assert "1 new, 1 updated, 1 deleted" in text and "deleted: a0.txt" in text


def test_sync_deletes_what_is_gone_from_its_sources_and_never_touches_other_roots(
    two_roots,
) -> None:
    store, first, second = two_roots
    (first / "a0.txt").unlink()
    (first / "a1.txt").write_text("budget rewritten entirely.\n", encoding="utf-8")
    (second / "b0.txt").unlink()
    _, out = run("ingest", str(first), "--store", store, "--embedder", "tfidf", "--no-track",
                 "--sync", "--json")
    report = json.loads(out)
    assert (report["documents_deleted"], report["documents_updated"]) == (1, 1)
    assert stored_ids(store) == {"a1.txt", "a2.txt", "a3.txt", "b0.txt", "b1.txt", "b2.txt"}
    code, _ = run("show", "a0.txt", "--store", store, ok=False)
    assert code == 1
    for mode in ("dense", "bm25", "hybrid"):  # the deleted document left every index
        _, hits = run("search", "budget salaries payroll", "--store", store, "--mode", mode,
                      "-k", "50", "--json")
        assert "a0.txt" not in ids_of(hits)
    run("check", "--store", store, "--no-embed-check")
    # without --sync nothing is deleted; syncing the second root now removes b0 only
    run("ingest", str(second), "--store", store, "--embedder", "tfidf", "--no-track")
    assert "b0.txt" in stored_ids(store)
    run("ingest", str(second / "*.txt"), "--store", store, "--embedder", "tfidf", "--no-track",
        "--sync")
    assert stored_ids(store) == {"a1.txt", "a2.txt", "a3.txt", "b1.txt", "b2.txt"}


# ------------------------------------------------------------------ versions and lineage


def test_an_updated_document_keeps_its_history_with_the_runs_that_wrote_and_replaced_it(
    two_roots,
) -> None:
    store, first, _ = two_roots
    _, out = run("show", "a1.txt", "--store", store, "--history", "--json")
    [original] = json.loads(out)["versions"]
    assert original["replaced_at"] is None and original["written_by"]
    (first / "a1.txt").write_text("budget rewritten entirely.\n", encoding="utf-8")
    _, out = run("ingest", str(first), "--store", store, "--embedder", "tfidf", "--no-track",
                 "--json")
    second_run = json.loads(out)["ingest_id"]
    _, out = run("show", "a1.txt", "--store", store, "--history", "--json")
    old, new = json.loads(out)["versions"]
    assert (old["version"], new["version"]) == (1, 2)
    assert old["content_hash"] == original["content_hash"] != new["content_hash"]
    assert (old["replaced_by"], old["ended_by"], new["written_by"]) == (
        second_run, "updated", second_run)
    assert old["replaced_at"] == new["written_at"] and new["replaced_at"] is None
    _, text = run("show", "a1.txt", "--store", store, "--history")
    assert "2 version(s)" in text and "updated" in text and "current" in text
    # a deleted document keeps its history; a principal is told "not found" as for any id
    (first / "a2.txt").unlink()
    run("ingest", str(first), "--store", store, "--embedder", "tfidf", "--no-track", "--sync")
    _, out = run("show", "a2.txt", "--store", store, "--history", "--json")
    assert json.loads(out)["versions"][-1]["ended_by"] == "deleted"
    code, out = run("show", "a2.txt", "--store", store, "--history", "--principal", "x", ok=False)
    assert code == 1 and "no document with id 'a2.txt'" in out
    run("delete", "a3.txt", "--store", store)  # a delete through the CLI ends it too
    _, out = run("show", "a3.txt", "--store", store, "--history", "--json")
    last = json.loads(out)["versions"][-1]
    assert (last["ended_by"], last["replaced_by"]) == ("deleted", None)


def test_lineage_follows_a_document_a_chunk_and_a_query(two_roots) -> None:
    store, _, _ = two_roots
    _, hits = run("search", "payroll review", "--store", store, "--mode", "dense", "-k", "3",
                  "--json", "--log-query")
    top = json.loads(hits)[0]
    _, out = run("lineage", top["document_id"], "--store", store, "--json")
    chain = json.loads(out)
    [doc] = chain["documents"]
    assert chain["kind"] == "document" and doc["source_path"].endswith(top["document_id"])
    assert doc["versions"][0]["written_by"] == chain["ingest_runs"][0]["id"]
    assert chain["ingest_runs"][0]["embedder"] == "tfidf"
    assert all(e["model"] == "tfidf" and e["model_version"] for c in doc["chunks"]
               for e in c["embeddings"])
    [query] = [q for q in doc["queries"] if q["chunk_id"] == top["chunk_id"]]
    assert "principal" not in query["metadata"]
    run("search", "payroll review", "--store", store, "--mode", "bm25", "--log-query",
        "--principal", "ann", "--groups", "hr")
    _, out = run("lineage", top["document_id"], "--store", store, "--json")
    logged = [q["metadata"] for q in json.loads(out)["documents"][0]["queries"]]
    assert {"mode": "bm25", "k": 5, "principal": "ann", "groups": ["hr"]} in logged
    _, out = run("lineage", top["chunk_id"], "--store", store, "--json")
    chunk_chain = json.loads(out)
    assert chunk_chain["kind"] == "chunk"
    assert [c["id"] for c in chunk_chain["documents"][0]["chunks"]] == [top["chunk_id"]]
    _, out = run("lineage", query["query_id"], "--store", store, "--json")
    query_chain = json.loads(out)
    assert query_chain["kind"] == "query"
    assert query_chain["query"]["hits"][0]["chunk_id"] == top["chunk_id"]
    assert top["document_id"] in {d["id"] for d in query_chain["documents"]}
    _, text = run("lineage", top["document_id"], "--store", store)
    assert text.startswith(f"document {top['document_id']}") and "ingest " in text
    code, out = run("lineage", "nothing", "--store", store, ok=False)
    assert code == 1 and "no document, chunk, logged query or answer with id 'nothing'" in out


def test_lineage_follows_an_answer_to_its_query_and_the_documents_it_cited(two_roots) -> None:
    store, _, _ = two_roots
    _, out = run("ask", "payroll review", "--store", store, "--no-track", "--json")
    answer = json.loads(out)
    cited = answer["citations"][0]
    _, out = run("lineage", answer["output_id"], "--store", store, "--json")
    chain = json.loads(out)
    assert chain["kind"] == "answer" and chain["answer"]["query_id"] == answer["query_id"]
    assert chain["answer"]["generator"] == "extractive"
    assert cited["chunk_id"] in {c["chunk_id"] for c in chain["answer"]["citations"]}
    assert cited["document_id"] in {d["id"] for d in chain["documents"]}
    _, out = run("lineage", cited["document_id"], "--store", store, "--json")
    [doc] = json.loads(out)["documents"]
    assert {(a["answer_id"], a["chunk_id"]) for a in doc["answers"]} >= {
        (answer["output_id"], cited["chunk_id"])}
    _, text = run("lineage", answer["output_id"], "--store", store)
    assert text.startswith(f"answer {answer['output_id']}") and "by extractive" in text
    _, text = run("lineage", cited["document_id"], "--store", store)
    assert f"cited by answer {answer['output_id']}" in text


def test_lineage_ends_at_the_mlflow_run_of_each_ingest(tracking_uri: str, tmp_path: Path) -> None:
    root = write_root(tmp_path / "docs", "t", 2)
    store = str(tmp_path / "store")
    _, out = run("ingest", str(root), "--store", store, "--embedder", "tfidf", "--json",
                 "--experiment", "lineage")
    report = json.loads(out)
    _, out = run("lineage", "t0.txt", "--store", store, "--json", "--runs")
    [ingest] = json.loads(out)["ingest_runs"]
    assert ingest["id"] == report["ingest_id"]
    assert [r["run_id"] for r in ingest["mlflow_runs"]] == [report["run_id"]]
    _, text = run("lineage", "t0.txt", "--store", store, "--runs")
    assert f"MLflow run {report['run_id']}" in text


def test_a_csv_access_column_labels_each_row_and_is_never_text(store_location: str,
                                                               tmp_path: Path) -> None:
    table = tmp_path / "people.csv"
    long = "a long biography of payroll work across many teams and years " * 3
    table.write_text("id,bio,_access\n"
                     f"p1,{long} one,\"hr,legal\"\n"
                     f"p2,{long} two,\n", encoding="utf-8")
    run("ingest", str(table), "--store", store_location, "--embedder", "tfidf", "--no-track",
        "--id-column", "id")
    _, out = run("show", "p1", "--store", store_location, "--json")
    shown = json.loads(out)
    assert shown["metadata"]["_access"] == ["hr", "legal"]
    assert all("hr,legal" not in c["text"] for c in shown["chunks"])
    _, out = run("search", "payroll biography", "--store", store_location, "--json", "-k", "5",
                 "--principal", "bob")
    assert ids_of(out) == {"p2"}
    _, out = run("search", "payroll biography", "--store", store_location, "--json", "-k", "5",
                 "--principal", "bob", "--groups", "legal")
    assert ids_of(out) == {"p1", "p2"}


def test_a_sync_of_a_source_that_loads_nothing_deletes_nothing(two_roots) -> None:
    """An emptied (or unmounted) folder must not wipe what came from it."""
    store, first, _ = two_roots
    for path in first.iterdir():
        path.unlink()
    code, out = run("ingest", str(first), "--store", store, "--embedder", "tfidf", "--no-track",
                    "--sync", ok=False)
    assert code == 1 and "nothing to ingest" in out
    assert {"a0.txt", "a1.txt", "a2.txt", "a3.txt"} <= stored_ids(store)
