"""The MLflow GenAI adapter of answering: prompts from the Prompt Registry, one trace per
answer, feedback as an assessment on that trace.

- Prompts: ``prompts:/NAME@ALIAS``, ``prompts:/NAME/VERSION`` (or without the scheme) through
  ``mlflow.genai.load_prompt``; no prompt given means the shipped default
  (generate/prompting.py), registered with ``mlflow.genai.register_prompt`` on first use and
  again only when the shipped text changes.
- Traces: :class:`MlflowTracer` opens spans with ``mlflow.start_span`` (a CHAIN root, a
  RETRIEVER span whose outputs are ``mlflow.entities.Document`` s, an LLM span carrying token
  usage); the store's query and output ids are trace tags, and the trace id is stored with
  the answer: linked both ways.
- Feedback: ``mlflow.log_feedback`` on the answer's trace.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from mlflow_rag.errors import PromptError
from mlflow_rag.generate.prompting import (
    DEFAULT_PROMPT_NAME,
    DEFAULT_TEMPLATE,
    PromptTemplate,
    check_template,
)
from mlflow_rag.tracking_session import mlflow_session, quiet_mlflow, resolve_tracking_uri

PROMPT_FORMS = ("prompts:/NAME@ALIAS", "prompts:/NAME/VERSION", "NAME@ALIAS", "NAME/VERSION")
_URI = re.compile(r"^(?:prompts:/)?(?P<name>[A-Za-z0-9][\w.\-]*)(?:@(?P<alias>[\w\-]+)|/(?P<version>\d+))$")
# The destination MLflow was last pointed at by a tracer of this process.
_CONFIGURED: dict[str, tuple[str, str | None]] = {}
# The kinds of span an answer's trace holds, as MLflow's SpanType names them.
SPAN_TYPES = {"chain": "CHAIN", "retriever": "RETRIEVER", "llm": "LLM", "embedding": "EMBEDDING"}


def parse_prompt_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of a prompt reference; one error listing the forms taken."""
    found = _URI.match(uri.strip()) if isinstance(uri, str) else None
    if not found:
        raise PromptError(f"bad prompt {uri!r}; use one of {list(PROMPT_FORMS)}")
    return found["name"], found["alias"], found["version"]


def resolve_prompt(
    uri: str | None, *, tracking_uri: str | None = None, experiment: str | None = None,
) -> PromptTemplate:
    """The prompt ``uri`` names, loaded from the registry and checked (its variables); None:
    the shipped default, registered on first use."""
    from mlflow.exceptions import MlflowException

    with mlflow_session(tracking_uri, experiment) as mlflow:
        if uri is None:
            return _default_prompt(mlflow)
        name, alias, version = parse_prompt_uri(uri)
        reference = f"prompts:/{name}@{alias}" if alias else f"prompts:/{name}/{version}"
        try:
            found = mlflow.genai.load_prompt(reference, cache_ttl_seconds=0,
                                             link_to_model=False)
        except MlflowException as exc:
            raise PromptError(f"no prompt {reference} in the Prompt Registry at "
                              f"{mlflow.get_tracking_uri()}: {_known(mlflow, name)} "
                              f"({_first_line(exc.message)})") from None
        template = found.template
        if not isinstance(template, str):
            raise PromptError(f"prompt {reference} is a chat prompt; answering takes a text "
                              "template with {{ question }} and {{ context }}")
        check_template(template, name=reference)
        return PromptTemplate(name=found.name, version=str(found.version), template=template)


def _default_prompt(mlflow: Any) -> PromptTemplate:
    latest = mlflow.genai.load_prompt(f"prompts:/{DEFAULT_PROMPT_NAME}@latest",
                                      allow_missing=True, cache_ttl_seconds=0,
                                      link_to_model=False)
    if latest is None or latest.template != DEFAULT_TEMPLATE:
        latest = mlflow.genai.register_prompt(
            name=DEFAULT_PROMPT_NAME, template=DEFAULT_TEMPLATE,
            commit_message="the default answer prompt shipped with mlflow-rag",
            tags={"mlflow_rag.shipped": "true"})
    return PromptTemplate(name=DEFAULT_PROMPT_NAME, version=str(latest.version),
                          template=DEFAULT_TEMPLATE)


def _known(mlflow: Any, name: str) -> str:
    """What the registry holds of a prompt name, for the error message."""
    client = mlflow.MlflowClient()
    try:
        numbers = sorted(int(v.version) for v in client.search_prompt_versions(name))
    except Exception:  # the registry refuses an unknown name: say so
        numbers = []
    if not numbers:
        return f"prompt {name!r} does not exist"
    # Versions as searched carry no aliases; one read per version does (prompts have few).
    aliases = sorted({a for n in numbers for a in client.get_prompt_version(name, n).aliases})
    return f"it has versions {numbers} and aliases {aliases}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


class MlflowSpan:
    """A live span as answering sees it: outputs and attributes."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def set_outputs(self, outputs: Any) -> None:
        self._span.set_outputs(outputs)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._span.set_attributes(dict(attributes))

    def set_documents(self, hits: Sequence[Any]) -> None:
        """A RETRIEVER span's outputs: MLflow Documents (chunk text and ids, no PII)."""
        from mlflow.entities import Document

        self._span.set_outputs([
            Document(page_content=h.text, id=h.chunk_id,
                     metadata={"doc_uri": h.source_path, "chunk_id": h.chunk_id,
                               "document_id": h.document_id, "score": h.score, "rank": h.rank})
            for h in hits])

    def set_usage(self, *, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        """An LLM span's token usage and cost, under MLflow's own attribute keys, so the
        trace's totals add them up."""
        from mlflow.tracing.constant import CostKey, SpanAttributeKey, TokenUsageKey

        self._span.set_attribute(SpanAttributeKey.CHAT_USAGE, {
            TokenUsageKey.INPUT_TOKENS: input_tokens,
            TokenUsageKey.OUTPUT_TOKENS: output_tokens,
            TokenUsageKey.TOTAL_TOKENS: input_tokens + output_tokens})
        self._span.set_attribute(SpanAttributeKey.LLM_COST, {CostKey.TOTAL_COST: cost_usd})


class MlflowTracer:
    """Answering's tracer on MLflow: the first span opened is the trace's root."""

    def __init__(self, *, tracking_uri: str | None, experiment: str | None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.trace_id: str | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        """Point MLflow at the tracking store once per process and destination: setting the
        experiment again resets MLflow's trace exporter (about a second a call). Traces are
        exported in the background; :func:`flush_traces` waits for them."""
        import mlflow

        quiet_mlflow()
        key = (resolve_tracking_uri(self.tracking_uri), self.experiment)
        if _CONFIGURED.get("key") == key and mlflow.get_tracking_uri() == key[0]:
            yield
            return
        with mlflow_session(self.tracking_uri, self.experiment):
            _CONFIGURED["key"] = key
            yield

    @contextmanager
    def span(self, name: str, kind: str, inputs: Mapping[str, Any]) -> Iterator[MlflowSpan]:
        import mlflow

        with mlflow.start_span(name=name, span_type=SPAN_TYPES[kind]) as span:
            if self.trace_id is None:
                self.trace_id = span.trace_id
            span.set_inputs(dict(inputs))
            yield MlflowSpan(span)

    def tag_trace(self, *, tags: Mapping[str, str], session_id: str | None,
                  user_id: str | None) -> None:
        """Tags and the session/user of the current trace (inside its root span)."""
        import mlflow
        from mlflow.tracing.constant import TraceMetadataKey

        metadata = {}
        if session_id:
            metadata[TraceMetadataKey.TRACE_SESSION] = session_id
        if user_id:
            metadata[TraceMetadataKey.TRACE_USER] = user_id
        mlflow.update_current_trace(tags=dict(tags), metadata=metadata or None)


def flush_traces() -> None:
    """Wait until every trace made so far is in the tracking store (before a process ends,
    or before reading a trace back)."""
    import mlflow

    mlflow.flush_trace_async_logging()


def log_trace_feedback(
    trace_id: str, *, value: float | bool, comment: str | None, user_id: str | None,
    tracking_uri: str | None = None, experiment: str | None = None,
) -> None:
    """The feedback as an assessment (HUMAN source) on the answer's trace."""
    quiet_mlflow()
    with mlflow_session(tracking_uri, experiment):
        log_served_feedback(trace_id, value=value, comment=comment, user_id=user_id)


def log_served_feedback(trace_id: str, *, value: float | bool, comment: str | None,
                        user_id: str | None) -> None:
    """The feedback as an assessment (HUMAN source) on the answer's trace, in the tracking
    store MLflow points at already (a scoring server's: its configuration is left alone).

    Traces are exported in the background, and flushing that export stops and restarts its
    thread (about 2 s a call): so the trace is flushed only when the first try fails (the
    answer's trace not stored yet)."""
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType
    from mlflow.exceptions import MlflowException

    def log() -> None:
        mlflow.log_feedback(
            trace_id=trace_id, name="user_feedback", value=value, rationale=comment,
            source=AssessmentSource(source_type=AssessmentSourceType.HUMAN,
                                    source_id=user_id or "mlflow-rag"))

    try:
        log()
    except MlflowException:
        flush_traces()  # the answer's trace may still be on its way (same process)
        log()
