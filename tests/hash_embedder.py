"""A small deterministic Embedder for tests that need a second embedding space quickly.

It is a real implementation of the protocol (hashed bag of words, L2-normalised), not a mock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from mlflow_rag.types import EmbedResult


class HashEmbedder:
    name = "hash-test"
    version = "hash-bow-1"

    def __init__(self, dimension: int = 64) -> None:
        self.dimension = dimension

    def _one(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dimension, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            bucket = int(hashlib.blake2b(word.encode(), digest_size=4).hexdigest(), 16)
            vector[bucket % self.dimension] += 1.0
        norm = np.linalg.norm(vector)
        if norm == 0:
            vector[0] = 1.0
            norm = 1.0
        return vector / norm

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        return EmbedResult(vectors=np.stack([self._one(t) for t in texts]), tokens=0)

    def embed_query(self, text: str) -> np.ndarray:
        return self._one(text)
