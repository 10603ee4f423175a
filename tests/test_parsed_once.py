"""A request is parsed once, at the boundary: its filter is compiled once, its ``k`` and its
query text checked once per query, however many layers (search, hybrid fusion, the store,
serving) it passes through (issue 12: before, a hybrid query compiled its filter 4 times)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from mlflow_rag.search import Searcher, check_query
from mlflow_rag.store import filters as filters_module
from mlflow_rag.store.checks import check_k
from mlflow_rag.store.store import Store
from tests.helpers_mlflow import build_store

FILTER = {"country": "Germany"}


@contextmanager
def counting() -> Iterator[Counter[str]]:
    """Count filter compilations (one compiler per filter) and calls of ``check_k`` and
    ``check_query``, wherever a module of the package imported them."""
    calls: Counter[str] = Counter()

    def counted(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    compiler = filters_module._Compiler
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(filters_module, "_Compiler",
                                              counted("compile", compiler)))
        for name, function in (("check_k", check_k), ("check_query", check_query)):
            wrapper = counted(name, function)
            for module in [m for n, m in sys.modules.items() if n.startswith("mlflow_rag")]:
                if getattr(module, name, None) is function:
                    stack.enter_context(mock.patch.object(module, name, wrapper))
        yield calls


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parsed")
    with Store.open(build_store(root / "store"), read_only=True) as store:
        return store.snapshot(root / "bundle")


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_searcher_parses_a_query_once(bundle: Path, mode: str) -> None:
    with Store.open(bundle, read_only=True) as store:
        searcher = Searcher(store)
        _ = searcher.embedder  # loaded before counting: loading is not parsing
        with counting() as calls:
            hits = searcher.search("honey bees", k=3, mode=mode, filters=FILTER)
    assert hits and {hit.document_metadata["country"] for hit in hits} == {"Germany"}
    assert calls == {"compile": 1, "check_k": 1, "check_query": 1}, calls


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_the_served_model_parses_each_query_once(bundle: Path, mode: str) -> None:
    from mlflow_rag.pyfunc_model import RetrieverModel
    from mlflow_rag.serving import Retriever

    model = RetrieverModel()
    model.trace = "off"
    model.retriever = Retriever(bundle)
    try:
        with counting() as calls:
            frame = model.predict(None, ["honey bees", "bicycle gears"],
                                  {"k": 2, "mode": mode, "filters": FILTER})
    finally:
        model.retriever.close()
    assert set(frame.document_id) <= {"bees", "bikes"} and len(frame) > 0
    # one filter and one k per request; each of the two queries checked once
    assert calls == {"compile": 1, "check_k": 1, "check_query": 2}, calls


@pytest.mark.parametrize("per_document", [False, True])
def test_the_cli_parses_a_search_once(bundle: Path, per_document: bool) -> None:
    from click.testing import CliRunner

    from mlflow_rag.cli import main

    args = ["search", "honey bees", "--store", str(bundle), "-k", "2", "--json",
            "--filter", '{"country": "Germany"}'] + (["--per-document"] if per_document else [])
    with counting() as calls:
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "bees" in result.output
    assert calls == {"compile": 1, "check_k": 1, "check_query": 1}, calls
