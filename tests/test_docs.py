"""Docs that are generated from the code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from scripts.gen_cli_docs import TARGET, render


def test_cli_reference_matches_the_cli() -> None:
    # Regenerate with: python scripts/gen_cli_docs.py
    assert TARGET.read_text(encoding="utf-8") == render()


def test_every_cli_command_is_in_the_reference() -> None:
    from mlflow_rag.cli import main

    text = TARGET.read_text(encoding="utf-8")
    for name in main.commands:
        assert f"## mlflow-rag {name}" in text


def test_architecture_map_names_modules_that_exist() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    root = Path(__file__).resolve().parent.parent / "mlflow_rag"
    for module in ("store/schema.py", "store/db.py", "store/filters.py", "store/store.py",
                   "index/choose.py", "index/vector_index.py", "ingest.py", "search.py"):
        assert module in text and (root / module).exists()
