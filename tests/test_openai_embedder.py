"""OpenAIEmbedder against a real HTTP server on 127.0.0.1 (the official client code runs).

Waits between retries go to a recording ``sleep``: the tests check the waits without taking
them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mlflow_rag.embed.openai_embedder import (
    PRICE_PER_MILLION_TOKENS,
    OpenAIEmbedder,
    retry_after_seconds,
)
from mlflow_rag.errors import (
    DimensionMismatch,
    EmbedderError,
    EmbedderUnavailable,
    InvalidInput,
    InvalidVector,
)
from tests.embedding_server import EmbeddingServer, count_tokens, fake_embedding

KEY = "test-key"
TEXTS = [
    "Aspirin reduces the risk of heart attack.",
    "Vitamin D deficiency is common in winter.",
    "The mitochondria is the powerhouse of the cell.",
    "Sleep improves memory consolidation.",
    "Regular exercise lowers blood pressure.",
]


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddingServer]:
    with EmbeddingServer(api_key=KEY, default_dimension=48) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_server(server: EmbeddingServer) -> None:
    server.reset()


@pytest.fixture
def delays() -> list[float]:
    return []


def make(
    server: EmbeddingServer, delays: list[float], model: str = "text-embedding-3-small", **kw: Any
) -> OpenAIEmbedder:
    options: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": KEY,
        "sleep": delays.append,
        "backoff_base": 0.01,
    }
    if model.startswith("text-embedding-3"):
        options["dimensions"] = 32
    options.update(kw)
    return OpenAIEmbedder(model, **options)


# --------------------------------------------------------------------------- batching


def test_texts_are_sent_in_batches_of_batch_size_and_returned_in_input_order(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays, batch_size=2)
    result = embedder.embed(TEXTS)
    assert [r.inputs for r in server.embedding_requests] == [TEXTS[0:2], TEXTS[2:4], TEXTS[4:5]]
    expected = np.stack([fake_embedding(t, 32) for t in TEXTS])
    np.testing.assert_allclose(result.vectors, expected, atol=1e-6)
    assert [b["size"] for b in result.metadata["batches"]] == [2, 2, 1]


def test_long_texts_also_split_batches_by_estimated_tokens(
    server: EmbeddingServer, delays: list[float]
) -> None:
    # ~3 characters per token estimated: 300-character texts count ~101 tokens each.
    long_texts = [f"{i} " + "pressure " * 33 for i in range(5)]
    embedder = make(server, delays, batch_size=256, max_batch_tokens=250)
    embedder.embed(long_texts)
    assert [len(r.inputs) for r in server.embedding_requests] == [2, 2, 1]


def test_server_item_order_is_ignored_in_favour_of_each_items_index(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays)
    server.corrupt_next("reversed")
    result = embedder.embed(TEXTS)
    expected = np.stack([fake_embedding(t, 32) for t in TEXTS])
    np.testing.assert_allclose(result.vectors, expected, atol=1e-6)


@pytest.mark.parametrize("encoding_format", ["base64", "float"])
def test_base64_and_float_responses_decode_to_the_same_vectors(
    server: EmbeddingServer, delays: list[float], encoding_format: str
) -> None:
    embedder = make(server, delays, encoding_format=encoding_format)
    vectors = embedder.embed(TEXTS[:2]).vectors
    assert server.embedding_requests[0].body["encoding_format"] == encoding_format
    np.testing.assert_allclose(vectors, np.stack([fake_embedding(t, 32) for t in TEXTS[:2]]), atol=1e-6)


def test_unnormalised_server_vectors_are_normalised(delays: list[float]) -> None:
    with EmbeddingServer(api_key=KEY, embed=lambda t, d: 7.0 * fake_embedding(t, d)) as loud:
        vectors = make(loud, delays).embed(TEXTS).vectors
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- retries


def test_429_is_retried_waiting_the_servers_retry_after_then_succeeds(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays)
    server.fail_next(2, status=429, retry_after="3")
    result = embedder.embed(TEXTS[:2])
    assert [r.status for r in server.embedding_requests] == [429, 429, 200]
    assert delays == [3.0, 3.0]
    assert result.metadata["retries"] == 2
    assert result.metadata["batches"][0]["attempts"] == 3


def test_retry_after_ms_takes_precedence_and_long_waits_are_capped(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays, max_retry_after=5.0)
    server.fail_next(1, status=429, retry_after="1", retry_after_ms="250")
    server.fail_next(1, status=429, retry_after="3600")
    embedder.embed(TEXTS[:1])
    assert delays == [0.25, 5.0]


def test_5xx_is_retried_with_exponential_backoff_and_jitter(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays, backoff_base=0.01)
    server.fail_next(1, status=500)
    server.fail_next(1, status=502)
    server.fail_next(1, status=503)
    embedder.embed(TEXTS[:1])
    assert [r.status for r in server.embedding_requests] == [500, 502, 503, 200]
    assert len(delays) == 3
    for attempt, delay in enumerate(delays):
        ceiling = 0.01 * 2**attempt
        assert ceiling / 2 <= delay <= ceiling


def test_gives_up_after_max_retries_with_an_error_naming_attempts_and_status(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays, max_retries=2)
    server.fail_always(503, message="overloaded")
    with pytest.raises(EmbedderError, match=r"after 3 attempts .*HTTP 503: overloaded"):
        embedder.embed(TEXTS[:1])
    assert len(server.embedding_requests) == 3
    assert len(delays) == 2


def test_400_is_not_retried(server: EmbeddingServer, delays: list[float]) -> None:
    embedder = make(server, delays)
    server.fail_next(1, status=400, message="input too long")
    with pytest.raises(EmbedderError, match=r"refused.*HTTP 400: input too long"):
        embedder.embed(TEXTS[:1])
    assert len(server.embedding_requests) == 1
    assert delays == []


def test_wrong_api_key_is_not_retried_and_points_at_the_key(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays, api_key="wrong-key")
    with pytest.raises(EmbedderError, match=r"HTTP 401.*OPENAI_API_KEY") as info:
        embedder.embed(TEXTS[:1])
    assert "wrong-key" not in str(info.value)
    assert len(server.embedding_requests) == 1
    assert delays == []


def test_unreachable_server_is_retried_then_reported(delays: list[float]) -> None:
    with EmbeddingServer(api_key=KEY) as gone:
        base_url = gone.base_url
    embedder = OpenAIEmbedder(
        "text-embedding-3-small", base_url=base_url, api_key=KEY, max_retries=1,
        sleep=delays.append, timeout=5.0,
    )
    with pytest.raises(EmbedderError, match=r"after 2 attempts.*APIConnectionError"):
        embedder.embed(TEXTS[:1])
    assert len(delays) == 1


# --------------------------------------------------------------------------- dimensions


def test_dimensions_is_sent_to_text_embedding_3_models(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays, "text-embedding-3-large", dimensions=24)
    assert embedder.dimension == 24
    assert embedder.embed(TEXTS[:1]).vectors.shape == (1, 24)
    assert server.embedding_requests[0].body["dimensions"] == 24


def test_dimensions_is_not_sent_to_other_models_and_checks_the_response_instead(
    server: EmbeddingServer, delays: list[float]
) -> None:
    ada = make(server, delays, "text-embedding-ada-002")
    assert ada.dimension == 1536  # from the table, no request needed
    assert server.embedding_requests == []
    ada.embed(TEXTS[:1])
    assert "dimensions" not in server.embedding_requests[0].body

    local = make(server, delays, "local-model", dimensions=48)
    assert local.embed(TEXTS[:1]).vectors.shape == (1, 48)
    assert "dimensions" not in server.embedding_requests[-1].body
    wrong = make(server, delays, "local-model", dimensions=32)
    with pytest.raises(DimensionMismatch, match="dimension 48; expected 32"):
        wrong.embed(TEXTS[:1])


def test_unknown_models_dimension_is_learned_from_one_request_at_construction(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays, "local-model")
    assert embedder.dimension == 48
    assert len(server.embedding_requests) == 1


def test_dimensions_larger_than_the_model_has_are_refused(
    server: EmbeddingServer, delays: list[float]
) -> None:
    with pytest.raises(InvalidInput, match="<= 1536"):
        make(server, delays, "text-embedding-3-small", dimensions=4096)


# --------------------------------------------------------------------------- accounting


def test_cost_is_computed_from_usage_tokens_per_batch(
    server: EmbeddingServer, delays: list[float]
) -> None:
    result = make(server, delays, batch_size=3).embed(TEXTS)
    expected_tokens = sum(count_tokens(t) for t in TEXTS)
    price = PRICE_PER_MILLION_TOKENS["text-embedding-3-small"]
    assert result.tokens == expected_tokens
    assert result.cost_usd == pytest.approx(expected_tokens * price / 1e6)
    batches = result.metadata["batches"]
    assert [b["tokens"] for b in batches] == [
        sum(count_tokens(t) for t in TEXTS[:3]),
        sum(count_tokens(t) for t in TEXTS[3:]),
    ]
    assert sum(b["cost_usd"] for b in batches) == pytest.approx(result.cost_usd)
    assert all(b["seconds"] >= 0 for b in batches)


def test_models_without_a_price_cost_nothing(server: EmbeddingServer, delays: list[float]) -> None:
    result = make(server, delays, "local-model").embed(TEXTS)
    assert result.tokens > 0
    assert result.cost_usd == 0.0


# --------------------------------------------------------------------------- configuration


def test_missing_api_key_is_unavailable_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EmbedderUnavailable, match="set OPENAI_API_KEY"):
        OpenAIEmbedder("text-embedding-3-small")


def test_key_and_base_url_come_from_the_environment(
    server: EmbeddingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    embedder = OpenAIEmbedder("text-embedding-3-small", dimensions=16)
    assert embedder.embed(TEXTS[:1]).vectors.shape == (1, 16)
    assert server.embedding_requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(embedder.config())


def test_retry_after_http_date_is_understood() -> None:
    assert retry_after_seconds({"Retry-After": "Thu, 01 Jan 1970 00:01:40 GMT"}, now=90.0) == 10.0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


# --------------------------------------------------------------------------- bad responses


@pytest.mark.parametrize("kind", ["nan", "zero"])
def test_nan_or_zero_vectors_from_the_server_are_refused_naming_the_position(
    server: EmbeddingServer, delays: list[float], kind: str
) -> None:
    embedder = make(server, delays, batch_size=2)
    server.corrupt_next("reversed")  # first batch fine
    server.corrupt_next(kind)  # second batch: its last item (input position 3) is bad
    with pytest.raises(InvalidVector, match=r"positions \[3\]"):
        embedder.embed(TEXTS[:4])


def test_wrong_dimension_from_the_server_is_refused(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays)
    server.corrupt_next("wrong_dimension")
    with pytest.raises(DimensionMismatch):
        embedder.embed(TEXTS[:2])
    server.corrupt_next("mixed_sizes")
    with pytest.raises(DimensionMismatch):
        embedder.embed(TEXTS[:2])


def test_a_missing_item_in_the_response_is_refused(
    server: EmbeddingServer, delays: list[float]
) -> None:
    embedder = make(server, delays)
    server.corrupt_next("missing_item")
    with pytest.raises(EmbedderError, match="returned 1 embeddings for 2 inputs"):
        embedder.embed(TEXTS[:2])
