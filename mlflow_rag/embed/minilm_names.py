"""MiniLM's spec names, below both the embedder registry (which lists them) and the backends
(``minilm_fast``, which parse them), so neither imports the other for them."""

from __future__ import annotations

MINILM_PREFIX = "minilm:"  # minilm:onnx-int8 etc.: "minilm:<backend>", see MINILM_BACKENDS
#: MiniLM's backends (mlflow_rag.embed.minilm_fast); "torch" is the plain model, "minilm".
MINILM_BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
