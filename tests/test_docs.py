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
    for module in ("store/schema.py", "store/backend.py", "store/filters.py", "store/store.py",
                   "index/choose.py", "index/vector_index.py", "ingest.py", "search.py"):
        assert module in text and (root / module).exists()


def test_serving_requirements_table_is_the_registrys() -> None:
    """docs/serving.md lists what a logged model needs per embedder; the registry decides."""
    import re

    from mlflow_rag.embed.registry import KINDS
    from mlflow_rag.tracking import BASE_REQUIREMENTS

    text = (Path(__file__).resolve().parent.parent / "docs" / "serving.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            for spec in re.findall(r"`([^`]+)`", cells[0]):
                rows[spec] = cells[1]
    header = next(line for line in text.splitlines() if line.startswith("| embedder |"))
    assert set(re.findall(r"[\w-]+", header.split("|")[2])) >= set(BASE_REQUIREMENTS)

    def named(spec: str) -> set[str]:
        row = rows[spec]
        names = set(re.findall(r"`([\w.-]+)`", row)) - {"minilm"}
        return names | (named("minilm") if "the `minilm` set" in row else set())

    for kind in KINDS:
        assert named(kind.spec) == set(kind.requirements), kind.spec
