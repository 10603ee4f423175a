"""Generators: the extractive answerer (deterministic, cited) and openai:MODEL against a real
chat completions server on 127.0.0.1 (retries on 429/5xx/timeouts, usage, cost)."""

from __future__ import annotations

import pytest

from mlflow_rag.errors import GeneratorError, UnknownChoice
from mlflow_rag.generate.base import Generator, Passage
from mlflow_rag.generate.extractive import NO_ANSWER, ExtractiveGenerator
from mlflow_rag.generate.registry import GENERATORS, get_generator
from tests.chat_server import ChatServer

PASSAGES = (
    Passage("c1", "d1", "Ada Lovelace speaks about legacy modernization. She lives in London."),
    Passage("c2", "d2", "Grace works on compilers. Legacy systems need care and modernization."),
    Passage("c3", "d3", "The weather is fine today."),
)


def test_extractive_picks_the_matching_sentences_and_cites_them() -> None:
    gen = ExtractiveGenerator(max_sentences=2)
    out = gen.generate(question="Who speaks about legacy modernization?", prompt="",
                       passages=PASSAGES)
    assert out.text.startswith("Ada Lovelace speaks about legacy modernization. [c1]")
    assert out.citations == ("c1", "c2")
    assert "weather" not in out.text and out.cost_usd == 0.0
    assert out.input_tokens > 0 and out.output_tokens > 0
    again = gen.generate(question="Who speaks about legacy modernization?", prompt="",
                         passages=PASSAGES)
    assert again == out  # deterministic


def test_extractive_says_so_when_nothing_matches() -> None:
    out = ExtractiveGenerator().generate(question="quantum chromodynamics?", prompt="",
                                         passages=PASSAGES)
    assert out.text == NO_ANSWER and out.citations == ()


def test_the_registry_names_generators_and_refuses_others() -> None:
    assert isinstance(get_generator("extractive"), Generator)
    with pytest.raises(UnknownChoice) as err:
        get_generator("gpt4")
    assert "'gpt4'" in str(err.value) and "extractive" in str(err.value)
    assert "openai:<model>" in str(err.value)
    with pytest.raises(UnknownChoice):
        get_generator("openai:")
    assert "extractive" in GENERATORS


def _prompt() -> str:
    return "Question: who?\n\n" + "\n".join(f"[{p.chunk_id}] {p.text}" for p in PASSAGES)


def _chat(server: ChatServer, model: str = "gpt-4o-mini", **options: object) -> Generator:
    return get_generator(f"openai:{model}", base_url=server.base_url, api_key="test-key",
                         sleep=lambda s: None, **options)


def test_openai_answers_with_usage_cost_and_citations() -> None:
    with ChatServer() as server:
        out = _chat(server).generate(question="who?", prompt=_prompt(), passages=PASSAGES)
        request = server.requests[-1]
    assert out.text == "Ada Lovelace speaks about legacy modernization. [c1]"
    assert out.citations == ("c1",)
    assert out.input_tokens > 20 and out.output_tokens == 7
    assert out.cost_usd == pytest.approx((out.input_tokens * 0.15 + 7 * 0.60) / 1e6)
    assert request["model"] == "gpt-4o-mini" and request["messages"][-1]["content"] == _prompt()
    assert "test-key" not in str(out.params)


def test_openai_retries_429_then_succeeds() -> None:
    with ChatServer() as server:
        server.fail_next(2, status=429, retry_after="0")
        out = _chat(server).generate(question="who?", prompt=_prompt(), passages=PASSAGES)
        assert server.statuses == [429, 429, 200]
    assert out.attempts == 3 and out.citations == ("c1",)


def test_openai_500s_exhaust_the_retries_as_one_line() -> None:
    with ChatServer() as server:
        server.always_fail(500)
        with pytest.raises(GeneratorError) as err:
            _chat(server, max_retries=2).generate(question="who?", prompt=_prompt(),
                                                  passages=PASSAGES)
        assert server.statuses == [500, 500, 500]
    message = str(err.value)
    assert "\n" not in message and "after 3 attempts" in message and "HTTP 500" in message


def test_openai_timeouts_are_retried() -> None:
    with ChatServer() as server:
        server.delay = 1.0
        with pytest.raises(GeneratorError) as err:
            _chat(server, max_retries=1, timeout=0.2).generate(
                question="who?", prompt=_prompt(), passages=PASSAGES)
    assert "after 2 attempts" in str(err.value) and "Timeout" in str(err.value)


def test_openai_refusals_are_not_retried_and_cost_options_apply() -> None:
    with ChatServer() as server:
        server.fail_next(1, status=400)
        with pytest.raises(GeneratorError, match="refused"):
            _chat(server).generate(question="who?", prompt=_prompt(), passages=PASSAGES)
        assert len(server.requests) == 1
        local = _chat(server, model="llama3", price_per_million=(1.0, 2.0))
        out = local.generate(question="who?", prompt=_prompt(), passages=PASSAGES)
    assert out.cost_usd == pytest.approx((out.input_tokens + 2 * out.output_tokens) / 1e6)
    assert local.context_window == 8192
