"""Embedders: text -> float32 unit vectors, behind one Protocol and a registry.

Importing this package imports neither torch, scikit-learn nor openai; each embedder imports
its backend on first use.
"""

from mlflow_rag.embed.base import Embedder, FittedEmbedder
from mlflow_rag.embed.checks import InvalidTextAt, InvalidVectorAt
from mlflow_rag.embed.registry import EMBEDDERS, get_embedder, get_query_embedder

__all__ = [
    "EMBEDDERS",
    "Embedder",
    "FittedEmbedder",
    "InvalidTextAt",
    "InvalidVectorAt",
    "get_embedder",
    "get_query_embedder",
]
