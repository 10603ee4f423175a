"""Embeddings from the OpenAI API or any server that speaks it (vLLM, Ollama, Azure, ...).

Uses the official ``openai`` client with its own retries switched off (``max_retries=0``):
retries happen here, so every attempt, wait and give-up is counted and reported per batch, and
tests can replace the sleep. Vectors are requested as base64 (4 bytes per float instead of ~20
characters of JSON, the client's own default) and decoded with numpy; a server that answers
with float lists is accepted too.
"""

from __future__ import annotations

import email.utils
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mlflow_rag.embed.checks import check_query, check_texts, finalize_vectors
from mlflow_rag.errors import DimensionMismatch, EmbedderError, EmbedderUnavailable, InvalidInput
from mlflow_rag.types import EmbedResult

if TYPE_CHECKING:  # typing only: the client is imported on first use
    from openai import OpenAI

# USD per 1M input tokens (openai.com/api/pricing, 2025). Models not listed cost 0:
# self-hosted compatible servers have no per-token price.
PRICE_PER_MILLION_TOKENS: dict[str, float] = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}
# Native output sizes, so the dimension is known before the first request.
NATIVE_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# The API's limits per request: 2048 inputs, 300,000 tokens summed over the inputs.
MAX_BATCH_SIZE = 2048
MAX_BATCH_TOKENS = 300_000
# 408 timeout, 409 conflict (lock), 429 rate limit: transient by the API's own retry policy;
# every 5xx is retried as well. Other 4xx (400 bad input, 401 bad key, 404 model) are final.
_RETRYABLE_4XX = frozenset({408, 409, 429})
INSTALL_HINT = "pip install openai"


def openai_api_key(model: str, api_key: str | None) -> str:
    """The API key for ``openai:<model>`` (the given one, else ``OPENAI_API_KEY``), once the
    openai package is known to be there; a clear error otherwise. The embedder and the chat
    generator both ask this before their first request."""
    import importlib.util

    if importlib.util.find_spec("openai") is None:
        raise EmbedderUnavailable(f"openai:{model} needs the openai package; run: {INSTALL_HINT}")
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    if not key:
        raise EmbedderUnavailable(
            f"openai:{model} needs an API key: set OPENAI_API_KEY (any non-empty value for a "
            "local server that checks none)"
        )
    return key


def backoff_seconds(attempt: int, headers: Mapping[str, str] | None, *, base: float,
                    ceiling: float, max_retry_after: float) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (``attempt`` starts at 0): the
    server's Retry-After (capped), else exponential backoff with jitter. The embedder and
    the chat generator retry alike."""
    if headers is not None:
        requested = retry_after_seconds(headers)
        if requested is not None:
            return min(requested, max_retry_after)
    return min(ceiling, base * (2.0**attempt)) * (0.5 + 0.5 * random.random())


def takes_dimensions(model: str) -> bool:
    """Whether the model accepts the ``dimensions`` request field (text-embedding-3-*)."""
    return model.startswith("text-embedding-3")


def retryable_status(status: int) -> bool:
    return status in _RETRYABLE_4XX or 500 <= status <= 599


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Server-requested wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if math.isfinite(value) and value >= 0 else None


def decode_embedding(data: object) -> np.ndarray:
    """One ``data[i].embedding``: a base64 string of little-endian float32, or a float list."""
    if isinstance(data, str):
        import base64
        import binascii

        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EmbedderError(f"the server sent an embedding that is not base64: {exc}") from None
        if len(raw) % 4:
            raise EmbedderError(
                f"the server sent a base64 embedding of {len(raw)} bytes, not whole float32s"
            )
        return np.frombuffer(raw, dtype="<f4")
    try:
        return np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EmbedderError(f"the server sent an embedding that is not numeric: {exc}") from None


class OpenAIEmbedder:
    """``openai:<model>``: batched embedding requests with retries, usage and cost accounting.

    ``dimensions`` is sent only to models that take it (text-embedding-3-*); for any other model
    it declares the size to expect and every response is checked against it. Without it, the
    dimension comes from :data:`NATIVE_DIMENSIONS`, or, for a model not in that table, from one
    small request made by the constructor.

    Batches hold at most ``batch_size`` texts and an estimated ``max_batch_tokens`` tokens.
    Retries: 408/409/429/5xx and connection errors, up to ``max_retries`` times per batch,
    waiting ``Retry-After`` when the server sends it (capped at ``max_retry_after``) and
    otherwise ``backoff_base * 2**attempt`` (capped at ``backoff_max``) with jitter in
    [50%, 100%] so parallel clients do not retry in lockstep.
    """

    def __init__(
        self,
        model: str,
        *,
        dimensions: int | None = None,
        batch_size: int = 256,
        max_batch_tokens: int = 250_000,
        max_retries: int = 5,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        encoding_format: Literal["base64", "float"] = "base64",
        price_per_million_tokens: float | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if not model or not model.strip():
            raise InvalidInput("the openai embedder needs a model name, e.g. 'openai:text-embedding-3-small'")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise InvalidInput(f"batch_size must be in 1..{MAX_BATCH_SIZE}, got {batch_size}")
        if not 1 <= max_batch_tokens <= MAX_BATCH_TOKENS:
            raise InvalidInput(
                f"max_batch_tokens must be in 1..{MAX_BATCH_TOKENS}, got {max_batch_tokens}"
            )
        if max_retries < 0:
            raise InvalidInput(f"max_retries must be >= 0, got {max_retries}")
        if dimensions is not None and dimensions < 1:
            raise InvalidInput(f"dimensions must be >= 1, got {dimensions}")
        native = NATIVE_DIMENSIONS.get(model)
        if dimensions is not None and native is not None and dimensions > native:
            raise InvalidInput(f"dimensions must be <= {native} for {model}, got {dimensions}")
        if encoding_format not in ("base64", "float"):
            raise InvalidInput(
                f"encoding_format must be one of ['base64', 'float'], got {encoding_format!r}"
            )
        if timeout <= 0 or backoff_base < 0 or backoff_max < 0 or max_retry_after < 0:
            raise InvalidInput("timeout must be > 0 and the backoff settings >= 0")
        key = openai_api_key(model, api_key)
        self.model = model
        self.name = f"openai:{model}"
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_retries = max_retries
        self.base_url = base_url if base_url is not None else os.environ.get("OPENAI_BASE_URL")
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.encoding_format = encoding_format
        self.price_per_million_tokens = (
            price_per_million_tokens
            if price_per_million_tokens is not None
            else PRICE_PER_MILLION_TOKENS.get(model, 0.0)
        )
        self._api_key = key  # kept private: never logged, never in config()
        self._sleep = sleep
        self._client: OpenAI | None = None
        # The model changes the space; so does a reduced ``dimensions`` of the same model.
        self.version = model if dimensions is None else f"{model}?dimensions={dimensions}"
        known = dimensions if dimensions is not None else native
        self._dimension: int | None = known
        if known is None:
            # The protocol's dimension is a plain attribute that the store reads before any
            # embed() (to create the index): for a model of unknown size ask the server now,
            # which also fails fast, at configuration time, when the server is unreachable.
            self.embed(["dimension probe"])
        assert self._dimension is not None
        self.dimension: int = self._dimension

    # ----------------------------------------------------------------------- properties

    @property
    def client(self) -> OpenAI:
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(
                api_key=self._api_key,
                base_url=self.base_url or None,
                timeout=self.timeout,
                max_retries=0,  # retries are ours (counted, reported, testable)
            )
        return self._client

    def config(self) -> dict[str, object]:
        """Settings for logging as params (never the API key)."""
        return {
            "embedder": self.name,
            "model": self.model,
            "dimensions": self.dimensions,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "max_retries": self.max_retries,
            "base_url": self.base_url,
            "price_per_million_tokens": self.price_per_million_tokens,
        }

    # ----------------------------------------------------------------------- requests

    def backoff(self, attempt: int, headers: Mapping[str, str] | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``attempt`` starts at 0)."""
        return backoff_seconds(attempt, headers, base=self.backoff_base, ceiling=self.backoff_max,
                               max_retry_after=self.max_retry_after)

    def _request(self, batch: list[str]) -> tuple[Any, int]:
        """One batch through the API with retries: (response, attempts)."""
        import openai

        kwargs: dict[str, Any] = {
            "model": self.model,
            "input": batch,
            "encoding_format": self.encoding_format,
        }
        if self.dimensions is not None and takes_dimensions(self.model):
            kwargs["dimensions"] = self.dimensions
        attempt = 0
        while True:
            try:
                return self.client.embeddings.create(**kwargs), attempt + 1
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = f"HTTP {status}: {_server_message(exc)}"
                if not retryable_status(status):
                    hint = " (check OPENAI_API_KEY)" if status in (401, 403) else ""
                    raise EmbedderError(
                        f"{self.name}: the embeddings request was refused ({detail}){hint}"
                    ) from exc
                headers: Mapping[str, str] | None = exc.response.headers
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                detail = f"{type(exc).__name__}: {exc}"
                headers = None
            if attempt >= self.max_retries:
                raise EmbedderError(
                    f"{self.name}: the embeddings request failed after {attempt + 1} attempts "
                    f"(last: {detail})"
                )
            self._sleep(self.backoff(attempt, headers))
            attempt += 1

    def batches(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """``(start, end)`` ranges: at most ``batch_size`` texts and ~``max_batch_tokens`` each.

        Tokens are estimated as one per 3 characters, an overestimate for English (about 4
        per token), so that a batch of long chunks stays under the API's per-request token limit
        (a 400, not retried) without a tokenizer dependency. A text is never split.
        """
        ranges: list[tuple[int, int]] = []
        start, budget = 0, 0
        for position, text in enumerate(texts):
            estimate = len(text) // 3 + 1
            full = position - start >= self.batch_size or budget + estimate > self.max_batch_tokens
            if position > start and full:
                ranges.append((start, position))
                start, budget = position, 0
            budget += estimate
        if start < len(texts):
            ranges.append((start, len(texts)))
        return ranges

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Unit vectors for ``texts`` in input order, with tokens, cost and per-batch records."""
        items = check_texts(texts)
        started = time.perf_counter()
        if not items:
            return EmbedResult(vectors=np.zeros((0, self.dimension), dtype=np.float32))
        parts: list[np.ndarray] = []
        records: list[dict[str, Any]] = []
        total_tokens = 0
        for number, (offset, end) in enumerate(self.batches(items)):
            batch = items[offset:end]
            batch_started = time.perf_counter()
            response, attempts = self._request(batch)
            seconds = time.perf_counter() - batch_started
            vectors = self._vectors(response, len(batch), offset)
            usage = getattr(response, "usage", None)
            tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            cost = tokens * self.price_per_million_tokens / 1_000_000
            total_tokens += tokens
            parts.append(vectors)
            records.append(
                {
                    "batch": number,
                    "size": len(batch),
                    "tokens": tokens,
                    "cost_usd": cost,
                    "seconds": seconds,
                    "attempts": attempts,
                }
            )
        vectors = parts[0] if len(parts) == 1 else np.ascontiguousarray(np.concatenate(parts))
        return EmbedResult(
            vectors=vectors,
            tokens=total_tokens,
            cost_usd=total_tokens * self.price_per_million_tokens / 1_000_000,
            seconds=time.perf_counter() - started,
            metadata={
                "model": self.model,
                "price_per_million_tokens": self.price_per_million_tokens,
                "retries": sum(r["attempts"] - 1 for r in records),
                "batches": records,
            },
        )

    def _vectors(self, response: Any, expected: int, offset: int) -> np.ndarray:
        """The response's vectors in input order, checked; fixes the dimension on first use."""
        data = list(getattr(response, "data", None) or [])
        if len(data) != expected:
            raise EmbedderError(
                f"{self.name}: the server returned {len(data)} embeddings for {expected} inputs"
            )
        # The API gives each item its input index; order by it rather than trust list order.
        raw_indices = [getattr(item, "index", None) for item in data]
        indices = [i for i in raw_indices if isinstance(i, int)]
        if len(indices) != expected or sorted(indices) != list(range(expected)):
            raise EmbedderError(
                f"{self.name}: the server returned embeddings with indices other than "
                f"0..{expected - 1}"
            )
        by_index = dict(zip(indices, data, strict=True))
        rows = [decode_embedding(by_index[i].embedding) for i in range(expected)]
        sizes = {row.shape[0] for row in rows}
        if len(sizes) != 1 or any(row.ndim != 1 for row in rows):
            raise DimensionMismatch(
                f"{self.name}: the server returned vectors of different sizes {sorted(sizes)} "
                "in one response"
            )
        if self._dimension is None:
            self._dimension = sizes.pop()
        return finalize_vectors(
            np.stack(rows), expected_dimension=self._dimension, model=self.name, offset=offset
        )

    def embed_query(self, text: str) -> np.ndarray:
        """float32 (dimension,), unit norm."""
        vector: np.ndarray = self.embed([check_query(text)]).vectors[0]
        return vector


def _server_message(exc: Any) -> str:
    """The server's error message, shortened (it is for a log line, not a dump)."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else None
    text = str(message or getattr(exc, "message", "") or "no message")
    return text if len(text) <= 200 else text[:197] + "..."
