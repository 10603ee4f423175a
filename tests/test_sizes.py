"""The package's rooms stay small enough to read in one sitting (architecture issue 12).

A file does one job: past ~500 lines it has started a second one and splits by job, as the
store's facade did (``store.logs``, ``store.catalog``, ``store.governance``). A function past
100 lines is several steps in one body: it becomes named stages. The limits carry a little
room (a docstring's growth), not an allowance: nothing is exempt.

Reproduce the figures: ``wc -l mlflow_rag/**/*.py`` and :func:`largest_functions` below.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_rag"
MAX_FILE_LINES = 520
MAX_FUNCTION_LINES = 100


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def largest_functions(limit: int = 10) -> list[tuple[int, str]]:
    """(lines, "path:function") of the longest functions and methods, longest first."""
    out = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                out.append((lines, f"{path.relative_to(PACKAGE.parent)}:{node.name}"))
    return sorted(out, reverse=True)[:limit]


def test_no_file_of_the_package_is_over_the_line() -> None:
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in _sources()}
    assert len(sizes) > 100  # the package was found
    over = {str(p.relative_to(PACKAGE.parent)): n for p, n in sizes.items() if n > MAX_FILE_LINES}
    assert not over, f"files over {MAX_FILE_LINES} lines (split them by job): {over}"


def test_no_function_of_the_package_is_over_the_line() -> None:
    longest = largest_functions(limit=5)
    assert longest and longest[0][0] > 20  # functions were measured
    over = [(n, name) for n, name in longest if n > MAX_FUNCTION_LINES]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (make them stages): {over}"


if __name__ == "__main__":
    for lines, name in largest_functions(15):
        print(f"{lines:5d}  {name}")
