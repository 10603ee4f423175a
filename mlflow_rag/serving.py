"""Search served from a store bundle: the request/response contract, without MLflow.

:class:`Retriever` opens a bundle read-only with its hashes checked, parses a request
(queries + ``k``/``mode``/``filters``), searches, shapes the hits as the response table
(:data:`OUTPUT_COLUMNS`) and writes the opt-in query log (``serving_log``). The MLflow model
(``mlflow_rag/pyfunc_model.py``, loaded by ``mlflow models serve``) wraps it with tracing and
MLflow's error type; keeping MLflow out of this module keeps it cheap to import in processes
that only need the contract.

Query text is private: no error message raised here contains it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mlflow_rag.errors import DatabaseUnavailable, InvalidInput, RagError
from mlflow_rag.search import (
    DEFAULT_MODE,
    MODES,
    Searcher,
    SearchRequest,
    check_query,
    redact_emails,
)
from mlflow_rag.serving_body import (
    QUERY_COLUMN,
    BadRequest,
    decode_json_body,
    json_type,
    request_strings,
    scrub,
)
from mlflow_rag.serving_log import QueryLog
from mlflow_rag.serving_response import (  # re-exported: the contract's names live here too
    HIT_FIELDS,
    NESTED_COLUMN,
    OUTPUT_COLUMNS,
    OUTPUTS,
    hit_metadata,
    hits_frame,
    nested_frame,
    response_frame,
)
from mlflow_rag.store.access import Principal
from mlflow_rag.store.opening import is_database_location
from mlflow_rag.store.store import Store
from mlflow_rag.types import Hit

__all__ = ["HIT_FIELDS", "NESTED_COLUMN", "OUTPUTS", "OUTPUT_COLUMNS", "hit_metadata",
           "hits_frame", "nested_frame", "response_frame"]

log = logging.getLogger("mlflow_rag.serving")

# The signature's defaults, which MLflow fills in for params a request leaves out. "mode": ""
# stands for the bundle's own default (bundle_modes), known only once the model is loaded.
# "principal"/"groups": who the request reads as (store/access.py); "" is nobody.
PARAM_DEFAULTS: dict[str, Any] = {"k": 5, "mode": "", "filters": "", "principal": "",
                                  "groups": "", "output": "rows"}
# Optional columns of the request table that override a param for their row (a Spark
# DataFrame of queries with a k, mode or filters each); an empty cell takes the param.
ROW_PARAM_COLUMNS = ("k", "mode", "filters")
# spark_udf hands the model one Arrow batch per call (10,000 rows by default): at most
# MAX_QUERIES_PER_REQUEST, like any request, so a Spark job sets this to that or less.
SPARK_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
# The ``result_type`` of ``spark_udf`` matching a nested response (serving_response.HIT_FIELDS;
# typed, so Spark SQL can explode and select the hits).
SPARK_RESULT_TYPE = (
    f"struct<{NESTED_COLUMN}:array<struct<rank:bigint,score:double,chunk_id:string,"
    "document_id:string,chunk_type:string,text:string,source_path:string,metadata:string>>>"
)
MAX_QUERIES_PER_REQUEST = 1_000  # an oversized request is refused, not queued
MAX_HITS_PER_REQUEST = 100_000  # queries x k: the response table must stay a sane size
QUERY_LOG_ENV = "MLFLOW_RAG_QUERY_LOG"
WARM_UP_QUERY = "warm up the retriever"  # searched once at load, never logged
REDACTORS: dict[str, Callable[[str], str] | None] = {"emails": redact_emails, "none": None}
# Logged with every model: MLflow lets ``load_model(model_config=...)`` (and the
# MLFLOW_PYFUNC_INFERENCE_CONFIG variable) override only keys the logged config already has.
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "include_pii": False, "query_log": "", "redact": "emails", "embedder": "", "mmap": True,
    "trace": "ids", "store": "", "require_principal": False,
}
# What an MLflow trace of a request records (the tracking store keeps traces beyond the
# reach of purge-queries, so text is opt-in, like the query log): "off" records no trace,
# "ids" (the default) the request's shape and each hit's chunk id, document id, rank and
# score, "text" also the queries (after redaction) and the hits' text and source paths.
TRACE_MODES = ("off", "ids", "text")
# Wins over the model config's "trace" when set (e.g. MLFLOW_RAG_TRACE=off mlflow models serve).
TRACE_ENV = "MLFLOW_RAG_TRACE"


def config_choices(config: Mapping[str, Any]) -> tuple[Callable[[str], str] | None, str]:
    """The ``redact`` function and ``trace`` mode a served model's config names (checked; a
    model logged before a key existed gets its private default). :data:`TRACE_ENV`, when set,
    wins over the config's ``trace`` (as :data:`QUERY_LOG_ENV` over ``query_log``)."""
    redact_name = str(config.get("redact", "emails"))
    if redact_name not in REDACTORS:
        raise InvalidInput(f"Unknown redact {redact_name!r}; choose from {sorted(REDACTORS)}")
    from_env = os.environ.get(TRACE_ENV, "").strip()
    trace = from_env or str(config.get("trace") or "ids")
    if trace not in TRACE_MODES:
        name = TRACE_ENV if from_env else "trace"
        raise InvalidInput(f"Unknown {name} {trace!r}; choose from {list(TRACE_MODES)}")
    return REDACTORS[redact_name], trace


def config_flag(value: Any) -> bool:
    """A boolean model_config value; MLFLOW_PYFUNC_INFERENCE_CONFIG may carry it as text."""
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise InvalidInput(f"model_config mmap must be true or false, got {value!r}")
    return bool(value)


def bundle_modes(*, dense: bool) -> tuple[str, tuple[str, ...]]:
    """``(default mode, valid modes)`` of a bundle: every mode, hybrid by default, when its
    query embedder can load (``dense``); BM25 alone otherwise (no vectors, an embedder the
    serving process lacks: the OpenAI key, the ``local`` extra, an unknown model)."""
    return (DEFAULT_MODE, tuple(sorted(MODES))) if dense else ("bm25", ("bm25",))


# --------------------------------------------------------------------------- request parsing


def coerce_queries(model_input: Any) -> list[str]:
    """The queries of a request: a DataFrame with a ``query`` column (the contract), or, for
    convenience, a Series, a list of strings, one string, or ``{"query": str | [str, ...]}``."""
    values: Any
    if isinstance(model_input, pd.DataFrame):
        if QUERY_COLUMN not in model_input.columns:
            raise BadRequest(
                f"input has no {QUERY_COLUMN!r} column; send a table with a string column "
                f"{QUERY_COLUMN!r} (got columns {[str(c) for c in model_input.columns][:10]})"
            )
        values = model_input[QUERY_COLUMN].tolist()
        if len(values) == 1 and isinstance(values[0], (list, tuple, np.ndarray)):
            # MLflow turns {"query": ["a", "b"]} into one row holding the list
            values = list(values[0])
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, Mapping):
        if QUERY_COLUMN not in model_input:
            raise BadRequest(f"input has no {QUERY_COLUMN!r} key")
        raw = model_input[QUERY_COLUMN]
        values = [raw] if isinstance(raw, str) else list(raw)
    elif isinstance(model_input, (list, tuple)):
        values = list(model_input)
    else:
        raise BadRequest(
            f"input must be a table with a {QUERY_COLUMN!r} column, got {type(model_input).__name__}"
        )
    if not values:
        raise BadRequest("the request holds no query")
    if len(values) > MAX_QUERIES_PER_REQUEST:
        raise BadRequest(
            f"the request holds {len(values)} queries; at most {MAX_QUERIES_PER_REQUEST} per "
            f"request (with spark_udf, set {SPARK_BATCH_CONF} to {MAX_QUERIES_PER_REQUEST} or less)"
        )
    queries = []
    for i, value in enumerate(values):
        try:
            queries.append(check_query(value))
        except InvalidInput as exc:  # the message names the position, not the text
            raise BadRequest(f"query {i}: {exc}") from None
    return queries


def _merged_params(
    params: Mapping[str, Any] | None, *, default_mode: str
) -> tuple[Any, str, str | Mapping[str, Any]]:
    """``(k, mode, filters)`` as sent, with the defaults of the signature (a missing or empty
    mode is ``default_mode``)."""
    merged = {**PARAM_DEFAULTS, **{k: v for k, v in (params or {}).items() if not _empty(v)}}
    k = merged["k"]
    if isinstance(k, float) and k.is_integer():  # JSON clients may send 5.0
        k = int(k)
    return k, str(merged["mode"] or default_mode), merged["filters"]


def request_principal(params: Mapping[str, Any] | None, *, required: bool) -> Principal | None:
    """Who a request reads as (params ``principal``, ``groups``); with ``required`` (the
    model config ``require_principal``) a request without one is refused, never served
    everything."""
    given = params or {}
    try:
        principal = Principal.optional(given.get("principal"), given.get("groups"))
    except InvalidInput as exc:
        raise BadRequest(str(exc)) from None
    if principal is None and required:
        raise BadRequest('this model requires a principal: send params {"principal": NAME, '
                         '"groups": "G1,G2"}')
    return principal


def _parsed(
    query: str, params: Mapping[str, Any] | None, *, default_mode: str,
    require_principal: bool = False,
) -> SearchRequest:
    k, mode, filters = _merged_params(params, default_mode=default_mode)
    principal = request_principal(params, required=require_principal)
    if not isinstance(filters, (str, Mapping)):
        SearchRequest.of_checked_query(query, k=k, mode=mode)  # a bad k or mode is named first
        raise BadRequest(
            f"filters must be a JSON object (or a string holding one), got {json_type(filters)}"
        )
    # unknown keys or operators of the filter fail here, before any search
    return SearchRequest.of_checked_query(query, k=k, mode=mode, filters=filters,
                                          principal=principal)


def _empty(value: Any) -> bool:
    """None, or a missing cell of a table (NaN, pandas' NA): the param applies."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or a mapping: a value, if a wrong one
        return False


def parse_output(params: Mapping[str, Any] | None) -> str:
    """The ``output`` param: one of :data:`OUTPUTS` (``rows`` when not sent)."""
    output = (params or {}).get("output") or PARAM_DEFAULTS["output"]
    if output not in OUTPUTS:
        raise BadRequest(f"unknown output {output!r}; choose from {list(OUTPUTS)}")
    return str(output)


def row_params(model_input: Any, count: int) -> list[dict[str, Any]]:
    """Per-row overrides of the params from the optional :data:`ROW_PARAM_COLUMNS` of a
    request table (``{}`` for a row that overrides nothing, and for other inputs)."""
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    if not isinstance(model_input, pd.DataFrame) or len(model_input) != count:
        return rows
    for column in ROW_PARAM_COLUMNS:
        if column in model_input.columns:
            for row, value in zip(rows, model_input[column].tolist(), strict=True):
                if not _empty(value):
                    row[column] = value.item() if isinstance(value, np.generic) else value
    return rows


def parse_params(
    params: Mapping[str, Any] | None, *, default_mode: str = DEFAULT_MODE
) -> tuple[int, str, dict[str, Any]]:
    """``(k, mode, filters)`` from the request params, with the defaults of the signature; a
    missing or empty mode is ``default_mode`` (the bundle's, see :func:`bundle_modes`)."""
    request = _parsed("", params, default_mode=default_mode)  # the params alone: no query
    return request.k, request.mode, dict(request.filters)


def build_requests(
    queries: Sequence[str], params: Mapping[str, Any] | None, *,
    default_mode: str = DEFAULT_MODE, overrides: Sequence[Mapping[str, Any]] | None = None,
    require_principal: bool = False,
) -> list[SearchRequest]:
    """One :class:`SearchRequest` per query (each checked already, by :func:`coerce_queries`):
    the params are checked and the filter compiled once for them all, or once per distinct
    set of ``overrides`` (per-row params, :func:`row_params`)."""
    overrides = overrides or [{} for _ in queries]
    parsed: dict[str, SearchRequest] = {}
    requests = []
    for index, (query, override) in enumerate(zip(queries, overrides, strict=True)):
        key = json.dumps(override, sort_keys=True, default=str)
        if key in parsed:
            requests.append(parsed[key].with_query(query))
            continue
        try:
            request = _parsed(query, {**(params or {}), **override}, default_mode=default_mode,
                              require_principal=require_principal)
        except RagError as exc:
            raise BadRequest(f"row {index}: {exc}" if override else str(exc)) from None
        parsed[key] = request
        requests.append(request)
    rows = sum(request.k for request in requests)
    if rows > MAX_HITS_PER_REQUEST:
        raise BadRequest(
            f"{len(queries)} queries x k={requests[0].k} could return {rows} rows; "
            f"at most {MAX_HITS_PER_REQUEST} per request: send fewer queries or a smaller k"
        )
    return requests


def parse_request(
    model_input: Any, params: Mapping[str, Any] | None, *, default_mode: str = DEFAULT_MODE,
    require_principal: bool = False,
) -> list[SearchRequest]:
    """One parsed :class:`SearchRequest` per query of a request, or :class:`BadRequest` (or
    another :class:`RagError`) naming what is wrong."""
    queries = coerce_queries(model_input)
    return build_requests(queries, params, default_mode=default_mode,
                          overrides=row_params(model_input, len(queries)),
                          require_principal=require_principal)


def normalise_json_body(data: bytes | str) -> tuple[bytes | str, list[str]]:
    """The JSON body as MLflow's scoring server should see it, and its private strings.

    Refuses (:class:`BadRequest`, a message without request text) a body that is not UTF-8
    JSON and params this model does not accept. Accepted params are rewritten into the types
    the signature declares (``k`` an integer, ``filters`` a JSON string: a filters *object*
    is accepted too), so MLflow's own check of them cannot fail and quote the request.
    """
    body = read_json_body(data)
    return body.encoded(data), body.private


class JsonBody(NamedTuple):
    """A decoded request body: its params normalised (see :func:`normalise_json_body`)."""

    body: Any
    private: list[str]
    rewritten: bool  # params were normalised: the server must get the body encoded anew

    def encoded(self, data: bytes | str) -> bytes | str:
        """The body to hand MLflow's scoring server (``data``, the body as it came, if the
        params did not change)."""
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8") if self.rewritten \
            else data

    def plain_queries(self) -> list[str] | None:
        """The queries of the request nearly every client sends: a table of one string column
        ``query`` (``dataframe_split`` without an index, or ``dataframe_records``) and
        perhaps ``params``; None for any other body, which MLflow's parser must read."""
        body = self.body
        if not isinstance(body, dict) or len(body) != 1 + ("params" in body):
            return None
        if isinstance(split := body.get("dataframe_split"), dict):
            if split.keys() != {"columns", "data"} or split["columns"] != [QUERY_COLUMN] or \
                    not isinstance(split["data"], list):
                return None
            cells = [row[0] if isinstance(row, list) and len(row) == 1 else None
                     for row in split["data"]]
        elif isinstance(records := body.get("dataframe_records"), list):
            cells = [row.get(QUERY_COLUMN) if isinstance(row, dict) and len(row) == 1 else None
                     for row in records]
        else:
            return None
        queries = [cell for cell in cells if isinstance(cell, str)]
        return queries if queries and len(queries) == len(cells) else None

    def params(self) -> dict[str, Any] | None:
        return self.body.get("params") if isinstance(self.body, dict) else None


def read_json_body(data: bytes | str) -> JsonBody:
    """The body decoded, with its params checked and normalised (:func:`normalise_json_body`)."""
    body = decode_json_body(data)
    private = request_strings(body)
    if not isinstance(body, dict) or body.get("params") is None:
        return JsonBody(body, private, rewritten=False)
    params = body["params"]
    if not isinstance(params, Mapping):
        raise BadRequest(f"params must be a JSON object, got {json_type(params)}")
    try:
        k, mode, filters = parse_params(params)
    except RagError as exc:
        raise BadRequest(scrub(str(exc), private)) from None
    # a missing mode stays empty: the model, which knows what its bundle can answer, decides
    body["params"] = {**params, "k": k, "mode": mode if params.get("mode") else "",
                      "filters": json.dumps(filters, ensure_ascii=False) if filters else ""}
    return JsonBody(body, private, rewritten=True)


# --------------------------------------------------------------------------- retriever


class Retriever:
    """Answers requests from a bundle; no MLflow involved (the model class wraps this)."""

    def __init__(
        self, bundle: str | Path, *, include_pii: bool = False, query_log: str | Path | None = None,
        redact: Callable[[str], str] | None = redact_emails, embedder: str | None = None,
        mmap: bool = True, require_principal: bool = False,
    ) -> None:
        self.require_principal = require_principal  # a request without one: 400
        self.live = is_database_location(bundle)
        self.bundle = None if self.live else Path(bundle)
        if self.live:
            # A live store in a database: read-only, and every search first catches up with
            # what writers committed (new documents are served without a new model version).
            self.store = Store.open(bundle, read_only=True, mmap=mmap)
        else:
            # immutable: the bundle is never written (and may sit on a read-only file
            # system); verify_files: a truncated or altered download is refused here, not
            # half-served. mmap (the default): the index vectors stay in the bundle's file
            # pages, which every worker of `mlflow models serve --workers N` and every server
            # on the host share through the page cache, instead of N private copies; nothing
            # writes a bundle, so a map never has to become a copy. mmap=False reads each
            # index into private memory.
            self.store = Store.open(bundle, immutable=True, verify_files=True, mmap=mmap)
        self.searcher = Searcher(self.store, model=embedder, redact=redact)
        self.include_pii = include_pii
        self.redact = redact
        self.query_log = (
            QueryLog(query_log, redact=redact, forbidden_root=self.bundle) if query_log else None
        )
        self.dense_error: str | None = None
        self.default_mode, self.modes = bundle_modes(dense=True)
        self._warm_up()
        models = self.store.models()
        # The embedding space queries are logged against (none for a bundle without vectors).
        self.model_name = embedder or (models[0].name if len(models) == 1 else None)

    def _warm_up(self) -> None:
        """Run every lazy step now: the first request must cost what the tenth does, and a
        server's /ping (which answers once the model is loaded) must mean "can answer".

        Building the embedder object is not enough: MiniLM loads its weights, its tokenizer
        and its kernels on the first embedding (about 15 s on a loaded 2-core machine). So one
        real search of each kind the bundle serves runs here (the embedder, the FAISS index,
        FTS5, fusion), and threads of one worker cannot race to load the model. The warm-up
        query is not a request: it is not logged. A store without a usable embedder still
        answers bm25 requests; dense/hybrid ones get a clear error.
        """
        self.store.load_indexes()
        if not self.store.models():
            self.dense_error = "the bundle holds no vectors"
        else:
            try:
                _ = self.searcher.embedder
            except (RagError, ImportError) as exc:
                self.dense_error = f"its query embedder cannot load: {exc}"
                log.warning("dense search is unavailable in this bundle: %s", self.dense_error)
        self.default_mode, self.modes = bundle_modes(dense=self.dense_error is None)
        mode = self.default_mode
        try:
            self.searcher.search(WARM_UP_QUERY, k=1, mode=mode, include_pii=self.include_pii)
        except (RagError, ImportError) as exc:
            # e.g. the embedding service is down at start-up: not a reason to refuse dense
            # search for the life of the worker; requests will say what fails then.
            log.warning("warm-up search (%s) failed: %s", mode, exc)

    def search_one(self, request: SearchRequest) -> list[Hit]:
        if request.mode not in self.modes:
            raise BadRequest(f"mode {request.mode!r} is unavailable in this bundle "
                             f"({self.dense_error}); choose from {list(self.modes)}")
        try:
            hits = self.searcher.run(request, include_pii=self.include_pii)
        except DatabaseUnavailable:
            if not self.live:
                raise
            # A live store's server restarted since this worker's last request: the call that
            # met the dead connection failed, the store reconnects on the next, and a search
            # is a read, safe to run again once (a database still down fails it again: 503).
            hits = self.searcher.run(request, include_pii=self.include_pii)
        if self.query_log is not None:
            self.log_query(request.query, hits, k=request.k, mode=request.mode,
                           filters=request.filters)
        return hits

    @property
    def served_from(self) -> dict[str, Any]:
        """What served a logged query (lineage): the bundle's generation, or the live store's
        at the time, and the embedding model's version."""
        manifest = self.store.manifest
        served: dict[str, Any] = {"served_from": "live" if self.live else "bundle",
                                  "generation": (manifest.generation if manifest is not None
                                                 else self.store.backend.generation())}
        if self.model_name:
            served["model_version"] = self.store.model(self.model_name).model_version
        return served

    def log_query(self, query: str, hits: Sequence[Hit], *, k: int, mode: str,
                  filters: Mapping[str, Any]) -> None:
        assert self.query_log is not None
        try:  # queued: the file is written by the log's own thread, off the request path
            self.query_log.write(
                query, hits, model_name=self.model_name if mode != "bm25" else None,
                metadata={"mode": mode, "k": k, "filters": dict(filters),
                          "store_id": self.store.store_id, **self.served_from},
            )
        except Exception as exc:
            # A failing log must not fail the answer; say so loudly (without the query).
            log.error("query log %s: queueing a query failed: %s", self.query_log.path, exc)

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        output = parse_output(params)
        requests = parse_request(model_input, params, default_mode=self.default_mode,
                                 require_principal=self.require_principal)
        return response_frame([self.search_one(request) for request in requests], output=output)

    def close(self) -> None:
        if self.query_log is not None:
            self.query_log.close()
        self.store.close(flush=False)
