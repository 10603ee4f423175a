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
    if ok:
        assert result.exit_code == 0, result.output
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
