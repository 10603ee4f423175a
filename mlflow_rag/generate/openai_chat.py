"""``openai:<model>``: answers from any OpenAI-compatible chat completions API (OpenAI, vLLM,
Ollama, Azure) through ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``.

The client's own retries are off (``max_retries=0``): retries happen here, as for the
embedder (embed/openai_embedder.py, whose retry policy this shares), so every attempt is
counted and tests can replace the sleep. Token usage comes from the response's ``usage``;
cost from :data:`PRICES` or the ``price_per_million`` option (self-hosted models cost 0).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mlflow_rag.embed.openai_embedder import backoff_seconds, openai_api_key, retryable_status
from mlflow_rag.errors import GeneratorError, InvalidInput
from mlflow_rag.generate.base import Generation, Passage
from mlflow_rag.generate.extractive import count_tokens

if TYPE_CHECKING:
    from openai import OpenAI

PREFIX = "openai:"
# USD per 1M (input, output) tokens (openai.com/api/pricing, 2025).
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}
# Tokens a prompt plus its answer may hold; a model not listed is assumed to hold 8192
# (a small local model's usual window), overridable with ``context_window``.
WINDOWS: dict[str, int] = {"gpt-4o-mini": 128_000, "gpt-4o": 128_000,
                           "gpt-4.1-mini": 1_047_576, "gpt-4.1": 1_047_576}
DEFAULT_WINDOW = 8192
SYSTEM = ("Answer from the numbered passages only, citing each passage you use by its id in "
          "square brackets. If they do not answer the question, say so.")


class OpenAIChatGenerator:
    """Chat completions with retries on 408/409/429/5xx and timeouts, ``backoff_base * 2**n``
    (capped, with jitter) or the server's ``Retry-After``."""

    uses_prompt = True

    def __init__(
        self, model: str, *, temperature: float = 0.0, max_output_tokens: int = 512,
        context_window: int | None = None, max_retries: int = 4, timeout: float = 60.0,
        backoff_base: float = 0.5, backoff_max: float = 20.0, max_retry_after: float = 60.0,
        price_per_million: tuple[float, float] | None = None, base_url: str | None = None,
        api_key: str | None = None, sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if not model.strip():
            raise InvalidInput("the openai generator needs a model name, e.g. 'openai:gpt-4o-mini'")
        if max_retries < 0 or timeout <= 0 or max_output_tokens < 1:
            raise InvalidInput("max_retries must be >= 0, timeout > 0 and max_output_tokens >= 1")
        key = openai_api_key(model, api_key)
        self.model = model
        self.name = f"{PREFIX}{model}"
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.context_window: int | None = context_window or WINDOWS.get(model, DEFAULT_WINDOW)
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.max_retry_after = max_retry_after
        self.price_per_million = price_per_million or PRICES.get(model, (0.0, 0.0))
        self.base_url = base_url if base_url is not None else os.environ.get("OPENAI_BASE_URL")
        self._api_key = key  # never logged, never in params()
        self._sleep = sleep
        self._client: OpenAI | None = None

    @property
    def client(self) -> OpenAI:
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(api_key=self._api_key, base_url=self.base_url or None,
                                  timeout=self.timeout, max_retries=0)
        return self._client

    def count_tokens(self, text: str) -> int:
        # No tokenizer dependency: words and punctuation, at least what BPE tokenizers cut
        # English prose into, so a prompt that fits by this count fits the model.
        return count_tokens(text)

    def params(self) -> dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature,
                "max_tokens": self.max_output_tokens, "base_url": self.base_url or "",
                "price_per_million": list(self.price_per_million)}

    def backoff(self, attempt: int, headers: Mapping[str, str] | None = None) -> float:
        return backoff_seconds(attempt, headers, base=self.backoff_base, ceiling=self.backoff_max,
                               max_retry_after=self.max_retry_after)

    def _request(self, prompt: str) -> tuple[Any, int]:
        import openai

        attempt = 0
        while True:
            try:
                response = self.client.chat.completions.create(
                    model=self.model, temperature=self.temperature,
                    max_tokens=self.max_output_tokens,
                    messages=[{"role": "system", "content": SYSTEM},
                              {"role": "user", "content": prompt}],
                )
                return response, attempt + 1
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = f"HTTP {status}"
                if not retryable_status(status):
                    hint = " (check OPENAI_API_KEY)" if status in (401, 403) else ""
                    raise GeneratorError(
                        f"{self.name}: the chat request was refused ({detail}){hint}") from None
                headers: Mapping[str, str] | None = exc.response.headers
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                detail = type(exc).__name__
                headers = None
            if attempt >= self.max_retries:
                raise GeneratorError(f"{self.name}: the chat request failed after {attempt + 1} "
                                     f"attempts (last: {detail})")
            self._sleep(self.backoff(attempt, headers))
            attempt += 1

    def generate(self, *, question: str, prompt: str, passages: tuple[Passage, ...]) -> Generation:
        response, attempts = self._request(prompt)
        choices = getattr(response, "choices", None) or []
        message = choices[0].message if choices else None
        text = (getattr(message, "content", None) or "").strip()
        if not text:
            raise GeneratorError(f"{self.name}: the server sent no answer text")
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        price_in, price_out = self.price_per_million
        cost = (tokens_in * price_in + tokens_out * price_out) / 1_000_000
        return Generation(text=text, citations=cited_ids(text, passages), input_tokens=tokens_in,
                          output_tokens=tokens_out, cost_usd=cost, params=self.params(),
                          attempts=attempts)


def cited_ids(text: str, passages: tuple[Passage, ...]) -> tuple[str, ...]:
    """The passage ids the answer cites in square brackets, first cited first; ids the
    passages do not hold (an invented citation) are not citations."""
    known = {p.chunk_id for p in passages}
    found = re.findall(r"\[([^\[\]]+)\]", text)
    ids = [part.strip() for group in found for part in group.split(",")]
    return tuple(dict.fromkeys(i for i in ids if i in known))
