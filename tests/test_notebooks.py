"""The notebooks run top to bottom (offline, in a kernel of this environment), and are committed
without outputs.

Each notebook finds the repository from its working directory (``notebooks/``), uses the
shared data when ``MLFLOW_RAG_SHARED_DATA`` (or ``../shared/data``) has it, else the example
documents, and keeps everything it writes in a temporary folder. The cells assert what they
show (the served model answers as the store did; the champion finds a relevant document).
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from tests.conftest import shared_data_dir

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def execute(path: Path, monkeypatch: pytest.MonkeyPatch, *, shared_data: Path | None) -> float:
    """Run every cell in a fresh kernel started from ``notebooks/``; returns the seconds taken.
    A failing cell raises nbclient's CellExecutionError with the cell's traceback."""
    from nbclient import NotebookClient

    monkeypatch.setenv("MLFLOW_RAG_SHARED_DATA", str(shared_data or REPO / "no-shared-data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each notebook sets its own
    notebook = nbformat.read(path, as_version=4)
    started = time.monotonic()
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return time.monotonic() - started


def shared_or_skip(name: str) -> Path:
    data = shared_data_dir()
    if not (data / name).exists():
        pytest.skip(f"{name} not found in {data} (set MLFLOW_RAG_SHARED_DATA); "
                    "the examples variant of this test still runs")
    return data


def test_the_two_notebooks_exist() -> None:
    assert [p.name for p in ALL] == ["compare_variants.ipynb", "quickstart.ipynb"]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs_or_execution_counts(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in notebook.metadata


def test_quickstart_ingests_searches_logs_and_serves_the_speakers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = shared_or_skip("chatboti/2025-09-02-speaker-bio.csv")
    seconds = execute(NOTEBOOKS / "quickstart.ipynb", monkeypatch, shared_data=data)
    print(f"quickstart.ipynb: {seconds:.0f}s")


@pytest.mark.slow
def test_quickstart_runs_on_the_example_documents_without_shared_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    execute(NOTEBOOKS / "quickstart.ipynb", monkeypatch, shared_data=None)


@pytest.mark.slow
def test_compare_variants_evaluates_a_scifact_slice_and_registers_the_champion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = shared_or_skip("scifact-train/corpus.jsonl")
    seconds = execute(NOTEBOOKS / "compare_variants.ipynb", monkeypatch, shared_data=data)
    print(f"compare_variants.ipynb: {seconds:.0f}s")


@pytest.mark.slow
def test_compare_variants_runs_on_the_example_documents_without_shared_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    execute(NOTEBOOKS / "compare_variants.ipynb", monkeypatch, shared_data=None)
