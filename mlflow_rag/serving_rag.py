"""Answering served from a store bundle: the RAG model's request/response contract, without
MLflow.

:class:`Answerer` opens the bundle as the served retriever does (:class:`~mlflow_rag.serving.
Retriever`: hashes checked, read-only, warmed up), answers one question with
:func:`mlflow_rag.answer.answer` (nothing recorded in the bundle, which is never written) and
queues the question, its retrievals and the answer's ids in the opt-in query log. The MLflow
model (``mlflow_rag/pyfunc_rag_model.py``) wraps it in MLflow's agent interface
(``ResponsesAgent``): requests are Responses API requests whose last user message is the
question, with the retrieval params as ``custom_inputs``.

Question text is private: no error message raised here contains it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow_rag.answer import Answer, Tracer, answer
from mlflow_rag.errors import RagError
from mlflow_rag.generate.prompting import PromptTemplate
from mlflow_rag.generate.registry import DEFAULT_GENERATOR, get_generator
from mlflow_rag.search import SearchRequest, check_query, redact_emails
from mlflow_rag.serving import BadRequest, Retriever

log = logging.getLogger("mlflow_rag.serving")

# Retrieval params a request may carry in ``custom_inputs`` (anything else is refused, named).
CUSTOM_INPUTS = ("k", "mode", "filters")
DEFAULT_K = 5
# Config keys of a RAG model, besides the retriever's (serving.DEFAULT_MODEL_CONFIG): the
# generator spec, its options (generate.registry.OPTIONS) and the prompt's registry URI
# (``prompts:/NAME/VERSION``; empty for a generator that reads no prompt).
RAG_MODEL_CONFIG: dict[str, Any] = {
    "generator": DEFAULT_GENERATOR, "generator_options": {}, "prompt": "",
}


def message_text(content: Any) -> str:
    """The text of a Responses API message's ``content``: a string, or a list of parts
    (``{"type": "input_text", "text": ...}``) whose texts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(str(part.get("text") or "") for part in content
                         if isinstance(part, Mapping) and part.get("text"))
    return ""


def question_of(request: Mapping[str, Any]) -> str:
    """The question of a request: its last ``user`` message (earlier turns are context a
    retrieval-only answerer does not use)."""
    items = request.get("input") or []
    for item in reversed(list(items)):
        if isinstance(item, Mapping) and item.get("role") == "user":
            try:
                return check_query(message_text(item.get("content")))
            except RagError as exc:
                raise BadRequest(f"the last user message: {exc}") from None
    raise BadRequest("the request holds no user message; send input: "
                     "[{\"role\": \"user\", \"content\": QUESTION}]")


def retrieval_params(custom_inputs: Mapping[str, Any] | None, *,
                     default_mode: str) -> tuple[int, str, Mapping[str, Any] | str | None]:
    """``(k, mode, filters)`` of a request's ``custom_inputs`` (all optional)."""
    inputs = dict(custom_inputs or {})
    unknown = sorted(set(inputs) - set(CUSTOM_INPUTS))
    if unknown:
        raise BadRequest(f"unknown custom_inputs {unknown}; choose from {list(CUSTOM_INPUTS)}")
    k = inputs.get("k", DEFAULT_K)
    if isinstance(k, float) and k.is_integer():  # JSON clients may send 5.0
        k = int(k)
    mode = inputs.get("mode") or default_mode
    filters = inputs.get("filters") or None
    if filters is not None and not isinstance(filters, (str, Mapping)):
        raise BadRequest("custom_inputs filters must be a JSON object (or a string holding one)")
    # checks k, mode and the filter (the query is a placeholder: it was checked already)
    SearchRequest.of_checked_query("?", k=k, mode=str(mode), filters=filters)
    return int(k), str(mode), filters


def custom_outputs(result: Answer) -> dict[str, Any]:
    """What a response carries besides the answer text: the ids that find it again, its
    citations (chunk and document ids), what produced it and what it cost."""
    return {
        "output_id": result.output_id,
        "citations": [{"chunk_id": c.chunk_id, "document_id": c.document_id,
                       "source_path": c.source_path, "title": c.title}
                      for c in result.citations],
        "generator": result.generator, "prompt": result.prompt,
        "input_tokens": result.input_tokens, "output_tokens": result.output_tokens,
        "cost_usd": result.cost_usd,
        "latency_ms": {stage: round(ms, 3) for stage, ms in result.latency_ms.items()},
        "truncation": dict(result.truncation) if result.truncation else None,
    }


class Answerer:
    """Answers questions from a bundle; no MLflow involved (the model class wraps this)."""

    def __init__(
        self, bundle: str | Path, *, generator: str = DEFAULT_GENERATOR,
        generator_options: Mapping[str, Any] | None = None,
        template: PromptTemplate | None = None, include_pii: bool = False,
        query_log: str | Path | None = None,
        redact: Callable[[str], str] | None = redact_emails, embedder: str | None = None,
        mmap: bool = True,
    ) -> None:
        self.generator = get_generator(generator, **dict(generator_options or {}))
        if template is None and self.generator.uses_prompt:
            from mlflow_rag.generate.prompting import SHIPPED

            template = SHIPPED
        self.template = template if self.generator.uses_prompt else None
        self.retriever = Retriever(bundle, include_pii=include_pii, query_log=query_log,
                                   redact=redact, embedder=embedder, mmap=mmap)
        self.redact = redact

    @property
    def store_id(self) -> str:
        return self.retriever.store.store_id

    def answer(self, question: str, custom_inputs: Mapping[str, Any] | None = None, *,
               tracer: Tracer | None = None) -> Answer:
        """Answer one (checked) question; a bad param is :class:`BadRequest` naming it."""
        retriever = self.retriever
        try:
            k, mode, filters = retrieval_params(custom_inputs, default_mode=retriever.default_mode)
        except RagError as exc:
            raise BadRequest(str(exc)) from None
        if mode not in retriever.modes:
            raise BadRequest(f"mode {mode!r} is unavailable in this bundle "
                             f"({retriever.dense_error}); choose from {list(retriever.modes)}")
        result = answer(retriever.store, question, generator=self.generator, prompt=self.template,
                        k=k, mode=mode, filters=filters, searcher=retriever.searcher,
                        record=False, track=False, redact=self.redact, tracer=tracer)
        self._log(question, result, k=k, mode=mode, filters=filters)
        return result

    def _log(self, question: str, result: Answer, *, k: int, mode: str,
             filters: Mapping[str, Any] | str | None) -> None:
        """The question and its retrievals into the query log, with the answer's ids (the
        answer text is not kept: a log of answers would hold what the chunks say)."""
        query_log = self.retriever.query_log
        if query_log is None:
            return
        if isinstance(filters, str):
            filters = json.loads(filters) if filters.strip() else {}
        try:  # queued: never blocks or fails the answer (see serving_log.QueryLog)
            query_log.write(question, result.hits,
                            model_name=self.retriever.model_name if mode != "bm25" else None,
                            metadata={"mode": mode, "k": k, "filters": dict(filters or {}),
                                      "store_id": self.store_id, "answered": True,
                                      "output_id": result.output_id,
                                      "generator": result.generator, "prompt": result.prompt,
                                      "citations": [c.chunk_id for c in result.citations],
                                      "input_tokens": result.input_tokens,
                                      "output_tokens": result.output_tokens,
                                      "cost_usd": result.cost_usd,
                                      "latency_ms": dict(result.latency_ms)})
        except Exception as exc:
            log.error("query log %s: queueing an answer failed: %s", query_log.path, exc)

    def close(self) -> None:
        self.retriever.close()
