"""Question -> retrieved passages -> answer with citations, recorded in the store and traced.

:func:`answer` times each stage (embed, retrieve, generate), hands the passages (no PII) to a
generator (generate/registry.py), records the answer joined to its query and retrievals
(store/answer_log.py) and, with tracking on, makes the call one MLflow trace through the
adapter genai_tracking.py (imported only then: this module imports no mlflow).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mlflow_rag.errors import InvalidInput, PromptError, UnknownChoice
from mlflow_rag.generate.base import Generation, Generator
from mlflow_rag.generate.prompting import (
    SHIPPED,
    PromptTemplate,
    check_template,
    fit_prompt,
    passages_of,
)
from mlflow_rag.generate.registry import DEFAULT_GENERATOR, get_generator
from mlflow_rag.search import DEFAULT_MODE, Searcher, SearchRequest, redact_emails
from mlflow_rag.store.answer_log import GenerationStats
from mlflow_rag.store.store import Store
from mlflow_rag.store.tables import new_id
from mlflow_rag.tracking_session import TAG_STORE_ID

if TYPE_CHECKING:
    from mlflow_rag.types import Hit

THUMBS = ("up", "down")
# Tags of an answer's trace: the store's ids of it (the store keeps the trace id).
TAG_OUTPUT_ID = "mlflow_rag.output_id"
TAG_QUERY_ID = "mlflow_rag.query_id"


@dataclass(frozen=True)
class Citation:
    """A cited chunk with its document."""

    chunk_id: str
    document_id: str
    source_path: str
    title: str = ""


@dataclass(frozen=True)
class Answer:
    """An answer, its citations and the ids that find it again: ``output_id`` (feedback
    takes it), ``query_id`` (the store's query log; None when not recorded), ``trace_id``
    (MLflow; None without tracking)."""

    text: str
    citations: tuple[Citation, ...]
    output_id: str
    query_id: str | None
    trace_id: str | None
    generator: str
    prompt: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: Mapping[str, float]
    truncation: Mapping[str, Any] | None = None
    hits: tuple[Hit, ...] = field(default=(), repr=False)
    # the generations row's figures (what a served model's query log records)
    stats: GenerationStats | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``ask --json`` shape."""
        return {
            "answer": self.text,
            "citations": [{"chunk_id": c.chunk_id, "document_id": c.document_id,
                           "source_path": c.source_path, "title": c.title}
                          for c in self.citations],
            "output_id": self.output_id, "query_id": self.query_id, "trace_id": self.trace_id,
            "generator": self.generator, "prompt": self.prompt,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd, "latency_ms": dict(self.latency_ms),
            "truncation": dict(self.truncation) if self.truncation else None,
        }


class Span(Protocol):
    def set_outputs(self, outputs: Any) -> None: ...
    def set_attributes(self, attributes: Mapping[str, Any]) -> None: ...
    def set_documents(self, hits: Any) -> None: ...
    def set_usage(self, *, input_tokens: int, output_tokens: int, cost_usd: float) -> None: ...


class Tracer(Protocol):
    trace_id: str | None

    def session(self) -> Any: ...
    def span(self, name: str, kind: str, inputs: Mapping[str, Any]) -> Any: ...
    def tag_trace(self, *, tags: Mapping[str, str], session_id: str | None,
                  user_id: str | None) -> None: ...


class _NoSpan:
    def set_outputs(self, outputs: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def set_documents(self, hits: Any) -> None:
        pass

    def set_usage(self, *, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        pass


class NoTracer:
    """Tracking off: spans that record nothing."""

    trace_id: str | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        yield

    @contextmanager
    def span(self, name: str, kind: str, inputs: Mapping[str, Any]) -> Iterator[_NoSpan]:
        yield _NoSpan()

    def tag_trace(self, *, tags: Mapping[str, str], session_id: str | None,
                  user_id: str | None) -> None:
        pass


def resolve_template(
    generator: Generator, prompt: str | PromptTemplate | None, *, track: bool,
    tracking_uri: str | None, experiment: str | None,
) -> PromptTemplate | None:
    """The template the generator will read (None: it reads none). A registry URI needs
    tracking; without it the shipped default is used as it is."""
    if not generator.uses_prompt:
        if prompt is not None:
            raise PromptError(f"the {generator.name} generator uses no prompt; --prompt needs "
                              "a generator that does (openai:MODEL)")
        return None
    if isinstance(prompt, PromptTemplate):
        check_template(prompt.template, name=prompt.uri)
        return prompt
    if not track:
        if prompt is not None:
            raise PromptError(f"prompt {prompt!r} is in MLflow's Prompt Registry; it needs "
                              "tracking (drop --no-track)")
        return SHIPPED
    from mlflow_rag.genai_tracking import resolve_prompt

    return resolve_prompt(prompt, tracking_uri=tracking_uri, experiment=experiment)


def answer(
    store: Store, question: str, *, generator: str | Generator = DEFAULT_GENERATOR,
    generator_options: Mapping[str, Any] | None = None, prompt: str | PromptTemplate | None = None,
    k: int = 5, mode: str = DEFAULT_MODE, filters: str | Mapping[str, Any] | None = None,
    searcher: Searcher | None = None, record: bool = True, keep_answer_text: bool = False,
    redact: Callable[[str], str] | None = redact_emails, session_id: str | None = None,
    user_id: str | None = None, track: bool = True, tracking_uri: str | None = None,
    experiment: str | None = None, tracer: Tracer | None = None,
) -> Answer:
    """Answer ``question`` from the store's top-``k`` chunks.

    Recorded (``record``): the question (redacted) and its retrievals, the generation (prompt
    name and version, generator and params, tokens, cost, latency per stage, trace id,
    session and user) and its citations; the answer text only with ``keep_answer_text``,
    redacted like the question. Traced (``track``): one MLflow trace per call.
    """
    request = SearchRequest.parse(question, k=k, mode=mode, filters=filters)
    gen = generator if not isinstance(generator, str) else get_generator(
        generator, **dict(generator_options or {}))
    template = resolve_template(gen, prompt, track=track, tracking_uri=tracking_uri,
                                experiment=experiment)
    tracer = tracer or _default_tracer(track=track, tracking_uri=tracking_uri,
                                       experiment=experiment)
    searcher = searcher or Searcher(store)
    shown = redact(question) if redact else question
    output_id, query_id = new_id(), new_id()
    latency: dict[str, float] = {}
    with tracer.session(), tracer.span("answer", "chain", {"question": shown}) as root:
        tracer.tag_trace(tags={TAG_OUTPUT_ID: output_id,
                               TAG_QUERY_ID: query_id if record else "",
                               TAG_STORE_ID: store.store_id},
                         session_id=session_id, user_id=user_id)
        started = time.perf_counter()
        vector = searcher.embedder.embed_query(request.query) if mode != "bm25" else None
        latency["embed"] = (time.perf_counter() - started) * 1000
        with tracer.span("retrieve", "retriever", {"query": shown, "k": request.k,
                                                   "mode": mode}) as span:
            started = time.perf_counter()
            hits = tuple(searcher.run(request, vector=vector))
            latency["retrieve"] = (time.perf_counter() - started) * 1000
            span.set_documents(hits)
        generation, truncation = _generate(gen, template, request.query, hits, tracer=tracer,
                                           latency=latency, redact=redact)
        by_id = {h.chunk_id: h for h in hits}
        citations = tuple(_citation(by_id[c]) for c in generation.citations if c in by_id)
        root.set_outputs({"answer": redact(generation.text) if redact else generation.text,
                          "citations": [c.chunk_id for c in citations],
                          "output_id": output_id})
    trace_id = tracer.trace_id
    stats = GenerationStats(
        generator=gen.name, params=gen.params(),
        prompt_name=template.name if template else None,
        prompt_version=template.version if template else None,
        input_tokens=generation.input_tokens, output_tokens=generation.output_tokens,
        cost_usd=generation.cost_usd, embed_ms=latency["embed"],
        retrieve_ms=latency["retrieve"], generate_ms=latency["generate"],
        metadata={"truncation": truncation} if truncation else {})
    if record:
        store.logs.log_answer(
            output_id=output_id, query_id=query_id, question=request.query, hits=hits,
            model_name=searcher.embedding_model if mode != "bm25" else None, embedding=vector,
            query_metadata={"mode": mode, "k": request.k, "answered": True}, stats=stats,
            answer_text=generation.text if keep_answer_text else None,
            citations=[(c.chunk_id, c.document_id) for c in citations],
            session_id=session_id, user_id=user_id, trace_id=trace_id, redact=redact)
    return Answer(
        text=generation.text, citations=citations, output_id=output_id,
        query_id=query_id if record else None,
        trace_id=trace_id, generator=gen.name, prompt=template.uri if template else None,
        input_tokens=generation.input_tokens, output_tokens=generation.output_tokens,
        cost_usd=generation.cost_usd, latency_ms=latency, truncation=truncation, hits=hits,
        stats=stats)


def _default_tracer(*, track: bool, tracking_uri: str | None,
                    experiment: str | None) -> Tracer:
    if not track:
        return NoTracer()
    from mlflow_rag.genai_tracking import MlflowTracer

    return MlflowTracer(tracking_uri=tracking_uri, experiment=experiment)


def _generate(
    gen: Generator, template: PromptTemplate | None, question: str, hits: Sequence[Hit], *,
    tracer: Tracer, latency: dict[str, float], redact: Callable[[str], str] | None,
) -> tuple[Generation, dict[str, Any] | None]:
    """The generation stage: the prompt fitted to the generator's window (what was cut, if
    anything), then one ``llm`` span; its time goes into ``latency["generate"]``."""
    passages = passages_of(hits)
    truncation = None
    prompt_text = ""
    if template is not None:
        prompt_text, passages, cut = fit_prompt(
            template.template, question=question, passages=passages,
            window=gen.context_window, reserved=gen.max_output_tokens,
            count_tokens=gen.count_tokens)
        truncation = cut.to_dict() if cut else None
    with tracer.span("generate", "llm", {"generator": gen.name,
                                          "prompt": template.uri if template else None,
                                          "passages": [p.chunk_id for p in passages]}) as span:
        started = time.perf_counter()
        generation = gen.generate(question=question, prompt=prompt_text, passages=passages)
        latency["generate"] = (time.perf_counter() - started) * 1000
        span.set_usage(input_tokens=generation.input_tokens,
                       output_tokens=generation.output_tokens, cost_usd=generation.cost_usd)
        if truncation:
            span.set_attributes({"mlflow_rag.truncation": truncation})
        span.set_outputs(redact(generation.text) if redact else generation.text)
    return generation, truncation


def _citation(hit: Hit) -> Citation:
    title = hit.document_metadata.get("title")
    return Citation(chunk_id=hit.chunk_id, document_id=hit.document_id,
                    source_path=hit.source_path, title=title if isinstance(title, str) else "")


def feedback(
    store: Store, output_id: str, *, score: float | None = None, thumbs: str | None = None,
    comment: str | None = None, user_id: str | None = None,
    redact: Callable[[str], str] | None = redact_emails, track: bool = True,
    tracking_uri: str | None = None, experiment: str | None = None,
) -> bool:
    """Record feedback on an answer: a ``score`` or ``thumbs`` ("up"/"down"), with an optional
    comment (redacted like questions). Also logged on the answer's MLflow trace when it has
    one and ``track`` is on; returns whether it was."""
    if (score is None) == (thumbs is None):
        raise InvalidInput("give exactly one of a score or thumbs (up or down)")
    if thumbs is not None:
        if thumbs not in THUMBS:
            raise UnknownChoice("thumbs", thumbs, THUMBS)
        kind, value = "thumbs", 1.0 if thumbs == "up" else 0.0
    else:
        kind, value = "score", score  # type: ignore[assignment]
    record = store.logs.answer_record(output_id)  # an unknown id fails before anything is stored
    stored = store.logs.add_feedback(output_id, kind=kind, value=value, comment=comment,
                                user_id=user_id, redact=redact)
    if not (track and record.trace_id):
        return False
    from mlflow_rag.genai_tracking import log_trace_feedback

    log_trace_feedback(record.trace_id, value=(thumbs == "up") if thumbs else stored.value,
                       comment=stored.comment, user_id=user_id, tracking_uri=tracking_uri,
                       experiment=experiment)
    return True
