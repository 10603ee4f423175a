"""The layering rule of docs/architecture.md: only the MLflow adapters import mlflow."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mlflow_rag"

# The MLflow adapters, as docs/architecture.md lists them; the core never imports MLflow.
ADAPTERS = {
    "tracking.py", "tracking_session.py", "tracking_bundles.py", "tracking_model.py",
    "pyfunc_model.py", "pyfunc_rag_model.py", "eval_tracking.py", "serving.py",
    "genai_tracking.py", "answer_eval_tracking.py", "tracking_restore.py", "pyfunc_serving.py",
}


def _imports_mlflow(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
            return True
    return False


def test_only_the_mlflow_adapters_import_mlflow() -> None:
    importers = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if _imports_mlflow(path)}
    assert importers, "the scan found no import of mlflow at all: it is broken"
    assert importers <= ADAPTERS, sorted(importers - ADAPTERS)


def test_the_scan_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from mlflow.exceptions import MlflowException\n")
    assert _imports_mlflow(probe)
    probe.write_text("import mlflow_rag.tracking\nfrom mlflow_rag import cli\n")
    assert not _imports_mlflow(probe)


def test_every_adapter_exists_and_is_on_the_architecture_map() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for name in ADAPTERS:
        assert (PACKAGE / name).exists(), name
        assert name in text, f"{name} is an MLflow adapter missing from docs/architecture.md"
