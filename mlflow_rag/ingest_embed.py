"""Embedding for ingest and refits: the embedder a store records, texts embedded in batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mlflow_rag.embed.base import Embedder
from mlflow_rag.embed.registry import find_embedder_kind
from mlflow_rag.store.checks import content_hash
from mlflow_rag.store.store import Store
from mlflow_rag.types import EmbedResult


def recorded_embedders(
    store: Store, *, include_remote: bool = False
) -> dict[str, Callable[[Sequence[str]], np.ndarray]]:
    """model name -> a function embedding texts with that model's recorded embedder (its
    saved tfidf state included), for :meth:`Store.verify`. Each loads its embedder on first
    use, so a model that cannot be loaded fails the check with the reason."""
    from mlflow_rag.embed.registry import get_embedder

    out: dict[str, Callable[[Sequence[str]], np.ndarray]] = {}
    for info in store.models():
        spec = info.embedder
        kind = find_embedder_kind(spec)
        # Local embedders only, unless asked: an openai model costs money and needs a key.
        if not spec or not (include_remote or (kind is not None and kind.local)):
            continue
        state = store.model_dir(info.name)

        def embed(texts: Sequence[str], spec: str = spec, state: Path = state) -> np.ndarray:
            model = get_embedder(spec, state_dir=state if state.is_dir() else None)
            vectors: np.ndarray = model.embed(list(texts)).vectors
            return vectors

        out[info.name] = embed
    return out


def make_embedder(spec: str, store: Store) -> Embedder:
    from mlflow_rag.embed.registry import get_embedder

    state = store.model_dir(spec)
    return get_embedder(spec, state_dir=state if state.is_dir() else None)


def embed_all(
    model: Embedder, texts: list[str], hashes: list[str], *, batch_size: int, progress: bool
) -> tuple[dict[str, np.ndarray], int, float]:
    from tqdm import tqdm

    vectors: dict[str, np.ndarray] = {}
    tokens, cost = 0, 0.0
    with tqdm(total=len(texts), desc=f"embed ({model.name})", unit="chunk",
              disable=not progress or not texts, leave=False) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            result = model.embed(batch)
            tokens += result.tokens
            cost += result.cost_usd
            for offset, vector in enumerate(result.vectors):
                vectors[hashes[start + offset]] = vector
            bar.update(len(batch))
    return vectors, tokens, cost




class EmbeddedAhead:
    """An embedder whose vectors for some texts were made before the ingest took the
    store's writer lock (a Spark partition embeds its chunks while other partitions write):
    those are looked up by text, the rest embedded by ``model``. Ingest sees ``model``'s
    name, version, dimension and window, so nothing it records differs."""

    def __init__(self, model: Embedder, vectors: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.vectors = vectors  # content hash of a text -> its vector
        self.name, self.version, self.dimension = model.name, model.version, model.dimension
        if hasattr(model, "max_tokens"):  # chunks are sized the same way as ahead of time
            self.max_tokens = model.max_tokens

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        hashes = [content_hash(text) for text in texts]
        missing = [text for text, h in zip(texts, hashes, strict=True) if h not in self.vectors]
        fresh = self.model.embed(missing) if missing else EmbedResult(
            vectors=np.zeros((0, self.dimension), dtype=np.float32))
        found = dict(zip((content_hash(t) for t in missing), fresh.vectors, strict=True))
        vectors = np.stack([self.vectors[h] if h in self.vectors else found[h] for h in hashes])
        return EmbedResult(vectors=vectors.astype(np.float32), tokens=fresh.tokens,
                           cost_usd=fresh.cost_usd, seconds=fresh.seconds)

    def embed_query(self, text: str) -> np.ndarray:
        return self.model.embed_query(text)
