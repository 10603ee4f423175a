"""mlflow-rag: the metadata store, search and evaluation harness for RAG systems, on MLflow.

The Python API works without MLflow::

    from mlflow_rag import Store, Searcher
    with Store.open("store") as store:
        hits = Searcher(store).search("legacy modernization", k=5, mode="hybrid")

Names are imported lazily so that ``import mlflow_rag`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Store": "mlflow_rag.store.store",
    "Searcher": "mlflow_rag.search",
    "reciprocal_rank_fusion": "mlflow_rag.search",
    "compile_filter": "mlflow_rag.store.sqlite.filter_sql",
    "choose_index": "mlflow_rag.index.choose",
    "Hit": "mlflow_rag.types",
    "DocumentRecord": "mlflow_rag.types",
    "ChunkRecord": "mlflow_rag.types",
    "VectorBatch": "mlflow_rag.types",
    "SourceDocument": "mlflow_rag.types",
    "RagError": "mlflow_rag.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlflow_rag' has no attribute {name!r}")
