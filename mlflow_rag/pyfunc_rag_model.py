"""The RAG model (retrieve, then answer) as an MLflow ``ResponsesAgent``: the models-from-code
file of ``log-model --kind rag``.

MLflow 3's interface for agent and chat models is :class:`mlflow.pyfunc.ResponsesAgent`
(``ChatModel`` and ``ChatAgent`` are deprecated): requests are Responses API requests
(``{"input": [{"role": "user", "content": QUESTION}], "custom_inputs": {"k": 5}}``),
responses carry output items. The answer is one text output item whose id is the output id;
``custom_outputs`` hold the citations (chunk and document ids) and the answer's metadata.

:class:`RagModel` wraps :class:`mlflow_rag.serving_rag.Answerer` with tracing and MLflow's
error type, as ``pyfunc_model.py`` wraps the retriever (whose helpers it shares). The last
line registers the model (importing ``pyfunc_model`` registered the retriever first; the
last registration wins).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import mlflow
import mlflow.models
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse

from mlflow_rag.answer import NoTracer, Tracer
from mlflow_rag.errors import EmbedderError, GeneratorError, RagError
from mlflow_rag.genai_tracking import SPAN_TYPES, MlflowSpan
from mlflow_rag.pyfunc_model import (
    PrivateMlflowException,
    _documents,
    bad_request,
    check_responses_request,
    guard_scoring_server,
    warm_up_serving,
)
from mlflow_rag.serving import QUERY_LOG_ENV, config_choices, config_flag
from mlflow_rag.serving_body import scrub
from mlflow_rag.serving_rag import (
    Answerer,
    ServedFeedback,
    custom_outputs,
    is_feedback_request,
    parse_feedback,
    question_of,
)

log = logging.getLogger("mlflow_rag.pyfunc_model")


class RagModel(ResponsesAgent):
    """Question -> retrieved chunks -> answer with citations, as a ``ResponsesAgent``.

    ``model_config``: the retriever's keys (``include_pii``, ``query_log``, ``redact``,
    ``embedder``, ``mmap``, ``trace``; see :class:`mlflow_rag.pyfunc_model.RetrieverModel`)
    and ``generator`` (``extractive`` by default: no model, no key), ``generator_options``
    and ``prompt`` (a Prompt Registry URI, loaded when the model loads; empty for a
    generator that reads no prompt).
    """

    def __init__(self) -> None:
        self.answerer: Answerer | None = None
        self.trace = "ids"

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        redact, self.trace = config_choices(config)
        template = None
        if config.get("prompt"):  # the registry the model was logged against (MLFLOW_TRACKING_URI)
            from mlflow_rag.genai_tracking import resolve_prompt

            template = resolve_prompt(str(config["prompt"]), tracking_uri=None, experiment=None)
        options = config.get("generator_options") or {}
        self.answerer = Answerer(
            str(config.get("store") or "") or context.artifacts["bundle"],
            generator=str(config.get("generator") or "extractive"),
            generator_options=dict(options) if isinstance(options, Mapping) else {},
            template=template,
            include_pii=config_flag(config.get("include_pii", False)),
            query_log=os.environ.get(QUERY_LOG_ENV) or config.get("query_log") or None,
            redact=redact,
            embedder=config.get("embedder") or None,
            mmap=config_flag(config.get("mmap", True)),
            keep_answer_text=config_flag(config.get("keep_answer_text", False)),
        )
        if guard_scoring_server():
            warm_up_serving(trace=self.trace != "off")

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:  # type: ignore[override]
        # Replaced below by _predict (defined here so that the abstract method is one).
        return _predict(self, request)

    def answer_request(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        answerer = self.answerer
        if answerer is None:
            raise MlflowException("the model is not loaded (load_context was not called)",
                                  error_code=INTERNAL_ERROR)
        body = request.model_dump(exclude_none=True)
        context = body.get("context") or {}
        if is_feedback_request(body.get("custom_inputs")):
            return self.feedback_request(answerer, body["custom_inputs"], context)
        question = ""
        try:
            question = question_of(body)
            tracer: Tracer = (NoTracer() if self.trace == "off"
                              else ServedTracer(text=self.trace == "text"))
            result = answerer.answer(question, body.get("custom_inputs"), tracer=tracer,
                                     session_id=context.get("conversation_id"),
                                     user_id=context.get("user_id"))
        except (EmbedderError, GeneratorError) as exc:  # a service failed, not the request
            stage = "the query embedder" if isinstance(exc, EmbedderError) else "the generator"
            raise PrivateMlflowException(scrub(f"{stage} failed: {exc}", [question]),
                                         error_code=TEMPORARILY_UNAVAILABLE) from None
        except (RagError, ValueError) as exc:
            raise bad_request(str(exc), [question]) from None
        except Exception as exc:
            log.exception("answering failed")  # server log: the type and the stack
            raise PrivateMlflowException(
                f"answering failed ({type(exc).__name__}); see the server log",
                error_code=INTERNAL_ERROR) from None
        return ResponsesAgentResponse(
            # a dict, which the response model validates into an output item
            output=[self.create_text_output_item(  # type: ignore[list-item]
                text=result.text, id=result.output_id)],
            custom_outputs=custom_outputs(result),
        )

    def feedback_request(self, answerer: Answerer, custom_inputs: Mapping[str, Any],
                         context: Mapping[str, Any]) -> ResponsesAgentResponse:
        """``custom_inputs: {"feedback": {...}}``: stored in the query log beside the answer
        and logged on its trace (when it has one); the response says so."""
        comment: list[str] = []
        try:
            parsed = parse_feedback(custom_inputs, user_id=context.get("user_id"))
            comment = [parsed.comment] if parsed.comment else []
            stored = answerer.feedback(parsed)
        except (RagError, ValueError) as exc:
            raise bad_request(str(exc), comment) from None
        except Exception as exc:  # e.g. the query log's database is down: nothing stored
            log.exception("feedback failed")
            raise PrivateMlflowException(
                f"feedback failed ({type(exc).__name__}); nothing was stored",
                error_code=TEMPORARILY_UNAVAILABLE) from None
        traced = self.trace != "off" and _log_on_trace(stored, thumbs=parsed.thumbs)
        feedback = stored.feedback
        return ResponsesAgentResponse(
            output=[self.create_text_output_item(  # type: ignore[list-item]
                text=f"feedback recorded on {feedback.output_id}", id=feedback.id)],
            custom_outputs={"feedback_id": feedback.id, "output_id": feedback.output_id,
                            "kind": feedback.kind, "value": feedback.value,
                            "trace_id": stored.trace_id, "logged_on_trace": traced},
        )


def _log_on_trace(stored: ServedFeedback, *, thumbs: str | None) -> bool:
    """``mlflow.log_feedback`` on the answer's trace; stored feedback stays stored if the
    tracking store refuses (logged in the server log, ``logged_on_trace`` false)."""
    if not stored.trace_id:
        return False
    from mlflow_rag.genai_tracking import log_served_feedback

    feedback = stored.feedback
    try:
        log_served_feedback(stored.trace_id,
                            value=(thumbs == "up") if thumbs else feedback.value,
                            comment=feedback.comment, user_id=feedback.user_id)
    except Exception as exc:
        log.warning("feedback %s is stored but not logged on trace %s: %s", feedback.id,
                    stored.trace_id, exc)
        return False
    return True


def _predict(self: RagModel, request: Any) -> ResponsesAgentResponse:
    """``predict``: a dict is checked against the request schema here, with a message that
    names the bad fields, never their values (the question)."""
    if isinstance(request, Mapping):
        request = check_responses_request(dict(request))
    return self.answer_request(request)


# Replaced after the class exists: ResponsesAgent wraps the ``predict`` of the class body in a
# trace whose span records the whole request and response (the question, the answer's text).
# The model's own spans record text only with ``trace: text``, like the retriever's.
RagModel.predict = _predict  # type: ignore[method-assign]


class ServedSpan(MlflowSpan):
    """A span of the served model: without ``text``, ids, counts and usage only."""

    def __init__(self, span: Any, *, text: bool) -> None:
        super().__init__(span)
        self.text = text

    def set_outputs(self, outputs: Any) -> None:
        if not self.text:
            if isinstance(outputs, str):
                return
            if isinstance(outputs, Mapping):
                outputs = {k: v for k, v in outputs.items() if k != "answer"}
        super().set_outputs(outputs)

    def set_documents(self, hits: Sequence[Any]) -> None:
        if self.text:
            super().set_documents(hits)
        else:
            self._span.set_outputs(_documents(hits, text=False))


_TEXT_INPUTS = ("question", "query")


class ServedTracer:
    """Answering's spans inside a served model (the tracking store is the server's)."""

    def __init__(self, *, text: bool) -> None:
        self.text = text
        self.trace_id: str | None = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def span(self, name: str, kind: str, inputs: Mapping[str, Any]) -> Iterator[ServedSpan]:
        with mlflow.start_span(name=name, span_type=SPAN_TYPES[kind]) as span:
            if self.trace_id is None:
                self.trace_id = span.trace_id
            shown = dict(inputs) if self.text else {
                k: v for k, v in inputs.items() if k not in _TEXT_INPUTS}
            span.set_inputs(shown)
            yield ServedSpan(span, text=self.text)

    def tag_trace(self, *, tags: Mapping[str, str], session_id: str | None,
                  user_id: str | None) -> None:
        span = mlflow.get_current_active_span()
        if span is not None:  # the ids that find the answer again (no trace tag writes here)
            span.set_attributes({key: value for key, value in tags.items() if value})


mlflow.models.set_model(RagModel())
