"""Faster backends for all-MiniLM-L6-v2: ONNX Runtime, fp32 (``onnx``) or int8 (``onnx-int8``).

The plain model (:class:`~mlflow_rag.embed.minilm.MiniLMEmbedder`, backend ``"torch"``) is
what ``"minilm"`` means. The others are chosen by spec or option::

    get_embedder("minilm:onnx-int8")            # what a store records and search rebuilds
    get_embedder("minilm", backend="onnx-int8")  # the same embedder

Each backend has its own :attr:`name` (``"minilm:onnx-int8"``; ``"torch"`` keeps plain
``"minilm"``) and :attr:`version`, so a store keeps the vectors of two backends apart (one
model, index and embedding cache each) and search embeds queries with the backend that
embedded the documents. The vectors of two backends are close, not equal (int8: cosine about
0.995 per text), and mixing them would blur rankings without any error to show for it.

ONNX backends export the BERT encoder once (torch + transformers, TorchScript exporter) into a
cache directory, ``$MLFLOW_RAG_CACHE_DIR/onnx`` (default ``~/.cache/mlflow-rag/onnx``), keyed
by the SHA-256 of the weights (and config.json) and of the export recipe; ``onnx-int8`` then quantises its
MatMul weights with ``onnxruntime.quantization.quantize_dynamic``: int8, one scale per output
channel (per-tensor scales, like torch's, cost too much: cosine to the plain model ~0.93
instead of ~0.995), the first layer's feed-forward output kept in fp32
(:data:`~mlflow_rag.embed.onnx_export.KEEP_FP32`; the export cache is ``onnx_export``'s).
Activations are quantised at run time with one scale per MatMul input, so ``onnx-int8``
embeds one text per run: in a batch, a text's vector would depend on its batch mates.

At run time only onnxruntime, numpy and the ``tokenizers`` fast tokenizer are used: with the
cache filled, torch is not even imported. Tokenization, truncation (256 positions with [CLS]
and [SEP]), mean pooling over the attention mask and L2 normalisation reproduce what
sentence-transformers does, so ``"onnx"`` gives the plain model's vectors to float rounding.
int8 results used to depend on the CPU's int8 kernels (VNNI or not); the session now asks
ONNX Runtime for exact integer sums on every x86 CPU (:data:`INT8_SESSION_CONFIG`), so x86
CPUs with and without VNNI should give the same vectors (only a VNNI CPU was at hand to
measure); thread counts and repeated runs give identical bits (measured). ``onnx-int8``
vectors stored before this on a CPU without VNNI may be slightly off (cosine ~0.99 to
today's): re-embed them into a fresh store if that matters.

The queries of a plain ``minilm`` store (torch vectors) are embedded by
:func:`minilm_query_embedder`: :class:`OnnxQueryMiniLMEmbedder`, the fp32 export under the
plain model's own name and version (its vectors, to float rounding), when onnxruntime is
installed, else torch. A CLI search then starts without torch (benchmarks/cli_start.py).

torch's own dynamic int8 (``benchmarks/torch_int8.py``) is measurable but not offered
as a backend: its weight scales are per tensor (coarser than ONNX Runtime's), and its
activation scales span the batch, so a text's vector would depend on its batch mates. Its
quality: ``benchmarks/minilm_speed.py --also torch-int8 --quality``.

Measured in ``benchmarks/minilm_speed.py`` (figures in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_rag.embed.minilm import MODEL_PACKAGE, MiniLMEmbedder
from mlflow_rag.embed.minilm_names import MINILM_BACKENDS, MINILM_PREFIX
from mlflow_rag.embed.onnx_export import ENV_CACHE_DIR, ONNX_INSTALL_HINT, cached_onnx_model, recipe_key
from mlflow_rag.errors import EmbedderError, EmbedderUnavailable, InvalidInput, UnknownChoice

if TYPE_CHECKING:  # typing only: importing these at run time would pull in torch/onnxruntime
    import onnxruntime
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = MINILM_BACKENDS  # named in the embedder registry
#: What ``"minilm"`` without a backend means. Stays the plain model: stores record the spec
#: ``"minilm"`` and search rebuilds the query embedder from it, so changing this would embed
#: the queries of every existing store with other weights than its documents.
DEFAULT_BACKEND = "torch"
SPEC_PREFIX = MINILM_PREFIX
#: Session settings that make ``onnx-int8`` compute the same vectors on every x86 CPU. Without
#: VNNI (AVX2-only CPUs such as EPYC Zen 2/3, AVX-512 without VNNI) ONNX Runtime's default
#: u8 x s8 kernel sums pairs of products in saturating 16-bit integers (VPMADDUBSW), which
#: clips large products: the likely cause of a test text at cosine 0.98988 to the plain model
#: in a fresh clone's run (issue 17.5) where this VNNI CPU gives 0.99412. This option makes
#: those CPUs use the exact u8 x u8 kernel (slower there, not measured); VNNI CPUs compute
#: exactly either way, so it changes nothing on them (measured: identical bits,
#: benchmarks/int8_spread.py). Vectors are the same for any thread count (measured: 1 and 2).
INT8_SESSION_CONFIG: dict[str, str] = {"session.x64quantprecision": "1"}
_BASE_VERSION = MiniLMEmbedder.version


def embedder_name(backend: str) -> str:
    """The store's model name for ``backend``: ``"minilm"`` or ``"minilm:<backend>"``."""
    check_backend(backend)
    return "minilm" if backend == "torch" else f"{SPEC_PREFIX}{backend}"


def check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise UnknownChoice("minilm backend", backend, BACKENDS)
    return str(backend)


def backend_of(spec: str, backend: str | None = None) -> str:
    """The backend that ``spec`` (``"minilm"`` or ``"minilm:<backend>"``) and ``backend`` name.

    Raises :class:`UnknownChoice` for an unknown backend and :class:`InvalidInput` when the
    spec and the option name two different backends.
    """
    if spec == "minilm":
        from_spec = None
    elif spec.startswith(SPEC_PREFIX):
        from_spec = check_backend(spec[len(SPEC_PREFIX) :])
    else:
        raise InvalidInput(f"not a minilm spec: {spec!r}; expected 'minilm' or 'minilm:<backend>'")
    if backend is not None:
        check_backend(backend)
        if from_spec is not None and from_spec != backend:
            raise InvalidInput(
                f"embedder {spec!r} and backend={backend!r} name two different backends; "
                "give one of them"
            )
    return backend or from_spec or DEFAULT_BACKEND


def minilm_embedder(spec: str = "minilm", *, backend: str | None = None, **options: Any) -> MiniLMEmbedder:
    """The MiniLM embedder for ``spec`` / ``backend`` (see :func:`backend_of`), with ``options``."""
    chosen = backend_of(spec, backend)
    if chosen == "torch":
        return MiniLMEmbedder(**options)
    if chosen == "onnx":
        return OnnxMiniLMEmbedder(**options)
    return OnnxInt8MiniLMEmbedder(**options)


def physical_cores() -> int:
    """Physical cores (hyper-threads share one core's int8/fp32 units, so they add little)."""
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except ImportError:  # psutil comes with mlflow; without it, logical cores will do
        count = None
    return max(1, int(count or os.cpu_count() or 1))


def default_cache_dir() -> Path:
    """``$MLFLOW_RAG_CACHE_DIR/onnx``, else ``~/.cache/mlflow-rag/onnx``."""
    root = os.environ.get(ENV_CACHE_DIR) or "~/.cache/mlflow-rag"
    return Path(root).expanduser() / "onnx"


# --------------------------------------------------------------------------- ONNX Runtime


class OnnxMiniLMEmbedder(MiniLMEmbedder):
    """all-MiniLM-L6-v2 run by ONNX Runtime from an fp32 export of the plain model.

    ``batch_size`` texts go through the model per run; the default is one. Measured on a
    2-core EPYC (benchmarks/RESULTS.md), one text per run is faster than batches of 64 even
    with length bucketing: a batch's activations (64 x 256 x 1536 floats in the feed-forward
    layers) spill out of the CPU caches, one text's stay in them, and nothing is padded.
    ``num_threads`` is ONNX Runtime's intra-op thread count for this embedder's session (not
    process-wide); ``None`` means one per physical core. ``cache_dir`` holds the exported
    model (default: :func:`default_cache_dir`).
    """

    name = embedder_name("onnx")
    version = f"{_BASE_VERSION}+onnx"
    backend = "onnx"
    quantized = False
    #: Largest batch that keeps a text's vector independent of its batch mates (None: any).
    max_batch_size: int | None = None
    #: Checked at construction (cheap): onnx quantises (int8) and is listed in the extra.
    required_modules: tuple[str, ...] = ("onnxruntime", "onnx")
    #: The tokenizer and the weights; torch only to export once (export_onnx says so).
    model_modules = ("tokenizers", MODEL_PACKAGE)

    def __init__(
        self,
        *,
        batch_size: int = 1,
        length_bucketing: bool = True,
        num_threads: int | None = None,
        model_dir: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if self.max_batch_size is not None and batch_size > self.max_batch_size:
            raise InvalidInput(
                f"{self.name} embeds one text per run (batch_size=1), got batch_size={batch_size}: "
                "its int8 activation scales are computed per run, so in a batch a text's "
                "vector would depend on the other texts (and the padding) of that batch"
            )
        missing = [m for m in self.required_modules if importlib.util.find_spec(m) is None]
        if missing:
            raise EmbedderUnavailable(
                f"{self.name} needs {', '.join(missing)} (not installed); run: {ONNX_INSTALL_HINT}"
            )
        super().__init__(
            batch_size=batch_size, length_bucketing=length_bucketing, device="cpu",
            num_threads=num_threads, model_dir=model_dir,
        )
        # Resolved now so that config() logs the thread count that actually ran.
        self.num_threads = num_threads if num_threads is not None else physical_cores()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self._session: onnxruntime.InferenceSession | None = None
        self._batch_tokenizer: Tokenizer | None = None
        self.onnx_path: Path | None = None

    @property
    def model(self) -> SentenceTransformer:
        raise EmbedderError(
            f"{self.name} runs an ONNX Runtime session, not a sentence-transformers model; "
            "use .session"
        )

    @property
    def session(self) -> onnxruntime.InferenceSession:
        """The ONNX Runtime session, created on first use (exports the model if not cached)."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._create_session()
        return self._session

    def _create_session(self) -> onnxruntime.InferenceSession:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbedderUnavailable(
                f"{self.name} cannot import {exc.name}; run: {ONNX_INSTALL_HINT}"
            ) from exc
        path = cached_onnx_model(self.model_dir, self.cache_dir, quantized=self.quantized)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.num_threads or physical_cores())
        # One operator at a time: BERT is a chain, parallel operators would only fight for
        # the same cores.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle workers sleep instead of spinning: on a CPU shared with other processes the
        # spinning costs them (and us) CPU time for nothing.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: no per-node optimizer chatter
        if self.quantized:
            for key, value in INT8_SESSION_CONFIG.items():
                options.add_session_config_entry(key, value)
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbedderError(f"{self.name} could not load {path}: {exc}") from exc
        self.onnx_path = path
        return session

    @property
    def batch_tokenizer(self) -> Tokenizer:
        """The model's tokenizer, truncating at 256 positions and padding to the batch's longest.

        What the sentence-transformers path feeds the model: [CLS] + at most 254 word pieces
        + [SEP], padded with [PAD] (id 0) where the attention mask is 0.
        """
        if self._batch_tokenizer is None:
            with self._lock:
                if self._batch_tokenizer is None:
                    from tokenizers import Tokenizer

                    tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
                    tokenizer.enable_truncation(max_length=self.max_seq_length)
                    pad_id = tokenizer.token_to_id("[PAD]")
                    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
                    self._batch_tokenizer = tokenizer
        return self._batch_tokenizer

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.batch_tokenizer.encode_batch(texts)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        token_type_ids = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self.session.run(
            ["last_hidden_state"],
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids},
        )
        # Mean over the real tokens (the Pooling module of the model: pooling_mode_mean_tokens);
        # L2 normalisation follows in finalize_vectors, which also refuses zero or NaN rows.
        mask = attention_mask.astype(np.float32)
        summed = np.einsum("bld,bl->bd", hidden, mask)
        pooled: np.ndarray = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return pooled

    def config(self) -> dict[str, object]:
        out = super().config()
        out["onnx_recipe"] = recipe_key(quantized=self.quantized)
        return out


class OnnxInt8MiniLMEmbedder(OnnxMiniLMEmbedder):
    """ONNX Runtime with int8 MatMul weights (per-channel scales, dynamic activation scales).

    Always one text per run: dynamic quantisation picks one activation scale per MatMul input
    over the whole run, so batching would make a text's vector depend on its batch mates and
    break "same text, same vector" (which the store's embedding cache relies on).
    """

    name = embedder_name("onnx-int8")
    version = f"{_BASE_VERSION}+onnx-int8"
    backend = "onnx-int8"
    quantized = True
    max_batch_size = 1


# --------------------------------------------------------------------------- minilm queries

#: How the queries of a plain ``minilm`` store are embedded: ``auto`` (ONNX Runtime when it is
#: installed and the export works, else torch), ``onnx`` (ONNX Runtime or an error), ``torch``.
ENV_QUERY_RUNTIME = "MLFLOW_RAG_MINILM_QUERY_RUNTIME"
QUERY_RUNTIMES: tuple[str, ...] = ("auto", "onnx", "torch")


class OnnxQueryMiniLMEmbedder(OnnxMiniLMEmbedder):
    """The plain model, ``"minilm"``, run by ONNX Runtime from the fp32 export of its weights.

    Same :attr:`name` and :attr:`version` as :class:`MiniLMEmbedder`: these are that model's
    vectors (cosine to torch's >= 0.9999999 and max abs difference 1.8e-7 on 400 SciFact
    texts, ``benchmarks/int8_spread.py``; tested >= 0.9999 in ``tests/test_minilm_fast.py``),
    not another backend's, so the queries of an existing
    ``minilm`` store can be embedded with it; :func:`minilm_query_embedder` does. Needs only
    onnxruntime at run time (and torch once, to export). Ingest keeps the torch model: one
    long process where loading it costs little, and stored vectors stay exactly the ones the
    quality figures were measured with.
    """

    name = "minilm"
    version = _BASE_VERSION
    backend = "onnx"
    required_modules = ("onnxruntime",)


def check_query_runtime(runtime: object) -> str:
    if runtime not in QUERY_RUNTIMES:
        raise UnknownChoice(f"minilm query runtime (${ENV_QUERY_RUNTIME})", runtime, QUERY_RUNTIMES)
    return str(runtime)


def minilm_query_embedder(
    *, runtime: str | None = None, num_threads: int | None = None, cache_dir: Path | None = None,
    model_dir: Path | None = None,
) -> MiniLMEmbedder:
    """The embedder for the queries of a plain ``minilm`` store; what search and serving use.

    With ``runtime`` ``"auto"`` (the default; else ``$MLFLOW_RAG_MINILM_QUERY_RUNTIME``):
    :class:`OnnxQueryMiniLMEmbedder` with its session loaded, so the caller's first query is
    as fast as the next (a process start then imports neither torch nor sentence-transformers);
    if onnxruntime is not installed, or the export cannot be made or loaded (say, an
    unwritable cache directory: a warning says why), the plain :class:`MiniLMEmbedder`, which
    loads torch on first use. ``"onnx"`` raises instead of falling back; ``"torch"`` is the
    plain model. The first call on a machine exports the model once into the cache
    (:func:`cached_onnx_model`; it imports torch and takes tens of seconds: a warning says so).
    """
    chosen = check_query_runtime(
        runtime if runtime is not None else (os.environ.get(ENV_QUERY_RUNTIME) or "auto")
    )
    if chosen != "torch":
        try:
            embedder = OnnxQueryMiniLMEmbedder(
                num_threads=num_threads, cache_dir=cache_dir, model_dir=model_dir
            )
            embedder.session  # noqa: B018 (exports if needed, loads; failures surface here)
            return embedder
        except EmbedderError as exc:
            if chosen == "onnx":
                raise
            # A package not installed is a choice (torch then reports what it lacks itself);
            # an export or a cache that fails is a problem worth a line.
            if not isinstance(exc, EmbedderUnavailable):
                logger.warning("embedding queries with torch: the ONNX path failed: %s", exc)
    return MiniLMEmbedder(num_threads=num_threads, model_dir=model_dir)
