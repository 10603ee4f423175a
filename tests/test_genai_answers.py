"""Answering on a real MLflow tracking store: the shipped prompt registered on first use,
prompts by alias and version, one trace per answer (CHAIN > RETRIEVER + LLM with token
usage) linked to the store both ways, feedback as an assessment on the trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_rag.answer import answer, feedback
from mlflow_rag.errors import PromptError
from mlflow_rag.genai_tracking import flush_traces, parse_prompt_uri
from mlflow_rag.generate.prompting import DEFAULT_PROMPT_NAME, DEFAULT_TEMPLATE
from mlflow_rag.store.store import Store
from tests import helpers_mlflow
from tests.chat_server import ChatServer
from tests.helpers_mlflow import PII_EMAIL, build_store

tracking_template = helpers_mlflow.tracking_template  # shared fixtures
tracking_uri = helpers_mlflow.tracking_uri

QUESTION = "What does legacy modernization keep?"


def _chat(server: ChatServer) -> dict[str, object]:
    return {"base_url": server.base_url, "api_key": "test-key"}


def test_the_shipped_prompt_is_registered_once_and_the_answer_is_one_trace(
    tracking_uri: str, tmp_path: Path
) -> None:
    import mlflow

    root = build_store(tmp_path / "store")
    with Store.open(root) as store, ChatServer() as server:
        first = answer(store, QUESTION, generator="openai:gpt-4o-mini",
                       generator_options=_chat(server), k=3, session_id="s-9", user_id="u-9")
        second = answer(store, QUESTION, generator="openai:gpt-4o-mini",
                        generator_options=_chat(server), k=3)
        record = store.logs.answer_record(first.output_id)
        prompt_sent = server.requests[0]["messages"][-1]["content"]
    assert first.prompt == second.prompt == f"prompts:/{DEFAULT_PROMPT_NAME}/1"
    assert (record.stats.prompt_name, record.stats.prompt_version) == (DEFAULT_PROMPT_NAME, "1")
    assert mlflow.genai.load_prompt(f"prompts:/{DEFAULT_PROMPT_NAME}/1").template == DEFAULT_TEMPLATE
    assert PII_EMAIL not in prompt_sent
    assert first.trace_id and record.trace_id == first.trace_id != second.trace_id
    flush_traces()
    trace = mlflow.get_trace(first.trace_id)
    assert trace.info.tags["mlflow_rag.output_id"] == first.output_id
    assert trace.info.tags["mlflow_rag.query_id"] == first.query_id == record.query_id
    assert trace.info.trace_metadata["mlflow.trace.session"] == "s-9"
    spans = {s.name: s for s in trace.data.spans}
    assert spans["answer"].span_type == "CHAIN" and spans["answer"].parent_id is None
    retriever, llm = spans["retrieve"], spans["generate"]
    assert retriever.span_type == "RETRIEVER" and llm.span_type == "LLM"
    assert retriever.parent_id == llm.parent_id == spans["answer"].span_id
    assert [d["id"] for d in retriever.outputs] == [h.chunk_id for h in first.hits]
    usage = llm.get_attribute("mlflow.chat.tokenUsage")
    assert usage == {"input_tokens": first.input_tokens, "output_tokens": first.output_tokens,
                     "total_tokens": first.input_tokens + first.output_tokens}
    assert spans["answer"].outputs["output_id"] == first.output_id


def test_feedback_is_logged_on_the_trace(tracking_uri: str, tmp_path: Path) -> None:
    import mlflow

    root = build_store(tmp_path / "store")
    with Store.open(root) as store:
        result = answer(store, QUESTION, k=3)  # extractive: traced, no prompt
        assert feedback(store, result.output_id, thumbs="up", comment="right", user_id="u-1")
    assessments = mlflow.get_trace(result.trace_id).info.assessments
    assert [(a.name, a.value, a.rationale, a.source.source_id) for a in assessments] == [
        ("user_feedback", True, "right", "u-1")]


def test_prompts_by_alias_and_version_and_their_errors(tracking_uri: str, tmp_path: Path) -> None:
    import mlflow

    mlflow.genai.register_prompt(name="qa", template="Q: {{question}}\nC: {{context}}")
    mlflow.genai.register_prompt(name="qa", template="Use {{context}} for {{question}}.")
    mlflow.genai.set_prompt_alias("qa", alias="prod", version=1)
    mlflow.genai.register_prompt(name="extra", template="{{question}} {{context}} {{tone}}")
    root = build_store(tmp_path / "store")
    with Store.open(root) as store, ChatServer() as server:
        def ask(prompt: str):  # type: ignore[no-untyped-def]
            return answer(store, QUESTION, generator="openai:m", prompt=prompt,
                          generator_options=_chat(server), k=2)

        assert ask("prompts:/qa@prod").prompt == "prompts:/qa/1"
        assert server.requests[-1]["messages"][-1]["content"].startswith("Q: " + QUESTION)
        assert ask("qa/2").prompt == "prompts:/qa/2"
        with pytest.raises(PromptError, match=r"no prompt prompts:/qa@staging .* versions "
                                              r"\[1, 2\] and aliases \['prod'\]"):
            ask("prompts:/qa@staging")
        with pytest.raises(PromptError, match=r"uses variables \['tone'\]"):
            ask("prompts:/extra/1")
        with pytest.raises(PromptError, match=r"bad prompt 'qa'; use one of"):
            ask("qa")
        assert len(server.requests) == 2
        assert store.stats().queries == 2


def test_prompt_uris_parse() -> None:
    assert parse_prompt_uri("prompts:/qa@prod") == ("qa", "prod", None)
    assert parse_prompt_uri("qa/3") == ("qa", None, "3")
    for bad in ("prompts:/qa", "qa@", "prompts:/qa/x", "../qa/1"):
        with pytest.raises(PromptError, match="bad prompt"):
            parse_prompt_uri(bad)
