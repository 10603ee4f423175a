"""Answering served from a store bundle: the RAG model's request/response contract, without
MLflow.

:class:`Answerer` opens the bundle as the served retriever does (:class:`~mlflow_rag.serving.
Retriever`: hashes checked, read-only, warmed up), answers one question with
:func:`mlflow_rag.answer.answer` (nothing recorded in the bundle, which is never written) and
queues the question, its retrievals and the answer (a ``generations`` row with its
citations, as ``ask`` records it) in the opt-in query log, where feedback requests
(``custom_inputs: {"feedback": {...}}``) find it by its output id. The MLflow model
(``mlflow_rag/pyfunc_rag_model.py``) wraps it in MLflow's agent interface
(``ResponsesAgent``): requests are Responses API requests whose last user message is the
question, with the retrieval params as ``custom_inputs``.

Question text is private: no error message raised here contains it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_rag.answer import THUMBS, Answer, Tracer, answer
from mlflow_rag.errors import DocumentNotFound, RagError, UnknownChoice
from mlflow_rag.generate.prompting import PromptTemplate
from mlflow_rag.generate.registry import DEFAULT_GENERATOR, get_generator
from mlflow_rag.search import SearchRequest, check_query, redact_emails
from mlflow_rag.serving import Retriever
from mlflow_rag.serving_body import BadRequest
from mlflow_rag.serving_log import ServedAnswer
from mlflow_rag.store.answer_log import Feedback, check_feedback

log = logging.getLogger("mlflow_rag.serving")

# Retrieval params a request may carry in ``custom_inputs`` (anything else is refused, named).
CUSTOM_INPUTS = ("k", "mode", "filters")
# A feedback request: ``custom_inputs: {"feedback": {...}}`` with these keys (exactly one of
# thumbs and score); nothing else in ``custom_inputs``.
FEEDBACK_INPUT = "feedback"
FEEDBACK_KEYS = ("output_id", "thumbs", "score", "comment", "user_id")
FEEDBACK_HINT = ('send custom_inputs {"feedback": {"output_id": OUTPUT_ID, "thumbs": "up"}} '
                 '(or "score": NUMBER; optional "comment", "user_id")')
DEFAULT_K = 5
# Config keys of a RAG model, besides the retriever's (serving.DEFAULT_MODEL_CONFIG): the
# generator spec, its options (generate.registry.OPTIONS) and the prompt's registry URI
# (``prompts:/NAME/VERSION``; empty for a generator that reads no prompt).
RAG_MODEL_CONFIG: dict[str, Any] = {
    "generator": DEFAULT_GENERATOR, "generator_options": {}, "prompt": "",
    "keep_answer_text": False,
}


@dataclass(frozen=True)
class FeedbackRequest:
    """A checked feedback request: ``kind`` ``score`` or ``thumbs`` (value 1 up, 0 down)."""

    output_id: str
    kind: str
    value: float
    thumbs: str | None
    comment: str | None
    user_id: str | None


@dataclass(frozen=True)
class ServedFeedback:
    """Feedback as the query log stored it, and the answer's trace id (None: untraced)."""

    feedback: Feedback
    trace_id: str | None


def is_feedback_request(custom_inputs: Mapping[str, Any] | None) -> bool:
    return isinstance(custom_inputs, Mapping) and FEEDBACK_INPUT in custom_inputs


def parse_feedback(custom_inputs: Mapping[str, Any], *, user_id: str | None) -> FeedbackRequest:
    """The feedback of a request's ``custom_inputs``, checked; a bad part is a
    :class:`BadRequest` naming it and what is valid (``user_id``: the request context's,
    unless the feedback names one)."""
    others = sorted(set(custom_inputs) - {FEEDBACK_INPUT})
    if others:
        raise BadRequest(f"a feedback request takes custom_inputs {{\"feedback\": ...}} only, "
                         f"got also {others}; {FEEDBACK_HINT}")
    spec = custom_inputs[FEEDBACK_INPUT]
    if not isinstance(spec, Mapping):
        raise BadRequest(f"custom_inputs feedback must be an object; {FEEDBACK_HINT}")
    unknown = sorted(set(spec) - set(FEEDBACK_KEYS))
    if unknown:
        raise BadRequest(f"unknown feedback keys {unknown}; choose from {list(FEEDBACK_KEYS)}")
    output_id = spec.get("output_id")
    if not isinstance(output_id, str) or not output_id.strip():
        raise BadRequest(f"feedback output_id must be the output_id of an answer's "
                         f"custom_outputs, got {output_id!r}")
    thumbs, score = spec.get("thumbs"), spec.get("score")
    if (thumbs is None) == (score is None):
        raise BadRequest(f"feedback takes exactly one of thumbs ({list(THUMBS)}) or score "
                         "(a number)")
    if thumbs is not None and thumbs not in THUMBS:
        raise BadRequest(str(UnknownChoice("feedback thumbs", thumbs, THUMBS)))
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                              or not math.isfinite(score)):
        raise BadRequest(f"feedback score must be a finite number, got {score!r}")
    comment, who = spec.get("comment"), spec.get("user_id", user_id)
    for key, value in (("comment", comment), ("user_id", who)):
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"feedback {key} must be a string, got {type(value).__name__}")
    kind = "thumbs" if thumbs else "score"
    value = (1.0 if thumbs == "up" else 0.0) if thumbs else float(score)  # type: ignore[arg-type]
    try:
        check_feedback(kind, value, comment)
    except RagError as exc:
        raise BadRequest(str(exc)) from None
    return FeedbackRequest(output_id=output_id, kind=kind, value=value, thumbs=thumbs,
                           comment=comment, user_id=who)


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
        raise BadRequest(f"unknown custom_inputs {unknown}; choose from {list(CUSTOM_INPUTS)} "
                         f"(or {FEEDBACK_INPUT!r} alone: feedback on an answer)")
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
        mmap: bool = True, keep_answer_text: bool = False,
    ) -> None:
        self.generator = get_generator(generator, **dict(generator_options or {}))
        if template is None and self.generator.uses_prompt:
            from mlflow_rag.generate.prompting import SHIPPED

            template = SHIPPED
        self.template = template if self.generator.uses_prompt else None
        self.retriever = Retriever(bundle, include_pii=include_pii, query_log=query_log,
                                   redact=redact, embedder=embedder, mmap=mmap)
        self.redact = redact
        self.keep_answer_text = keep_answer_text  # opt-in, as ask --keep-answer-text

    @property
    def store_id(self) -> str:
        return self.retriever.store.store_id

    def answer(self, question: str, custom_inputs: Mapping[str, Any] | None = None, *,
               tracer: Tracer | None = None, session_id: str | None = None,
               user_id: str | None = None) -> Answer:
        """Answer one (checked) question; a bad param is :class:`BadRequest` naming it.
        ``session_id``, ``user_id``: the request context's conversation and user, recorded
        with the answer as ``ask --session-id/--user-id`` record them."""
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
        self._log(question, result, k=k, mode=mode, filters=filters,
                  session_id=session_id, user_id=user_id)
        return result

    def _log(self, question: str, result: Answer, *, k: int, mode: str,
             filters: Mapping[str, Any] | str | None, session_id: str | None,
             user_id: str | None) -> None:
        """The question and its retrievals into the query log, and the answer as a
        ``generations`` row with its citations (its text only with ``keep_answer_text``)."""
        query_log = self.retriever.query_log
        if query_log is None or result.stats is None:
            return
        if isinstance(filters, str):
            filters = json.loads(filters) if filters.strip() else {}
        served = ServedAnswer(
            output_id=result.output_id, stats=result.stats, trace_id=result.trace_id,
            citations=tuple((c.chunk_id, c.document_id) for c in result.citations),
            answer_text=result.text if self.keep_answer_text else None,
            session_id=session_id, user_id=user_id)
        try:  # queued: never blocks or fails the answer (see serving_log.QueryLog)
            query_log.write(question, result.hits,
                            model_name=self.retriever.model_name if mode != "bm25" else None,
                            metadata={"mode": mode, "k": k, "filters": dict(filters or {}),
                                      "store_id": self.store_id, "answered": True,
                                      "served_answer": True, **self.retriever.served_from},
                            answer=served)
        except Exception as exc:
            log.error("query log %s: queueing an answer failed: %s", query_log.path, exc)

    def feedback(self, request: FeedbackRequest) -> ServedFeedback:
        """Store feedback on a served answer in the query log (its answers are there); an
        unknown output id is a :class:`BadRequest` and stores nothing."""
        query_log = self.retriever.query_log
        if query_log is None:
            raise BadRequest("feedback needs the query log, where served answers are recorded: "
                             "set MLFLOW_RAG_QUERY_LOG (or the model config's query_log)")
        try:
            stored, trace_id = query_log.feedback(
                request.output_id, kind=request.kind, value=request.value,
                comment=request.comment, user_id=request.user_id)
        except DocumentNotFound:
            raise BadRequest(f"no served answer with output id {request.output_id!r} in the "
                             "query log; send the output_id of a response's custom_outputs"
                             ) from None
        return ServedFeedback(feedback=stored, trace_id=trace_id)

    def close(self) -> None:
        self.retriever.close()
