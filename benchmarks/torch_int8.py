"""torch's dynamic int8 MiniLM: a measured candidate, deliberately not an offered backend.

Its weight scales are per tensor (coarser than ONNX Runtime's) and its activation scales span
the batch, so a text's vector would depend on its batch mates (see the docstring of
mlflow_rag/embed/minilm_fast.py). ``benchmarks/minilm_speed.py --also torch-int8`` builds it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_rag.embed.minilm import MiniLMEmbedder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class TorchInt8MiniLMEmbedder(MiniLMEmbedder):
    """The plain model with its Linear layers quantised to int8 by torch (dynamic, per tensor)."""

    name = "minilm:torch-int8"
    version = f"{MiniLMEmbedder.version}+torch-int8"
    backend = "torch-int8"

    def _load(self) -> SentenceTransformer:
        model = super()._load()
        import torch

        quantized: SentenceTransformer = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
        return quantized
