"""Embedder names -> instances. Importing this module imports no heavy library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow_rag.embed.base import Embedder
from mlflow_rag.errors import InvalidInput, UnknownChoice

EMBEDDERS = ["minilm", "tfidf", "openai:<model>"]
OPENAI_PREFIX = "openai:"
MINILM_PREFIX = "minilm:"  # minilm:onnx-int8 etc.; see mlflow_rag.embed.minilm_fast.BACKENDS


def get_query_embedder(spec: str, *, state_dir: Path | None = None, **options: Any) -> Embedder:
    """The embedder for the queries of a store model built with ``spec``.

    :func:`get_embedder`, except for the plain MiniLM (``"minilm"``, ``"minilm:torch"``): its
    queries go through ONNX Runtime from an fp32 export of the same weights when onnxruntime
    is installed (the same vectors; no torch import, so the CLI starts in about a second),
    else through torch. See :func:`mlflow_rag.embed.minilm_fast.minilm_query_embedder`.
    """
    if spec in ("minilm", f"{MINILM_PREFIX}torch") and "backend" not in options:
        from mlflow_rag.embed.minilm_fast import minilm_query_embedder

        return minilm_query_embedder(**options)
    return get_embedder(spec, state_dir=state_dir, **options)


def get_embedder(spec: str, *, state_dir: Path | None = None, **options: Any) -> Embedder:
    """The embedder named by ``spec`` (one of :data:`EMBEDDERS`), configured by ``options``.

    ``"minilm"`` accepts ``backend=`` (``"torch"``, the default, ``"onnx"`` or ``"onnx-int8"``),
    as does the spec ``"minilm:<backend>"``; see :mod:`mlflow_rag.embed.minilm_fast`.
    ``"tfidf"`` loads the model saved in ``state_dir`` when there is one (so search uses the
    ingest's fit); otherwise it returns an unfitted embedder for the ingest to ``fit`` and
    ``save(state_dir)``. ``options`` given with a saved tfidf model must match its settings:
    a silently different tokenisation would make query vectors meaningless.
    """
    if spec == "minilm" or (isinstance(spec, str) and spec.startswith(MINILM_PREFIX)):
        # "minilm" is the plain sentence-transformers model; "minilm:<backend>" (or the
        # backend= option) picks ONNX Runtime / int8, each stored as its own model name.
        from mlflow_rag.embed.minilm_fast import minilm_embedder

        return minilm_embedder(spec, **options)
    if spec == "tfidf":
        from mlflow_rag.embed.tfidf import TfidfEmbedder

        if TfidfEmbedder.is_saved(state_dir):
            assert state_dir is not None
            embedder = TfidfEmbedder.load(state_dir)
            if options:
                wanted = TfidfEmbedder(**options).params()
                saved = embedder.params()
                differing = sorted(k for k in options if wanted.get(k) != saved.get(k))
                if differing:
                    raise InvalidInput(
                        f"tfidf options {differing} differ from the model saved in {state_dir} "
                        f"({ {k: saved.get(k) for k in differing} }); refit to change them"
                    )
            return embedder
        return TfidfEmbedder(**options)
    if isinstance(spec, str) and spec.startswith(OPENAI_PREFIX):
        from mlflow_rag.embed.openai_embedder import OpenAIEmbedder

        model = spec[len(OPENAI_PREFIX) :].strip()
        if not model:
            raise InvalidInput(
                "the openai embedder needs a model name, e.g. 'openai:text-embedding-3-small'"
            )
        return OpenAIEmbedder(model, **options)
    raise UnknownChoice("embedder", spec, EMBEDDERS)
