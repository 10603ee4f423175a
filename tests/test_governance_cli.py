"""Governance through the CLI on a store that already holds data (issue 15): access labels at
ingest and principals at search, show and list, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main

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
