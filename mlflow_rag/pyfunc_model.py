"""The retriever as an MLflow pyfunc model: the models-from-code file.

``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"bundle": ...})`` copies this
file into the model, and loading the model runs it: the model is code plus the bundle,
never a pickled object (unpickling runs arbitrary code). The last line registers the model.

:class:`RetrieverModel` wraps :class:`mlflow_rag.serving.Retriever` (the request/response
contract) with tracing (a RETRIEVER span whose outputs are :class:`mlflow.entities.Document`
items, so MLflow's retrieval scorers can read them) and with MLflow's error type:
``MlflowException(INVALID_PARAMETER_VALUE)``, which the scoring server answers with HTTP 400.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import mlflow
import mlflow.models
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    TEMPORARILY_UNAVAILABLE,
)
from mlflow.pyfunc import PythonModel

from mlflow_rag.errors import DatabaseUnavailable, EmbedderError, RagError
from mlflow_rag.pyfunc_serving import answer_plain_table, plain_json
from mlflow_rag.search import SearchRequest
from mlflow_rag.serving import (
    QUERY_LOG_ENV,
    Retriever,
    build_requests,
    coerce_queries,
    config_choices,
    config_flag,
    parse_output,
    read_json_body,
    response_frame,
    row_params,
)
from mlflow_rag.serving_body import (
    TABLE_HINT,
    body_strings,
    decode_json_body,
    private_message,
    request_strings,
    scrub,
)
from mlflow_rag.types import Hit

log = logging.getLogger("mlflow_rag.pyfunc_model")


class PrivateMlflowException(MlflowException):
    """An ``MlflowException`` whose message nobody can extend after it is raised.

    MLflow's scoring server rewrites the message of an ``MlflowException`` raised by
    ``predict`` to ``"Failed to predict data '<the request data>' ..."``; the request data
    holds the queries, and queries may be private. This class keeps the first message.
    """

    @property
    def message(self) -> str:
        return self._private_message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_private_message"):
            self._private_message = value


def bad_request(message: str, queries: Sequence[str] = ()) -> PrivateMlflowException:
    """HTTP 400 with a message that names the problem, never the query."""
    return PrivateMlflowException(scrub(message, queries), error_code=INVALID_PARAMETER_VALUE)


class RetrieverModel(PythonModel):
    """Search as an MLflow pyfunc model; the response is :data:`mlflow_rag.serving.OUTPUT_COLUMNS`.

    ``model_config``: ``include_pii`` (default false), ``query_log`` (a writable SQLite file;
    the environment variable ``MLFLOW_RAG_QUERY_LOG`` wins), ``redact`` (``"emails"``, the
    default, or ``"none"``: applied to logged queries and to queries recorded in traces),
    ``embedder`` (the embedding model to search when the bundle holds several), ``mmap``
    (default true: workers share the index files' pages; false reads a private copy each),
    ``trace`` (:data:`mlflow_rag.serving.TRACE_MODES`: ``"ids"``, the default, records no
    query or chunk text; ``"text"`` does, after ``redact``; ``"off"`` records no trace),
    ``store`` (a live model's ``postgresql://`` store, no password in it: searched instead of
    a bundle, so new documents are served without a new version; ``query_log`` may name the
    same store), ``require_principal`` (default false: a request without params
    ``principal`` is 400).
    """

    def __init__(self) -> None:
        self.retriever: Retriever | None = None
        self.trace = "ids"

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        redact, self.trace = config_choices(config)
        # A live model names its store in a database (credentials from this process's
        # environment: PGPASSWORD, ~/.pgpass); any other model serves its bundle artifact.
        store = str(config.get("store") or "") or context.artifacts["bundle"]
        self.retriever = Retriever(
            store,
            include_pii=bool(config.get("include_pii", False)),
            query_log=os.environ.get(QUERY_LOG_ENV) or config.get("query_log") or None,
            redact=redact,
            embedder=config.get("embedder") or None,
            # models logged before the option existed have no "mmap" key: the default applies
            mmap=config_flag(config.get("mmap", True)),
            require_principal=config_flag(config.get("require_principal", False)),
        )
        if guard_scoring_server():
            warm_up_serving(trace=self.trace != "off")

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        retriever = self.retriever
        if retriever is None:
            raise MlflowException("the model is not loaded (load_context was not called)",
                                  error_code=INTERNAL_ERROR)
        queries: list[str] = []
        try:
            queries = coerce_queries(model_input)  # first alone: the scrub below needs them
            output = parse_output(params)
            searches = build_requests(queries, params, default_mode=retriever.default_mode,
                                      overrides=row_params(model_input, len(queries)),
                                      require_principal=retriever.require_principal)
        except RagError as exc:
            raise bad_request(str(exc), queries) from None
        if len(searches) == 1:  # the common request: one span, not a CHAIN around one
            return self._predict_one(retriever, queries[0], searches[0], output)
        results: list[list[Hit]] = []
        with self._span("predict", "CHAIN") as root:
            # Sampled out (MLFLOW_TRACE_SAMPLING_RATIO) or off: no child spans, no payloads.
            tracing = _recording(root)
            if tracing:
                root.set_inputs(self._request_inputs(retriever, queries, searches[0], output))
                root.set_attributes(self._attributes(retriever))
            for index, (query, search) in enumerate(zip(queries, searches, strict=True)):
                with (self._span("retrieve", "RETRIEVER") if tracing
                      else contextlib.nullcontext(_NoSpan())) as span:
                    if tracing:
                        span.set_inputs(self._query_inputs(retriever, index, query, search))
                    hits = self._search(retriever, search, queries)
                    if tracing:
                        span.set_outputs(_documents(hits, text=self.trace == "text"))
                results.append(hits)
            frame = response_frame(results, output=output)
            if tracing:
                root.set_outputs({"hits": sum(len(hits) for hits in results)})
        return frame

    def _predict_one(self, retriever: Retriever, query: str, search: SearchRequest,
                     output: str) -> pd.DataFrame:
        """A one-query request: its trace is a single RETRIEVER span ``retrieve``, the span
        a query of a larger request gets, with the request's attributes. MLflow's cost is per
        span (start, end, attribute JSON, export, a row in the tracking store): a CHAIN span
        around one retrieve span doubled it for the request most clients send."""
        with self._span("retrieve", "RETRIEVER") as span:
            tracing = _recording(span)
            if tracing:
                span.set_inputs(self._query_inputs(retriever, 0, query, search))
                span.set_attributes({**self._attributes(retriever), "mlflow_rag.output": output})
            hits = self._search(retriever, search, [query])
            if tracing:
                span.set_outputs(_documents(hits, text=self.trace == "text"))
            return response_frame([hits], output=output)

    def _request_inputs(self, retriever: Retriever, queries: Sequence[str],
                        first: SearchRequest, output: str) -> dict[str, Any]:
        """The root span's inputs: the params of the first query (per-row columns may change
        them for others); the queries themselves only with ``text``."""
        request = _traced_request(first, text=self.trace == "text")
        if self.trace != "text":
            return {"queries": len(queries), **request, "output": output}
        redact = retriever.redact or (lambda query: query)
        return {"query": [redact(q) for q in queries], **request, "output": output}

    def _attributes(self, retriever: Retriever) -> dict[str, Any]:
        """What every request's trace carries on its root span."""
        attributes: dict[str, Any] = {"mlflow_rag.store_id": retriever.store.store_id,
                                      "mlflow_rag.bundle_generation": _generation(retriever),
                                      "mlflow_rag.trace": self.trace}
        if retriever.query_log is not None:  # queries the log could not keep (its queue full)
            attributes["mlflow_rag.query_log_dropped"] = retriever.query_log.dropped
        return attributes

    def _query_inputs(self, retriever: Retriever, index: int, query: str,
                      search: SearchRequest) -> dict[str, Any]:
        text = self.trace == "text"
        asked = _traced_request(search, text=text)
        redact = retriever.redact or (lambda query: query)
        return {"query": redact(query), **asked} if text else {"query_index": index, **asked}

    def _span(self, name: str, span_type: str) -> Any:
        """An MLflow span, or one that records nothing when tracing is off for this model."""
        if self.trace == "off":
            return contextlib.nullcontext(_NoSpan())
        return mlflow.start_span(name=name, span_type=span_type)

    @staticmethod
    def _search(retriever: Retriever, search: SearchRequest, queries: Sequence[str]) -> list[Hit]:
        try:
            return retriever.search_one(search)
        except DatabaseUnavailable as exc:  # a live store's database is down: 503, try again
            raise PrivateMlflowException(scrub(str(exc), queries),
                                         error_code=TEMPORARILY_UNAVAILABLE) from None
        except EmbedderError as exc:  # the embedding service failed, not the request
            raise PrivateMlflowException(
                scrub(f"the query embedder failed: {exc}", queries),
                error_code=TEMPORARILY_UNAVAILABLE,
            ) from None
        except (RagError, ValueError) as exc:
            raise bad_request(str(exc), queries) from None
        except Exception as exc:
            log.exception("retrieval failed")  # server log: the type and the stack
            raise PrivateMlflowException(
                f"retrieval failed ({type(exc).__name__}); see the server log",
                error_code=INTERNAL_ERROR,
            ) from None


def _traced_request(search: SearchRequest, *, text: bool) -> dict[str, Any]:
    """What a trace records of a request's params: the filter itself only with ``text``
    (filter values may be as private as queries), else whether there was one."""
    request: dict[str, Any] = {"k": search.k, "mode": search.mode}
    if text:
        request["filters"] = json.dumps(dict(search.filters), sort_keys=True)
    else:
        request["filtered"] = bool(search.filters)
    return request


def _recording(span: Any) -> bool:
    """Whether a span records: not with tracing off, nor when MLflow's sampler dropped the
    trace (``MLFLOW_TRACE_SAMPLING_RATIO``), where MLflow hands out a ``NoOpSpan``."""
    from mlflow.entities.span import NoOpSpan

    return not isinstance(span, (_NoSpan, NoOpSpan))


class _NoSpan:
    """What ``_span`` yields with tracing off: takes the calls, keeps nothing."""

    def set_inputs(self, value: Any) -> None:
        pass

    def set_outputs(self, value: Any) -> None:
        pass

    def set_attributes(self, value: Any) -> None:
        pass


def _documents(hits: Sequence[Hit], *, text: bool) -> list[Any]:
    """A RETRIEVER span's outputs, the shape MLflow's retrieval scorers read; without
    ``text``, ids, ranks and scores only (no chunk text, no source path)."""
    from mlflow.entities import Document

    return [
        Document(
            page_content=hit.text if text else "",
            metadata={**({"doc_uri": hit.source_path} if text else {}), "chunk_id": hit.chunk_id,
                      "document_id": hit.document_id, "rank": hit.rank, "score": hit.score},
            id=hit.chunk_id,
        )
        for hit in hits
    ]


def guard_scoring_server() -> bool:
    """Keep request text out of every error MLflow's scoring server answers for this model.

    The scoring server (``mlflow models serve``) decodes the body and checks params against
    the signature before ``predict`` runs, and its messages quote the request data: the body
    when it is not JSON, the input table when params do not match. It has no hook for that,
    so the model, loaded by the server's module before the app exists, wraps the server's
    ``invocations`` function (looked up by name at each request): requests to this model are
    decoded and their params checked by :func:`mlflow_rag.serving.read_json_body` first (a plain
    table of queries is then answered by :mod:`mlflow_rag.pyfunc_serving`, the same response
    faster), and any message MLflow still raises passes :func:`~mlflow_rag.serving_body.private_message`.
    The RAG model (``pyfunc_rag_model.py``, a ResponsesAgent) is guarded the same way, its
    body checked as a Responses API request (:func:`check_responses_request`) instead.
    Requests to other models in the process are passed through untouched. Outside a scoring
    server (``mlflow.pyfunc.load_model`` in Python) nothing is changed. Returns whether the
    process is a scoring server.
    """
    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    original = getattr(server, "invocations", None)
    if server is None or original is None:
        return False
    if getattr(original, "_mlflow_rag_guard", False):
        return True

    @functools.wraps(original)
    def invocations(data: Any, content_type: Any, model: Any, input_schema: Any) -> Any:
        kind = served_kind(model)
        if kind is None:
            return original(data, content_type, model, input_schema)
        flush_at_server_shutdown()
        mime = str(content_type or "").split(";")[0].strip().lower()
        private: list[str] = []
        try:
            if mime == "application/json" and kind == "rag":
                # a Responses API request: no params to normalise; checked here, since the
                # ResponsesAgent loader's own check fails as an anonymous 400 with a stack
                body = decode_json_body(data)
                private = request_strings(body)
                check_responses_request(body)
            elif mime == "application/json":
                request = read_json_body(data)
                private = request.private
                queries = request.plain_queries()
                if queries is not None and plain_json(content_type):  # what most clients send
                    return answer_plain_table(server, model, queries, request.params())
                data = request.encoded(data)
            else:
                private = body_strings(data)
            return original(data, content_type, model, input_schema)
        except PrivateMlflowException:
            raise
        except RagError as exc:
            raise bad_request(str(exc), private) from None
        except MlflowException as exc:
            hint = RESPONSES_HINT if kind == "rag" else TABLE_HINT
            raise PrivateMlflowException(private_message(exc.message, private, hint=hint),
                                         error_code=_error_code(exc)) from None

    invocations._mlflow_rag_guard = True  # type: ignore[attr-defined]
    setattr(server, "invocations", invocations)  # noqa: B010 (a module found at run time)
    return True


# At most this long, at the server's shutdown, to hand queued traces to the tracking store.
SHUTDOWN_FLUSH_TIMEOUT_S = 10.0


def flush_at_server_shutdown() -> None:
    """Have the scoring server's shutdown write what this process still holds: queued query
    log rows and traces (MLflow's async export queue, OpenTelemetry's batch of spans).

    ``atexit`` would not: uvicorn (``mlflow models serve``), after its graceful shutdown,
    raises the ``SIGTERM`` it caught again with the default handler, and the process ends
    without running ``atexit``; every trace not yet exported was lost on each stop
    (benchmarks/serving.py counts them). So the flush is a shutdown handler of the app,
    added on the first request (the app is built after the model loads); once per process.
    """
    module = sys.modules.get("mlflow.pyfunc.scoring_server.app")
    hooks = getattr(getattr(getattr(module, "app", None), "router", None), "on_shutdown", None)
    if isinstance(hooks, list) and _flush_served not in hooks:
        hooks.append(_flush_served)


def _flush_served() -> None:
    from mlflow_rag.serving_log import close_open_logs

    def flush() -> None:
        close_open_logs()
        from mlflow.tracing.provider import provider

        tracer_provider = provider.get()  # spans batched for OTLP export (OTEL_EXPORTER_*)
        if hasattr(tracer_provider, "force_flush"):
            tracer_provider.force_flush(int(SHUTDOWN_FLUSH_TIMEOUT_S * 1000))
        mlflow.flush_trace_async_logging(terminate=True)  # MLflow's exporter and its queue

    # in a thread, so that a tracking store that does not answer cannot hold the stop
    worker = threading.Thread(target=flush, name="mlflow-rag-shutdown-flush", daemon=True)
    worker.start()
    worker.join(SHUTDOWN_FLUSH_TIMEOUT_S)
    if worker.is_alive():
        log.warning("traces not all exported within %.0f s of the server stopping",
                    SHUTDOWN_FLUSH_TIMEOUT_S)


RESPONSES_HINT = 'send a Responses API request: {"input": [{"role": "user", "content": QUESTION}]}'


def check_responses_request(body: Any) -> Any:
    """A ``ResponsesAgentRequest`` made of ``body``, or a 400 naming the bad fields, never
    their values (the question)."""
    import pydantic
    from mlflow.types.responses import ResponsesAgentRequest

    if not isinstance(body, dict):
        raise bad_request(f"the request is not a Responses API request: {RESPONSES_HINT}")
    try:
        return ResponsesAgentRequest(**body)
    except pydantic.ValidationError as exc:
        fields = sorted({".".join(str(p) for p in error["loc"]) for error in exc.errors()})
        raise bad_request(f"the request is not a Responses API request (bad fields "
                          f"{fields[:5]}): {RESPONSES_HINT}") from None


def warm_up_serving(*, trace: bool) -> None:
    """Do now, before ``/ping`` answers, what the scoring server's first request would do once.

    ``load_model`` runs ``load_context`` with tracing switched off (a no-op tracer in place),
    so the tracer cannot be set up here, and the server builds its app with the ``init``
    function it looked up before loading the model (``scoring_server.init(load_model(...))``):
    nothing of the model's runs between loading and serving. What setting the tracer up
    costs is its imports and the tracking store it exports to, all kept per process; they
    are built here, so the first span only assembles them (py-spy on a served MiniLM model:
    1.3-2.8 s of the first request was this, against ~60 ms for the next ones).
    Also the response's JSON encoding (its pandas code is imported on first use).
    Records no trace; a step that fails only leaves its cost to the first request.
    """
    steps: list[tuple[str, Callable[[], None]]] = [("response encoding", _warm_up_response)]
    if trace:
        steps.insert(0, ("tracing", _warm_up_tracing))
        check_otlp_exporter()
    for name, step in steps:
        try:
            step()
        except Exception as exc:
            log.debug("serving warm-up (%s) skipped: %s", name, exc)


def _warm_up_tracing() -> None:
    # What mlflow.tracing.provider._get_span_processors() builds on the first span.
    from mlflow.tracing.client import TracingClient
    from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter  # noqa: F401
    from mlflow.tracing.processor.mlflow_v3 import MlflowV3SpanProcessor  # noqa: F401
    from mlflow.tracing.processor.otel import OtelSpanProcessor  # noqa: F401
    from mlflow.tracing.utils.environment import resolve_env_metadata
    from mlflow.utils.databricks_utils import is_in_databricks_notebook

    # the exporter's store: cached per tracking URI (engine, schema check, SQLAlchemy imports)
    _ = TracingClient(mlflow.get_tracking_uri()).store
    is_in_databricks_notebook()  # asked by the exporter; the answer imports IPython
    resolve_env_metadata()  # cached per process; imports git


def check_otlp_exporter() -> bool:
    """Whether MLflow can build the OTLP exporter ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` asks
    for (True when none is asked for); the server log says so when it cannot.

    MLflow builds it on the first span and, when that fails (the exporter package, or one of
    its own dependencies, missing), sets up a tracer that records nothing and says so only at
    debug level: every request of the server's life untraced (benchmarks/serving.py counted
    812 of 812 traces lost that way)."""
    from mlflow.tracing.utils.otlp import get_otlp_exporter, should_use_otlp_exporter

    if not should_use_otlp_exporter():
        return True
    try:
        get_otlp_exporter()
    except Exception as exc:
        log.error("tracing is on but MLflow cannot build its OTLP exporter, so this server "
                  "will record no trace: %s (pip install 'mlflow-rag[otlp]')",
                  str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False
    return True


def _warm_up_response() -> None:
    import io

    from mlflow.pyfunc.scoring_server import predictions_to_json

    predictions_to_json(response_frame([], output="rows"), io.StringIO())


def _error_code(exc: MlflowException) -> int:
    """The numeric code of an MLflow exception (it keeps only the name), for a new one."""
    from mlflow.protos.databricks_pb2 import ErrorCode

    try:
        return int(ErrorCode.Value(exc.error_code))
    except ValueError:
        return INVALID_PARAMETER_VALUE


def served_kind(model: Any) -> str | None:
    """``"retriever"`` or ``"rag"`` for a loaded model of this package, else None.

    By name, not isinstance: the served model runs its own copy of this file (models from
    code), a different class object from mlflow_rag.pyfunc_model.RetrieverModel. A
    ``ResponsesAgent`` (the RAG model) sits in a wrapper that ``unwrap_python_model`` does
    not open; its ``get_raw_model`` does.
    """
    try:
        python_model = model.unwrap_python_model()
    except Exception:  # not a PythonModel: perhaps the wrapper of a ResponsesAgent
        raw = getattr(getattr(model, "_model_impl", None), "get_raw_model", None)
        try:
            python_model = raw() if callable(raw) else None
        except Exception:
            python_model = None
    name = type(python_model).__name__
    if name == RetrieverModel.__name__ and hasattr(python_model, "retriever"):
        return "retriever"
    if name == "RagModel" and hasattr(python_model, "answerer"):
        return "rag"
    return None


def _generation(retriever: Retriever) -> int:
    manifest = retriever.store.manifest
    return manifest.generation if manifest is not None else -1


mlflow.models.set_model(RetrieverModel())
