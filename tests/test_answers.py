"""Answering on both backends: what is recorded (query, retrievals, generation, citations,
feedback), redaction, retention, PII kept out of prompts, truncation, and one-line errors."""

from __future__ import annotations

import pytest

from mlflow_rag.answer import answer, feedback
from mlflow_rag.errors import DocumentNotFound, InvalidInput, PromptError, UnknownChoice
from mlflow_rag.generate.prompting import SHIPPED, PromptTemplate, check_template
from mlflow_rag.search import Searcher
from mlflow_rag.store.store import Store
from tests.chat_server import ChatServer
from tests.conftest import make_record
from tests.hash_embedder import HashEmbedder

QUESTION = "Who speaks about legacy modernization?"
DOCS = {
    "ada": ("Ada Lovelace speaks about legacy modernization at every conference. "
            "She lives in London and writes to ada.l@example.org about it."),
    "grace": "Grace Hopper works on compilers. Her talks are about debugging.",
    "alan": "Alan Turing talks about machine intelligence and codebreaking.",
}


def _store(location: str) -> Store:
    embedder = HashEmbedder()
    store = Store.open(location, create=True)
    store.ensure_model("m", embedder.dimension, embedder=None)
    records = []
    for doc_id, text in DOCS.items():
        vectors = embedder.embed([text]).vectors
        records.append(make_record(doc_id, [text], vectors=vectors, metadata={
            "title": doc_id.title(), "_pii": {"email": f"{doc_id}@private.example"}}))
    store.write(records)
    return store


def _ask(store: Store, question: str = QUESTION, **options: object):  # type: ignore[no-untyped-def]
    return answer(store, question, searcher=Searcher(store, model="m", embedder=HashEmbedder()),
                  track=False, k=3, **options)


def _rows(store: Store, table: str) -> list[tuple]:  # type: ignore[type-arg]
    return list(store.backend.dump_rows(table))


def test_an_answer_is_recorded_with_its_query_retrievals_and_citations(store_location: str) -> None:
    with _store(store_location) as store:
        result = _ask(store, session_id="s-1", user_id="u-1")
        assert result.text.startswith("Ada Lovelace speaks about legacy modernization")
        assert [c.chunk_id for c in result.citations] == ["ada#0"]
        assert result.citations[0].document_id == "ada" and result.citations[0].title == "Ada"
        record = store.logs.answer_record(result.output_id)
        assert record.query_id == result.query_id and record.trace_id is None
        assert record.stats.generator == "extractive" and record.stats.prompt_name is None
        assert record.stats.input_tokens > 0 and record.stats.output_tokens > 0
        assert record.stats.cost_usd == 0.0
        assert min(record.stats.embed_ms, record.stats.retrieve_ms,
                   record.stats.generate_ms) >= 0.0
        assert record.answer_text is None  # opt-in
        assert (record.session_id, record.user_id) == ("s-1", "u-1")
        assert record.citations == (((1, "ada#0", "ada"),))
        queries = _rows(store, "queries")
        assert [q[0] for q in queries] == [result.query_id]
        assert len([r for r in _rows(store, "retrievals") if r[1] == result.query_id]) == 3


def test_answer_text_is_opt_in_and_redacted_like_the_question(store_location: str) -> None:
    with _store(store_location) as store:
        result = _ask(store, "Does ada.l@example.org speak about legacy modernization?",
                      keep_answer_text=True)
        assert "ada.l@example.org" in result.text  # the caller gets the answer as made
        record = store.logs.answer_record(result.output_id)
        assert record.answer_text is not None and "<email>" in record.answer_text
        assert "example.org" not in record.answer_text
        question = _rows(store, "queries")[0][1]
        assert "<email>" in question and "example.org" not in question


def test_feedback_is_recorded_and_bad_feedback_stores_nothing(store_location: str) -> None:
    with _store(store_location) as store:
        result = _ask(store)
        assert feedback(store, result.output_id, thumbs="up", comment="mail me at a@b.org",
                        user_id="u-1", track=False) is False
        feedback(store, result.output_id, score=0.25, track=False)
        stored = store.logs.answer_record(result.output_id).feedback
        assert [(f.kind, f.value) for f in stored] == [("thumbs", 1.0), ("score", 0.25)]
        assert stored[0].comment == "mail me at <email>" and stored[0].user_id == "u-1"
        with pytest.raises(DocumentNotFound, match="no answer with output id 'nope'"):
            feedback(store, "nope", thumbs="down", track=False)
        with pytest.raises(UnknownChoice, match=r"thumbs 'sideways'; choose from \['down', 'up'\]"):
            feedback(store, result.output_id, thumbs="sideways", track=False)
        with pytest.raises(InvalidInput, match="exactly one"):
            feedback(store, result.output_id, score=1.0, thumbs="up", track=False)
        with pytest.raises(InvalidInput, match="finite"):
            feedback(store, result.output_id, score=float("nan"), track=False)
        assert len(_rows(store, "feedback")) == 2


def test_retention_purges_answers_citations_and_feedback(store_location: str) -> None:
    with _store(store_location) as store:
        result = _ask(store)
        feedback(store, result.output_id, thumbs="down", track=False)
        assert store.logs.delete_queries_older_than(0) == 1
        for table in ("queries", "retrievals", "generations", "citations", "feedback"):
            assert _rows(store, table) == [], table
        with pytest.raises(DocumentNotFound):
            store.logs.answer_record(result.output_id)
        assert store.stats().documents == 3  # the corpus stays


def test_pii_fields_never_reach_the_prompt(store_location: str) -> None:
    with _store(store_location) as store, ChatServer() as server:
        options = {"base_url": server.base_url, "api_key": "test-key"}
        result = _ask(store, generator="openai:gpt-4o-mini", generator_options=options)
        prompt = server.requests[-1]["messages"][-1]["content"]
    assert "private.example" not in prompt and "[ada#0] (Ada)" in prompt
    assert result.prompt == SHIPPED.uri and result.citations[0].chunk_id == "ada#0"
    assert result.input_tokens > 0 and result.truncation is None


def test_a_context_over_the_window_is_cut_and_recorded(store_location: str) -> None:
    with _store(store_location) as store, ChatServer() as server:
        options = {"base_url": server.base_url, "api_key": "test-key", "context_window": 160,
                   "max_output_tokens": 50}
        result = _ask(store, generator="openai:llama3", generator_options=options)
        record = store.logs.answer_record(result.output_id)
        prompt = server.requests[-1]["messages"][-1]["content"]
        assert result.truncation is not None
        assert record.stats.metadata["truncation"] == result.truncation
        cut = result.truncation
        assert cut["window"] == 160 and cut["reserved_for_answer"] == 50
        assert cut["prompt_tokens_before"] > 110 >= cut["prompt_tokens_after"]
        assert cut["dropped"] and all(f"[{c}]" not in prompt for c in cut["dropped"])
        options["context_window"] = 100
        with pytest.raises(PromptError, match=r"without any passage is .* window of 100"):
            _ask(store, generator="openai:llama3", generator_options=options)
        assert len(_rows(store, "generations")) == 1  # the refused call stored nothing


def test_templates_must_use_exactly_the_answer_variables() -> None:
    with pytest.raises(PromptError, match=r"uses variables \['audience'\] .* fills "
                                          r"\['context', 'question'\]"):
        check_template("{{ question }} {{context}} for {{ audience }}", name="p")
    with pytest.raises(PromptError, match=r"lacks the variables \['context'\]"):
        check_template("Answer {{ question }}", name="p")
    assert check_template(SHIPPED.template, name="shipped") == SHIPPED.template


def test_prompt_choices_are_one_line_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _store(str(tmp_path / "s")) as store, ChatServer() as server:
        with pytest.raises(PromptError, match="extractive generator uses no prompt"):
            _ask(store, prompt="prompts:/p@prod")
        with pytest.raises(PromptError, match="needs tracking"):
            _ask(store, generator="openai:m", prompt="prompts:/p@prod",
                 generator_options={"base_url": server.base_url, "api_key": "k"})
        with pytest.raises(UnknownChoice, match=r"generator 'gpt'; choose from"):
            _ask(store, generator="gpt")
        bad = PromptTemplate("mine", "1", "{{ question }} only")
        with pytest.raises(PromptError, match="lacks the variables"):
            _ask(store, generator="openai:m", prompt=bad,
                 generator_options={"base_url": server.base_url, "api_key": "k"})
        assert server.requests == [] and _rows(store, "generations") == []


@pytest.mark.postgres
def test_a_copy_between_backends_carries_answers(tmp_path, pg_database: str) -> None:  # type: ignore[no-untyped-def]
    from mlflow_rag.store.copies import copy_store

    with _store(str(tmp_path / "s")) as store:
        result = _ask(store, keep_answer_text=True)
        feedback(store, result.output_id, score=0.5, track=False)
        before = store.logs.answer_record(result.output_id)
    copy_store(tmp_path / "s", pg_database)
    with Store.open(pg_database, read_only=True) as copied:
        assert copied.logs.answer_record(result.output_id) == before


def test_redacted_questions_and_answers_are_on_no_byte_of_the_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.test_privacy import on_disk

    root = tmp_path / "s"
    with _store(str(root)) as store:
        before = on_disk(root, "ada.l@example.org")  # the corpus holds it in its text
        result = _ask(store, "Does bob.secret@example.com speak about legacy modernization?",
                      keep_answer_text=True)
        feedback(store, result.output_id, thumbs="up", comment="ask carol.q@example.net",
                 track=False)
        assert "ada.l@example.org" in result.text
        assert not on_disk(root, "bob.secret@example.com")
        assert not on_disk(root, "carol.q@example.net")
        assert before  # control: the scan sees text that is stored
